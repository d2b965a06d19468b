"""MLflow side of a sweep: one parent run per sweep, one child run per trial, truthful end states.

The parent run is created by the sweep driver and carries the tag ``platform.run_name`` = the sweep
name (running the sweep again with ``--resume`` reopens it). Each trial's driver function creates
(or, after a resume, reopens) its child run, tagged ``mlflow.parentRunId`` = parent,
``sweep.trial_id``, ``sweep.values`` (the sampled values as JSON), ``sweep.config_id`` /
``sweep.config`` (its configuration, shared by its repeats) and ``sweep.seed``, and logs the same params and
config artifact as a single run; the Ray Train workers log metrics and artifacts into it by id.

Who ends a child run: the trial function marks it FINISHED (``sweep.end = finished``) when its
TorchTrainer completes (the driver callback then leaves it as it is). Tune
kills the trial function of a trial that ASHA stops or that fails, so :class:`ChildRunStatusCallback`
(a Tune callback in the sweep driver) ends those: KILLED with ``sweep.end = stopped_early`` for an
ASHA stop, FAILED for an error, KILLED with ``sweep.end = interrupted`` for trials still running
when the sweep itself is interrupted.
"""
from __future__ import annotations

import json
import os
from typing import Any

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

PARENT_TAG = "mlflow.parentRunId"
TRIAL_ID_TAG = "sweep.trial_id"
VALUES_TAG = "sweep.values"
SWEEP_TAG = "sweep.name"
END_TAG = "sweep.end"          # finished | max_epochs | stopped_early | failed | interrupted
CONFIG_ID_TAG = "sweep.config_id"   # the trial's configuration (c1, c2, ...: its repeats share it)
CONFIG_LABEL_TAG = "sweep.config"   # the configuration's swept values, readable (no seed)
SEED_TAG = "sweep.seed"             # the trial's train.seed
RUNNING = RunStatus.to_string(RunStatus.RUNNING)


def find_child(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    runs = client.search_runs([experiment_id],
                              filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and "
                                            f"tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    """All child runs of a parent (oldest first)."""
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def open_child_run(tracking_uri: str, experiment_name: str, parent_run_id: str, trial_id: str, run_name: str,
                   label: str, values: dict[str, Any], sweep_name: str,
                   extra_tags: dict[str, str] | None = None) -> tuple[str, bool]:
    """Create the child run of a trial, or reopen it (a resumed sweep). Returns ``(run_id, resumed)``.

    ``extra_tags`` (e.g. the sweep's source tags, :mod:`platform.run_source`) go on the run either way."""
    from platform.tracking import RUN_NAME_TAG, get_or_create_experiment

    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, experiment_name)
    run_id = find_child(client, experiment_id, parent_run_id, trial_id)
    if run_id is not None:
        client.update_run(run_id, status=RUNNING)
        client.set_tag(run_id, END_TAG, "running")
        for key, value in (extra_tags or {}).items():
            client.set_tag(run_id, key, value)
        return run_id, True
    tags = {**(extra_tags or {}), PARENT_TAG: parent_run_id, TRIAL_ID_TAG: trial_id, SWEEP_TAG: sweep_name,
            RUN_NAME_TAG: run_name, VALUES_TAG: json.dumps(values), END_TAG: "running"}
    run = client.create_run(experiment_id, run_name=label, tags=tags)
    return run.info.run_id, False


def end_child(client: MlflowClient, run_id: str, status: str, end: str, note: str | None = None) -> None:
    client.set_tag(run_id, END_TAG, end)
    if note:
        client.set_tag(run_id, "sweep.end_note", note[:5000])
    client.set_terminated(run_id, status=status)


def _tune_callback_base():
    from ray.tune import Callback

    return Callback


class ChildRunStatusCallback(_tune_callback_base()):
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
