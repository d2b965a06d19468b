"""Test-time augmentation of the query head's detections (``eval.tta``).

Each image is also seen flipped left-right (``flip``), or at every factor of ``eval.tta_scales`` both
as it is and flipped (``multiscale``); every view's detections are mapped back to the image's pixels
(un-flipped, divided by the view's scale, clipped), put together, and merged by class-wise NMS at
``eval.tta_nms_iou``; the ``max_per_img`` best stay. ``none`` is the plain forward pass. The
official Co-DETR has no test-time augmentation; this is the usual mmdetection-style merge
(concatenate, NMS), for a user who trades inference time for AP.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

TTA_MODES = ("none", "flip", "multiscale")


def tta_views(mode: str, scales: Sequence[float]) -> list[tuple[float, bool]]:
    """The ``(scale factor, flipped)`` views of one mode, the plain view first."""
    if mode == "none":
        return [(1.0, False)]
    if mode == "flip":
        return [(1.0, False), (1.0, True)]
    if mode == "multiscale":
        ordered = sorted(set(float(s) for s in scales), key=lambda s: (s != 1.0, s))
        return [(s, flip) for s in ordered for flip in (False, True)]
    raise ValueError(f"unknown test-time augmentation {mode!r}; choose from {', '.join(TTA_MODES)}")


def view_of(image: Tensor, scale: float, flip: bool) -> Tensor:
    """``image`` [3, H, W] resized by ``scale`` (bilinear, at least 1 pixel a side) and flipped left-right."""
    if scale != 1.0:
        h, w = image.shape[-2:]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0].to(image.dtype)
    return image.flip(-1) if flip else image


def boxes_to_image(boxes: Tensor, view_size: tuple[int, int], image_size: tuple[int, int], flip: bool) -> Tensor:
    """xyxy ``boxes`` in a view's pixels -> the original image's pixels, clipped to it."""
    vh, vw = view_size
    h, w = image_size
    if flip:
        boxes = torch.stack([vw - boxes[:, 2], boxes[:, 1], vw - boxes[:, 0], boxes[:, 3]], dim=-1)
    factors = boxes.new_tensor([w / vw, h / vh, w / vw, h / vh])
    boxes = boxes * factors
    return torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                        boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=-1)


def merge_detections(parts: list[dict[str, Tensor]], nms_iou: float, max_per_img: int) -> dict[str, Tensor]:
    """One image's detections from several views: concatenated, class-wise NMS, the best ``max_per_img``."""
    boxes = torch.cat([p["boxes"].float() for p in parts])
    scores = torch.cat([p["scores"].float() for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    keep = batched_nms(boxes, scores, labels, nms_iou)[:max_per_img]     # sorted by decreasing score
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


@torch.no_grad()
def tta_detections(model: nn.Module, images: list[Tensor], mode: str, scales: Sequence[float] = (1.0,),
                   nms_iou: float = 0.6, max_per_img: int | None = None,
                   plain: list[dict[str, Tensor]] | None = None) -> list[dict[str, Tensor]]:
    """The query head's detections of ``images`` under ``mode`` (``model(images)`` in eval mode for ``none``).

    ``plain``: the detections of the plain view when the caller already has them (``model(images)``, or
    the query head's of ``predict_all``), so that view is not run again. ``max_per_img`` defaults to the
    number of detections a view gives an image (the query head's fixed top-k).
    """
    views = tta_views(mode, scales)
    if views == [(1.0, False)]:
        return plain if plain is not None else model(images)
    sizes = [tuple(int(v) for v in img.shape[-2:]) for img in images]
    parts: list[list[dict[str, Tensor]]] = [[] for _ in images]
    for scale, flip in views:
        if (scale, flip) == (1.0, False) and plain is not None:
            batch, found = images, plain
        else:
            batch = [view_of(img, scale, flip) for img in images]
            found = model(batch)
        for i, det in enumerate(found):
            view_size = tuple(int(v) for v in batch[i].shape[-2:])
            parts[i].append({"boxes": boxes_to_image(det["boxes"].float(), view_size, sizes[i], flip),
                             "scores": det["scores"], "labels": det["labels"]})
    limit = max_per_img if max_per_img is not None else max([1] + [len(d["scores"]) for p in parts for d in p])
    return [merge_detections(p, nms_iou, limit) for p in parts]
