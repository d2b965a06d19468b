"""One training run as the driver sees it, in the order it happens.

:class:`RunSession` is what ``python -m platform.train`` does, one named step after the other:

1. :meth:`RunSession.from_command_line`: the config (file, overrides, absolute paths), the run name,
   ``--register`` and ``--resume`` checked before anything starts;
2. :meth:`~RunSession.describe_data`: the datasets built once on the driver (the synthetic set is
   generated here), their MLflow descriptions;
3. :meth:`~RunSession.open_mlflow_run`: a new MLflow run, or the one of the same run name reopened
   (refused while its driver still runs);
4. :meth:`~RunSession.train`: params, config and datasets logged; the local Ray cluster started (or
   ``RAY_ADDRESS`` joined); the ``TorchTrainer`` fitted; the deployable model logged; whatever happens,
   the MLflow run ends FINISHED, FAILED or KILLED (or its end waits in the spool while MLflow is away);
5. :meth:`~RunSession.print_summary`: outcome, metrics, checkpoint, how to continue, where to look.

A sweep's trials reuse the same records (:mod:`platform.train.records`) and trainer
(:mod:`platform.train.trainer`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient

from codetr.config import Config, ConfigError, to_dict
from codetr.engine.optim import lr_scaling
from codetr.errors import CodetrError
from platform.core.checkpoints import latest_checkpoint
from platform.core.config_files import check_run_name, default_run_name, load_run_config
from platform.core.ray_cluster import init_ray
from platform.tracking import mlflow_runs
from platform.tracking.driver_tags import DRIVER_PID, RESUME_COMMAND, driver_state, driver_tags
from platform.tracking.model_logging import check_registered_name
from platform.tracking.source import source_tags
from platform.tracking.spool import Spool, end_run_or_spool, is_transient, spool_dir
from platform.train.failures import (describe_failure, first_line, previous_end_state, restore_end_state,
                                     write_traceback)
from platform.train.process_cpu import CpuSampler, breakdown_line
from platform.train.records import RunData, describe_data, log_checkpoint_model, log_run_inputs
from platform.train.summary import print_summary, resume_command
from platform.train.trainer import build_trainer, fit_interruptibly
from platform.train.worker import make_loop_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_KILLED = 0, 1, 2, 130


class UsageError(Exception):
    """The command cannot start as given (config, data, run name, flags): exit 2, nothing started."""


class TrackingUnavailable(Exception):
    """The MLflow store cannot be reached before the run exists: exit 1, nothing started."""


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Outcome:
    """How the training step ended (what the summary and the exit code say)."""
    status: str = "FAILED"            # FINISHED, FAILED or KILLED
    code: int = EXIT_FAILED
    checkpoint_path: str | None = None
    model: object = None              # the LoggedDetector of the run's model
    error_line: str | None = None
    traceback_file: str | None = None
    model_later: str | None = None    # the command that logs the model once MLflow is back


class RunSession:
    """The driver of one ``python -m platform.train`` run (see the module docstring for the steps)."""

    def __init__(self, cfg: Config, *, config_name: str, argv: list[str], register: str | None,
                 resume_from: str | None, reopen: bool, verbose: bool = False) -> None:
        self.cfg, self.config_name, self.argv = cfg, config_name, list(argv)
        self.register, self.resume_from, self.reopen, self.verbose = register, resume_from, reopen, verbose
        self.run_name = cfg.platform.run_name
        self.start = time.time()
        self.data = RunData(cfg.model.num_classes, None, [])
        self.tracking_uri = ""
        self.run_id = ""
        self.resumed = False
        self.previous_end: tuple[str, int | None] | None = None
        self.outcome = Outcome()
        self.step_s: dict[str, float] = {}           # wall seconds of each driver step (run/time/<step>_s)
        self.cpu_s: dict[str, float] = {}            # CPU seconds by process group while training (run/cpu_s/*)

    @contextlib.contextmanager
    def timed(self, step: str):
        """Record the wall time of one driver step (summed when a step runs more than once)."""
        started = time.time()
        try:
            yield
        finally:
            self.step_s[step] = self.step_s.get(step, 0.0) + time.time() - started

    # ------------------------------------------------------------------------------- 1. command line

    @classmethod
    def from_command_line(cls, args: argparse.Namespace, argv: list[str]) -> "RunSession":
        """The run's config and flags, checked: raises :class:`UsageError` naming what is wrong."""
        try:
            cfg = load_run_config(args.config, args.overrides)
            reopen = cfg.platform.run_name is not None   # the same run name again continues that run
            cfg.platform.run_name = check_run_name(cfg.platform.run_name or default_run_name(cfg))
        except ConfigError as e:
            raise UsageError(f"config error: {e}") from e
        if args.register is not None:
            try:
                check_registered_name(args.register)
            except ValueError as e:
                raise UsageError(str(e)) from e
            if not cfg.platform.log_model:
                raise UsageError("--register needs platform.log_model=true (the model to register)")
        resume_from = str(Path(args.resume).resolve()) if args.resume else None
        if resume_from and not Path(resume_from).exists():
            raise UsageError(f"--resume: no checkpoint at {resume_from}")
        return cls(cfg, config_name=args.config, argv=argv, register=args.register, resume_from=resume_from,
                   reopen=reopen, verbose=args.verbose)

    def announce(self) -> None:
        p = self.cfg.platform
        print(f"[platform] run {self.run_name}: config {self.config_name}, {p.num_workers} worker(s), "
              f"{'GPU' if p.use_gpu else 'CPU'}, storage {p.storage_path}", flush=True)

    # ------------------------------------------------------------------------------------- 2. data

    def describe_data(self) -> None:
        """Build the datasets on the driver (:func:`platform.train.records.describe_data`); a bad
        annotation file or a config / data mismatch is a :class:`UsageError`, before any run exists."""
        try:
            with self.timed("data"):
                self.data = describe_data(self.cfg)
        except CodetrError as e:
            if self.verbose:
                traceback.print_exc()
            raise UsageError(f"data error: {e}") from e

    # ------------------------------------------------------------------------------- 3. MLflow run

    def open_mlflow_run(self) -> None:
        """Create the MLflow run, or reopen the one of the same run name (then its recorded end is kept
        to put back if this resume fails before its first checkpoint)."""
        self.tracking_uri = mlflow_runs.resolve_tracking_uri()
        if os.environ.get("RAY_ADDRESS") and not self.tracking_uri.startswith(("http://", "https://", "databricks")):
            print(f"[platform] note: MLflow logs to {self.tracking_uri}; workers on other nodes need a tracking "
                  "server (MLFLOW_TRACKING_URI=http://HOST:5000)", flush=True)
        tags = {**source_tags("platform.train", self.argv, config_file=self.config_name),
                "mlflow.runName": self.run_name, RESUME_COMMAND: resume_command(self.argv, self.run_name),
                **driver_tags()}
        if self.resume_from:
            tags["platform.resumed_from"] = self.resume_from
        try:
            self.previous_end = self._reopened_run_state() if self.reopen else None
            self.run_id, self.resumed = mlflow_runs.start_run(self.tracking_uri, self.cfg.platform.experiment_name,
                                                              self.run_name, tags, resume=self.reopen)
        except UsageError:
            raise
        except Exception as e:   # the tracking store is unreachable: nothing has started yet
            if self.verbose:
                traceback.print_exc()
            raise TrackingUnavailable(f"cannot start the MLflow run at {self.tracking_uri}: {first_line(e)}") from e

    def _reopened_run_state(self) -> tuple[str, int | None] | None:
        """The recorded ``(status, end_time)`` of the run a same-name start reopens (None: a new run).
        Refuses (:class:`UsageError`) when that run is RUNNING and its driver is still alive here."""
        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(self.cfg.platform.experiment_name)
        run_id = mlflow_runs.find_run(client, experiment.experiment_id, self.run_name) if experiment else None
        if run_id is None:
            return None
        run = client.get_run(run_id)
        if run.info.status == "RUNNING" and driver_state(run.data.tags) == "alive":
            raise UsageError(f"[platform] run {self.run_name} is being trained by pid {run.data.tags[DRIVER_PID]} on "
                             "this host; stop it first (two drivers would write the same checkpoints)")
        return previous_end_state(client, run_id)

    @property
    def spool_folder(self) -> Path:
        return spool_dir(self.cfg.platform.storage_path, self.run_name, self.run_id)

    # ----------------------------------------------------------------------------------- 4. train

    def train(self) -> Outcome:
        """Log the run's inputs, fit the trainer on Ray, log the model. From here on the MLflow run
        exists: every way out ends it FINISHED, FAILED or KILLED, and shuts down the Ray this started."""
        checkpoint_before = latest_checkpoint(self.cfg.platform.storage_path, self.run_name)
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            with self.timed("mlflow"):
                log_run_inputs(self.tracking_uri, self.run_id, self.cfg, self.data)
            batch_note = lr_scaling(self.cfg.train, world_size=self.cfg.platform.num_workers,
                                    batch_size=self.cfg.data.batch_size).note()
            if batch_note:   # the effective batch differs from the recipe's: what was done about the lr
                print(f"[platform] {batch_note}", flush=True)
            print(f"[platform] MLflow run {self.run_id} ({'resumed' if self.resumed else 'new'}) at "
                  f"{self.tracking_uri}", flush=True)
            with self.timed("ray_start"):
                print(f"[platform] {init_ray(self.cfg)}", flush=True)
            result = self._fit()
            self.outcome.checkpoint_path = result.checkpoint.path if result.checkpoint else None
            self.outcome.status, self.outcome.code = "FINISHED", EXIT_OK
            if self.cfg.platform.log_model and result.checkpoint is not None:
                with self.timed("log_model"):
                    self._log_model(result.checkpoint)
        except KeyboardInterrupt:
            self.outcome.status, self.outcome.code = "KILLED", EXIT_KILLED
            print("\n[platform] interrupted: stopping the workers, the MLflow run ends KILLED", flush=True)
        except Exception as e:   # Ray's TrainingFailedError (it carries the workers' tracebacks) and driver errors
            self._record_failure(e)
        finally:
            try:
                self._log_run_costs()
                self._end_mlflow_run(checkpoint_before)
            finally:
                signal.signal(signal.SIGTERM, previous_sigterm)
                if ray.is_initialized():
                    ray.shutdown()
        return self.outcome

    def _fit(self):
        """Fit the run's ``TorchTrainer``, measuring the CPU seconds of every process of the run meanwhile
        (:mod:`platform.train.process_cpu`)."""
        loop_config = make_loop_config(to_dict(self.cfg), tracking_uri=self.tracking_uri, mlflow_run_id=self.run_id,
                                       resume_from=self.resume_from)
        sampler = CpuSampler()
        try:
            with sampler, self.timed("fit"):
                return fit_interruptibly(build_trainer(self.cfg, loop_config, self.run_name))
        finally:
            self.cpu_s = sampler.breakdown()

    def _log_run_costs(self) -> None:
        """The driver's step times and the run's CPU seconds by process group, as metrics of the run
        (best effort: they must not change how the run ends)."""
        if not self.run_id or Spool(self.spool_folder).pending():   # MLflow is away: not worth a wait
            return
        metrics = {f"run/time/{step}_s": seconds for step, seconds in self.step_s.items()}
        metrics.update({f"run/cpu_s/{group}": seconds for group, seconds in self.cpu_s.items()})
        try:
            mlflow_runs.RunLogger(self.tracking_uri, self.run_id).log_metrics(metrics, step=0)
        except Exception as e:
            print(f"[platform] note: the run's time and CPU figures were not logged ({first_line(e)})", flush=True)

    def _log_model(self, checkpoint) -> None:
        """The deployable model of the final checkpoint; MLflow being away leaves the run FINISHED with the
        command that logs the model later, any other failure fails the run (it did not deliver its model)."""
        try:
            self.outcome.model = log_checkpoint_model(self.tracking_uri, self.run_id, checkpoint, self.register,
                                                      self.data)
        except Exception as e:
            if self.verbose:
                traceback.print_exc()
            if is_transient(e) or Spool(self.spool_folder).pending():
                self.outcome.model_later = (f"python -m platform.runs log-model {self.run_id} "
                                            f"{self.outcome.checkpoint_path} --tracking-uri {self.tracking_uri}"
                                            + (f" --register {self.register}" if self.register else ""))
                print(f"[platform] MLflow unreachable: the model is not logged ({first_line(e)})", file=sys.stderr,
                      flush=True)
                return
            self.outcome.error_line = f"logging the model failed: {type(e).__name__}: {first_line(e)}"
            self._write_traceback(e)
            print(f"[platform] {self.outcome.error_line}", file=sys.stderr, flush=True)
            self.outcome.status, self.outcome.code = "FAILED", EXIT_FAILED

    def _record_failure(self, error: BaseException) -> None:
        p = self.cfg.platform
        resources = {"CPU": p.cpus_per_worker, **({"GPU": p.gpus_per_worker} if p.use_gpu else {})}
        self.outcome.error_line = describe_failure(error, num_workers=p.num_workers, resources_per_worker=resources,
                                                   resource_wait_s=p.resource_wait_s)
        if self.verbose:
            traceback.print_exc()
        self._write_traceback(error)
        print(f"[platform] training failed: {self.outcome.error_line}", file=sys.stderr, flush=True)

    def _write_traceback(self, error: BaseException) -> None:
        if "://" not in self.cfg.platform.storage_path:
            path = write_traceback(error, Path(self.cfg.platform.storage_path) / self.run_name)
            self.outcome.traceback_file = str(path) if path else None

    def _end_mlflow_run(self, checkpoint_before: str | None) -> None:
        """End the MLflow run with the outcome (or in its spool while the store is away). A resume that
        failed before its first checkpoint puts back the end the run had recorded before it."""
        latest = latest_checkpoint(self.cfg.platform.storage_path, self.run_name)
        out = self.outcome
        out.checkpoint_path = out.checkpoint_path or latest or (self.resume_from if out.status != "FINISHED" else None)
        restore = self.previous_end if out.status == "FAILED" and latest == checkpoint_before else None
        if restore is not None and Spool(self.spool_folder).pending() == 0:
            try:
                restored = restore_end_state(MlflowClient(self.tracking_uri), self.run_id, *restore,
                                             out.error_line or out.status)
                print(f"[platform] the resume failed before any checkpoint: MLflow run {self.run_id} keeps its "
                      f"recorded state ({restored})", flush=True)
                return
            except Exception as e:
                if not is_transient(e):
                    raise
        end_run_or_spool(self.tracking_uri, self.run_id, out.status, self.spool_folder)

    # --------------------------------------------------------------------------------- 5. summary

    def print_summary(self) -> None:
        if self.cpu_s:
            print(f"[platform] {breakdown_line(self.cpu_s, self.step_s.get('fit', 0.0))} (while training)", flush=True)
        out = self.outcome
        pending = Spool(self.spool_folder).pending()
        print_summary(out.status, self.run_name, self.tracking_uri, self.run_id, time.time() - self.start,
                      out.checkpoint_path, self.argv, error=out.error_line, traceback_file=out.traceback_file,
                      spool=str(self.spool_folder) if pending else None, model=out.model, model_later=out.model_later)
