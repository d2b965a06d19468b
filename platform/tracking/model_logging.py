"""The deployable model of a run as an MLflow LoggedModel with a pyfunc interface, optionally registered.

    info = log_deployable_model(tracking_uri, run_id, "runs/NAME/checkpoint_.../", register="codetr-tiny",
                                val_dataset=datasets[1])

What is logged (name ``model``, model type ``object-detection``):

- the pyfunc model: :mod:`platform.deploy.pyfunc` as model code, the ``codetr`` package as its code
  (the model carries the library it was trained with) and ``deployable.pt`` (the weights of
  ``model.for_inference()``: no auxiliary heads, with the config and class names) as artifact;
- a signature: input a column ``image`` (binary: image file bytes), param ``score_threshold``,
  output ``boxes`` / ``scores`` / ``labels`` / ``label_names``; and an input example (a validation
  image when one is readable);
- the run's params, tags ``platform.checkpoint`` / ``platform.iteration``; the run records the model
  as its output at the checkpoint's iteration, and the run's ``coco/*`` metrics of that iteration are
  linked to the model, with the validation set's name and digest;
- ``register``: a new version of that registered model (``models:/NAME/VERSION``).

Serving: ``mlflow models serve -m models:/NAME/1 --env-manager local -h 127.0.0.1 -p 5001``, then POST
``{"dataframe_split": {"columns": ["image"], "data": [["<base64 of a JPEG>"]]}}`` to ``/invocations``.
"""
from __future__ import annotations

import base64
import importlib.metadata
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.entities import LoggedModelOutput, Metric
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array
from torchvision.io import encode_png

import codetr
from codetr.engine import load_checkpoint
from codetr.inference import Predictor
from platform.deploy import pyfunc
from platform.deploy.pyfunc import DEFAULT_SCORE_THRESHOLD, DEPLOYABLE_ARTIFACT, IMAGE_COLUMN

MODEL_NAME = "model"
MODEL_TYPE = "object-detection"
PYFUNC_CODE = Path(pyfunc.__file__)   # the model code MLflow logs and runs by its path
DEPLOYABLE_FILE = "deployable.pt"
# what the pyfunc imports when it serves (codetr's own dependencies, without Ray)
REQUIREMENTS = ["torch", "torchvision", "numpy", "scipy", "pycocotools", "pyyaml", "pandas", "mlflow"]


@dataclass
class LoggedDetector:
    model_id: str
    model_uri: str                       # models:/<model id>
    registered_name: str | None = None
    registered_version: str | None = None

    @property
    def registered_uri(self) -> str | None:
        return f"models:/{self.registered_name}/{self.registered_version}" if self.registered_name else None


def check_registered_name(name: str) -> str:
    """A Model Registry name: not empty, no ``/`` or ``:`` (MLflow's rules). Raises ValueError."""
    if not name or not name.strip():
        raise ValueError("--register: the registered model name is empty")
    if any(c in name for c in "/:") or ".." in name:
        raise ValueError(f"--register: {name!r} is not a valid registered model name (no '/', ':' or '..')")
    return name


def signature():
    inputs = Schema([ColSpec(DataType.binary, IMAGE_COLUMN)])
    outputs = Schema([ColSpec(Array(Array(DataType.double)), "boxes"), ColSpec(Array(DataType.double), "scores"),
                      ColSpec(Array(DataType.long), "labels"), ColSpec(Array(DataType.string), "label_names")])
    params = ParamSchema([ParamSpec("score_threshold", DataType.double, DEFAULT_SCORE_THRESHOLD)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def example_image_bytes(path: str | Path | None) -> bytes:
    """The bytes of ``path`` when it is a readable image file, else a small generated PNG."""
    if path and Path(path).is_file():
        return Path(path).read_bytes()

    g = torch.Generator().manual_seed(0)
    return encode_png((torch.rand(3, 96, 128, generator=g) * 255).to(torch.uint8)).numpy().tobytes()


def input_example(path: str | Path | None = None):
    return pd.DataFrame({IMAGE_COLUMN: [example_image_bytes(path)]})


def pip_requirements() -> list[str]:
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def serving_request(images: list[bytes], score_threshold: float | None = None) -> dict[str, Any]:
    """The JSON body of ``POST /invocations`` for ``images`` (file bytes)."""
    body: dict[str, Any] = {"dataframe_split": {"columns": [IMAGE_COLUMN],
                                                "data": [[base64.b64encode(b).decode("ascii")] for b in images]}}
    if score_threshold is not None:
        body["params"] = {"score_threshold": score_threshold}
    return body


def _link_metrics(client, run_id: str, model_id: str, step: int, val_dataset) -> int:
    """Link the run's ``coco/*`` metrics at ``step`` to the model (with the validation set). Returns how many.

    The metrics are logged again with their own timestamps: the run's history gets no new point
    (MLflow keeps one row per key, step, timestamp and value), the model gets the link."""
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("coco/")]
    linked = []
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            if m.step == step:
                linked.append(Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id,
                                     dataset_name=val_dataset.name if val_dataset else None,
                                     dataset_digest=val_dataset.digest if val_dataset else None))
    for i in range(0, len(linked), 1000):
        client.log_batch(run_id, metrics=linked[i: i + 1000])
    return len(linked)


def log_deployable_model(tracking_uri: str, run_id: str, checkpoint: str | Path, *, register: str | None = None,
                         val_dataset=None, output_run_ids: tuple[str, ...] = (),
                         checkpoint_uri: str | None = None) -> LoggedDetector:
    """Log the deployable model of ``checkpoint`` (a training checkpoint folder or file) from run ``run_id``.

    ``val_dataset``: the run's validation :class:`platform.tracking.datasets.DatasetInfo` (its first
    image becomes the input example, its name and digest go with the linked metrics).
    ``output_run_ids``: more runs that record the model as their output (a sweep's parent run).
    ``checkpoint_uri``: where the checkpoint lives (tag ``platform.checkpoint``; default ``checkpoint``).
    """
    if register is not None:
        check_registered_name(register)
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    state = load_checkpoint(checkpoint)
    iteration = int(state.get("iteration") or 0)
    predictor = Predictor.from_training_state(state)
    del state
    # Model.log and the registry calls use the process-wide tracking URI
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = client.create_logged_model(
            experiment_id=run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id, model_type=MODEL_TYPE,
            params=dict(run.data.params),
            tags={"platform.checkpoint": str(checkpoint_uri or checkpoint), "platform.iteration": str(iteration),
                  "platform.num_classes": str(predictor.num_classes)})
        with tempfile.TemporaryDirectory(prefix="codetr_model_") as tmp:
            deployable = predictor.save(Path(tmp) / DEPLOYABLE_FILE)
            Model.log(None, name=MODEL_NAME, flavor=mlflow.pyfunc, model_id=model.model_id, python_model=str(PYFUNC_CODE),
                      artifacts={DEPLOYABLE_ARTIFACT: str(deployable)},
                      code_paths=[str(Path(codetr.__file__).parent)], signature=signature(),
                      input_example=input_example(getattr(val_dataset, "example_file", None)),
                      pip_requirements=pip_requirements())
        for rid in (run_id, *output_run_ids):
            client.log_outputs(rid, [LoggedModelOutput(model.model_id, step=iteration)])
        _link_metrics(client, run_id, model.model_id, iteration, val_dataset)
        info = LoggedDetector(model.model_id, f"models:/{model.model_id}")
        if register is not None:
            version = mlflow.register_model(info.model_uri, register, await_registration_for=60)
            info.registered_name, info.registered_version = register, str(version.version)
            client.set_tag(run_id, "platform.registered_model", info.registered_uri)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return info


def serve_command(tracking_uri: str, model_uri: str, port: int = 5001) -> str:
    """The shell command that serves ``model_uri`` over HTTP on 127.0.0.1 (this environment, no new venv)."""
    return (f"MLFLOW_TRACKING_URI={tracking_uri} mlflow models serve -m {model_uri} --env-manager local "
            f"-h 127.0.0.1 -p {port}")
