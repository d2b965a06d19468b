"""The embedded dataset: deterministic synthetic shapes written as JPEG files + COCO-format JSON.

    paths = ensure_synthetic_dataset(cfg.data.synthetic)
    paths["train"] -> (".../annotations/instances_train.json", ".../train")

The set is generated on first use into ``<root>/shapes-<hash>/`` where the hash covers every
setting (and :data:`GENERATOR_VERSION`), so a changed setting never reuses a stale cache.
Generation writes into a temporary folder renamed into place at the end (under a file lock):
two processes racing never see a half-written set.

Content: one class per shape of ``classes`` (category ids 1, 3, 5, ... on purpose
non-contiguous, like COCO's), 0..``max_objects`` objects per image (``empty_fraction`` of the
images have none), log-uniform sizes from ``min_object_frac`` to ``max_object_frac`` of the
image plus ``small_fraction`` smaller ones, random colour, rotation and aspect, textured
backgrounds, pixel noise, and occlusion limited to ``max_occlusion`` of an object's pixels.
Boxes are the tight boxes of the visible pixels; ``area`` is the visible pixel count.
Each image depends only on (seed, split, index).

``annotation_format="lvis"`` writes an LVIS v1-style set instead (in ``<root>/shapes-lvis-<hash>/``):
classes drawn long-tailed (the k-th of ``classes`` with weight 2^-k); images with ``coco_url``
(``http://images.cocodataset.org/<split>/<file>``: the file path relative to the set's folder) instead
of ``file_name``, ``neg_category_ids`` (each absent category with probability 1/2) and
``not_exhaustive_category_ids`` (a category with two or more objects in the image, with probability
1/4, has one of them left unannotated: it is drawn but not in the file); no ``iscrowd``; categories
with ``frequency`` from their training-image counts (the most frequent third ``f``, the rarest third
``r``, the rest ``c``), ``image_count`` and ``instance_count``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from codetr.config.data_schema import SyntheticConfig
from codetr.data.image_io import write_jpeg
from codetr.data.synthetic_shapes import ASPECT_RANGE, background, object_colour, shape_coverage

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2        # bump when the drawing changes, so caches are regenerated
_SPLIT_CODES = {"train": 0, "val": 1}
_JPEG_QUALITY = 92
_MIN_VISIBLE_PIXELS = 36       # smaller visible remnants (slivers at the border) are not annotated


def category_id(label: int) -> int:
    """Category id of contiguous label ``label`` in the synthetic set (1, 3, 5, ...)."""
    return 2 * label + 1


def _settings(cfg: SyntheticConfig) -> dict:
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "root"}
    settings["generator_version"] = GENERATOR_VERSION
    return settings


def dataset_dir(cfg: SyntheticConfig, annotation_format: str = "coco") -> Path:
    """The cache folder of these settings: ``<root>/shapes-<12 hex digits>`` (lvis: ``shapes-lvis-...``)."""
    settings = _settings(cfg)
    if annotation_format == "lvis":
        settings["annotation_format"] = "lvis"
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    prefix = "shapes-lvis" if annotation_format == "lvis" else "shapes"
    return Path(cfg.root).expanduser() / f"{prefix}-{digest}"


def _split_paths(folder: Path, annotation_format: str = "coco") -> dict[str, tuple[str, str]]:
    if annotation_format == "lvis":   # LVIS: file paths (from coco_url) relative to the set's folder
        return {split: (str(folder / "annotations" / f"lvis_{split}.json"), str(folder)) for split in _SPLIT_CODES}
    return {split: (str(folder / "annotations" / f"instances_{split}.json"), str(folder / split))
            for split in _SPLIT_CODES}


def lvis_class_weights(num_classes: int) -> np.ndarray:
    """Long-tailed class probabilities of the LVIS-style set: the k-th class with weight 2^-k."""
    weights = 0.5 ** np.arange(num_classes)
    return weights / weights.sum()


def _object_size(cfg: SyntheticConfig, image_size: int, rng: np.random.Generator) -> float:
    """Longer side of a new object's extent, in pixels."""
    if rng.random() < cfg.small_fraction:
        lo, hi = 0.05, cfg.min_object_frac
    else:
        lo, hi = cfg.min_object_frac, cfg.max_object_frac
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))) * image_size)


def draw_image(cfg: SyntheticConfig, split: str, index: int,
               class_weights: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
    """Draw one image of ``split`` (classes uniform, or drawn with ``class_weights``).

    Returns (``[H, W, 3]`` uint8 RGB, list of ``{"label": contiguous int, "bbox": [x, y, w, h]
    in pixels, "area": visible pixel count}``).
    """
    rng = np.random.default_rng([cfg.seed, _SPLIT_CODES[split], index])
    long_side = cfg.image_size
    short_side = int(round(long_side * rng.uniform(0.75, 1.0)))
    height, width = (short_side, long_side) if rng.random() < 0.5 else (long_side, short_side)
    img = background(height, width, rng)
    bg_mean = img.reshape(-1, 3).mean(0)

    num_objects = 0 if rng.random() < cfg.empty_fraction else int(rng.integers(1, cfg.max_objects + 1))
    owner = np.full((height, width), -1, np.int16)   # index of the object on top at each pixel, -1: none
    visible_counts: list[int] = []                   # per placed object: pixels it still shows
    full_counts: list[int] = []                      # per placed object: pixels when it was placed
    labels: list[int] = []
    for _ in range(num_objects):
        if class_weights is None:
            label = int(rng.integers(len(cfg.classes)))
        else:
            label = int(rng.choice(len(cfg.classes), p=class_weights))
        shape = cfg.classes[label]
        for _attempt in range(20):
            half_long = _object_size(cfg, long_side, rng) / 2
            aspect = rng.uniform(*ASPECT_RANGE[shape])
            angle = rng.uniform(0, 2 * np.pi)
            margin = 0.75 * half_long   # centres may sit near the border: a few truncated objects
            cx = rng.uniform(margin, width - margin)
            cy = rng.uniform(margin, height - margin)
            coverage, (top, left) = shape_coverage(shape, height, width, cx, cy, half_long, aspect, angle, rng)
            h, w = coverage.shape
            mask = coverage > 0.5
            count = int(mask.sum())
            if count < _MIN_VISIBLE_PIXELS:
                continue
            # pixels each earlier object would lose under the new one
            lost = np.bincount(owner[top:top + h, left:left + w][mask] + 1, minlength=len(labels) + 1)[1:]
            if any(vis - lost[j] < max((1 - cfg.max_occlusion) * full, _MIN_VISIBLE_PIXELS)
                   for j, (vis, full) in enumerate(zip(visible_counts, full_counts))):
                continue            # would hide too much of an earlier object
            break
        else:
            continue                # no valid placement: drop this object
        colour = object_colour(bg_mean, rng)
        # a soft linear shading across the object so it is not a flat colour
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        shade = (gx / max(w, 1) - 0.5) * rng.uniform(-30, 30) + (gy / max(h, 1) - 0.5) * rng.uniform(-30, 30)
        fill = colour.astype(np.float32)[None, None, :] + shade[..., None]
        patch = img[top:top + h, left:left + w]
        alpha = coverage[..., None]
        img[top:top + h, left:left + w] = patch * (1 - alpha) + fill * alpha
        visible_counts = [vis - int(n) for vis, n in zip(visible_counts, lost)]
        owner[top:top + h, left:left + w][mask] = len(labels)
        visible_counts.append(count)
        full_counts.append(count)
        labels.append(label)

    if cfg.noise_std > 0:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(cfg.noise_std)
    objects = []
    for j, label in enumerate(labels):
        vis = owner == j
        rows, cols = np.flatnonzero(vis.any(1)), np.flatnonzero(vis.any(0))
        if visible_counts[j] < _MIN_VISIBLE_PIXELS:
            continue
        x1, y1 = int(cols[0]), int(rows[0])
        objects.append({"label": label, "bbox": [float(x1), float(y1), float(cols[-1] + 1 - x1),
                                                 float(rows[-1] + 1 - y1)], "area": float(visible_counts[j])})
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), objects


def generate_split(cfg: SyntheticConfig, split: str, out_dir: Path, class_weights: np.ndarray | None = None) -> dict:
    """Write ``out_dir/<split>/*.jpg`` and return the split's COCO-format dict."""
    num_images = cfg.num_train if split == "train" else cfg.num_val
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        pixels, objects = draw_image(cfg, split, index, class_weights)
        file_name = f"{index:06d}.jpg"
        chw = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))   # [H, W, 3] -> [3, H, W]
        write_jpeg(out_dir / split / file_name, chw, quality=_JPEG_QUALITY)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": pixels.shape[0], "width": pixels.shape[1]})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category_id(obj["label"]), "bbox": obj["bbox"],
                                "area": obj["area"], "iscrowd": 0})
    categories = [{"id": category_id(i), "name": name, "supercategory": "shape"}
                  for i, name in enumerate(cfg.classes)]
    return {"info": {"description": f"codetr synthetic shapes, {split}", "settings": _settings(cfg)},
            "images": images, "annotations": annotations, "categories": categories}


def to_lvis(data: dict, split: str, cfg: SyntheticConfig, frequency: dict[int, str]) -> dict:
    """A split's COCO-format dict (from :func:`generate_split`) -> the LVIS v1-style dict of the module docstring."""
    anns_by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)
    cat_ids = [c["id"] for c in data["categories"]]
    images, annotations = [], []
    for img in data["images"]:
        rng = np.random.default_rng([cfg.seed, _SPLIT_CODES[split], img["id"], 7])
        anns = anns_by_image.get(img["id"], [])
        present = sorted({a["category_id"] for a in anns})
        not_exhaustive = []
        for cat_id in present:
            same = [a for a in anns if a["category_id"] == cat_id]
            if len(same) >= 2 and rng.random() < 0.25:
                not_exhaustive.append(cat_id)
                anns = [a for a in anns if a is not same[-1]]     # drawn, but not annotated
        images.append({"id": img["id"], "height": img["height"], "width": img["width"],
                       "coco_url": f"http://images.cocodataset.org/{split}/{img['file_name']}",
                       "neg_category_ids": [c for c in cat_ids if c not in present and rng.random() < 0.5],
                       "not_exhaustive_category_ids": not_exhaustive})
        annotations += [{k: v for k, v in a.items() if k != "iscrowd"} for a in anns]
    for i, ann in enumerate(annotations):
        ann["id"] = i + 1
    image_count = {c: len({a["image_id"] for a in annotations if a["category_id"] == c}) for c in cat_ids}
    categories = [{**c, "synset": f"{c['name']}.n.01", "frequency": frequency[c["id"]],
                   "image_count": image_count[c["id"]],
                   "instance_count": sum(a["category_id"] == c["id"] for a in annotations)}
                  for c in data["categories"]]
    return {"info": data["info"], "images": images, "annotations": annotations, "categories": categories}


def lvis_frequencies(train: dict) -> dict[int, str]:
    """Category id -> ``f`` (the most frequent third by training images), ``r`` (the rarest third) or ``c``."""
    cat_ids = [c["id"] for c in train["categories"]]
    counts = {c: len({a["image_id"] for a in train["annotations"] if a["category_id"] == c}) for c in cat_ids}
    ranked = sorted(cat_ids, key=lambda c: (-counts[c], c))
    third = max(1, len(ranked) // 3)
    return {c: "f" if k < third else "r" if k >= len(ranked) - third and len(ranked) > 1 else "c"
            for k, c in enumerate(ranked)}


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_synthetic_dataset(cfg: SyntheticConfig, annotation_format: str = "coco") -> dict[str, tuple[str, str]]:
    """Generate the set on first use; return ``{"train": (ann_file, img_dir), "val": (...)}``.

    ``annotation_format``: ``coco``, or ``lvis`` for the LVIS v1-style set of the module docstring.
    Safe when several processes call it at once: a file lock serialises generation and the
    finished folder appears by an atomic rename, marked complete by ``meta.json``.
    """
    if annotation_format not in ("coco", "lvis"):
        raise ValueError(f"annotation_format must be 'coco' or 'lvis', got {annotation_format!r}")
    folder = dataset_dir(cfg, annotation_format)
    if (folder / "meta.json").is_file():
        return _split_paths(folder, annotation_format)
    root = Path(cfg.root).expanduser()
    lvis = annotation_format == "lvis"
    with _file_lock(root / ".generate.lock"):
        if (folder / "meta.json").is_file():     # another process finished while we waited
            return _split_paths(folder, annotation_format)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-shapes-", dir=root))
        try:
            start = time.perf_counter()
            (tmp / "annotations").mkdir()
            counts = {}
            weights = lvis_class_weights(len(cfg.classes)) if lvis else None
            splits = {split: generate_split(cfg, split, tmp, weights) for split in _SPLIT_CODES}
            frequency = lvis_frequencies(splits["train"]) if lvis else {}
            for split, data in splits.items():
                if lvis:
                    data = to_lvis(data, split, cfg, frequency)
                name = f"lvis_{split}.json" if lvis else f"instances_{split}.json"
                with open(tmp / "annotations" / name, "w") as f:
                    json.dump(data, f)
                counts[split] = {"images": len(data["images"]), "objects": len(data["annotations"])}
            seconds = time.perf_counter() - start
            with open(tmp / "meta.json", "w") as f:
                json.dump({"settings": _settings(cfg), "annotation_format": annotation_format, "counts": counts,
                           "generation_seconds": seconds}, f, indent=1)
            if folder.exists():                   # an incomplete leftover (no meta.json): replace it
                shutil.rmtree(folder)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("generated the synthetic dataset in %s: %s in %.1f s", folder, counts, seconds)
    return _split_paths(folder, annotation_format)
