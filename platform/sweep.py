"""A Ray Tune sweep of Co-DETR runs, compared in MLflow.

    python -m platform.sweep experiments/sweep_tiny.yaml [--resume] [key=value ...]
    ray job submit --working-dir . -- python -m platform.sweep experiments/sweep.yaml

The sweep file (see :mod:`platform.sweep_spec`) names a base config, a search space over dotted
config keys, the metric, a scheduler (ASHA or none) and per-trial resources; it is validated before
Ray starts. Each Tune trial runs :func:`run_trial`, which builds the single-run TorchTrainer of
``platform.train`` (Ray Train V2) for the trial's config with a ``TuneReportCallback``, so the
workers' per-epoch reports (``epoch``, ``coco/*``, ``train/loss``) reach Tune and its scheduler.

MLflow: one parent run per sweep (the sweep name), one child run per trial (tag
``mlflow.parentRunId``) with the params, metrics and artifacts of a single run; at the end the
parent gets the results table, plots and the best config (:mod:`platform.sweep_summary`).

``--resume`` continues an interrupted sweep of the same name (``Tuner.restore``): finished trials
are kept, unfinished ones continue from their latest checkpoint into the same child runs.

Repeats (``seeds`` / ``repeats`` in the sweep file) run every configuration once per seed
(``train.seed``); the summary then gives each configuration's mean and t-interval, the effect of
each swept value and paired comparisons with the ``baseline`` configuration
(:mod:`platform.sweep_stats`); ``python -m platform.report SWEEP`` sets them beside the paper's.

A trial with one worker (``trial_runner: auto``) trains inside its Tune trial's process, which Tune
reuses for the next trial (:mod:`platform.train_session`); with more workers (or ``trial_runner:
ray_train``) the trial runs a Ray Train ``TorchTrainer``.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_KILLED = 0, 1, 2, 130
TRAIN_RUNS_DIR = "train_runs"     # under <storage>/<sweep name>/: the Ray Train folders of the trials
TRIAL_ENV = {
    # epochs without an evaluation report no coco/*: ASHA waits for the next one instead of Tune failing
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # a trial's workers may wait for an ended trial's resources to be released (Train's default: 60 s)
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
    # an inline trial's process is reused once its training thread has ended (closing its MLflow
    # logging, its system-metrics monitor): Tune's default wait for that is 2 s, then a new process
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": "30",
    # Tune snapshots its experiment state after every num_to_keep checkpoints of an inline trial (a
    # small local write) and warns when that happens within 5 s: with short trials it does, harmlessly
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m platform.sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("sweep_file", help="sweep YAML (e.g. experiments/sweep_tiny.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="sweep-file fields (num_samples=2, scheduler.type=none) or base config keys "
                             "(train.max_iters=10)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this name")
    parser.add_argument("--dry-run", action="store_true", help="validate the sweep file and print the plan")
    from platform.train import add_model_arguments

    add_model_arguments(parser)   # --register NAME: the best trial's model; --verbose
    return parser.parse_intermixed_args(argv)


# ------------------------------------------------------------------------------------------ names


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
    from platform.sweep_spec import CONFIG_ID_KEY, SEED_KEY

    point = config.get(GRID_KEY, {})
    return point.get(CONFIG_ID_KEY), point.get(SEED_KEY)


def naming_values(config: dict, keys: list[str]) -> dict[str, Any]:
    """The swept values of a trial plus its seed with repeats (what its names show)."""
    from platform.sweep_spec import SEED_KEY

    values = trial_values(config, keys)
    _, seed = trial_identity(config)
    return {**values, SEED_KEY: seed} if seed is not None else values


def trial_values(config: dict, keys: list[str]) -> dict[str, Any]:
    """The swept values of a trial by dotted key, in ``keys`` order, from its Tune config (the grid
    combination under GRID_KEY plus the sampled keys); a key the combination leaves out (no effect
    there, see ``SweepSpec.grid_points``) is absent."""
    merged = {**config.get(GRID_KEY, {}), **{k: v for k, v in config.items() if k != GRID_KEY}}
    return {k: merged[k] for k in keys if k in merged}


# ------------------------------------------------------------------------------------- one trial


def run_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """Tune driver function of one trial: the single-run TorchTrainer for this trial's config, or
    (``context["inline"]``) the same worker function in this process.

    ``config``: the sampled values by dotted key; ``context`` (from :func:`make_trial_context`): the
    base config dict, the swept keys, MLflow parent and tracking URI, the Train storage folder.
    """
    import ray.tune
    import yaml
    from ray.tune.integration.ray_train import TuneReportCallback

    from codetr.config import flatten, to_dict
    from mlflow.tracking import MlflowClient

    from platform import tracking
    from platform.runtime import build_trainer
    from platform.sweep_spec import trial_config
    from platform.sweep_tracking import end_child, open_child_run
    from platform.train import derived_params
    from platform.worker import make_loop_config

    from platform.sweep_spec import SEED_KEY
    from platform.sweep_tracking import CONFIG_ID_TAG, CONFIG_LABEL_TAG, SEED_TAG

    tune_context = ray.tune.get_context()
    trial_id = tune_context.get_trial_id()
    values = trial_values(config, context["keys"])
    config_id, seed = trial_identity(config)
    named = naming_values(config, context["keys"])
    cfg = trial_config(context["base"], named)   # the seed of a repeat is train.seed
    run_name = trial_dirname(trial_id, named)
    cfg.platform.run_name = run_name
    cfg.platform.storage_path = context["train_storage"]
    cfg.platform.experiment_name = context["experiment_name"]
    tracking_uri = context["tracking_uri"]

    identity_tags = {CONFIG_ID_TAG: config_id or trial_id, CONFIG_LABEL_TAG: trial_label(values),
                     SEED_TAG: str(cfg.train.seed)}
    run_id, resumed = open_child_run(tracking_uri, context["experiment_name"], context["parent_run_id"], trial_id,
                                     run_name, trial_label(named), values, context["sweep_name"],
                                     extra_tags={**context.get("source_tags", {}), **identity_tags,
                                                 "mlflow.runName": trial_label(named)})
    cfg_dict = to_dict(cfg)
    params = flatten(cfg_dict)
    params.update(derived_params(cfg, world_size=cfg.platform.num_workers, num_classes=context["num_classes"],
                                 train_images=context["train_images"]))
    tracking.log_params(tracking_uri, run_id, params)
    from platform.datasets_tracking import log_datasets

    log_datasets(tracking_uri, run_id, context.get("datasets", []))
    if not resumed:
        tracking.RunLogger(tracking_uri, run_id).log_text(yaml.safe_dump(cfg_dict, sort_keys=False), "config.yaml")
    print(f"[sweep] trial {trial_label(named)}: MLflow run {run_id} ({'resumed' if resumed else 'new'})", flush=True)

    loop_config = make_loop_config(cfg_dict, tracking_uri=tracking_uri, mlflow_run_id=run_id, sweep_trial=True)
    if context.get("inline"):
        from platform.train_session import TuneTrialSession
        from platform.worker import run_worker

        # Tune stopping this trial (its scheduler) ends run_worker at its next report (SystemExit);
        # the driver's ChildRunStatusCallback then closes the child run
        run_worker(loop_config, TuneTrialSession(use_gpu=cfg.platform.use_gpu))
        end_child(MlflowClient(tracking_uri), run_id, "FINISHED", "finished")
        return
    fitted = threading.Event()
    _exit_when_stopped(fitted)
    build_trainer(cfg, loop_config, run_name, callbacks=[TuneReportCallback()], queue_for_capacity=True).fit()
    # Only a completed run is closed here: a trial that Tune stops (ASHA) or that fails is closed by
    # ChildRunStatusCallback in the sweep driver.
    end_child(MlflowClient(tracking_uri), run_id, "FINISHED", "finished")
    fitted.set()


def _exit_when_stopped(fitted: threading.Event) -> None:
    """When Tune stops this trial (ASHA) while its TorchTrainer still runs, end this process.

    Tune only signals the function's session and drops the trial actor later, so the trial's Train
    controller and workers would go on training, holding their CPUs / GPUs. Exiting the trial actor
    takes its Train controller and workers down with it at once; their placement group outlives
    them (Ray keeps it while the job runs) and is removed by the driver
    (:mod:`platform.sweep_resources`).
    """
    from ray.train._internal.session import get_session

    session = get_session()
    stop_event = getattr(session, "stop_event", None)
    if stop_event is None:
        return

    def watch() -> None:
        stop_event.wait()
        if not fitted.wait(timeout=2.0):
            print("[sweep] trial stopped by Tune: ending its Ray Train run", flush=True)
            os._exit(0)

    threading.Thread(target=watch, name="sweep-trial-stop-watch", daemon=True).start()


def make_trial_context(spec, base_dict: dict, *, tracking_uri: str, parent_run_id: str, num_classes: int | None,
                       train_images: int | None, source_tags: dict[str, str] | None = None,
                       datasets: list | None = None) -> dict[str, Any]:
    """What every trial needs from the driver (``source_tags``: where the sweep came from, computed here
    because trials run in Ray's copy of the repository; ``datasets``: the MLflow dataset descriptions;
    ``inline``: trials train in their Tune trial's process, ``resources``: what each trial reserves)."""
    p = base_dict["platform"]
    resources = {"CPU": p["num_workers"] * p["cpus_per_worker"]}
    if p["use_gpu"]:
        resources["GPU"] = p["num_workers"] * p["gpus_per_worker"]
    return {"base": base_dict, "keys": spec.keys, "tracking_uri": tracking_uri, "parent_run_id": parent_run_id,
            "inline": spec.uses_inline_trials(), "resources": resources,
            "experiment_name": spec.experiment_name, "sweep_name": spec.name,
            "train_storage": f"{spec.storage_path.rstrip('/')}/{spec.name}/{TRAIN_RUNS_DIR}",
            "tune_storage": f"{spec.storage_path.rstrip('/')}/{spec.name}",
            "num_classes": num_classes, "train_images": train_images, "source_tags": dict(source_tags or {}),
            "datasets": list(datasets or [])}


# ------------------------------------------------------------------------------------------ Tune


def trainable(context: dict[str, Any]):
    """The Tune trainable: :func:`run_trial` with the context bound.

    An inline trial reserves its worker's CPUs / GPUs itself. Otherwise the trial's Train workers
    reserve them (the Train controller is a 0-CPU actor) and the driver function only waits, with no
    CPU of its own: Tune refuses an all-zero request, so it asks for 1 byte of memory.
    """
    from ray import tune

    resources = context["resources"] if context.get("inline") else {"CPU": 0, "memory": 1}
    return tune.with_resources(tune.with_parameters(run_trial, context=context), resources)


def _trial_name(keys: list[str], trial) -> str:
    return f"{trial_label(naming_values(trial.config, keys))} ({trial.trial_id})"


def _trial_dirname(keys: list[str], trial) -> str:
    return trial_dirname(trial.trial_id, naming_values(trial.config, keys))


def build_tune_config(spec):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler["type"] == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.scheduler["max_epochs"],
                                  grace_period=spec.scheduler["grace_period"],
                                  reduction_factor=spec.scheduler["reduction_factor"])
    else:
        scheduler = FIFOScheduler()
    search_alg = None
    if spec.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        search_alg = OptunaSearch()
    elif spec.search_alg == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch
        search_alg = HyperOptSearch()
    # inline trials: the next trial reuses an ended trial's process (its imports, its warm caches)
    return tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                           max_concurrent_trials=spec.max_concurrent_trials, scheduler=scheduler,
                           search_alg=search_alg, trial_name_creator=functools.partial(_trial_name, spec.keys),
                           trial_dirname_creator=functools.partial(_trial_dirname, spec.keys),
                           reuse_actors=spec.uses_inline_trials())


def param_space(spec) -> dict[str, Any]:
    """The Tune search space: the grid as one grid_search over its distinct combinations
    (``SweepSpec.grid_points``), the other domains as they are."""
    from ray import tune

    space = {key: domain.to_tune() for key, domain in spec.search_space.items() if domain.kind != "grid"}
    if spec.grid_points():
        space[GRID_KEY] = tune.grid_search(spec.trial_points())
    return space


def build_tuner(spec, context: dict[str, Any], callbacks: list, resume: bool, num_to_keep: int = 2):
    from ray import tune

    path = f"{spec.storage_path.rstrip('/')}/{spec.name}"
    if resume:
        return tune.Tuner.restore(path, trainable=trainable(context), param_space=param_space(spec),
                                  resume_unfinished=True, resume_errored=False, restart_errored=False)
    from platform.console import is_verbose

    # Tune's trial tables are the sweep's progress display: its default level, every result with --verbose
    # checkpoint_config: the checkpoints of inline trials, kept by Tune in their trial folders
    run_config = tune.RunConfig(name=spec.name, storage_path=spec.storage_path, callbacks=callbacks,
                                failure_config=tune.FailureConfig(max_failures=0), verbose=2 if is_verbose() else 1,
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=num_to_keep))
    return tune.Tuner(trainable(context), param_space=param_space(spec), tune_config=build_tune_config(spec),
                      run_config=run_config)


# ----------------------------------------------------------------------------------------- driver


def describe(spec) -> str:
    repeats = f"{len(spec.seeds)} seed(s) {spec.seeds}" if spec.seeds else f"{spec.num_samples} sample(s)"
    lines = [f"sweep {spec.name}: base {spec.base}, metric {spec.metric} ({spec.mode}), "
             f"{spec.num_grid_points()} distinct grid point(s) (of {spec.num_grid_combinations()} combinations) "
             f"x {repeats} = {spec.num_trials()} trial(s), "
             f"max {spec.max_concurrent_trials or 'unlimited'} concurrent, scheduler {spec.scheduler}, "
             f"trials {'in their Tune trial process' if spec.uses_inline_trials() else 'on Ray Train'}",
             f"  storage {spec.storage_path}/{spec.name}, MLflow experiment {spec.experiment_name}"]
    if spec.baseline is not None:
        lines.append(f"  baseline {spec.baseline_id()}: {trial_label(spec.baseline)}")
    for key, d in spec.search_space.items():
        lines.append(f"  {key}: {d.kind} {d.values if d.kind in ('grid', 'choice') else [d.low, d.high]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from platform import console
    from platform.runtime import keep_local_ray_on_loopback

    keep_local_ray_on_loopback()   # before anything imports ray: a local cluster listens on 127.0.0.1 only
    console.set_verbose(args.verbose)
    console.configure_driver()
    import yaml

    from codetr.config import ConfigError, flatten, to_dict
    from platform import tracking
    from platform.datasets_tracking import log_datasets
    from platform.mlflow_model import check_registered_name
    from platform.run_source import source_tags
    from platform.sweep_spec import parse_sweep

    try:
        spec = parse_sweep(args.sweep_file, args.overrides)
        base_cfg = spec.base_config()
        if args.register is not None:
            check_registered_name(args.register)
            if not base_cfg.platform.log_model:
                raise ConfigError("--register needs platform.log_model=true (the model to register)")
    except (ConfigError, ValueError) as e:
        print(f"sweep config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"[sweep] {describe(spec)}", flush=True)
    if args.dry_run:
        configs = spec.configurations()
        sampled = [k for k, d in spec.search_space.items() if d.kind != "grid"]
        times = f"{len(spec.seeds)} seed(s) {spec.seeds}" if spec.seeds else f"{spec.num_samples} sample(s)"
        print(f"[sweep] {len(configs) or 1} grid point(s) x {times}"
              + (f", {', '.join(sampled)} sampled per trial" if sampled else "") + ":")
        baseline = spec.baseline_id()
        for config_id, point in configs:
            print(f"  {config_id:>4}. {trial_label(point)}{'  (baseline)' if config_id == baseline else ''}")
        return EXIT_OK

    sweep_dir = f"{spec.storage_path.rstrip('/')}/{spec.name}"
    local = "://" not in spec.storage_path
    if local and Path(sweep_dir).exists() and not args.resume:
        print(f"sweep {spec.name!r} already exists in {spec.storage_path}: pass --resume to continue it, or "
              f"name=OTHER for a new sweep", file=sys.stderr)
        return EXIT_USAGE
    if args.resume and local and not Path(sweep_dir).exists():
        print(f"--resume: no sweep {spec.name!r} in {spec.storage_path}", file=sys.stderr)
        return EXIT_USAGE

    from platform.train import _prepare_data

    start = time.time()
    num_classes, train_images, datasets = _prepare_data(base_cfg)
    tracking_uri = tracking.resolve_tracking_uri()
    origin = source_tags("platform.sweep", sys.argv[1:] if argv is None else list(argv), config_file=args.sweep_file)
    parent_run_id, resumed = tracking.start_run(
        tracking_uri, spec.experiment_name, spec.name,
        {**origin, "mlflow.runName": spec.name, "sweep.file": spec.source, "sweep.name": spec.name,
         "sweep.keys": ",".join(spec.keys)}, resume=args.resume)
    log_datasets(tracking_uri, parent_run_id, datasets)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    if not resumed:
        sweep_params = {f"sweep.{k}": v for k, v in flatten({k: v for k, v in spec.raw.items()
                                                            if k not in ("search_space", "overrides")}).items()}
        sweep_params.update({f"sweep.search_space.{k}": f"{d.kind} {d.values or [d.low, d.high]}"
                             for k, d in spec.search_space.items()})
        sweep_params.update({f"sweep.overrides.{k}": v for k, v in spec.overrides.items()})
        tracking.log_params(tracking_uri, parent_run_id, sweep_params)
        client.log_text(parent_run_id, yaml.safe_dump(spec.raw, sort_keys=False), "sweep.yaml")
        client.log_text(parent_run_id, yaml.safe_dump(to_dict(base_cfg), sort_keys=False), "base_config.yaml")
    print(f"[sweep] MLflow parent run {parent_run_id} ({'resumed' if resumed else 'new'}) at {tracking_uri}",
          flush=True)

    for name, value in TRIAL_ENV.items():
        os.environ.setdefault(name, value)
    from platform.sweep_resources import ReleaseTrialResources
    from platform.sweep_tracking import ChildRunStatusCallback

    release_callback = ReleaseTrialResources()
    status_callback = ChildRunStatusCallback(
        tracking_uri, experiment_id, parent_run_id,
        spec.scheduler["max_epochs"] if spec.scheduler["type"] == "asha" else None)
    context = make_trial_context(spec, to_dict(base_cfg), tracking_uri=tracking_uri, parent_run_id=parent_run_id,
                                 num_classes=num_classes, train_images=train_images, source_tags=origin,
                                 datasets=datasets)
    import ray

    from platform.runtime import init_ray

    status, code, tune_results, model = "FAILED", EXIT_FAILED, {}, None
    try:
        print(f"[sweep] {init_ray(base_cfg, TRIAL_ENV)}", flush=True)
        callbacks = [status_callback, release_callback]
        tuner = build_tuner(spec, context, callbacks, args.resume, base_cfg.platform.num_to_keep)
        if args.resume:   # the restored run config holds pickled copies of the callbacks: use these
            try:
                tuner._local_tuner.get_run_config().callbacks = callbacks   # noqa: SLF001
            except AttributeError:
                pass
        grid = tuner.fit()
        tune_results = _tune_results(grid)
        errors = grid.num_errors
        # every trial that ended (finished, stopped by ASHA, failed) had its child run closed by now;
        # one still RUNNING belongs to a trial that Tune cut short on Ctrl-C / SIGTERM
        if status_callback.close_leftovers():
            status, code = "KILLED", EXIT_KILLED
            print(f"[sweep] interrupted: continue with  python -m platform.sweep {args.sweep_file} --resume "
                  f"{' '.join(args.overrides)}", flush=True)
        elif errors == len(grid):
            print(f"[sweep] every trial failed ({errors})", file=sys.stderr)
        else:
            status, code = "FINISHED", EXIT_OK
            if errors:
                print(f"[sweep] {errors} of {len(grid)} trial(s) failed (their MLflow runs are FAILED)", flush=True)
    except KeyboardInterrupt:
        status, code = "KILLED", EXIT_KILLED
    except Exception as e:
        print(f"[sweep] failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    finally:
        try:
            status_callback.close_leftovers()
            markdown = _summarize(spec, tracking_uri, experiment_id, parent_run_id, context["base"], tune_results)
            if status == "FINISHED" and base_cfg.platform.log_model:
                try:
                    model = _log_best_model(tracking_uri, parent_run_id, context, tune_results, args.register)
                except Exception as e:   # the sweep's results stand, but it did not deliver its model
                    traceback.print_exc()
                    print(f"[sweep] logging the best trial's model failed: {type(e).__name__}: {e}",
                          file=sys.stderr, flush=True)
                    status, code = "FAILED", EXIT_FAILED
        finally:
            tracking.end_run(tracking_uri, parent_run_id, status)
            if ray.is_initialized():
                ray.shutdown()
    print("\n" + "=" * 72)
    print(f"Sweep {spec.name}: {status} in {(time.time() - start) / 60:.1f} min; results sorted by {spec.metric}:\n")
    print(markdown or "(no trial results)")
    print(f"MLflow parent run {parent_run_id} (experiment {spec.experiment_name}); "
          f"open the UI: {tracking.ui_command(tracking_uri)}")
    print(f"  the sweep: {tracking.ui_url(tracking_uri, experiment_id, parent_run_id)}")
    if model is not None:
        from platform.mlflow_model import serve_command

        print(f"Best trial's MLflow model: {model.model_uri}"
              + (f"  registered as {model.registered_uri}" if model.registered_uri else ""))
        print(f"Serve it: {serve_command(tracking_uri, model.registered_uri or model.model_uri)}")
    print("=" * 72, flush=True)
    return code


def best_trial_checkpoint(child_tags: dict[str, str], context: dict[str, Any],
                          tune_results: dict[str, list[dict]]) -> str | None:
    """The latest checkpoint of a trial: the last one its Train run (or inline trial) reported to Tune,
    else the newest ``checkpoint_*`` folder of its Ray Train run (or Tune trial) in local storage (None
    when there is none)."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
    from platform.sweep_tracking import TRIAL_ID_TAG
    from platform.tracking import RUN_NAME_TAG

    reported = [r[CHECKPOINT_PATH_KEY] for r in tune_results.get(child_tags.get(TRIAL_ID_TAG, ""), [])
                if isinstance(r.get(CHECKPOINT_PATH_KEY), str)]
    if reported:
        return reported[-1]
    for storage in (context["train_storage"], context.get("tune_storage")):
        folder = Path(storage or "") / child_tags.get(RUN_NAME_TAG, "")
        found = sorted(d for d in folder.glob("checkpoint_*") if d.is_dir()) if folder.is_dir() else []
        if found:
            return str(found[-1])
    return None


def _log_best_model(tracking_uri: str, parent_run_id: str, context: dict[str, Any],
                    tune_results: dict[str, list[dict]], register: str | None):
    """Log (and register) the deployable model of the best trial (the parent's ``sweep.best_run_id``):
    the best child run is its source, the parent records it as an output too."""
    from mlflow.tracking import MlflowClient
    from ray.train import Checkpoint

    from platform.train import _log_model

    client = MlflowClient(tracking_uri)
    best_run_id = client.get_run(parent_run_id).data.tags.get("sweep.best_run_id")
    if not best_run_id:
        print("[sweep] no trial has a result: no model to log", flush=True)
        return None
    path = best_trial_checkpoint(client.get_run(best_run_id).data.tags, context, tune_results)
    if path is None:
        raise FileNotFoundError(f"the best trial (MLflow run {best_run_id}) left no checkpoint")
    return _log_model(tracking_uri, best_run_id, Checkpoint(path), register, context["datasets"],
                      output_run_ids=(parent_run_id,), label="[sweep]")


def _tune_results(grid) -> dict[str, list[dict]]:
    """Trial id -> the trial's Tune results (oldest first), for metrics MLflow does not hold. The
    latest checkpoint of an inline trial (kept by Tune) is in its last record, as a Train run's is."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    out = {}
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id")
        frame = result.metrics_dataframe
        if trial_id and frame is not None:
            records = frame.to_dict("records")
            if records and result.checkpoint is not None and not any(
                    isinstance(r.get(CHECKPOINT_PATH_KEY), str) for r in records):
                records[-1][CHECKPOINT_PATH_KEY] = result.checkpoint.path
            out[trial_id] = records
    return out


def _summarize(spec, tracking_uri, experiment_id, parent_run_id, base_dict, tune_results) -> str:
    from codetr.config import to_dict
    from platform.sweep_spec import trial_config
    from platform.sweep_summary import collect_rows, log_summary

    try:
        rows = collect_rows(tracking_uri, experiment_id, parent_run_id, spec.keys, spec.metric, spec.mode,
                            tune_results)
        best = rows[0] if rows and rows[0].metric is not None else None
        stats = None
        if spec.seeds:
            stats, best = repeated_statistics(rows, spec.keys, spec.metric, spec.mode, spec.baseline_id())
        best_config = to_dict(trial_config(base_dict, {**best.values, "train.seed": best.seed}
                                           if best.seed is not None else best.values)) if best else None
        return log_summary(tracking_uri, parent_run_id, rows, spec.keys, spec.metric, best_config,
                           spec.compare_epochs(), spec.mode, stats=stats, best=best)
    except Exception as e:   # the summary must not hide the sweep's own result
        print(f"[sweep] could not write the summary: {type(e).__name__}: {e}", file=sys.stderr)
        return ""


def repeated_statistics(rows, keys: list[str], metric: str, mode: str, baseline_id: str | None):
    """``(statistics, best trial)`` of a repeated sweep: the best trial is the best seed of the
    configuration with the best mean (not the luckiest single trial)."""
    from platform.sweep_comparisons import sweep_statistics

    stats = sweep_statistics(rows, keys, metric, baseline_id)
    ranked = [(iv.mean, cid) for cid, iv in stats.intervals.items() if iv is not None]
    if not ranked:
        return stats, None
    _, best_id = max(ranked) if mode == "max" else min(ranked)
    candidates = [r for r in rows if r.config_id == best_id and r.metric is not None and r.ran_to_the_end]
    pick = max if mode == "max" else min
    return stats, pick(candidates, key=lambda r: r.metric) if candidates else None


if __name__ == "__main__":
    sys.exit(main())
