"""Datasets and loaders from the config: ``build_dataset(cfg, "train" | "val")``, ``build_loader``."""
from __future__ import annotations

from typing import Literal

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from codetr.config import Config, ConfigError
from codetr.data.annotations import load_annotations
from codetr.data.coco import CocoDetection
from codetr.data.group_sampler import GroupSampler, aspect_groups
from codetr.data.collate import collate_fn
from codetr.data.repeat_factor import RepeatFactorDataset
from codetr.data.synthetic import ensure_synthetic_dataset
from codetr.data.transforms import build_eval_transforms, build_train_transforms


def split_files(cfg: Config, split: Literal["train", "val"]) -> tuple[str, str]:
    """(ann_file, img_dir) of ``split``; generates the synthetic set on first use."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if cfg.data.dataset == "synthetic":
        return ensure_synthetic_dataset(cfg.data.synthetic, cfg.data.format)[split]
    split_cfg = getattr(cfg.data, split)
    return split_cfg.ann_file, split_cfg.img_dir


def build_dataset(cfg: Config, split: Literal["train", "val"], transforms: bool = True
                  ) -> CocoDetection | RepeatFactorDataset:
    """The dataset of ``split`` with its transforms (train: the Co-DETR augmentation, val: eval resize).

    ``transforms=False`` gives untransformed images (uint8 converted to float in [0, 1]).
    Checks ``cfg.model.num_classes`` against the file's categories: None takes the file's,
    a different number raises a ConfigError. The files are read in ``data.format`` (coco or lvis);
    with ``data.repeat_factor_threshold`` the training set repeats its rare-category images
    (:class:`RepeatFactorDataset`).
    """
    ann_file, img_dir = split_files(cfg, split)
    coco = load_annotations(ann_file, cfg.data.format)
    num_in_file = len(coco.dataset["categories"])
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_in_file:
        raise ConfigError(f"model.num_classes: the config pins {cfg.model.num_classes} but {ann_file} has "
                          f"{num_in_file} categories; set model.num_classes={num_in_file} or null")
    if not transforms:
        tfm = None
    elif split == "train":
        tfm = build_train_transforms(cfg.data.augment)
    else:
        tfm = build_eval_transforms(cfg.data.augment)
    dataset = CocoDetection(ann_file, img_dir, transforms=tfm, on_bad_image=cfg.data.on_bad_image, coco=coco,
                            annotation_format=cfg.data.format)
    if split == "train" and cfg.data.repeat_factor_threshold is not None:
        return RepeatFactorDataset(dataset, cfg.data.repeat_factor_threshold)
    return dataset


def group_sampler(dataset: CocoDetection | RepeatFactorDataset, batch_size: int, *, seed: int = 0,
                  num_replicas: int = 1, rank: int = 0) -> GroupSampler:
    """A :class:`GroupSampler` over the dataset's images by orientation (annotation-file sizes)."""
    sizes = [(dataset.coco.imgs[i]["height"], dataset.coco.imgs[i]["width"]) for i in dataset.indexed_image_ids]
    return GroupSampler(aspect_groups(sizes), batch_size, num_replicas=num_replicas, rank=rank, seed=seed)


def build_loader(dataset: CocoDetection, *, batch_size: int, num_workers: int, train: bool,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 group_by_aspect_ratio: bool = False) -> DataLoader:
    """A DataLoader yielding ``(list of images, list of targets)``.

    With ``num_replicas > 1`` a DistributedSampler shards the set (it pads the last shard with
    repeated images: the evaluator dedupes by image id). Call ``loader.sampler.set_epoch(e)``
    each epoch when training distributed. Training drops the last incomplete batch.
    ``group_by_aspect_ratio`` (training): batches of one orientation (:class:`GroupSampler`).
    """
    if train and group_by_aspect_ratio:
        sampler = group_sampler(dataset, batch_size, seed=seed, num_replicas=num_replicas, rank=rank)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                          collate_fn=collate_fn, drop_last=True, persistent_workers=num_workers > 0)
    if num_replicas > 1:
        sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=train, seed=seed)
    elif train:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn, drop_last=train and len(dataset) >= batch_size * num_replicas,
                      persistent_workers=num_workers > 0, pin_memory=False)
