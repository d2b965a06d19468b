"""MLflow side of a sweep: one parent run per sweep, one child run per trial, and their tags.

The parent run is created by the sweep driver and carries the tag ``platform.run_name`` = the sweep
name (running the sweep again with ``--resume`` reopens it). Each trial's driver function creates
(or, after a resume, reopens) its child run, tagged ``mlflow.parentRunId`` = parent,
``sweep.trial_id``, ``sweep.values`` (the sampled values as JSON), ``sweep.config_id`` /
``sweep.config`` (its configuration, shared by its repeats) and ``sweep.seed``, and logs the same params and
config artifact as a single run; the Ray Train workers log metrics and artifacts into it by id.

Who ends a child run: the trial function marks it FINISHED (``sweep.end = finished``) when its
training completes; the sweep driver's Tune callback (:mod:`platform.sweep.run_status`) ends the
trials that ASHA stops (KILLED, ``stopped_early``), that fail (FAILED) or that an interrupted sweep
leaves running (KILLED, ``interrupted``). A trial that Tune restarts keeps its run RUNNING
(``sweep.end = restarting``, ``sweep.failures``) and continues it.
"""
from __future__ import annotations

import json
from typing import Any

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from platform.tracking.mlflow_runs import RUN_NAME_TAG, get_or_create_experiment

PARENT_TAG = "mlflow.parentRunId"
TRIAL_ID_TAG = "sweep.trial_id"
VALUES_TAG = "sweep.values"
SWEEP_TAG = "sweep.name"
END_TAG = "sweep.end"          # finished | max_epochs | stopped_early | failed | interrupted
CONFIG_ID_TAG = "sweep.config_id"   # the trial's configuration (c1, c2, ...: its repeats share it)
CONFIG_LABEL_TAG = "sweep.config"   # the configuration's swept values, readable (no seed)
SEED_TAG = "sweep.seed"             # the trial's train.seed
CHECKPOINT_TAG = "sweep.checkpoint"  # the trial's newest checkpoint Tune registered (the driver sets it)
FAILURES_TAG = "sweep.failures"      # how often the trial failed (Tune restarts it up to max_failures)
LAST_FAILURE_TAG = "sweep.last_failure"
PID_TAG, HOST_TAG = "sweep.trial_pid", "sweep.trial_host"   # the process running the trial (inline: training)
INCOMPLETE_TAG = "sweep.incomplete"  # parent: "true" while trials were given up
FAILED_TRIALS_TAG = "sweep.failed_trials"   # parent: the given-up trials' names
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

    ``extra_tags`` (e.g. the sweep's source tags, :mod:`platform.tracking.source`) go on the run either way."""
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
