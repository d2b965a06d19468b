"""How many positives an auxiliary head's assignment gives each ground-truth box (no extra forward pass).

Counted from the :class:`Candidates` a head hands to the positive queries: a positive's target is its gt
box, so comparing the targets with the image's boxes tells which gt each positive serves. Faster R-CNN's
candidates are its sampled RoIs (ground truth added as proposals included), as the official code hands them
over. All counts stay on the device (no host sync); the loop averages them over ``train.log_every`` steps.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from codetr.models.aux.positives import Candidates


@torch.no_grad()
def assignment_stats(candidates: Candidates, gt_boxes: Sequence[Tensor], num_classes: int) -> dict[str, Tensor]:
    """``pos_per_gt``: positives per gt box over the batch; ``gt_without_pos``: the share of gt boxes with
    no positive at all (both 0 for a batch without boxes)."""
    labels = candidates.labels
    device = labels.device
    positives = torch.zeros((), device=device)
    uncovered = torch.zeros((), device=device)
    num_gt = sum(int(b.shape[0]) for b in gt_boxes)
    for i, boxes in enumerate(gt_boxes):
        if boxes.shape[0] == 0:
            continue
        pos = (labels[i] >= 0) & (labels[i] < num_classes)                          # [N]
        targets = candidates.targets_xyxy[i].to(boxes.dtype)
        serves = (torch.cdist(targets, boxes.to(targets.device), p=1) < 1e-3) & pos[:, None]   # [N, G]
        per_gt = serves.sum(0)
        positives = positives + per_gt.sum()
        uncovered = uncovered + (per_gt == 0).sum()
    denominator = max(num_gt, 1)
    return {"pos_per_gt": positives.float() / denominator, "gt_without_pos": uncovered.float() / denominator}
