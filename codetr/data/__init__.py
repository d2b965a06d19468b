"""Datasets: COCO-format files or the embedded synthetic set, Co-DETR transforms, collation.

    from codetr.data import build_dataset, build_loader, collate_fn
    train_set = build_dataset(cfg, "train")      # generates the synthetic set on first use
    images, targets = collate_fn([train_set[0], train_set[1]])
"""
from codetr.data.annotations import AnnotationError, load_coco_annotations, validate_coco_dict
from codetr.data.build import build_dataset, build_loader, split_files
from codetr.data.coco import CocoDetection, MissingImagesError
from codetr.data.collate import collate_fn
from codetr.data.image_io import BadImageError, read_image_rgb
from codetr.data.synthetic import ensure_synthetic_dataset
from codetr.data.transforms import (RandomAbsoluteCrop, RandomShorterSideResize, RemoveSmallBoxes, ScaleJitterResize,
                                    build_eval_transforms, build_lsj_transforms, build_train_transforms)

__all__ = ["AnnotationError", "BadImageError", "CocoDetection", "MissingImagesError", "RandomAbsoluteCrop",
           "RandomShorterSideResize", "RemoveSmallBoxes", "ScaleJitterResize", "build_dataset",
           "build_eval_transforms", "build_loader", "build_lsj_transforms", "build_train_transforms", "collate_fn", "ensure_synthetic_dataset", "load_coco_annotations",
           "read_image_rgb", "split_files", "validate_coco_dict"]
