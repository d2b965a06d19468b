"""Read and check a COCO-format annotation file, build its pycocotools index.

The checks run once at load time so that a malformed file fails before training
starts, with a message naming the field and the image or annotation id. Optional
fields that COCOeval needs (``area``, ``iscrowd``) are filled in when absent.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pycocotools.coco import COCO

from codetr.errors import CodetrError


class AnnotationError(CodetrError, ValueError):
    """The annotation file is malformed; the message names the field and the image / annotation id."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(entry: dict, field: str, kind: str, where: str, path: str) -> Any:
    """Return ``entry[field]`` after checking it exists and has type ``kind`` ("int", "str", "number")."""
    if field not in entry:
        raise AnnotationError(f"{path}: {where} has no {field!r} field")
    value = entry[field]
    ok = {"int": _is_int, "str": lambda v: isinstance(v, str), "number": _is_number}[kind](value)
    if not ok:
        raise AnnotationError(f"{path}: {where}: field {field!r} must be {kind}, got {value!r}")
    return value


def validate_coco_dict(data: Any, path: str = "<annotations>") -> dict:
    """Check a COCO-format dict in place and fill ``area`` / ``iscrowd`` defaults.

    Required: top-level lists ``images``, ``annotations``, ``categories``; per image ``id`` (int),
    ``file_name`` (str), ``width`` / ``height`` (int > 0); per category ``id`` (int), ``name`` (str);
    per annotation ``id`` (int), ``image_id`` (a listed image), ``category_id`` (a listed category),
    ``bbox`` ([x, y, w, h] numbers). Optional: ``iscrowd`` (0/1, default 0), ``area`` (number,
    default w*h). Ids must be unique. Raises AnnotationError naming the field and id.
    """
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise AnnotationError(f"{path}: missing top-level field {key!r}")
        if not isinstance(data[key], list):
            raise AnnotationError(f"{path}: top-level field {key!r} must be a list, got {type(data[key]).__name__}")

    image_ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise AnnotationError(f"{path}: images[{i}] must be an object, got {img!r}")
        img_id = _require(img, "id", "int", f"images[{i}]", path)
        where = f"image id {img_id}"
        if img_id in image_ids:
            raise AnnotationError(f"{path}: duplicate {where}")
        image_ids.add(img_id)
        _require(img, "file_name", "str", where, path)
        for field in ("width", "height"):
            if _require(img, field, "int", where, path) <= 0:
                raise AnnotationError(f"{path}: {where}: field {field!r} must be > 0, got {img[field]}")

    category_ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict):
            raise AnnotationError(f"{path}: categories[{i}] must be an object, got {cat!r}")
        cat_id = _require(cat, "id", "int", f"categories[{i}]", path)
        if cat_id in category_ids:
            raise AnnotationError(f"{path}: duplicate category id {cat_id}")
        category_ids.add(cat_id)
        _require(cat, "name", "str", f"category id {cat_id}", path)
    if not category_ids:
        raise AnnotationError(f"{path}: 'categories' is empty")

    ann_ids: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise AnnotationError(f"{path}: annotations[{i}] must be an object, got {ann!r}")
        ann_id = _require(ann, "id", "int", f"annotations[{i}]", path)
        where = f"annotation id {ann_id}"
        if ann_id in ann_ids:
            raise AnnotationError(f"{path}: duplicate {where}")
        ann_ids.add(ann_id)
        if _require(ann, "image_id", "int", where, path) not in image_ids:
            raise AnnotationError(f"{path}: {where}: image_id {ann['image_id']} is not in 'images'")
        if _require(ann, "category_id", "int", where, path) not in category_ids:
            raise AnnotationError(f"{path}: {where}: category_id {ann['category_id']} is not in 'categories'")
        if "bbox" not in ann:
            raise AnnotationError(f"{path}: {where} has no 'bbox' field")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise AnnotationError(f"{path}: {where}: field 'bbox' must be [x, y, w, h] numbers, got {bbox!r}")
        if not all(math.isfinite(v) for v in bbox):
            raise AnnotationError(f"{path}: {where}: field 'bbox' must be finite numbers, got {bbox!r}")
        crowd = ann.setdefault("iscrowd", 0)
        if not (_is_int(crowd) and crowd in (0, 1)):
            raise AnnotationError(f"{path}: {where}: field 'iscrowd' must be 0 or 1, got {crowd!r}")
        if "area" in ann:
            if not (_is_number(ann["area"]) and math.isfinite(ann["area"])):
                raise AnnotationError(f"{path}: {where}: field 'area' must be number, got {ann['area']!r}")
        else:
            ann["area"] = float(max(bbox[2], 0) * max(bbox[3], 0))
    return data


def clip_boxes_to_images(data: dict) -> list[int]:
    """Clip every annotation's bbox to its image and remove the degenerate ones, in place.

    Degenerate: zero width or height after clipping (a negative width or height, or a box wholly
    outside its image: such a box can never be matched, so it is neither a training target nor
    evaluation ground truth). ``area`` is capped at the clipped box's area. Expects a dict checked
    by :func:`validate_coco_dict`. Returns the ids of the removed annotations.
    """
    sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
    kept = []
    for ann in data["annotations"]:
        width, height = sizes[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        x1, y1 = min(max(x, 0), width), min(max(y, 0), height)
        x2, y2 = min(max(x + w, 0), width), min(max(y + h, 0), height)
        if x2 <= x1 or y2 <= y1:
            continue
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            ann["area"] = min(ann["area"], float((x2 - x1) * (y2 - y1)))
        kept.append(ann)
    kept_ids = {id(ann) for ann in kept}
    dropped = [ann["id"] for ann in data["annotations"] if id(ann) not in kept_ids]
    data["annotations"] = kept
    return dropped


def coco_from_dict(data: dict) -> COCO:
    """A pycocotools COCO object over an already-checked dict (no re-reading, no index printout)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def validate_lvis_dict(data: Any, path: str = "<annotations>") -> dict:
    """Check an LVIS v1 dict in place and make it a COCO-format one (then :func:`validate_coco_dict`).

    LVIS v1 images have no ``file_name``: it is taken from ``coco_url`` without its host
    (``http://images.cocodataset.org/train2017/x.jpg`` -> ``train2017/x.jpg``, relative to the image
    folder, as mmdetection's ``LVISV1Dataset``); a ``file_name`` already there is kept. Required per
    image: ``neg_category_ids`` and ``not_exhaustive_category_ids`` (lists of listed category ids);
    per category: ``frequency`` (``r``, ``c`` or ``f``).
    """
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
            data.get("categories"), list):
        return validate_coco_dict(data, path)     # its messages name what is missing
    category_ids = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    for i, cat in enumerate(data["categories"]):
        if isinstance(cat, dict) and cat.get("frequency") not in ("r", "c", "f"):
            raise AnnotationError(f"{path}: category id {cat.get('id', f'[{i}]')}: LVIS field 'frequency' must be "
                                  f"'r', 'c' or 'f', got {cat.get('frequency')!r}")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            continue
        where = f"image id {img.get('id', f'[{i}]')}"
        if "file_name" not in img:
            url = img.get("coco_url")
            if not isinstance(url, str):
                raise AnnotationError(f"{path}: {where} has neither 'file_name' nor 'coco_url'")
            img["file_name"] = urlparse(url).path.lstrip("/") if "://" in url else url
        for field in ("neg_category_ids", "not_exhaustive_category_ids"):
            ids = img.get(field)
            if not isinstance(ids, list):
                raise AnnotationError(f"{path}: {where}: LVIS field {field!r} must be a list of category ids, "
                                      f"got {ids!r}")
            unknown = [c for c in ids if c not in category_ids]
            if unknown:
                raise AnnotationError(f"{path}: {where}: {field} names unknown category ids {unknown[:10]}")
    return validate_coco_dict(data, path)


def load_annotations(ann_file: str | Path, annotation_format: str = "coco") -> COCO:
    """Read, check and index an annotation file: ``coco`` (:func:`validate_coco_dict`) or ``lvis``
    (:func:`validate_lvis_dict`)."""
    if annotation_format not in ("coco", "lvis"):
        raise ValueError(f"annotation_format must be 'coco' or 'lvis', got {annotation_format!r}")
    path = str(ann_file)
    if not Path(path).is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{path}: not valid JSON: {e}") from e
    check = validate_lvis_dict if annotation_format == "lvis" else validate_coco_dict
    return coco_from_dict(check(data, path))


def load_coco_annotations(ann_file: str | Path) -> COCO:
    """Read, check (see :func:`validate_coco_dict`) and index a COCO-format annotation file."""
    return load_annotations(ann_file, "coco")
