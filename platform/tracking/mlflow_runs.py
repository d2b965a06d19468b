"""MLflow tracking: where runs go, how they are created, found again, logged and closed.

Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else MLflow's own default store
``sqlite:///mlflow.db`` in the working directory (made absolute here, because Ray workers
run in a copy of the repository elsewhere). Multi-node needs a tracking server
(``mlflow server ...``) whose URI every node can reach.

One MLflow run per training run. The driver creates it (so it knows the run id and can end
it FINISHED / FAILED / KILLED truthfully), rank 0 of the Ray workers logs metrics and
artifacts into it by id. The run carries the tag ``platform.run_name`` = the Ray Train run
name: starting the same run name again resumes both.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

RUN_NAME_TAG = "platform.run_name"
# MLflow's experiment type: a model-training experiment, not a GenAI one (see ui_url for MLflow 3.17's UI)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000


def resolve_tracking_uri(uri: str | None = None, cwd: str | Path | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` (absolute)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # relative sqlite path: make it absolute against cwd so workers elsewhere use the same file
        return f"sqlite:///{(Path(cwd or os.getcwd()) / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri and not uri.startswith("databricks"):
        return str(Path(uri).resolve())
    return uri


def ui_command(tracking_uri: str) -> str:
    """The shell command that opens the MLflow UI on ``tracking_uri``."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The UI page of an experiment (or run) on its training-runs view.

    MLflow 3.17's UI keeps a GenAI / Model training switch per browser (default GenAI) that decides the
    view over the experiment's kind tag; the ``workflowType`` parameter of the link selects it."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    page = f"{base}/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{page}?workflowType=machine_learning"


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """Id of experiment ``name`` (created, or restored when deleted), tagged as a model-training experiment."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment = client.get_experiment(client.create_experiment(name))
        except Exception:   # created concurrently by another process
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def find_run(client: MlflowClient, experiment_id: str, run_name: str) -> str | None:
    """Id of the newest run of ``experiment_id`` tagged with ``run_name`` (None if there is none)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def start_run(tracking_uri: str, experiment_name: str, run_name: str, tags: dict[str, str] | None = None,
              resume: bool = True) -> tuple[str, bool]:
    """Create the MLflow run of a training run, or reopen the one with the same run name.

    Returns ``(run_id, resumed)``.
    """
    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, experiment_name)
    run_id = find_run(client, experiment_id, run_name) if resume else None
    if run_id is not None:
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value)
        return run_id, True
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **(tags or {})})
    return run.info.run_id, False


def end_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED``."""
    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


def param_value(value: Any) -> str:
    text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    return text[:MAX_PARAM_VALUE]


def log_params(tracking_uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Log params in batches; keys already logged (a resumed run) are left as they were."""
    client = MlflowClient(tracking_uri)
    existing = client.get_run(run_id).data.params
    items = [Param(k, param_value(v)) for k, v in params.items() if k not in existing]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i: i + MAX_PARAMS_PER_BATCH])


class RunLogger:
    """Logs metrics and artifacts into an existing MLflow run by id (used by rank 0 of the workers)."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.client = MlflowClient(tracking_uri)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i: i + MAX_METRICS_PER_BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_file_as(self, path: str | Path, artifact_path: str, name: str) -> None:
        """Upload ``path`` as ``<artifact_path>/<name>`` (e.g. a checkpoint as checkpoints/last.pt)."""
        with tempfile.TemporaryDirectory() as tmp:
            link = Path(tmp) / name
            try:
                os.link(path, link)      # no copy on the same file system
            except OSError:
                shutil.copyfile(path, link)
            self.client.log_artifact(self.run_id, str(link), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Upload the files of ``folder`` under ``artifact_path``."""
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def metric_history(self, keys: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
        """``{key: [(step, value), ...]}`` sorted by step, read back from the store."""
        out = {}
        for key in keys:
            history = self.client.get_metric_history(self.run_id, key)
            out[key] = sorted((m.step, m.value) for m in history)
        return out

    def metric_keys(self) -> list[str]:
        return sorted(self.client.get_run(self.run_id).data.metrics)
