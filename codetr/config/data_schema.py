"""Config of the datasets, augmentation and loaders."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SplitConfig:
    ann_file: str = ""                 # COCO-format annotation JSON
    img_dir: str = ""                  # folder the annotation file's file_name entries are relative to


@dataclass
class SyntheticConfig:
    root: str = "data/synthetic"       # cache folder (generated on first use)
    num_train: int = 1000
    num_val: int = 200
    image_size: int = 256
    seed: int = 0


@dataclass
class AugmentConfig:
    flip_prob: float = 0.5
    # (a) multi-scale resize: shorter side chosen from these, longer side <= max_size
    scales: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))
    max_size: int = 1333
    # (b) resize to one of crop_resize_scales, random absolute crop in crop_size range, then (a)
    crop_resize_scales: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_size: list[int] = field(default_factory=lambda: [384, 600])
    crop_prob: float = 0.5
    # evaluation: single-scale resize
    eval_scale: int = 800
    eval_max_size: int = 1333


@dataclass
class DataConfig:
    dataset: Literal["synthetic", "coco"] = "synthetic"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 2                # images per worker
    num_workers: int = 2               # data-loader processes per worker
    on_bad_image: Literal["skip", "error"] = "skip"   # a missing / corrupt image: skip and count, or stop
