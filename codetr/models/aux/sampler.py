"""Random positive / negative sampling of assigned candidates (mmdetection ``RandomSampler``).

Vectorised and free of host syncs: one random permutation, a running count of
positives (negatives) along it, and a threshold on the count.
"""
from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def random_sample(gt_inds: Tensor, num: int, pos_fraction: float) -> tuple[Tensor, Tensor]:
    """Sample up to ``int(num * pos_fraction)`` positives, then negatives up to ``num`` in total.

    gt_inds: [N] assignment (0 negative, -1 ignored, k > 0 positive).
    Returns (pos_mask, neg_mask), each [N] bool: the sampled positives / negatives.
    Uses the global torch RNG (deterministic under ``torch.manual_seed``).
    """
    n = gt_inds.shape[0]
    is_pos = gt_inds > 0
    is_neg = gt_inds == 0
    perm = torch.randperm(n, device=gt_inds.device)
    pos_rank = torch.empty_like(perm)
    neg_rank = torch.empty_like(perm)
    # rank of each candidate among the positives (negatives) in the random order, 1-based
    pos_rank[perm] = torch.cumsum(is_pos[perm].long(), 0)
    neg_rank[perm] = torch.cumsum(is_neg[perm].long(), 0)
    num_pos_expected = int(num * pos_fraction)
    pos_mask = is_pos & (pos_rank <= num_pos_expected)
    num_neg_expected = num - pos_mask.sum()                                        # tensor, no sync
    neg_mask = is_neg & (neg_rank <= num_neg_expected)
    return pos_mask, neg_mask


@torch.no_grad()
def sampled_slots(pos_mask: Tensor, neg_mask: Tensor, num: int) -> tuple[Tensor, Tensor]:
    """Fixed-size indices of the sampled candidates: positives first, then negatives.

    pos_mask, neg_mask: [N] bool. Returns (indices [S], slot_valid [S] bool) with
    S = min(num, N); slots beyond the sampled count hold unsampled candidates, marked invalid.
    """
    key = pos_mask.to(torch.int8) * 2 + neg_mask.to(torch.int8)
    s = min(num, key.shape[0])
    # stable sort keeps the candidates' order inside each group
    order = torch.sort(key, descending=True, stable=True).indices[:s]
    return order, key[order] > 0
