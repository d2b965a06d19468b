"""The Co-DETR detector as an MLflow pyfunc model (logged "as code" by :mod:`platform.tracking.model_logging`).

MLflow runs this file by its path in whatever process loads the model (``mlflow models serve``,
``mlflow.pyfunc.load_model``), with the model's copy of ``codetr`` first on ``sys.path``. It
therefore imports only ``codetr``, torch, pandas and mlflow, never the ``platform`` package (the
standard library's ``platform`` module shadows it outside the repository root).

Input: a DataFrame with a column ``image``, one row per image: the encoded bytes of an image file
(JPEG, PNG, ...; base64 strings in a JSON request) or, from Python, a uint8 array ``[H, W, 3]`` RGB.
Params: ``score_threshold`` (default 0.3): detections scoring below it are left out.
Output: a DataFrame, one row per input image: ``boxes`` (``[x1, y1, x2, y2]`` in pixels of that image),
``scores``, ``labels`` (class indices) and ``label_names``.
"""
from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ["boxes", "scores", "labels", "label_names"]
DEFAULT_SCORE_THRESHOLD = 0.3
DEPLOYABLE_ARTIFACT = "deployable"


def images_of(model_input) -> list:
    """The images of a pyfunc input: the ``image`` column of a DataFrame (or a list of images)."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(f"the input needs a column {IMAGE_COLUMN!r} (image file bytes or uint8 [H, W, 3] "
                             f"arrays), got columns {list(model_input.columns)}")
        return list(model_input[IMAGE_COLUMN])
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    raise TypeError(f"expected a DataFrame with an {IMAGE_COLUMN!r} column, got {type(model_input).__name__}")


class CoDETRDetector(PythonModel):
    """Images in, detections out (see the module docstring)."""

    def load_context(self, context) -> None:
        # here, not at the top: MLflow puts the model's copy of codetr on sys.path only when it loads the model
        import torch

        from codetr.inference import Predictor

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.predictor = Predictor.load(context.artifacts[DEPLOYABLE_ARTIFACT], device=device)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        threshold = float((params or {}).get("score_threshold", DEFAULT_SCORE_THRESHOLD))
        rows = []
        for det in self.predictor(images_of(model_input), score_threshold=threshold):
            rows.append({"boxes": det["boxes"].tolist(), "scores": det["scores"].tolist(),
                         "labels": det["labels"].tolist(), "label_names": list(det["label_names"])})
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


mlflow.models.set_model(CoDETRDetector())
