"""Box format conversions and IoU-family functions (the one place for them).

Formats, named in variables: ``xyxy`` (x1, y1, x2, y2), ``cxcywh`` (centre, size);
``_norm`` means divided by the image's (unpadded) width / height.
"""
from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes_cxcywh: Tensor) -> Tensor:
    """[..., 4] cxcywh -> [..., 4] xyxy."""
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes_xyxy: Tensor) -> Tensor:
    """[..., 4] xyxy -> [..., 4] cxcywh."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes_xyxy: Tensor) -> Tensor:
    """[..., 4] xyxy -> [...] area (0 for degenerate boxes)."""
    wh = (boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou_union(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union: [N, 4], [M, 4] -> ([N, M], [N, M])."""
    area1 = box_area(boxes1_xyxy)
    area2 = box_area(boxes2_xyxy)
    lt = torch.max(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])
    rb = torch.min(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).eps), union


def box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Pairwise IoU: [N, 4], [M, 4] -> [N, M]."""
    return box_iou_union(boxes1_xyxy, boxes2_xyxy)[0]


def generalized_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Pairwise generalized IoU: [N, 4], [M, 4] -> [N, M] in [-1, 1]."""
    iou, union = box_iou_union(boxes1_xyxy, boxes2_xyxy)
    lt = torch.min(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])
    rb = torch.max(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing.clamp(min=torch.finfo(enclosing.dtype).eps)


def elementwise_generalized_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Generalized IoU of aligned pairs: [..., 4], [..., 4] -> [...]."""
    eps = torch.finfo(boxes1_xyxy.dtype).eps
    area1 = box_area(boxes1_xyxy)
    area2 = box_area(boxes2_xyxy)
    lt = torch.max(boxes1_xyxy[..., :2], boxes2_xyxy[..., :2])
    rb = torch.min(boxes1_xyxy[..., 2:], boxes2_xyxy[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    iou = inter / union.clamp(min=eps)
    lt_c = torch.min(boxes1_xyxy[..., :2], boxes2_xyxy[..., :2])
    rb_c = torch.max(boxes1_xyxy[..., 2:], boxes2_xyxy[..., 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    enclosing = wh_c[..., 0] * wh_c[..., 1]
    return iou - (enclosing - union) / enclosing.clamp(min=eps)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)) with x clamped to [eps, 1 - eps] (the reference's numerically safe form)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def aligned_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of row i of ``boxes1`` with row i of ``boxes2``: [N, 4] x [N, 4] -> [N] (union >= eps)."""
    lt = torch.maximum(boxes1_xyxy[:, :2], boxes2_xyxy[:, :2])
    rb = torch.minimum(boxes1_xyxy[:, 2:], boxes2_xyxy[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(boxes1_xyxy) + box_area(boxes2_xyxy) - inter
    return inter / union.clamp(min=eps)
