"""Test-time detections of the auxiliary heads: each branch evaluated on its own.

The settings follow the official Co-Deformable-DETR ``test_cfg`` (the list after the query head's):

* one-stage heads (ATSS, and here also FCOS and RetinaNet): per level the ``nms_pre`` = 1000 best
  (location, class) pairs with a score above ``score_thr`` = 0, boxes decoded and clipped to the
  image, scores multiplied by the centerness where the head has one (ATSS, FCOS), class-wise NMS at
  IoU 0.6, the ``max_per_img`` = 100 best kept;
* Faster R-CNN: RPN proposals with ``nms_pre`` = 1000 per level, NMS 0.7 inside each level and the
  1000 best of an image (never more than the config's training ``rpn_pre_nms_top_n`` /
  ``rpn_post_nms_top_n``: the official recipe trains with 4000 / 1000, so its test values stay; a reduced
  recipe such as the tiny one tests with its own smaller numbers); the RoI head's softmax scores (background dropped) and class-specific boxes,
  clipped, pairs above ``score_thr`` = 0, class-wise NMS at IoU 0.5, the 100 best kept.

Every function returns per image ``{"boxes": [n, 4] xyxy input pixels, "scores": [n], "labels": [n]}``,
what the detector returns for its query head.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms


@dataclass(frozen=True)
class BranchTestConfig:
    """One branch's test-time filtering (the official ``test_cfg`` entries)."""
    nms_pre: int = 1000          # candidates kept per level before NMS (one-stage) / RPN proposals per level
    score_thr: float = 0.0       # (location, class) pairs with a score above this
    nms_iou: float = 0.6         # class-wise NMS
    max_per_img: int = 100       # detections per image
    rpn_max_per_img: int = 1000  # two-stage: proposals per image after the RPN's NMS
    rpn_nms_iou: float = 0.7     # two-stage: the RPN's NMS inside each level


ONE_STAGE_TEST = BranchTestConfig(nms_pre=1000, score_thr=0.0, nms_iou=0.6, max_per_img=100)
TWO_STAGE_TEST = BranchTestConfig(nms_pre=1000, score_thr=0.0, nms_iou=0.5, max_per_img=100,
                                  rpn_max_per_img=1000, rpn_nms_iou=0.7)


def level_topk(scores: Tensor, score_thr: float, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """[N, K] scores of one level -> the ``k`` best (location, class) pairs above ``score_thr``:
    (scores [n], location index [n], labels [n]), best first."""
    flat = scores.flatten()
    keep = (flat > score_thr).nonzero().squeeze(1)
    values = flat[keep]
    n = min(k, values.numel())
    values, order = values.sort(descending=True)
    idx = keep[order[:n]]
    num_classes = scores.shape[1]
    return values[:n], idx // num_classes, idx % num_classes


def class_nms(boxes_xyxy: Tensor, scores: Tensor, labels: Tensor, iou: float, max_per_img: int) -> dict[str, Tensor]:
    """Class-wise NMS, then the ``max_per_img`` best, as a detections dict."""
    if boxes_xyxy.numel() == 0:
        return {"boxes": boxes_xyxy.reshape(0, 4), "scores": scores.reshape(0), "labels": labels.reshape(0)}
    keep = batched_nms(boxes_xyxy.float(), scores.float(), labels, iou)[:max_per_img]
    return {"boxes": boxes_xyxy[keep], "scores": scores[keep], "labels": labels[keep]}


def clip_boxes(boxes_xyxy: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip [..., 4] xyxy boxes to an image of (h, w)."""
    h, w = size
    limit = boxes_xyxy.new_tensor([w, h, w, h])
    return torch.minimum(boxes_xyxy.clamp(min=0), limit)


def dense_detections(level_scores: Sequence[Tensor], level_boxes: Sequence, level_factors: Sequence[Tensor] | None,
                     size: tuple[int, int], cfg: BranchTestConfig = ONE_STAGE_TEST) -> dict[str, Tensor]:
    """One image of a one-stage head.

    level_scores: per level [N_l, K] class probabilities; level_boxes: per level a function
    ``index [n] -> [n, 4] xyxy`` decoding the chosen locations (only those are decoded);
    level_factors: per level [N_l] score factors (centerness probabilities) or None.
    """
    boxes, scores, labels = [], [], []
    for level, (score, decode) in enumerate(zip(level_scores, level_boxes)):
        value, loc, label = level_topk(score, cfg.score_thr, cfg.nms_pre)
        if level_factors is not None:
            value = value * level_factors[level][loc]
        boxes.append(clip_boxes(decode(loc), size))
        scores.append(value)
        labels.append(label)
    return class_nms(torch.cat(boxes), torch.cat(scores), torch.cat(labels), cfg.nms_iou, cfg.max_per_img)


def per_image_maps(maps: Sequence[Tensor], image: int, channels: int) -> list[Tensor]:
    """Per level [B, A * channels, H, W] -> per level [H * W * A, channels] of one image
    (location-major, anchor-minor: the order of the anchor generator)."""
    return [m[image].permute(1, 2, 0).reshape(-1, channels) for m in maps]
