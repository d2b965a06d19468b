"""One sweep as its driver sees it, in the order it happens.

:class:`SweepSession` is what ``python -m platform.sweep`` does, one named step after the other:

1. :meth:`SweepSession.from_command_line`: the sweep file validated (search space, scheduler, seeds,
   baseline) and its base config, before Ray starts; ``--dry-run`` stops after :meth:`~SweepSession.plan`;
2. :meth:`~SweepSession.check_storage`: a new sweep must not exist yet, a resumed one must;
3. :meth:`~SweepSession.describe_data`: the datasets built once on the driver (as a single run does);
4. :meth:`~SweepSession.open_parent_run`: the MLflow parent run (reopened with ``--resume``), its params
   and the sweep file;
5. :meth:`~SweepSession.run`: the Ray cluster, the Tune ``Tuner`` over the trials
   (:mod:`platform.sweep.trial`), then the summary in the parent run (:mod:`platform.analysis.summary`),
   the best trial's model, the parent run's end;
6. :meth:`~SweepSession.print_summary`.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import ray
import yaml
from mlflow.tracking import MlflowClient
from ray.train import Checkpoint
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from codetr.config import ConfigError, flatten, to_dict
from platform.analysis.comparisons import repeated_statistics
from platform.analysis.rows import collect_rows
from platform.analysis.summary import log_summary
from platform.core.ray_cluster import init_ray
from platform.sweep.naming import trial_label
from platform.sweep.resources import ReleaseTrialResources
from platform.sweep.run_status import ChildRunStatusCallback
from platform.sweep.spec import SweepSpec, parse_sweep, trial_config
from platform.sweep.trial import make_trial_context
from platform.sweep.tuner import build_tuner
from platform.tracking import mlflow_runs
from platform.tracking.datasets import log_datasets
from platform.tracking.model_logging import check_registered_name, serve_command
from platform.tracking.source import source_tags
from platform.tracking.sweep_runs import FAILED_TRIALS_TAG, INCOMPLETE_TAG, TRIAL_ID_TAG, children
from platform.train.records import RunData, describe_data, log_checkpoint_model

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_KILLED = 0, 1, 2, 130
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


class SweepUsageError(Exception):
    """The sweep cannot start as given (sweep file, flags, storage): exit 2, nothing started."""


def describe(spec: SweepSpec) -> str:
    """The sweep in a few lines: base, metric, grid and repeats, scheduler, storage, baseline, search space."""
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


def plan_lines(spec: SweepSpec) -> list[str]:
    """``--dry-run``: the trials the sweep would run, one configuration per line."""
    configs = spec.configurations()
    sampled = [k for k, d in spec.search_space.items() if d.kind != "grid"]
    times = f"{len(spec.seeds)} seed(s) {spec.seeds}" if spec.seeds else f"{spec.num_samples} sample(s)"
    lines = [f"[sweep] {len(configs) or 1} grid point(s) x {times}"
             + (f", {', '.join(sampled)} sampled per trial" if sampled else "") + ":"]
    baseline = spec.baseline_id()
    for config_id, point in configs:
        lines.append(f"  {config_id:>4}. {trial_label(point)}{'  (baseline)' if config_id == baseline else ''}")
    return lines


class SweepSession:
    """The driver of one ``python -m platform.sweep`` (see the module docstring for the steps)."""

    def __init__(self, spec: SweepSpec, *, sweep_file: str, argv: list[str], overrides: list[str], resume: bool,
                 register: str | None, retry_failed: bool = False) -> None:
        self.spec, self.sweep_file, self.argv, self.overrides = spec, sweep_file, list(argv), list(overrides)
        self.resume, self.register, self.retry_failed = resume, register, retry_failed
        self.failed_trials: list[str] = []    # the trials given up (names with trial ids): an incomplete sweep
        self.base_cfg = spec.base_config()
        self.start = time.time()
        self.data = RunData(None, None, [])
        self.tracking_uri = ""
        self.parent_run_id = ""
        self.experiment_id = ""
        self.origin: dict[str, str] = {}
        self.status, self.code = "FAILED", EXIT_FAILED
        self.markdown = ""
        self.model = None

    # ------------------------------------------------------------------------------ 1. sweep file

    @classmethod
    def from_command_line(cls, args: argparse.Namespace, argv: list[str]) -> "SweepSession":
        try:
            spec = parse_sweep(args.sweep_file, args.overrides)
            if getattr(args, "retry_failed", False) and not args.resume:
                raise ConfigError("--retry-failed runs the failed trials of an existing sweep again: add --resume")
            session = cls(spec, sweep_file=args.sweep_file, argv=argv, overrides=args.overrides, resume=args.resume,
                          register=args.register, retry_failed=getattr(args, "retry_failed", False))
            if args.register is not None:
                check_registered_name(args.register)
                if not session.base_cfg.platform.log_model:
                    raise ConfigError("--register needs platform.log_model=true (the model to register)")
        except (ConfigError, ValueError) as e:
            raise SweepUsageError(f"sweep config error: {e}") from e
        return session

    def plan(self) -> list[str]:
        return plan_lines(self.spec)

    # --------------------------------------------------------------------------------- 2. storage

    @property
    def sweep_dir(self) -> str:
        return f"{self.spec.storage_path.rstrip('/')}/{self.spec.name}"

    def check_storage(self) -> None:
        """A new sweep's folder must not exist (``--resume`` continues it); a resumed one must."""
        spec = self.spec
        if "://" in spec.storage_path:
            return
        exists = Path(self.sweep_dir).exists()
        if exists and not self.resume:
            raise SweepUsageError(f"sweep {spec.name!r} already exists in {spec.storage_path}: pass --resume to "
                                  f"continue it, or name=OTHER for a new sweep")
        if self.resume and not exists:
            raise SweepUsageError(f"--resume: no sweep {spec.name!r} in {spec.storage_path}")

    # ------------------------------------------------------------------------------------ 3. data

    def describe_data(self) -> None:
        self.data = describe_data(self.base_cfg)

    # ------------------------------------------------------------------------------ 4. parent run

    def open_parent_run(self) -> None:
        """The sweep's MLflow parent run (reopened with ``--resume``), with its datasets; a new one also
        gets the sweep's params, the sweep file and the base config."""
        spec = self.spec
        self.tracking_uri = mlflow_runs.resolve_tracking_uri()
        self.origin = source_tags("platform.sweep", self.argv, config_file=self.sweep_file)
        self.parent_run_id, resumed = mlflow_runs.start_run(
            self.tracking_uri, spec.experiment_name, spec.name,
            {**self.origin, "mlflow.runName": spec.name, "sweep.file": spec.source, "sweep.name": spec.name,
             "sweep.keys": ",".join(spec.keys)}, resume=self.resume)
        log_datasets(self.tracking_uri, self.parent_run_id, self.data.datasets)
        client = MlflowClient(self.tracking_uri)
        self.experiment_id = client.get_run(self.parent_run_id).info.experiment_id
        if not resumed:
            mlflow_runs.log_params(self.tracking_uri, self.parent_run_id, sweep_params(spec))
            client.log_text(self.parent_run_id, yaml.safe_dump(spec.raw, sort_keys=False), "sweep.yaml")
            client.log_text(self.parent_run_id, yaml.safe_dump(to_dict(self.base_cfg), sort_keys=False),
                            "base_config.yaml")
        print(f"[sweep] MLflow parent run {self.parent_run_id} ({'resumed' if resumed else 'new'}) at "
              f"{self.tracking_uri}", flush=True)

    # ------------------------------------------------------------------------------------- 5. run

    def run(self) -> None:
        """Run the trials on Tune; whatever happens, summarise them into the parent run, log the best
        trial's model (a finished sweep) and end the parent run."""
        for name, value in TRIAL_ENV.items():
            os.environ.setdefault(name, value)
        status_callback = ChildRunStatusCallback(
            self.tracking_uri, self.experiment_id, self.parent_run_id,
            self.spec.scheduler["max_epochs"] if self.spec.scheduler["type"] == "asha" else None)
        context = make_trial_context(self.spec, to_dict(self.base_cfg), tracking_uri=self.tracking_uri,
                                     parent_run_id=self.parent_run_id, data=self.data, source_tags=self.origin)
        tune_results: dict[str, list[dict]] = {}
        try:
            tune_results = self._fit(context, [status_callback, ReleaseTrialResources()], status_callback)
        except KeyboardInterrupt:
            self.status, self.code = "KILLED", EXIT_KILLED
        except Exception as e:
            print(f"[sweep] failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        finally:
            try:
                status_callback.close_leftovers()
                self.markdown = self._summarize(tune_results)
                if self.status == "FINISHED" and self.base_cfg.platform.log_model:
                    self._log_best_model(context, tune_results)
            finally:
                mlflow_runs.end_run(self.tracking_uri, self.parent_run_id, self.status)
                if ray.is_initialized():
                    ray.shutdown()

    def _fit(self, context: dict[str, Any], callbacks: list, status_callback) -> dict[str, list[dict]]:
        print(f"[sweep] {init_ray(self.base_cfg, TRIAL_ENV)}", flush=True)
        tuner = build_tuner(self.spec, context, callbacks, self.resume, self.base_cfg.platform.num_to_keep,
                            retry_failed=self.retry_failed)
        if self.resume:   # the restored run config holds pickled copies of the callbacks: use these
            try:
                tuner._local_tuner.get_run_config().callbacks = callbacks   # noqa: SLF001
            except AttributeError:
                pass
        grid = tuner.fit()
        errors = grid.num_errors
        # every trial that ended (finished, stopped by ASHA, failed) had its child run closed by now;
        # one still RUNNING belongs to a trial that Tune cut short on Ctrl-C / SIGTERM
        if status_callback.close_leftovers():
            self.status, self.code = "KILLED", EXIT_KILLED
            print(f"[sweep] interrupted: continue with  {self.command('--resume')}", flush=True)
            return tune_results_of(grid)
        self.failed_trials = self._given_up()
        self._mark_incomplete()
        if errors == len(grid):
            print(f"[sweep] every trial failed ({errors})", file=sys.stderr)
        elif errors:   # trials given up after max_failures restarts: the sweep did not deliver what it set out to
            print(f"[sweep] {errors} of {len(grid)} trial(s) failed (their MLflow runs are FAILED): the sweep is "
                  f"INCOMPLETE; run them again with  {self.command('--resume', '--retry-failed')}", flush=True)
        else:
            self.status, self.code = "FINISHED", EXIT_OK
        return tune_results_of(grid)

    def command(self, *flags: str) -> str:
        """This sweep's command line with ``flags`` (e.g. ``--resume --retry-failed``), shell-quoted."""
        return shlex.join(["python", "-m", "platform.sweep", self.sweep_file, *self.overrides, *flags])

    def _given_up(self) -> list[str]:
        """The trials whose child run ended FAILED (given up after ``max_failures`` restarts), by name."""
        client = MlflowClient(self.tracking_uri)
        return [f"{run.info.run_name} ({run.data.tags.get(TRIAL_ID_TAG, '?')})"
                for run in children(client, self.experiment_id, self.parent_run_id) if run.info.status == "FAILED"]

    def _mark_incomplete(self) -> None:
        """The parent run says whether trials were given up (tags the MLflow UI shows; the run ends FAILED)."""
        client = MlflowClient(self.tracking_uri)
        client.set_tag(self.parent_run_id, INCOMPLETE_TAG, "true" if self.failed_trials else "false")
        client.set_tag(self.parent_run_id, FAILED_TRIALS_TAG, ", ".join(self.failed_trials)[:5000])
        if self.failed_trials:
            client.set_tag(self.parent_run_id, "sweep.retry_command", self.command("--resume", "--retry-failed"))

    def _summarize(self, tune_results: dict[str, list[dict]]) -> str:
        """The summary tables and plots of the trials, logged to the parent run (Markdown returned)."""
        spec = self.spec
        try:
            rows = collect_rows(self.tracking_uri, self.experiment_id, self.parent_run_id, spec.keys, spec.metric,
                                spec.mode, tune_results)
            best = rows[0] if rows and rows[0].metric is not None else None
            stats = None
            if spec.seeds:
                stats, best = repeated_statistics(rows, spec.keys, spec.metric, spec.mode, spec.baseline_id())
            values = ({**best.values, "train.seed": best.seed} if best.seed is not None else best.values) if best else None
            best_config = to_dict(trial_config(to_dict(self.base_cfg), values)) if best else None
            return log_summary(self.tracking_uri, self.parent_run_id, rows, spec.keys, spec.metric, best_config,
                               spec.compare_epochs(), spec.mode, stats=stats, best=best)
        except Exception as e:   # the summary must not hide the sweep's own result
            print(f"[sweep] could not write the summary: {type(e).__name__}: {e}", file=sys.stderr)
            return ""

    def _log_best_model(self, context: dict[str, Any], tune_results: dict[str, list[dict]]) -> None:
        """Log (and register) the deployable model of the best trial (the parent's ``sweep.best_run_id``):
        the best child run is its source, the parent records it as an output too. A failure fails the
        sweep (it did not deliver its model); its results stand."""
        try:
            client = MlflowClient(self.tracking_uri)
            best_run_id = client.get_run(self.parent_run_id).data.tags.get("sweep.best_run_id")
            if not best_run_id:
                print("[sweep] no trial has a result: no model to log", flush=True)
                return
            path = best_trial_checkpoint(client.get_run(best_run_id).data.tags, context, tune_results)
            if path is None:
                raise FileNotFoundError(f"the best trial (MLflow run {best_run_id}) left no checkpoint")
            self.model = log_checkpoint_model(self.tracking_uri, best_run_id, Checkpoint(path), self.register,
                                              context["data"], output_run_ids=(self.parent_run_id,), label="[sweep]")
        except Exception as e:
            traceback.print_exc()
            print(f"[sweep] logging the best trial's model failed: {type(e).__name__}: {e}", file=sys.stderr,
                  flush=True)
            self.status, self.code = "FAILED", EXIT_FAILED

    # --------------------------------------------------------------------------------- 6. summary

    def print_summary(self) -> None:
        spec = self.spec
        print("\n" + "=" * 72)
        if self.failed_trials:
            print(f"WARNING: sweep {spec.name} is INCOMPLETE: {len(self.failed_trials)} trial(s) failed and were given "
                  f"up after max_failures={spec.max_failures} restart(s): {', '.join(self.failed_trials)}")
            print(f"  run exactly these again (from their latest checkpoints, into their MLflow runs):\n"
                  f"  {self.command('--resume', '--retry-failed')}\n")
        print(f"Sweep {spec.name}: {'INCOMPLETE' if self.failed_trials else self.status} in "
              f"{(time.time() - self.start) / 60:.1f} min; results sorted by {spec.metric}:\n")
        print(self.markdown or "(no trial results)")
        print(f"MLflow parent run {self.parent_run_id} (experiment {spec.experiment_name}); "
              f"open the UI: {mlflow_runs.ui_command(self.tracking_uri)}")
        print(f"  the sweep: {mlflow_runs.ui_url(self.tracking_uri, self.experiment_id, self.parent_run_id)}")
        if self.model is not None:
            print(f"Best trial's MLflow model: {self.model.model_uri}"
                  + (f"  registered as {self.model.registered_uri}" if self.model.registered_uri else ""))
            print(f"Serve it: {serve_command(self.tracking_uri, self.model.registered_uri or self.model.model_uri)}")
        print("=" * 72, flush=True)


def sweep_params(spec: SweepSpec) -> dict[str, Any]:
    """The parent run's params: the sweep file's fields (``sweep.*``), its search space and overrides."""
    params = {f"sweep.{k}": v for k, v in flatten({k: v for k, v in spec.raw.items()
                                                   if k not in ("search_space", "overrides")}).items()}
    params.update({f"sweep.search_space.{k}": f"{d.kind} {d.values or [d.low, d.high]}"
                   for k, d in spec.search_space.items()})
    params.update({f"sweep.overrides.{k}": v for k, v in spec.overrides.items()})
    return params


def best_trial_checkpoint(child_tags: dict[str, str], context: dict[str, Any],
                          tune_results: dict[str, list[dict]]) -> str | None:
    """The latest checkpoint of a trial: the last one its Train run (or inline trial) reported to Tune,
    else the newest ``checkpoint_*`` folder of its Ray Train run (or Tune trial) in local storage (None
    when there is none)."""
    reported = [r[CHECKPOINT_PATH_KEY] for r in tune_results.get(child_tags.get(TRIAL_ID_TAG, ""), [])
                if isinstance(r.get(CHECKPOINT_PATH_KEY), str)]
    if reported:
        return reported[-1]
    for storage in (context["train_storage"], context.get("tune_storage")):
        folder = Path(storage or "") / child_tags.get(mlflow_runs.RUN_NAME_TAG, "")
        found = sorted(d for d in folder.glob("checkpoint_*") if d.is_dir()) if folder.is_dir() else []
        if found:
            return str(found[-1])
    return None


def tune_results_of(grid) -> dict[str, list[dict]]:
    """Trial id -> the trial's Tune results (oldest first), for metrics MLflow does not hold. The
    latest checkpoint of an inline trial (kept by Tune) is in its last record, as a Train run's is."""
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
