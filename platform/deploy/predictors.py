"""The deployable model of a training checkpoint or of a deployable file, as a :class:`Predictor`."""
from __future__ import annotations

from pathlib import Path

import torch

from codetr.inference import DEPLOYABLE_FORMAT, Predictor


def load_predictor(path: str):
    """A :class:`codetr.inference.Predictor` from a training checkpoint or a deployable file."""
    file = Path(path)
    if file.is_file():
        try:
            head = torch.load(file, map_location="cpu", weights_only=True)
        except Exception:   # a training checkpoint holds more than tensors (RNG states)
            head = None
        if isinstance(head, dict) and head.get("format") == DEPLOYABLE_FORMAT:
            return Predictor.load(file)
    return Predictor.from_checkpoint(path)
