"""Repeat-factor sampling for long-tailed data (LVIS), as the official LVIS configs' ``ClassBalancedDataset``.

For each category c, f(c) is the fraction of the training images that contain it; its repeat factor
is r(c) = max(1, sqrt(t / f(c))) with threshold t (official: 1e-3); an image's is the largest over its
categories (1 for an image without annotations), and each epoch holds every image ceil(r) times, as
mmdetection's ``ClassBalancedDataset`` does (a deterministic repeat, not a stochastic rounding).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset


def repeat_factors(category_ids: Sequence[set[int]], threshold: float) -> list[float]:
    """Per image ``max(1, max_c sqrt(threshold / f(c)))`` over its categories; 1 for an image without any.

    ``category_ids[i]``: the categories annotated in image i. f(c) = images with c / all images.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    counts: dict[int, int] = {}
    for cats in category_ids:
        for c in cats:
            counts[c] = counts.get(c, 0) + 1
    num_images = len(category_ids)
    category_repeat = {c: max(1.0, math.sqrt(threshold / (n / num_images))) for c, n in counts.items()}
    return [max((category_repeat[c] for c in cats), default=1.0) for cats in category_ids]


class RepeatFactorDataset(Dataset):
    """A training dataset whose index repeats each image ``ceil(repeat factor)`` times (module docstring).

    Wraps a :class:`codetr.data.CocoDetection`; every other attribute (``coco``, ``category_names``,
    ``num_classes``, ``image_ids``, ...) is the wrapped dataset's. ``indexed_image_ids`` gives the image
    id at every position (for the aspect-ratio sampler), ``repeat_factors`` each image's factor.
    """

    def __init__(self, dataset, threshold: float):
        self.dataset = dataset
        self.threshold = threshold
        cats = [{ann["category_id"] for ann in dataset.coco.imgToAnns.get(img_id, [])} for img_id in dataset.image_ids]
        self.repeat_factors = repeat_factors(cats, threshold)
        self.indices = [i for i, r in enumerate(self.repeat_factors) for _ in range(math.ceil(r))]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]

    @property
    def indexed_image_ids(self) -> list[int]:
        return [self.dataset.image_ids[i] for i in self.indices]

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found on the wrapper; "dataset" itself must not recurse (unpickling)
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
