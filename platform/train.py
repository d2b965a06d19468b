"""One training run on Ray Train with MLflow tracking.

    python -m platform.train [--config experiments/X.yaml] [--resume PATH] [key=value ...]

Default: the tiny Co-DETR on the embedded synthetic dataset (generated on first use), a local
Ray cluster, MLflow's default store ``sqlite:///mlflow.db`` in the working directory. With
``RAY_ADDRESS`` set it joins that cluster instead (so it also works as a ``ray job submit``
entrypoint); with ``MLFLOW_TRACKING_URI`` set it logs there.

Resuming: run again with the same ``platform.run_name=NAME`` to continue from that run's
latest checkpoint (same Ray storage folder, same MLflow run), or pass ``--resume PATH`` (a
checkpoint folder or ``checkpoint.pt``) to start a new run from a checkpoint.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_KILLED = 0, 1, 2, 130


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from platform.runtime import add_config_arguments

    parser = argparse.ArgumentParser(prog="python -m platform.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    add_config_arguments(parser)
    parser.add_argument("--resume", metavar="PATH", help="start from this checkpoint (folder or checkpoint.pt)")
    add_model_arguments(parser)
    return parser.parse_args(argv)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--register NAME`` and ``--verbose`` (shared with ``platform.sweep``)."""
    parser.add_argument("--register", metavar="NAME",
                        help="register the run's deployable MLflow model in the Model Registry under NAME")
    parser.add_argument("--verbose", action="store_true",
                        help="print full tracebacks of errors, and Ray's and MLflow's INFO lines (hidden by "
                             "default: platform/console.py)")


def derived_params(cfg, *, world_size: int, num_classes: int | None, train_images: int | None) -> dict:
    """Values worth comparing across runs that the config does not spell out."""
    from codetr.engine.optim import lr_scaling   # here: the CLI starts without torch

    heads = ["query", *cfg.model.aux_heads]
    scaling = lr_scaling(cfg.train, world_size=world_size, batch_size=cfg.data.batch_size)
    out = {
        "derived.K": len(cfg.model.aux_heads),
        "derived.heads": ",".join(heads),
        "derived.lambda1": cfg.model.lambda1,
        "derived.lambda2": cfg.model.lambda2,
        "derived.num_queries": cfg.model.num_queries,
        "derived.world_size": world_size,
        "derived.global_batch_size": world_size * cfg.data.batch_size,
        "derived.effective_batch": scaling.effective_batch,
        "derived.lr": scaling.lr,
        "derived.num_classes": num_classes,
    }
    if train_images:
        per_worker = train_images // world_size
        out["derived.iters_per_epoch"] = per_worker // cfg.data.batch_size // cfg.train.accumulate_steps
    return out


def _prepare_data(cfg):
    """Build the training set once on the driver: generates the synthetic set (before workers race
    for it) and gives num_classes. Returns ``(num_classes, train_images, datasets)`` (``datasets``:
    the MLflow dataset descriptions of both splits); (num_classes of the config, None, []) when the
    data is not readable here (e.g. it lives only on the worker nodes)."""
    from codetr.data import build_dataset
    from codetr.errors import CodetrError
    from platform.datasets_tracking import describe

    try:
        ds = build_dataset(cfg, "train")
        val_ds = build_dataset(cfg, "val")
    except CodetrError:   # a readable but bad annotation file, images missing with on_bad_image=error
        raise
    except (FileNotFoundError, OSError) as e:
        print(f"[platform] note: the dataset is not readable on the driver ({e}); the workers will load it",
              flush=True)
        return cfg.model.num_classes, None, []
    return ds.num_classes, len(ds), [describe(cfg, "train", ds), describe(cfg, "val", val_ds)]


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def fit_interruptibly(trainer):
    """``trainer.fit()`` in a helper thread, so that Ctrl-C / SIGTERM reach this (main) thread.

    Ray Train installs its own SIGINT handler when ``fit`` runs in the main thread; it aborts the
    run but leaves no trace of *why* the run ended. Here a KeyboardInterrupt propagates to the
    caller, which records the MLflow run as KILLED and shuts Ray down (the controller and the
    workers belong to this driver and stop with it).
    """
    import threading

    outcome: dict = {}

    def target():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:   # re-raised in the main thread
            outcome["error"] = e

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def resume_command(argv: list[str], run_name: str) -> str:
    """The command that continues this run: the same arguments with ``platform.run_name`` pinned."""
    args = [a for a in argv if not a.startswith("platform.run_name=")]
    return " ".join(["python -m platform.train", *args, f"platform.run_name={run_name}"])


def print_summary(status: str, run_name: str, tracking_uri: str, run_id: str, elapsed: float,
                  checkpoint_path: str | None, argv: list[str] | None = None, *, error: str | None = None,
                  traceback_file: str | None = None, spool: str | None = None, model=None,
                  model_later: str | None = None) -> None:
    """The lines a person reads at the end: outcome, metrics, checkpoint, how to continue, where to look.

    A resume command is offered only when there is a checkpoint to resume from; a spool that still
    holds MLflow calls (the tracking server was unreachable) is named with the command that uploads it;
    ``model``: the run's MLflow model (:class:`platform.mlflow_model.LoggedDetector`), with how to serve it;
    ``model_later``: the command that logs it when MLflow was unreachable at the end of the run.
    """
    from mlflow.tracking import MlflowClient

    from platform.spool import upload_command
    from platform.tracking import ui_command, ui_url

    metrics = {}
    experiment_id = None
    if spool is None:
        try:
            run = MlflowClient(tracking_uri).get_run(run_id)
            metrics, experiment_id = run.data.metrics, run.info.experiment_id
        except Exception as e:   # the summary must not hide the training result
            print(f"[platform] could not read the MLflow run back: {str(e).strip().splitlines()[0][:300]}")
    coco = {k: metrics[k] for k in ("coco/AP", "coco/AP50", "coco/AP75", "coco/APs", "coco/APm", "coco/APl")
            if k in metrics}
    print("\n" + "=" * 72)
    print(f"Run {run_name}: {status} in {elapsed / 60:.1f} min")
    if error:
        print(f"Error: {error}")
        if traceback_file:
            print(f"Full traceback: {traceback_file}  (or run again with --verbose)")
    if coco:
        print("Final COCO metrics: " + "  ".join(f"{k.removeprefix('coco/')} {v:.4f}" for k, v in coco.items()))
    if "train/loss" in metrics:
        print(f"Final train/loss: {metrics['train/loss']:.4f}")
    if checkpoint_path:
        print(f"Latest checkpoint: {checkpoint_path}")
        if status != "FINISHED":
            print(f"Continue from the latest checkpoint: {resume_command(argv or [], run_name)}")
    elif status != "FINISHED":
        print("No checkpoint was written: running the same command again starts over")
    if spool:
        print(f"MLflow was unreachable: its calls wait in the spool {spool}")
        print(f"Upload them once the server is back: {upload_command(spool, tracking_uri)}")
    if model_later:
        print(f"The model was not logged (MLflow unreachable); then log it: {model_later}")
    print(f"MLflow run id: {run_id}  (experiment {experiment_id}, tracking URI {tracking_uri})")
    if model is not None:
        from platform.mlflow_model import serve_command

        print(f"MLflow model:  {model.model_uri}" + (f"  registered as {model.registered_uri}"
                                                      if model.registered_uri else ""))
        print(f"Serve it:      {serve_command(tracking_uri, model.registered_uri or model.model_uri)}")
    print(f"Open the UI:   {ui_command(tracking_uri)}")
    if experiment_id is not None:
        print(f"  {'then browse' if not tracking_uri.startswith('http') else 'the run:'} "
              f"{ui_url(tracking_uri, experiment_id, run_id)}")
    print("=" * 72, flush=True)


# the driver's own MLflow requests: a few quick retries, not MLflow's default of minutes per call
DRIVER_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from platform import console
    from platform.runtime import keep_local_ray_on_loopback

    keep_local_ray_on_loopback()
    for key, value in DRIVER_HTTP_ENV.items():
        os.environ.setdefault(key, value)
    console.set_verbose(args.verbose)
    console.configure_driver()
    import yaml

    from codetr.config import ConfigError, flatten, to_dict
    from codetr.engine.optim import lr_scaling
    from codetr.errors import CodetrError
    from platform import tracking
    from platform.checkpoints import latest_checkpoint
    from platform.datasets_tracking import log_datasets
    from platform.failures import describe_failure, first_line, write_traceback
    from platform.mlflow_model import check_registered_name
    from platform.run_source import source_tags
    from platform.runs import RESUME_COMMAND, driver_tags
    from platform.runtime import build_trainer, check_run_name, default_run_name, init_ray, load_run_config
    from platform.spool import Spool, is_transient, spool_dir
    from platform.worker import make_loop_config

    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = load_run_config(args.config, args.overrides)
        resume_same_name = cfg.platform.run_name is not None
        cfg.platform.run_name = check_run_name(cfg.platform.run_name or default_run_name(cfg))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.register is not None:
        try:
            check_registered_name(args.register)
        except ValueError as e:
            print(str(e), file=sys.stderr)
            return EXIT_USAGE
        if not cfg.platform.log_model:
            print("--register needs platform.log_model=true (the model to register)", file=sys.stderr)
            return EXIT_USAGE
    resume_from = str(Path(args.resume).resolve()) if args.resume else None
    if resume_from and not Path(resume_from).exists():
        print(f"--resume: no checkpoint at {resume_from}", file=sys.stderr)
        return EXIT_USAGE

    run_name = cfg.platform.run_name
    start = time.time()
    print(f"[platform] run {run_name}: config {args.config}, {cfg.platform.num_workers} worker(s), "
          f"{'GPU' if cfg.platform.use_gpu else 'CPU'}, storage {cfg.platform.storage_path}", flush=True)
    try:
        num_classes, train_images, datasets = _prepare_data(cfg)
    except CodetrError as e:   # a bad annotation file, config / data mismatch: one line, before any run exists
        if args.verbose:
            traceback.print_exc()
        print(f"data error: {e}", file=sys.stderr)
        return EXIT_USAGE

    tracking_uri = tracking.resolve_tracking_uri()
    if os.environ.get("RAY_ADDRESS") and not tracking_uri.startswith(("http://", "https://", "databricks")):
        print(f"[platform] note: MLflow logs to {tracking_uri}; workers on other nodes need a tracking server "
              "(MLFLOW_TRACKING_URI=http://HOST:5000)", flush=True)
    tags = {**source_tags("platform.train", list(argv), config_file=args.config), "mlflow.runName": run_name,
            RESUME_COMMAND: resume_command(argv, run_name), **driver_tags()}
    if resume_from:
        tags["platform.resumed_from"] = resume_from
    try:
        before = _reopened_run_state(tracking, tracking_uri, cfg, run_name) if resume_same_name else None
        run_id, resumed = tracking.start_run(tracking_uri, cfg.platform.experiment_name, run_name, tags,
                                             resume=resume_same_name)
    except _DriverAlive as e:
        print(f"[platform] {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:   # the tracking store is unreachable: nothing has started yet
        if args.verbose:
            traceback.print_exc()
        print(f"[platform] cannot start the MLflow run at {tracking_uri}: {first_line(e)}", file=sys.stderr)
        return EXIT_FAILED
    # from here on the MLflow run exists: every way out ends it FINISHED, FAILED or KILLED
    status, code, checkpoint_path, model = "FAILED", EXIT_FAILED, None, None
    error_line = traceback_file = model_later = None
    checkpoint_before = latest_checkpoint(cfg.platform.storage_path, run_name)
    folder = spool_dir(cfg.platform.storage_path, run_name, run_id)
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    import ray

    try:
        cfg_dict = to_dict(cfg)
        params = flatten(cfg_dict)
        params.update(derived_params(cfg, world_size=cfg.platform.num_workers, num_classes=num_classes,
                                     train_images=train_images))
        tracking.log_params(tracking_uri, run_id, params)
        batch_note = lr_scaling(cfg.train, world_size=cfg.platform.num_workers, batch_size=cfg.data.batch_size).note()
        if batch_note:
            print(f"[platform] {batch_note}", flush=True)
        tracking.RunLogger(tracking_uri, run_id).log_text(yaml.safe_dump(cfg_dict, sort_keys=False), "config.yaml")
        log_datasets(tracking_uri, run_id, datasets)
        print(f"[platform] MLflow run {run_id} ({'resumed' if resumed else 'new'}) at {tracking_uri}", flush=True)
        print(f"[platform] {init_ray(cfg)}", flush=True)
        loop_config = make_loop_config(cfg_dict, tracking_uri=tracking_uri, mlflow_run_id=run_id,
                                       resume_from=resume_from)
        result = fit_interruptibly(build_trainer(cfg, loop_config, run_name))
        checkpoint_path = result.checkpoint.path if result.checkpoint else None
        status, code = "FINISHED", EXIT_OK
        if cfg.platform.log_model and result.checkpoint is not None:
            try:
                model = _log_model(tracking_uri, run_id, result.checkpoint, args.register, datasets)
            except Exception as e:   # the training result stands, but the run did not deliver its model
                if args.verbose:
                    traceback.print_exc()
                if is_transient(e) or Spool(folder).pending():   # MLflow is away: the run still finished
                    model_later = (f"python -m platform.runs log-model {run_id} {checkpoint_path} --tracking-uri "
                                   f"{tracking_uri}" + (f" --register {args.register}" if args.register else ""))
                    print(f"[platform] MLflow unreachable: the model is not logged ({first_line(e)})",
                          file=sys.stderr, flush=True)
                else:
                    error_line = f"logging the model failed: {type(e).__name__}: {first_line(e)}"
                    if "://" not in cfg.platform.storage_path:
                        path = write_traceback(e, Path(cfg.platform.storage_path) / run_name)
                        traceback_file = str(path) if path else None
                    print(f"[platform] {error_line}", file=sys.stderr, flush=True)
                    status, code = "FAILED", EXIT_FAILED
    except KeyboardInterrupt:
        status, code = "KILLED", EXIT_KILLED
        print("\n[platform] interrupted: stopping the workers, the MLflow run ends KILLED", flush=True)
    except Exception as e:   # Ray's TrainingFailedError (it carries the workers' tracebacks) and driver errors
        p = cfg.platform
        resources = {"CPU": p.cpus_per_worker, **({"GPU": p.gpus_per_worker} if p.use_gpu else {})}
        error_line = describe_failure(e, num_workers=p.num_workers, resources_per_worker=resources,
                                      resource_wait_s=p.resource_wait_s)
        if args.verbose:
            traceback.print_exc()
        local_storage = "://" not in p.storage_path
        path = write_traceback(e, Path(p.storage_path) / run_name) if local_storage else None
        traceback_file = str(path) if path else None
        print(f"[platform] training failed: {error_line}", file=sys.stderr, flush=True)
    finally:
        try:
            latest = latest_checkpoint(cfg.platform.storage_path, run_name)
            checkpoint_path = checkpoint_path or latest or (resume_from if status != "FINISHED" else None)
            # a resume that failed before its first checkpoint leaves the run's recorded end as it was
            restore = before if status == "FAILED" and latest == checkpoint_before else None
            _end_mlflow_run(tracking_uri, run_id, status, folder, restore, error_line)
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
            if ray.is_initialized():
                ray.shutdown()
    pending = Spool(folder).pending()
    print_summary(status, run_name, tracking_uri, run_id, time.time() - start, checkpoint_path, argv,
                  error=error_line, traceback_file=traceback_file, spool=str(folder) if pending else None,
                  model=model, model_later=model_later)
    return code


def _log_model(tracking_uri: str, run_id: str, checkpoint, register: str | None, datasets: list, *,
               output_run_ids: tuple[str, ...] = (), label: str = "[platform]"):
    """Log (and register) the deployable model of a Ray Train checkpoint; prints what it did."""
    from platform.mlflow_model import log_deployable_model

    val = next((d for d in datasets if d.split == "val"), None)
    print(f"{label} logging the deployable model of {checkpoint.path} to MLflow", flush=True)
    with checkpoint.as_directory() as folder:
        model = log_deployable_model(tracking_uri, run_id, folder, register=register, val_dataset=val,
                                     checkpoint_uri=checkpoint.path, output_run_ids=output_run_ids)
    print(f"{label} MLflow model {model.model_uri}"
          + (f", registered as {model.registered_uri}" if model.registered_uri else ""), flush=True)
    return model


def _end_mlflow_run(tracking_uri: str, run_id: str, status: str, spool_folder, restore, error_line) -> None:
    """End the MLflow run ``status`` (or in its spool while the store is away); with ``restore`` (the
    ``(status, end_time)`` the run had before this failed resume) put that back instead."""
    from mlflow.tracking import MlflowClient

    from platform.failures import restore_end_state
    from platform.spool import Spool, end_run_or_spool, is_transient

    if restore is not None and Spool(spool_folder).pending() == 0:
        try:
            restored = restore_end_state(MlflowClient(tracking_uri), run_id, *restore, error_line or status)
            print(f"[platform] the resume failed before any checkpoint: MLflow run {run_id} keeps its recorded "
                  f"state ({restored})", flush=True)
            return
        except Exception as e:
            if not is_transient(e):
                raise
    end_run_or_spool(tracking_uri, run_id, status, spool_folder)


class _DriverAlive(Exception):
    """The run to resume is still being trained by a live driver on this host."""


def _reopened_run_state(tracking, tracking_uri: str, cfg, run_name: str) -> tuple[str, int | None] | None:
    """The recorded ``(status, end_time)`` of the MLflow run a same-name start reopens (None: a new run).

    Refuses (``_DriverAlive``) when that run is RUNNING and its driver is still alive here."""
    from mlflow.tracking import MlflowClient

    from platform.failures import previous_end_state
    from platform.runs import DRIVER_PID, driver_state

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(cfg.platform.experiment_name)
    run_id = tracking.find_run(client, experiment.experiment_id, run_name) if experiment else None
    if run_id is None:
        return None
    run = client.get_run(run_id)
    if run.info.status == "RUNNING" and driver_state(run.data.tags) == "alive":
        raise _DriverAlive(f"run {run_name} is being trained by pid {run.data.tags[DRIVER_PID]} on this host; "
                           "stop it first (two drivers would write the same checkpoints)")
    return previous_end_state(client, run_id)


if __name__ == "__main__":
    sys.exit(main())
