"""Loss functions shared by the query head's criterion."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss_sum(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sum over all elements of the sigmoid focal loss; ``targets`` same shape as ``logits`` in [0, 1]."""
    logits = logits.float()
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


def mean_over_workers(value: float | Tensor, device: torch.device) -> Tensor:
    """Average a count over distributed workers (identity when torch.distributed is not initialised)."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
        t = t / dist.get_world_size()
    return t
