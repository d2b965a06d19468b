"""COCO-format detection dataset over the pycocotools COCO API.

Category ids in the file may be non-contiguous (COCO's 1..90 with gaps); the dataset maps
them, in increasing id order, to contiguous labels ``0..num_classes-1``
(``label_to_cat_id[label]`` maps back). Crowd boxes are not training targets (COCOeval still
sees them through ``dataset.coco``). Images without annotations are kept. Boxes are clipped
to the image and degenerate ones (zero width or height after clipping) dropped and counted;
this is done on ``dataset.coco`` itself, so that evaluation scores against the same boxes a
model can predict (a box outside the image could never be matched exactly).

Bad images: files referenced by the annotations but absent on disk are all reported in one
message at construction; an image that fails to decode later names its file. With
``on_bad_image="error"`` both raise; with ``"skip"`` missing files are left out of the index
and an undecodable image is replaced by the next good one, and counted
(:attr:`CocoDetection.num_skipped_images`, shared by data-loader worker processes).
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
from multiprocessing import context as mp_context
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import box_convert

from codetr.data.annotations import clip_boxes_to_images, coco_from_dict, load_annotations
from codetr.data.image_io import BadImageError, read_image_rgb
from codetr.errors import CodetrError

logger = logging.getLogger(__name__)

Transform = Callable[[Any, dict], tuple[Any, dict]]


class MissingImagesError(CodetrError, FileNotFoundError):
    """Images listed in the annotation file are absent on disk; ``paths`` lists all of them."""

    def __init__(self, paths: list[str], ann_file: str):
        shown = "\n  ".join(paths[:50]) + (f"\n  ... and {len(paths) - 50} more" if len(paths) > 50 else "")
        super().__init__(f"{len(paths)} image(s) referenced by {ann_file} are missing on disk:\n  {shown}")
        self.paths = paths


class CocoDetection(Dataset):
    """COCO-format detection dataset yielding ``(image, target)`` in the torchvision convention.

    ``image``: ``[3, H, W]`` float32 in [0, 1] after ``transforms``.
    ``target``: ``{"boxes": [N, 4] float32 xyxy in transformed-image pixels, "labels": [N] int64
    in [0, num_classes), "image_id": int (the COCO id), "orig_size": (h, w) of the file,
    "size": (h, w) after transforms}``.

    ``annotation_format``: ``coco`` or ``lvis`` (LVIS v1 files; chooses the evaluator).
    Attributes: ``coco`` (pycocotools COCO), ``num_classes``, ``category_names`` and
    ``label_to_cat_id`` (contiguous-label order), ``cat_id_to_label``, ``image_ids`` (indexed
    images), ``missing_images`` (file paths left out at start-up), ``num_degenerate_boxes``.
    """

    def __init__(self, ann_file: str | Path, img_dir: str | Path, transforms: Transform | None = None,
                 on_bad_image: Literal["skip", "error"] = "skip", coco: COCO | None = None,
                 annotation_format: Literal["coco", "lvis"] = "coco"):
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        self.ann_file = str(ann_file)
        self.annotation_format = annotation_format
        self.img_dir = Path(img_dir)
        self.transforms = transforms
        self.on_bad_image = on_bad_image
        coco = coco if coco is not None else load_annotations(ann_file, annotation_format)
        # clip boxes / drop degenerate ones in the ground truth itself (in place, idempotent)
        dropped = clip_boxes_to_images(coco.dataset)
        self.num_degenerate_boxes = len(dropped)
        self.coco = coco_from_dict(coco.dataset) if dropped else coco
        if dropped:
            shown = ", ".join(map(str, dropped[:20])) + (f" ... ({len(dropped)} in all)" if len(dropped) > 20 else "")
            logger.warning("%s: dropped %d degenerate box(es) (zero width or height after clipping to the image): "
                        "annotation id %s", self.ann_file, len(dropped), shown)

        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.label_to_cat_id: list[int] = [c["id"] for c in cats]
        self.cat_id_to_label: dict[int, int] = {cat_id: i for i, cat_id in enumerate(self.label_to_cat_id)}
        self.category_names: list[str] = [c["name"] for c in cats]
        self.num_classes = len(cats)

        all_ids = sorted(self.coco.imgs)
        missing = [i for i in all_ids if not (self.img_dir / self.coco.imgs[i]["file_name"]).is_file()]
        self.missing_images = [str(self.img_dir / self.coco.imgs[i]["file_name"]) for i in missing]
        if missing:
            error = MissingImagesError(self.missing_images, self.ann_file)
            if on_bad_image == "error":
                raise error
            logger.warning("%s; skipping them", error)
        missing_set = set(missing)
        self.image_ids: list[int] = [i for i in all_ids if i not in missing_set]
        if not self.image_ids:
            raise ValueError(f"{self.ann_file}: no usable image in {self.img_dir}")

        self._boxes_xyxy: list[np.ndarray] = []   # per indexed image: [N, 4] float32 xyxy pixels
        self._labels: list[np.ndarray] = []       # per indexed image: [N] int64 contiguous labels
        for img_id in self.image_ids:
            boxes_xyxy, labels = self._index_targets(img_id)
            self._boxes_xyxy.append(boxes_xyxy)
            self._labels.append(labels)
        # one byte per indexed image, set when it fails to decode; shared memory so that
        # data-loader worker processes (forked or spawned) report back to the main process
        self._bad_flags = multiprocessing.RawArray(ctypes.c_uint8, len(self.image_ids))

    def _index_targets(self, img_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Non-crowd boxes of one image: ([N, 4] float32 xyxy pixels, [N] int64 labels)."""
        anns = [a for a in self.coco.imgToAnns.get(img_id, []) if not a["iscrowd"]]
        if not anns:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
        boxes_xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        boxes_xyxy = box_convert(boxes_xywh, "xywh", "xyxy").to(torch.float32).numpy()
        labels = np.array([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64)
        return boxes_xyxy, labels

    # ------------------------------------------------------------------ bad-image bookkeeping

    @property
    def num_skipped_images(self) -> int:
        """Images skipped so far: missing at start-up plus distinct ones that failed to decode."""
        return len(self.missing_images) + int(np.frombuffer(self._bad_flags, dtype=np.uint8).sum())

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if mp_context.get_spawning_popen() is None:
            # pickled outside a process start (e.g. by Ray): shared memory cannot travel, send a copy
            state["_bad_flags"] = bytes(self._bad_flags)
        return state

    def __setstate__(self, state: dict) -> None:
        flags = state["_bad_flags"]
        if isinstance(flags, bytes):
            shared = multiprocessing.RawArray(ctypes.c_uint8, len(flags))
            shared[:] = flags
            state["_bad_flags"] = shared
        self.__dict__.update(state)

    # ------------------------------------------------------------------ items

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def indexed_image_ids(self) -> list[int]:
        """The image id at every index (what the aspect-ratio sampler groups)."""
        return self.image_ids

    def image_path(self, index: int) -> Path:
        return self.img_dir / self.coco.imgs[self.image_ids[index]]["file_name"]

    def load_raw(self, index: int) -> tuple[Tensor, dict]:
        """Untransformed item: ``[3, H, W]`` uint8 image and ``{"boxes" [N, 4] xyxy, "labels" [N]}``.

        Raises BadImageError for a missing or undecodable file.
        """
        img_id = self.image_ids[index]
        try:
            image = read_image_rgb(self.image_path(index))
        except BadImageError as e:
            raise BadImageError(e.path, f"{e.reason} (image id {img_id})") from None
        info = self.coco.imgs[img_id]
        height, width = image.shape[-2:]
        if (height, width) != (info["height"], info["width"]):
            raise BadImageError(self.image_path(index),
                                f"size {height}x{width} differs from the annotation file's "
                                f"{info['height']}x{info['width']} (image id {img_id})")
        target = {"boxes": torch.from_numpy(self._boxes_xyxy[index]).clone(),
                  "labels": torch.from_numpy(self._labels[index]).clone()}
        return image, target

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            if self._bad_flags[i]:
                continue
            try:
                image, target = self.load_raw(i)
            except BadImageError as e:
                if self.on_bad_image == "error":
                    raise
                self._bad_flags[i] = 1
                logger.warning("%s; skipped, using the next image", e)
                continue
            return self._finish(i, image, target)
        raise BadImageError(self.img_dir, "no image of the dataset could be decoded")

    def _finish(self, index: int, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        """Apply the transforms; wrap / unwrap tv_tensors; add image_id and sizes."""
        orig_size = (int(image.shape[-2]), int(image.shape[-1]))
        image = tv_tensors.Image(image)
        target["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=orig_size)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        image = image.as_subclass(Tensor).contiguous()
        boxes_xyxy = target["boxes"].as_subclass(Tensor).to(torch.float32).reshape(-1, 4)
        return image, {
            "boxes": boxes_xyxy,
            "labels": target["labels"].to(torch.int64),
            "image_id": int(self.image_ids[index]),
            "orig_size": orig_size,
            "size": (int(image.shape[-2]), int(image.shape[-1])),
        }
