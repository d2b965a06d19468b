"""Detections on image files with a trained checkpoint (``python -m platform.predict``)."""
from __future__ import annotations

import os

import torch

from codetr.data import read_image_rgb
from codetr.inference import Predictor


def predict_images(checkpoint: str, images: list[str], score_threshold: float = 0.3, device: str = "cpu"):
    """Yield ``(path, image uint8 [3, H, W], detections dict in file pixels, category names)`` per image."""
    torch.set_num_threads(os.cpu_count() or 1)
    predictor = Predictor.from_checkpoint(checkpoint, device=device)   # the deployable model, eval resize
    for path in images:
        raw = read_image_rgb(path)                       # [3, H, W] uint8
        det = predictor.detect(raw, score_threshold)
        yield path, raw, {k: det[k] for k in ("boxes", "scores", "labels")}, predictor.category_names
