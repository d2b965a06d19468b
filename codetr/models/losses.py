"""Loss functions shared by the query head's criterion."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from codetr.models.precision import upcast


def sigmoid_focal_loss_sum(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sum over all elements of the sigmoid focal loss; ``targets`` same shape as ``logits`` in [0, 1]."""
    logits = upcast(logits)
    targets = targets.to(logits.dtype)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


def quality_focal_loss_sum(logits: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0) -> Tensor:
    """Sum of the Quality Focal Loss (Li et al. 2020, GFL) over all rows and classes.

    logits [N, C]; labels [N] (a class, or C = background); scores [N] the quality target of a row's
    class (IoU of its box), ignored for background. A class channel that is not the row's label is a
    negative: BCE(p, 0) x p^beta; the label's channel: BCE(p, score) x |score - p|^beta.
    """
    logits = upcast(logits)
    prob = logits.sigmoid()
    num_classes = logits.shape[-1]
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * prob.pow(beta)
    pos = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
    if pos.numel():
        cls = labels[pos]
        score = scores[pos].to(logits.dtype)
        pos_logit = logits[pos, cls]
        pos_loss = F.binary_cross_entropy_with_logits(pos_logit, score, reduction="none") * \
            (score - prob[pos, cls]).abs().pow(beta)
        loss = loss.index_put((pos, cls), pos_loss)
    return loss.sum()


def mean_over_workers(value: float | Tensor, device: torch.device) -> Tensor:
    """Average a count over distributed workers (identity when torch.distributed is not initialised)."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
        t = t / dist.get_world_size()
    return t
