"""A tiny COCO-format dataset written to disk for the data and evaluation tests.

Quirks on purpose: non-contiguous category ids (3, 7, 90), a crowd box, an image without
annotations, a box sticking out of its image, a degenerate (zero-width) box, PNG grayscale
and RGBA files next to JPEGs, non-square images. Every non-crowd box is drawn as a filled
rectangle of a distinct colour, so box / pixel consistency can be checked after transforms.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 90, "name": "toothbrush"}]

# file name, (height, width), mode, [(category id, [x, y, w, h], iscrowd)]
IMAGES = [
    ("a.jpg", (60, 80), "RGB", [(3, [10, 10, 20, 15], 0), (7, [40, 20, 30, 30], 0)]),
    ("b.png", (64, 48), "L", [(90, [5, 30, 20, 20], 0), (3, [0, 0, 48, 20], 1)]),     # crowd box
    ("c.png", (50, 50), "RGBA", []),                                                # no annotation
    ("d.jpg", (72, 96), "RGB", [(7, [70, 50, 40, 40], 0),                           # sticks out: clipped
                                (3, [20, 10, 0, 10], 0),                            # zero width: dropped
                                (90, [10, 40, 25, 20], 0)]),
]
IMAGE_IDS = [11, 5, 42, 17]   # not 1..n either


def coco_dict() -> dict:
    """The annotation dict of :data:`IMAGES` (ids in :data:`IMAGE_IDS`)."""
    images, annotations = [], []
    for image_id, (name, (h, w), _, anns) in zip(IMAGE_IDS, IMAGES):
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for cat_id, bbox, crowd in anns:
            annotations.append({"id": 100 + len(annotations), "image_id": image_id, "category_id": cat_id,
                                "bbox": bbox, "area": float(bbox[2] * bbox[3]), "iscrowd": crowd})
    return {"images": images, "annotations": annotations, "categories": copy.deepcopy(CATEGORIES)}


def write_dataset(root: Path, data: dict | None = None) -> tuple[Path, Path]:
    """Write images + annotations under ``root``; returns (ann_file, img_dir)."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (h, w), mode, anns in IMAGES:
        pixels = np.full((h, w, 3), 30, np.uint8)
        for k, (_, (x, y, bw, bh), crowd) in enumerate(anns):
            if crowd or bw <= 0 or bh <= 0:
                continue
            colour = rng.integers(120, 256, size=3)
            pixels[int(y):int(y + bh), int(x):int(x + bw)] = colour
        image = Image.fromarray(pixels)
        if mode == "L":
            image = image.convert("L")
        elif mode == "RGBA":
            image = image.convert("RGBA")
        image.save(img_dir / name, quality=95) if name.endswith(".jpg") else image.save(img_dir / name)
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps(data if data is not None else coco_dict()))
    return ann_file, img_dir


def foreground_box(image, threshold: float = 0.3):
    """Tight xyxy box of the pixels brighter than ``threshold`` in a ``[3, H, W]`` float image (or None)."""
    mask = image.max(0).values > threshold
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    if rows.numel() == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
