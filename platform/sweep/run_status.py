"""The sweep driver's Tune callback that gives every trial's MLflow child run a truthful end state.

The trial function marks its child run FINISHED when its training completes; Tune kills the trial
function of a trial that ASHA stops or that fails, so this callback ends those: KILLED with
``sweep.end = stopped_early`` for an ASHA stop, FAILED for an error (with the traceback as an artifact),
KILLED with ``sweep.end = interrupted`` for trials still running when the sweep itself is interrupted
(:mod:`platform.tracking.sweep_runs` holds the tags and the run lifecycle).

A trial that Tune restarts (its process, worker or node lost, or an error, within the sweep's
``max_failures``) keeps its run RUNNING: ``sweep.end = restarting``, ``sweep.failures`` counts the
failures and ``sweep.last_failure`` says what happened. Every checkpoint Tune registers for a trial
is named in its run (``sweep.checkpoint``): what a restart or a ``--resume`` continues from.
"""
from __future__ import annotations

import os

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from platform.tracking.sweep_runs import (CHECKPOINT_TAG, END_TAG, FAILURES_TAG, LAST_FAILURE_TAG, RUNNING, children,
                                          end_child, find_child)


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

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        client, run_id = self._child(trial)
        if run_id is None:
            return
        client.set_tag(run_id, FAILURES_TAG, str(trial.num_failures))
        end_child(client, run_id, "FAILED", "failed", self._error_note(client, run_id, trial))

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        """Tune restarts the trial (from its latest checkpoint): its run stays RUNNING, the failure noted."""
        try:
            client, run_id = self._child(trial)
            if run_id is None:
                return
            tags = {END_TAG: "restarting", FAILURES_TAG: str(trial.num_failures),
                    LAST_FAILURE_TAG: self._error_note(client, run_id, trial, upload=False)[:5000]}
            client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        except Exception as e:   # a note for people: MLflow away must not stop the sweep's restarts
            print(f"[sweep] could not note the restart of trial {trial.trial_id} in MLflow: {e}", flush=True)

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info) -> None:
        """Name the trial's newest checkpoint in its run (where a restart or ``--resume`` continues)."""
        try:
            client, run_id = self._child(trial)
            if run_id is not None:
                client.set_tag(run_id, CHECKPOINT_TAG, str(getattr(checkpoint, "path", checkpoint)))
        except Exception as e:
            print(f"[sweep] could not name the checkpoint of trial {trial.trial_id} in MLflow: {e}", flush=True)

    @staticmethod
    def _error_note(client: MlflowClient, run_id: str, trial, upload: bool = True) -> str:
        """The last line of the trial's error (its traceback uploaded to the run as ``error/``)."""
        path = str(getattr(trial, "error_file", "") or "")
        note = path or str(getattr(trial, "error_msg", "") or "")
        if path and os.path.isfile(path):   # the traceback goes with the run; the note is its last line
            if upload:
                client.log_artifact(run_id, path, "error")
            lines = [ln.strip() for ln in open(path, errors="replace").read().splitlines() if ln.strip()]
            if lines:
                note = lines[-1] + (f" (traceback: artifact error/{os.path.basename(path)})" if upload else "")
        return note

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
