"""Runs whose driver is gone: find them, say how to resume them, close them (``python -m platform.runs``)."""
from __future__ import annotations

import datetime

from mlflow.exceptions import MlflowException

from platform.core.checkpoints import latest_checkpoint
from platform.tracking.driver_tags import DRIVER_HOST, DRIVER_PID, END_REASON, RESUME_COMMAND
from platform.tracking.mlflow_runs import RUN_NAME_TAG


def running_runs(client) -> list:
    """RUNNING runs of every active experiment, newest first."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    return client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'",
                              order_by=["attributes.start_time DESC"], max_results=1000)


def find(client, ref: str):
    """A run by id, else the newest run tagged ``platform.run_name = ref``."""
    try:
        return client.get_run(ref)
    except MlflowException:
        pass
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{RUN_NAME_TAG}` = '{ref}'",
                              order_by=["attributes.start_time DESC"], max_results=1) if experiments else []
    if not runs:
        raise SystemExit(f"no MLflow run with id or platform.run_name {ref!r}")
    return runs[0]


def latest_checkpoint_of(run) -> str | None:
    storage, name = run.data.params.get("platform.storage_path"), run.data.tags.get(RUN_NAME_TAG)
    return latest_checkpoint(storage, name) if storage and name else None


def resume_line(run) -> str:
    command = run.data.tags.get(RESUME_COMMAND)
    if not command:
        return "(no resume command recorded: not started by python -m platform.train)"
    if latest_checkpoint_of(run) is None:
        return f"{command}    # no checkpoint yet: this starts the run over"
    return command


def close(client, run, reason: str | None = None) -> None:
    """Mark ``run`` FAILED with a tag saying why."""
    tags = run.data.tags
    why = reason or (f"driver gone: pid {tags.get(DRIVER_PID, '?')} on {tags.get(DRIVER_HOST, '?')} no longer runs")
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    client.set_tag(run.info.run_id, END_REASON, f"{why} (closed by python -m platform.runs close at {stamp})")
    client.set_terminated(run.info.run_id, status="FAILED")
