"""Hungarian matching of predictions to ground truth (one-to-one assignment)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from codetr.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from codetr.errors import NonFiniteCostError
from codetr.models.precision import upcast


@torch.no_grad()
def match_cost(logits: Tensor, boxes_cxcywh_norm: Tensor, gt_labels: Tensor, gt_boxes_cxcywh_norm: Tensor,
               scale_xyxy: Tensor, cls_weight: float, bbox_weight: float, giou_weight: float,
               alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Cost of assigning each prediction to each ground truth.

    Args:
        logits: [Q, C] class logits; boxes_cxcywh_norm: [Q, 4].
        gt_labels: [G]; gt_boxes_cxcywh_norm: [G, 4].
        scale_xyxy: [4] (w, h, w, h) of the image, for the GIoU on pixel boxes.
    Returns:
        [Q, G]: cls_weight * focal class cost + bbox_weight * L1 + giou_weight * (-GIoU).
    """
    prob = upcast(logits).sigmoid()
    eps = 1e-8
    neg_cost = -(1 - prob + eps).log() * (1 - alpha) * prob.pow(gamma)
    pos_cost = -(prob + eps).log() * alpha * (1 - prob).pow(gamma)
    cost_cls = pos_cost[:, gt_labels] - neg_cost[:, gt_labels]
    cost_bbox = torch.cdist(upcast(boxes_cxcywh_norm), upcast(gt_boxes_cxcywh_norm), p=1)
    cost = cls_weight * cost_cls + bbox_weight * cost_bbox
    if giou_weight:
        cost = cost - giou_weight * generalized_box_iou(box_cxcywh_to_xyxy(upcast(boxes_cxcywh_norm)) * scale_xyxy,
                                                        box_cxcywh_to_xyxy(upcast(gt_boxes_cxcywh_norm)) * scale_xyxy)
    return cost


@torch.no_grad()
def hungarian_match(logits: Tensor, boxes_cxcywh_norm: Tensor, gt_labels: list[Tensor],
                    gt_boxes_cxcywh_norm: list[Tensor], scales_xyxy: Tensor, cls_weight: float,
                    bbox_weight: float, giou_weight: float, alpha: float = 0.25,
                    gamma: float = 2.0) -> list[tuple[Tensor, Tensor]]:
    """Optimal one-to-one assignment per image.

    Args:
        logits: [B, Q, C]; boxes_cxcywh_norm: [B, Q, 4].
        gt_labels / gt_boxes_cxcywh_norm: per image [G_i] / [G_i, 4].
        scales_xyxy: [B, 4] (w, h, w, h) per image.
    Returns:
        per image (pred_idx [M_i], gt_idx [M_i]) int64 on the input's device, M_i = min(Q, G_i),
        sorted by pred_idx.
    """
    bs, num_queries = logits.shape[:2]
    sizes = [len(labels) for labels in gt_labels]
    device = logits.device
    if sum(sizes) == 0:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return [(empty, empty) for _ in range(bs)]
    # one batched cost matrix [B*Q, sum G], then each image's block is solved on its own
    all_labels = torch.cat(gt_labels)
    all_boxes = torch.cat(gt_boxes_cxcywh_norm)
    cost = match_cost(logits.flatten(0, 1), boxes_cxcywh_norm.flatten(0, 1), all_labels, all_boxes,
                      torch.ones(4, device=device), cls_weight, bbox_weight, 0.0, alpha, gamma)
    cost = cost.view(bs, num_queries, -1)
    result = []
    start = 0
    for i, size in enumerate(sizes):
        block = cost[i, :, start:start + size]
        if size and giou_weight:
            pred_xyxy = box_cxcywh_to_xyxy(upcast(boxes_cxcywh_norm[i])) * scales_xyxy[i]
            gt_xyxy = box_cxcywh_to_xyxy(upcast(gt_boxes_cxcywh_norm[i])) * scales_xyxy[i]
            block = block - giou_weight * generalized_box_iou(pred_xyxy, gt_xyxy)
        start += size
        block = block.cpu().numpy()
        if not np.isfinite(block).all():   # scipy would fail with "matrix contains invalid numeric entries"
            raise NonFiniteCostError(f"Hungarian matcher: {int((~np.isfinite(block)).sum())} non-finite cost(s) "
                                     f"for image {i} of the batch (the predictions are NaN / inf)")
        pred_idx, gt_idx = linear_sum_assignment(block)
        result.append((torch.as_tensor(pred_idx, dtype=torch.int64, device=device),
                       torch.as_tensor(gt_idx, dtype=torch.int64, device=device)))
    return result
