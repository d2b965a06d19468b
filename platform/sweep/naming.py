"""How a trial is named and identified: its swept values, its configuration id and seed, its readable label
(the MLflow run name and Tune trial name) and its folder name."""
from __future__ import annotations

from typing import Any

from platform.sweep.spec import CONFIG_ID_KEY, SEED_KEY


def short_key(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trial_label(values: dict[str, Any]) -> str:
    """``K=2[atss+faster_rcnn] lambda1=0.5 lambda2=2 num_queries=50`` (MLflow run name, Tune trial name)."""
    parts = []
    for key, value in values.items():
        if key.endswith("aux_heads") and isinstance(value, (list, tuple)):
            parts.append(f"K={len(value)}[{'+'.join(value)}]")
        elif isinstance(value, (list, tuple)):
            parts.append(f"{short_key(key)}=[{','.join(_short_value(v) for v in value)}]")
        else:
            parts.append(f"{short_key(key)}={_short_value(value)}")
    return " ".join(parts)


def trial_dirname(trial_id: str, values: dict[str, Any]) -> str:
    """A folder / Ray Train run name: ``<trial id>_K2-atss.faster_rcnn_lambda1-0.5_...`` (safe characters)."""
    parts = [trial_id]
    for key, value in values.items():
        if key.endswith("aux_heads") and isinstance(value, (list, tuple)):
            text = f"K{len(value)}-{'.'.join(value) or 'none'}"
        elif isinstance(value, (list, tuple)):
            text = f"{short_key(key)}-{'.'.join(_short_value(v) for v in value)}"
        else:
            text = f"{short_key(key)}-{_short_value(value)}"
        parts.append("".join(c if c.isalnum() or c in "._-" else "." for c in text))
    return "_".join(parts)[:200]



GRID_KEY = "grid_point"   # Tune config key of the grid combination (a dict of dotted keys -> values)



def trial_identity(config: dict) -> tuple[str | None, int | None]:
    """``(config id, seed)`` of a trial from its Tune config (None, None for a sampled trial; seed None
    without repeats: the base config's ``train.seed``)."""
    point = config.get(GRID_KEY, {})
    return point.get(CONFIG_ID_KEY), point.get(SEED_KEY)


def naming_values(config: dict, keys: list[str]) -> dict[str, Any]:
    """The swept values of a trial plus its seed with repeats (what its names show)."""
    values = trial_values(config, keys)
    _, seed = trial_identity(config)
    return {**values, SEED_KEY: seed} if seed is not None else values


def trial_values(config: dict, keys: list[str]) -> dict[str, Any]:
    """The swept values of a trial by dotted key, in ``keys`` order, from its Tune config (the grid
    combination under GRID_KEY plus the sampled keys); a key the combination leaves out (no effect
    there, see ``SweepSpec.grid_points``) is absent."""
    merged = {**config.get(GRID_KEY, {}), **{k: v for k, v in config.items() if k != GRID_KEY}}
    return {k: merged[k] for k in keys if k in merged}
