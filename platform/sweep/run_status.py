"""The sweep driver's Tune callback that gives every trial's MLflow child run a truthful end state.

The trial function marks its child run FINISHED when its training completes; Tune kills the trial
function of a trial that ASHA stops or that fails, so this callback ends those: KILLED with
``sweep.end = stopped_early`` for an ASHA stop, FAILED for an error (with the traceback as an artifact),
KILLED with ``sweep.end = interrupted`` for trials still running when the sweep itself is interrupted;
``sweep.checkpoint`` names the latest checkpoint Tune holds for the trial (the one a resume starts from)
(:mod:`platform.tracking.sweep_runs` holds the tags and the run lifecycle).
"""
from __future__ import annotations

import os

from mlflow.tracking import MlflowClient
from ray.tune import Callback

from platform.tracking.sweep_runs import RUNNING, children, end_child, find_child


class ChildRunStatusCallback(Callback):
    """Tune callback (sweep driver): close the child runs of stopped, failed and interrupted trials."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_epochs: int | None):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.max_epochs = max_epochs

    def _child(self, trial) -> tuple[MlflowClient, str | None]:
        client = MlflowClient(self.tracking_uri)
        return client, find_child(client, self.experiment_id, self.parent_run_id, trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        client, run_id = self._child(trial)
        if run_id is None or client.get_run(run_id).info.status != RUNNING:
            return   # the trial function closed it: its Train run completed (FINISHED)
        result = trial.last_result or {}
        epoch = result.get("epoch")
        if result.get("finished"):
            end_child(client, run_id, "FINISHED", "finished")
        elif self.max_epochs is not None and epoch is not None and epoch >= self.max_epochs:
            end_child(client, run_id, "FINISHED", "max_epochs", f"stopped at scheduler.max_epochs={self.max_epochs}")
        else:
            end_child(client, run_id, "KILLED", "stopped_early", f"stopped by the scheduler after epoch {epoch}")

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info) -> None:
        # the checkpoint Tune now holds for the trial (a resumed sweep restarts the trial from it)
        client, run_id = self._child(trial)
        if run_id is not None:
            client.set_tag(run_id, "sweep.checkpoint", str(getattr(checkpoint, "path", checkpoint)))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        client, run_id = self._child(trial)
        if run_id is None:
            return
        path = str(getattr(trial, "error_file", "") or "")
        note = path
        if path and os.path.isfile(path):   # the traceback goes with the run; the note is its last line
            client.log_artifact(run_id, path, "error")
            lines = [ln.strip() for ln in open(path, errors="replace").read().splitlines() if ln.strip()]
            if lines:
                note = f"{lines[-1]} (traceback: artifact error/{os.path.basename(path)})"
        end_child(client, run_id, "FAILED", "failed", note)

    def on_experiment_end(self, trials: list, **info) -> None:
        # anything still running here was cut short by an interrupted sweep (Ctrl-C, ray job stop)
        client = MlflowClient(self.tracking_uri)
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR"):
                continue
            run_id = find_child(client, self.experiment_id, self.parent_run_id, trial.trial_id)
            if run_id is not None and client.get_run(run_id).info.status == RUNNING:
                end_child(client, run_id, "KILLED", "interrupted", "the sweep was interrupted; --resume continues it")

    def close_leftovers(self) -> int:
        """Close every child still RUNNING as interrupted (KILLED). Returns how many there were.

        After ``Tuner.fit`` returns, only the trials of an interrupted sweep are left running: Tune
        keeps them resumable and calls no trial callback for them."""
        client = MlflowClient(self.tracking_uri)
        count = 0
        for run in children(client, self.experiment_id, self.parent_run_id):
            if run.info.status == RUNNING:
                end_child(client, run.info.run_id, "KILLED", "interrupted",
                          "the sweep was interrupted; --resume continues it")
                count += 1
        return count
