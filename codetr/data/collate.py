"""Batching for detection: images of different sizes stay a list (the model pads them)."""
from __future__ import annotations

from torch import Tensor


def collate_fn(batch: list[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """``[(image, target), ...]`` -> (list of ``[3, H_i, W_i]`` images, list of target dicts).

    Each target keeps ``image_id``, ``orig_size`` and ``size`` so predictions map back to the file.
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
