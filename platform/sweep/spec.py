"""The sweep file: what a Ray Tune sweep of Co-DETR runs, read and validated before Ray starts.

A sweep file (``experiments/sweep*.yaml``)::

    name: codetr_tiny_sweep          # sweep name: Tune experiment folder and MLflow parent run name
    experiment_name: codetr_sweeps   # MLflow experiment of the parent and child runs
    base: codetr_tiny.yaml           # config every trial starts from (next to this file, or in experiments/)
    overrides: {train.epochs: 4}     # dotted-key overrides applied to the base before sampling
    search_space:                    # dotted config key -> exactly one domain
      model.aux_heads: {grid: [[], [atss], [atss, faster_rcnn]]}
      model.lambda1: {choice: [0.5, 1.0]}
      train.lr: {loguniform: [1.0e-4, 1.0e-3]}
      model.num_queries: {randint: [30, 100]}     # [low, high), integers
      train.weight_decay: {uniform: [0.0, 1.0e-3]}
    metric: coco/AP                  # what the scheduler and the summary rank by
    mode: max                        # max or min
    num_samples: 1                   # samples of the space (times the grid)
    max_concurrent_trials: 2         # trials running at once (null: as many as resources allow)
    resources: {num_workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}   # per trial (Ray Train workers)
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2, max_epochs: 4}   # or {type: none}
    search_alg: null                 # null / random (Tune's basic variant generator), optuna, hyperopt
    storage_path: runs/sweeps        # Tune + Train storage (a shared mount or URI on a multi-node cluster)
    configurations:                  # instead of search_space: the runs themselves (one factor at a time);
      - {model.aux_heads: []}        # each names what it changes, other keys keep the base config's value
      - {model.lambda1: 0.25}
    seeds: [0, 1, 2]                 # repeats: every configuration once per seed (train.seed), or
    # repeats: 3                     # ... the same as seeds: [0, 1, 2]
    baseline: {model.aux_heads: []}  # the configuration the others are compared with, paired by seed
    trial_runner: auto               # auto: a single-worker trial trains in its Tune trial's own (reused)
                                     # process; ray_train: every trial runs a Ray Train TorchTrainer
    max_failures: 1                  # restarts of a trial whose process, worker or node is lost (or that
                                     # errs), each from its latest checkpoint into its MLflow run; 0: none,
                                     # -1: unlimited

Repeats (``seeds`` / ``repeats``) need grid domains only (a configuration must be the same on every
seed), ``num_samples: 1``, no ``search_alg`` and ``scheduler: {type: none}``: every trial runs to the
end, so that every configuration is compared on every seed at the same epoch (docs/sweeps.md, "Repeats").
``baseline`` maps swept keys to values and must pick exactly one configuration of the grid.

Command-line ``key=value`` overrides go to the sweep file when the first part of the key is one
of its fields (``num_samples=2``, ``scheduler.type=none``, ``search_space.model.lambda1={grid: [1]}``)
and to the base config otherwise (``train.max_iters=10``).
"""
from __future__ import annotations

import copy
import difflib
import importlib.util
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from codetr.config import Config, ConfigError, config_from_dict, has_key, to_dict
from codetr.config.loader import apply_overrides, parse_override, read_config_dict
from platform.core.config_files import EXPERIMENTS, absolutize_paths, check_run_name

DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint")
SCHEDULERS = ("asha", "none")
SEARCH_ALGS = ("random", "optuna", "hyperopt")
FIELDS = ("name", "experiment_name", "base", "overrides", "search_space", "configurations", "metric", "mode",
          "num_samples", "max_concurrent_trials", "resources", "scheduler", "search_alg", "storage_path", "seeds",
          "repeats", "baseline", "trial_runner", "max_failures")
TRIAL_RUNNERS = ("auto", "ray_train")
SEED_KEY = "train.seed"          # what a repeat changes: model initialisation, data order, augmentation
CONFIG_ID_KEY = "config_id"      # in a trial's grid point: the id of its configuration (c1, c2, ...)
MAX_SEED = 2**31 - 1
RESOURCE_FIELDS = ("num_workers", "cpus_per_worker", "gpus_per_worker")
ASHA_FIELDS = ("type", "grace_period", "reduction_factor", "max_epochs")


@dataclass
class Domain:
    """One swept key: ``kind`` in DOMAINS; ``values`` (grid / choice) or ``low`` / ``high``."""
    key: str
    kind: str
    values: list[Any] = field(default_factory=list)
    low: float | None = None
    high: float | None = None

    def to_tune(self):
        """The Ray Tune search-space object of this domain."""
        if self.kind == "grid":
            return tune.grid_search(copy.deepcopy(self.values))
        if self.kind == "choice":
            return tune.choice(copy.deepcopy(self.values))
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        return tune.randint(int(self.low), int(self.high))

    def edge_values(self) -> list[Any]:
        """Values that must all give a valid config (every listed value, or both ends of a range)."""
        if self.kind in ("grid", "choice"):
            return list(self.values)
        if self.kind == "randint":
            return [int(self.low), int(self.high) - 1]
        return [self.low, self.high]


@dataclass
class SweepSpec:
    """A validated sweep file (see the module docstring)."""
    name: str
    experiment_name: str
    base: str                                   # absolute path of the base config
    overrides: dict[str, Any]
    search_space: dict[str, Domain]
    metric: str = "coco/AP"
    mode: str = "max"
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    resources: dict[str, float] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    search_alg: str | None = None
    storage_path: str = "runs/sweeps"
    source: str = ""                            # the sweep file
    raw: dict[str, Any] = field(default_factory=dict)   # the file after command-line overrides
    seeds: list[int] | None = None              # None: one trial per configuration (the base train.seed)
    baseline: dict[str, Any] | None = None      # swept key -> value of the baseline configuration
    trial_runner: str = "auto"
    max_failures: int = 1                       # Tune's restarts of one trial (-1: unlimited)
    listed: list[dict[str, Any]] | None = None  # ``configurations:`` of the file (instead of a grid product)
    _grid_points: list[dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def keys(self) -> list[str]:
        return list(self.search_space)

    def base_config(self) -> Config:
        """The base config with the sweep's overrides and per-trial resources (not yet sampled), with
        absolute paths (trials run in a copy of the repository elsewhere)."""
        return absolutize_paths(build_base_config(self.base, self.overrides, self.resources))

    def grid_points(self) -> list[dict[str, Any]]:
        """The combinations of the grid domains, in file order (the last key varies fastest).

        A key that cannot change a combination's run (``Config.unused_keys``: lambda1 / lambda2
        without auxiliary heads, the settings of absent heads) is left out of that combination, and
        combinations that become equal are run once."""
        if self._grid_points is not None:   # one config validation per combination: done once
            return self._grid_points
        grid = {k: d.values for k, d in self.search_space.items() if d.kind == "grid"}
        points, seen = [], set()
        if grid:
            base = to_dict(self.base_config())
            if self.listed is not None:   # the listed configurations, each key not named at its base value
                combos = [tuple(c.get(k, _base_value(base, k)) for k in grid) for c in self.listed]
            else:
                combos = itertools.product(*grid.values())
            for combo in combos:
                values = dict(zip(grid, combo))
                cfg = trial_config(base, values)
                point = {k: v for k, v in values.items() if not cfg.is_unused(k)}
                ident = json.dumps(point, sort_keys=True)
                if ident not in seen:
                    seen.add(ident)
                    points.append(point)
        self._grid_points = points
        return points

    def configurations(self) -> list[tuple[str, dict[str, Any]]]:
        """``[(config id, grid point)]``: ``c1``, ``c2``, ... in grid order (what --dry-run lists)."""
        return [(f"c{i}", point) for i, point in enumerate(self.grid_points(), 1)]

    def trial_points(self) -> list[dict[str, Any]]:
        """The Tune grid: every configuration (its grid point plus ``CONFIG_ID_KEY``), once per seed
        (``SEED_KEY``) with repeats. Seed-major: all configurations on seed 0 first, so that an
        interrupted sweep already holds complete seeds to compare."""
        configs = self.configurations()
        if not self.seeds:
            return [{**point, CONFIG_ID_KEY: cid} for cid, point in configs]
        return [{**point, CONFIG_ID_KEY: cid, SEED_KEY: seed} for seed in self.seeds for cid, point in configs]

    def num_trials(self) -> int:
        """Trials the sweep runs: grid points x seeds (or x num_samples)."""
        return self.num_grid_points() * (len(self.seeds) if self.seeds else self.num_samples)

    def baseline_id(self) -> str | None:
        """The config id of the baseline configuration (None without ``baseline``)."""
        if self.baseline is None:
            return None
        return next(cid for cid, point in self.configurations() if matches(point, self.baseline))

    def uses_inline_trials(self) -> bool:
        """Whether a trial trains in its Tune trial's process (``trial_runner: auto``, one worker)."""
        return self.trial_runner == "auto" and int(self.resources.get("num_workers", 1)) == 1

    def num_grid_points(self) -> int:
        """Distinct grid combinations (1 without grid domains); trials = this x num_samples."""
        return len(self.grid_points()) or 1

    def compare_epochs(self) -> list[int]:
        """Epochs after which trials are compared: ASHA's rungs (grace_period x reduction_factor^k)
        and its maximum; none without a scheduler (every trial runs to the end)."""
        if self.scheduler["type"] != "asha":
            return []
        epochs, t, k = [], self.scheduler["grace_period"], 0
        while t < self.scheduler["max_epochs"]:
            epochs.append(int(t))
            k += 1
            t = self.scheduler["grace_period"] * self.scheduler["reduction_factor"] ** k
        return sorted(set(epochs + [int(self.scheduler["max_epochs"])]))

    def num_grid_combinations(self) -> int:
        """The full product of the grid domains, duplicates included (the list of ``configurations``)."""
        if self.listed is not None:
            return len(self.listed)
        return math.prod(len(d.values) for d in self.search_space.values() if d.kind == "grid")


def _close(name: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _config_keys(cfg_dict: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in cfg_dict.items():
        full = f"{prefix}.{key}" if prefix else key
        out.append(full)
        if isinstance(value, dict):
            out += _config_keys(value, full)
    return out


def set_dotted(data: dict, key: str, value: Any) -> dict:
    """A copy of nested ``data`` with ``data[a][b][c] = value`` for ``key = "a.b.c"``."""
    out = copy.deepcopy(data)
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)
    return out


def build_base_config(base: str, overrides: dict[str, Any], resources: dict[str, float]) -> Config:
    data = read_config_dict(base)
    for key, value in overrides.items():
        data = set_dotted(data, key, value)
    p = resources
    if "num_workers" in p:
        data = set_dotted(data, "platform.num_workers", int(p["num_workers"]))
    if "cpus_per_worker" in p:
        data = set_dotted(data, "platform.cpus_per_worker", int(p["cpus_per_worker"]))
    if p.get("gpus_per_worker"):
        data = set_dotted(data, "platform.use_gpu", True)
        data = set_dotted(data, "platform.gpus_per_worker", float(p["gpus_per_worker"]))
    elif "gpus_per_worker" in p:
        data = set_dotted(data, "platform.use_gpu", False)
    return config_from_dict(data)


def trial_config(base_dict: dict, values: dict[str, Any]) -> Config:
    """The validated config of one trial: the base dict with the sampled ``values`` set."""
    data = base_dict
    for key, value in values.items():
        data = set_dotted(data, key, value)
    return config_from_dict(data)


def _base_value(base: dict, key: str) -> Any:
    node: Any = base
    for part in key.split("."):
        node = node[part]
    return node


def _parse_configurations(raw: Any, base_dict: dict, valid_keys: list[str]) -> tuple[dict[str, Domain], list[dict]]:
    """``configurations:`` -> (a grid domain per named key holding its values, base value first, and the
    list itself). Each configuration names the keys it changes; the others keep the base config's value."""
    if not isinstance(raw, list) or not raw or not all(isinstance(c, dict) and c for c in raw):
        raise ConfigError("configurations: must be a non-empty list of mappings of dotted config keys to values, "
                          "e.g. [{model.aux_heads: []}, {model.lambda1: 0.5}]")
    listed = [_flatten_selection(c) for c in raw]
    keys: list[str] = []
    for i, config in enumerate(listed, 1):
        for key in config:
            if not has_key(Config, key):
                raise ConfigError(f"configurations[{i}]: {key!r} is not a config key{_close(key, valid_keys)}")
            if key not in keys:
                keys.append(key)
        try:
            trial_config(base_dict, config)
        except ConfigError as e:
            raise ConfigError(f"configurations[{i}] {json.dumps(config)} gives an invalid config: {e}") from e
    space = {}
    for key in keys:
        values = [_base_value(base_dict, key)]
        for config in listed:
            if key in config and config[key] not in values:
                values.append(config[key])
        space[key] = Domain(key, "grid", values=values)
    return space, listed


def matches(point: dict[str, Any], selection: dict[str, Any]) -> bool:
    """Whether a grid point has every value of ``selection``; a key the point leaves out (no effect
    there, e.g. lambda1 with K = 0) matches any value."""
    return all(key not in point or point[key] == value for key, value in selection.items())


def _flatten_selection(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten_selection(value, full))
        else:
            out[full] = value
    return out


def _parse_seeds(raw: dict, path: Path) -> list[int] | None:
    seeds, repeats = raw.get("seeds"), raw.get("repeats")
    if seeds is not None and repeats is not None:
        raise ConfigError(f"{path}: give 'seeds' (a list) or 'repeats' (a count), not both")
    if repeats is not None:
        _check_int(repeats, "repeats", 1)
        return list(range(repeats))
    if seeds is None:
        return None
    if (not isinstance(seeds, list) or not seeds
            or any(not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= MAX_SEED for s in seeds)):
        raise ConfigError(f"seeds: must be a non-empty list of integers in [0, {MAX_SEED}], got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ConfigError(f"seeds: {repeated} repeated (a seed run twice gives the same result twice)")
    return list(seeds)


def _check_repeats(seeds: list[int] | None, space: dict[str, Domain], num_samples: int, scheduler: dict,
                   search_alg: str | None) -> None:
    if not seeds:
        return
    what = "seeds / repeats"
    if SEED_KEY in space:
        raise ConfigError(f"search_space.{SEED_KEY}: the seed is set by {what}; remove it from the search space")
    sampled = [k for k, d in space.items() if d.kind != "grid"]
    if sampled:
        raise ConfigError(f"{what} need grid domains (a configuration must be the same on every seed); "
                          f"{', '.join(sampled)} {'is' if len(sampled) == 1 else 'are'} sampled: use grid")
    if num_samples != 1:
        raise ConfigError(f"num_samples: must be 1 with {what} (the seeds are the repeats), got {num_samples}")
    if search_alg is not None:
        raise ConfigError(f"search_alg: {search_alg} cannot be combined with {what} (grid domains only)")
    if scheduler["type"] != "none":
        raise ConfigError(f"scheduler: {scheduler['type']} cannot be combined with {what}: early stopping would "
                          "cut a configuration on one seed's result, and the comparisons need every configuration "
                          "at the same epoch on every seed; set scheduler: {type: none} (docs/sweeps.md, Repeats)")


def _parse_baseline(raw: Any, space: dict[str, Domain], spec: "SweepSpec") -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"baseline: must map swept keys to values, e.g. {{model.aux_heads: []}}, got {raw!r}")
    selection = _flatten_selection(raw)
    grid_keys = [k for k, d in space.items() if d.kind == "grid"]
    for key in selection:
        if key not in grid_keys:
            raise ConfigError(f"baseline: {key!r} is not a grid key of the search space{_close(key, grid_keys)}; "
                              f"grid keys: {', '.join(grid_keys) or 'none'}")
    found = [(cid, point) for cid, point in spec.configurations() if matches(point, selection)]
    if not found:
        listed = "; ".join(f"{cid}: {json.dumps(p)}" for cid, p in spec.configurations()[:12])
        raise ConfigError(f"baseline: {json.dumps(selection)} matches no configuration of the grid "
                          f"(a key without effect in a configuration is left out of it); configurations: {listed}")
    if len(found) > 1:
        listed = "; ".join(f"{cid}: {json.dumps(p)}" for cid, p in found[:12])
        raise ConfigError(f"baseline: {json.dumps(selection)} matches {len(found)} configurations ({listed}); "
                          "name more keys so that it picks one")
    return selection


def _resolve_base(base: str, sweep_file: Path) -> Path:
    for candidate in (sweep_file.parent / base, sweep_file.parent / f"{base}.yaml", Path(base),
                      EXPERIMENTS / base, EXPERIMENTS / f"{base}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"base: config file {base!r} not found (next to {sweep_file} or in {EXPERIMENTS})")


def _parse_domain(key: str, spec: Any) -> Domain:
    where = f"search_space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: must be a mapping with exactly one of {list(DOMAINS)}, got {spec!r}")
    kind, arg = next(iter(spec.items()))
    if kind not in DOMAINS:
        raise ConfigError(f"{where}: unknown domain {kind!r}{_close(str(kind), list(DOMAINS))}; "
                          f"use one of {list(DOMAINS)}")
    if kind in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{where}.{kind}: must be a non-empty list of values, got {arg!r}")
        return Domain(key, kind, values=list(arg))
    if not (isinstance(arg, list) and len(arg) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)):
        raise ConfigError(f"{where}.{kind}: must be [low, high] numbers, got {arg!r}")
    low, high = arg
    if not low < high:
        raise ConfigError(f"{where}.{kind}: low must be < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.loguniform: low must be > 0, got {low}")
    if kind == "randint":
        if not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"{where}.randint: [low, high) must be integers, got [{low}, {high}]")
        if high - low < 1:
            raise ConfigError(f"{where}.randint: empty range [{low}, {high})")
    return Domain(key, kind, low=low, high=high)


def _check_int(value: Any, key: str, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}: must be an integer >= {minimum}{' or null' if allow_none else ''}, got {value!r}")
    return value


def _split_overrides(overrides: list[str]) -> tuple[list[tuple[list[str], Any]], list[str]]:
    """Command-line overrides -> (for the sweep file, for the base config)."""
    sweep, base = [], []
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] in FIELDS:
            sweep.append((parts, value))
        else:
            base.append(text)
    return sweep, base


def parse_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Read and validate a sweep file (plus command-line ``key=value`` overrides).

    Raises ConfigError naming the offending field or key; nothing here starts Ray.
    """
    path, raw = _read_sweep_file(path)
    sweep_overrides, base_overrides = _split_overrides(list(overrides))
    raw = _apply_sweep_overrides(raw, sweep_overrides)
    for key in raw:
        if key not in FIELDS:
            raise ConfigError(f"{path}: unknown sweep field {key!r}{_close(str(key), list(FIELDS))}; "
                              f"valid fields: {', '.join(FIELDS)} (config keys go under 'overrides')")
    base, merged_overrides = _parse_base(raw, path, base_overrides)
    resources = _parse_resources(raw)
    base_cfg = build_base_config(str(base), merged_overrides, resources)
    space, listed = _parse_search_space(raw, path, to_dict(base_cfg))
    metric, mode = _parse_metric(raw)
    scheduler = _parse_scheduler(raw, base_cfg)
    search_alg = _parse_search_alg(raw, space)
    num_samples = _check_int(raw.get("num_samples", 1), "num_samples", 1)
    seeds = _parse_seeds(raw, path)
    _check_repeats(seeds, space, num_samples, scheduler, search_alg)
    trial_runner = raw.get("trial_runner", "auto")
    if trial_runner not in TRIAL_RUNNERS:
        raise ConfigError(f"trial_runner: {trial_runner!r} is not one of {list(TRIAL_RUNNERS)}"
                          f"{_close(str(trial_runner), list(TRIAL_RUNNERS))}")
    name = raw.get("name") or path.stem
    check_run_name(str(name))
    storage_path = str(raw.get("storage_path", "runs/sweeps"))
    if "://" not in storage_path:   # trials run elsewhere (Ray workers): an absolute path
        storage_path = str(Path(storage_path).expanduser().resolve())
    spec = SweepSpec(
        name=str(name),
        experiment_name=str(raw.get("experiment_name") or base_cfg.platform.experiment_name),
        base=str(base),
        overrides=merged_overrides,
        search_space=space,
        metric=metric,
        mode=mode,
        num_samples=num_samples,
        max_concurrent_trials=_check_int(raw.get("max_concurrent_trials"), "max_concurrent_trials", 1,
                                         allow_none=True),
        resources=dict(resources),
        scheduler=scheduler,
        search_alg=search_alg,
        storage_path=storage_path,
        source=str(path),
        raw=raw,
        seeds=seeds,
        trial_runner=trial_runner,
        max_failures=_check_int(raw.get("max_failures", 1), "max_failures", -1),
        listed=listed,
    )
    if listed is not None:
        points = spec.grid_points()
        if len(points) < len(listed):
            raise ConfigError(f"configurations: {len(listed)} listed but only {len(points)} distinct runs (two of "
                              "them differ only in keys without effect there, e.g. lambda1 with no auxiliary head)")
    spec.baseline = _parse_baseline(raw.get("baseline"), space, spec)
    return spec


def _read_sweep_file(path: str | Path) -> tuple[Path, dict]:
    """``(path, its YAML mapping)``: a path, or a name in ``experiments/``."""
    path = Path(path)
    if not path.is_file():
        for candidate in (EXPERIMENTS / path, EXPERIMENTS / f"{path}.yaml"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise ConfigError(f"sweep file not found: {path}")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return path, raw


def _apply_sweep_overrides(raw: dict, sweep_overrides: list[tuple[list[str], Any]]) -> dict:
    """The command line's sweep-file overrides applied to the file's mapping."""
    for parts, _ in sweep_overrides:   # seeds / repeats on the command line replace the file's either
        if parts[0] in ("seeds", "repeats"):
            raw.pop("repeats" if parts[0] == "seeds" else "seeds", None)
    for parts, value in sweep_overrides:
        if parts[0] == "search_space" and len(parts) > 1:
            raw.setdefault("search_space", {})
            raw["search_space"] = dict(raw["search_space"] or {})
            raw["search_space"][".".join(parts[1:])] = value
        else:
            raw = apply_overrides(raw, [f"{'.'.join(parts)}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
            if value is None:
                raw = set_dotted(raw, ".".join(parts), None)
    return raw


def _parse_base(raw: dict, path: Path, base_overrides: list[str]) -> tuple[Path, dict[str, Any]]:
    """``(base config file, the overrides of the file and of the command line by dotted key)``."""
    if "base" not in raw:
        raise ConfigError(f"{path}: 'base' (the config every trial starts from) is required")
    base = _resolve_base(str(raw["base"]), path)
    file_overrides = raw.get("overrides") or {}
    if not isinstance(file_overrides, dict):
        raise ConfigError(f"{path}: 'overrides' must be a mapping of dotted config keys to values")
    for key in file_overrides:
        if not has_key(Config, str(key)):
            raise ConfigError(f"overrides: {key!r} is not a config key")
    merged_overrides = dict(file_overrides)
    for text in base_overrides:
        parts, value = parse_override(text)
        merged_overrides[".".join(parts)] = value
    for key in merged_overrides:
        if not has_key(Config, key):
            raise ConfigError(f"override {key!r} is neither a sweep field ({', '.join(FIELDS)}) nor a config key")
    return base, merged_overrides


def _parse_resources(raw: dict) -> dict[str, float]:
    resources = raw.get("resources") or {}
    if not isinstance(resources, dict):
        raise ConfigError("resources: must be a mapping with num_workers, cpus_per_worker, gpus_per_worker")
    for key, value in resources.items():
        if key not in RESOURCE_FIELDS:
            raise ConfigError(f"resources: unknown field {key!r}{_close(str(key), list(RESOURCE_FIELDS))}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"resources.{key}: must be a number >= 0, got {value!r}")
    if resources.get("num_workers", 1) < 1:
        raise ConfigError("resources.num_workers: must be >= 1")
    return resources


def _parse_search_space(raw: dict, path: Path, base_dict: dict) -> tuple[dict[str, Domain], list[dict] | None]:
    """``(domains by dotted key, the listed configurations or None)``: a search space, or the runs of
    ``configurations``; every domain's edge values must give a valid config."""
    space_raw = raw.get("search_space") or {}
    valid_keys = _config_keys(base_dict)
    listed = None
    if raw.get("configurations") is not None:
        if space_raw:
            raise ConfigError(f"{path}: give 'search_space' (a grid or sampled domains) or 'configurations' "
                              "(a list of runs), not both")
        space_raw, (space, listed) = {}, _parse_configurations(raw["configurations"], base_dict, valid_keys)
    elif not isinstance(space_raw, dict) or not space_raw:
        raise ConfigError(f"{path}: 'search_space' must map at least one dotted config key to a domain "
                          "(or 'configurations' list the runs)")
    else:
        space = {}
    for key, spec in space_raw.items():
        key = str(key)
        if not has_key(Config, key):
            raise ConfigError(f"search_space: {key!r} is not a config key{_close(key, valid_keys)}")
        domain = _parse_domain(key, spec)
        for value in domain.edge_values():
            try:
                trial_config(base_dict, {key: value})
            except ConfigError as e:
                raise ConfigError(f"search_space.{key}: value {value!r} gives an invalid config: {e}") from e
        space[key] = domain
    return space, listed


def _parse_metric(raw: dict) -> tuple[str, str]:
    metric = raw.get("metric", "coco/AP")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"metric: must be a metric name such as 'coco/AP', got {metric!r}")
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"mode: must be 'max' or 'min', got {mode!r}")
    return metric, mode


def _parse_scheduler(raw: dict, base_cfg: Config) -> dict[str, Any]:
    """``{"type": "none"}`` or ASHA's fields with their defaults (``max_epochs``: the base's ``train.epochs``)."""
    scheduler = dict(raw.get("scheduler") or {"type": "none"})
    kind = scheduler.get("type", "asha")
    if kind not in SCHEDULERS:
        raise ConfigError(f"scheduler.type: {kind!r} is not one of {list(SCHEDULERS)}")
    if kind != "asha":   # other fields are ASHA's (e.g. left over after scheduler.type=none on the command line)
        return {"type": "none"}
    scheduler["type"] = kind
    for key in scheduler:
        if key not in ASHA_FIELDS:
            raise ConfigError(f"scheduler: unknown ASHA field {key!r}{_close(str(key), list(ASHA_FIELDS))}")
    scheduler.setdefault("grace_period", 1)
    scheduler.setdefault("reduction_factor", 2)
    scheduler.setdefault("max_epochs", base_cfg.train.epochs)
    _check_int(scheduler["grace_period"], "scheduler.grace_period", 1)
    _check_int(scheduler["max_epochs"], "scheduler.max_epochs", 1)
    rf = scheduler["reduction_factor"]
    if not isinstance(rf, (int, float)) or isinstance(rf, bool) or rf <= 1:
        raise ConfigError(f"scheduler.reduction_factor: must be > 1, got {rf!r}")
    if scheduler["grace_period"] > scheduler["max_epochs"]:
        raise ConfigError(f"scheduler.grace_period ({scheduler['grace_period']}) must be <= "
                          f"scheduler.max_epochs ({scheduler['max_epochs']})")
    return scheduler


def _parse_search_alg(raw: dict, space: dict[str, Domain]) -> str | None:
    """``optuna`` / ``hyperopt`` (installed, and no grid domains), or None (Tune's random variant generator)."""
    search_alg = raw.get("search_alg")
    if isinstance(search_alg, dict):
        search_alg = search_alg.get("type")
    if search_alg is None:
        return None
    if search_alg not in SEARCH_ALGS:
        raise ConfigError(f"search_alg: {search_alg!r} is not one of {list(SEARCH_ALGS)} (or null)")
    if search_alg == "random":
        return None
    if importlib.util.find_spec(search_alg) is None:
        raise ConfigError(f"search_alg: {search_alg} needs the {search_alg!r} package (pip install {search_alg})")
    grid = [k for k, d in space.items() if d.kind == "grid"]
    if grid:
        raise ConfigError(f"search_alg: {search_alg} cannot search grid domains ({', '.join(grid)}); "
                          "use choice, or search_alg: random")
    return search_alg
