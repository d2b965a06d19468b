"""Soft-NMS (Bodla et al. 2017), linear, class-wise: what the official Co-DINO runs at test time.

Greedy: the highest-scoring remaining box is kept with its current score; every other remaining box
of the same class overlapping it by IoU > ``iou_threshold`` has its score multiplied by (1 - IoU);
boxes whose score falls below ``min_score`` are dropped. Classes never interact.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _iou_one_to_many(box: Tensor, boxes: Tensor) -> Tensor:
    lt = torch.maximum(box[:2], boxes[:, :2])
    rb = torch.minimum(box[2:], boxes[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (box[2:] - box[:2]).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    return inter / (area + areas - inter).clamp(min=1e-12)


@torch.no_grad()
def soft_nms(boxes_xyxy: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float,
             min_score: float = 1e-3) -> tuple[Tensor, Tensor]:
    """[N, 4], [N], [N] -> (indices of the kept boxes [K] in the order kept, their decayed scores [K])."""
    scores = scores.clone().float()
    alive = torch.ones_like(scores, dtype=torch.bool)
    keep, kept_scores = [], []
    neg_inf = torch.tensor(float("-inf"), device=scores.device)
    while bool(alive.any()):
        i = int(torch.where(alive, scores, neg_inf).argmax())
        keep.append(i)
        kept_scores.append(scores[i].clone())
        alive[i] = False
        others = (alive & (labels == labels[i])).nonzero().squeeze(1)
        if others.numel():
            iou = _iou_one_to_many(boxes_xyxy[i].float(), boxes_xyxy[others].float())
            decay = torch.where(iou > iou_threshold, 1.0 - iou, torch.ones_like(iou))
            scores[others] = scores[others] * decay
            alive[others] = scores[others] >= min_score
    if not keep:
        return torch.zeros(0, dtype=torch.long, device=scores.device), scores.new_zeros(0)
    return torch.tensor(keep, dtype=torch.long, device=scores.device), torch.stack(kept_scores)
