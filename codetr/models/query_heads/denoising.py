"""Contrastive denoising queries (DINO's CDN, as the official Co-DINO builds them).

Every ground-truth box is fed to the decoder ``2 x G`` times, as noised copies: in each of the G
groups a *positive* copy (small box noise, to be reconstructed) and a *negative* copy (larger noise,
to be classified as background). With dynamic groups, ``G = num_dn_queries // (largest gt count of
an image in the batch)`` (at least 1). Each group holds ``2 x M`` slots (M = that largest count):
image i's gt j sits at slot ``2 M g + j`` (positive) and ``2 M g + M + j`` (negative); slots beyond an
image's own count stay empty (zero content, box at the image centre) and count as background.

Noise: with probability ``label_noise / 2`` a copy's class is replaced by a uniformly drawn one;
each box corner moves by ``sign x magnitude x (w / 2, h / 2) x box_noise`` with magnitude in [0, 1)
for positives and [1, 2) for negatives, then the box is clipped to the image.

The self-attention mask keeps the matching queries from seeing any denoising query and the groups
from seeing each other. The random draws are, in order: one uniform per copy (label noise), one
class per noised copy, a sign per box coordinate, a magnitude per box coordinate (global torch RNG).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from codetr.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid
from codetr.models.precision import full_dtype


@dataclass
class DenoisingQueries:
    content: Tensor        # [B, pad, embed_dims] label embeddings of the noised classes (0 in empty slots)
    boxes_unact: Tensor    # [B, pad, 4] inverse-sigmoid of the noised cxcywh boxes (0 in empty slots)
    attn_mask: Tensor      # [pad + Q, pad + Q] bool, True = query i must not attend to query j
    num_groups: int        # G
    group_size: int        # 2 M slots per group (M = largest gt count in the batch)

    @property
    def pad_size(self) -> int:
        return self.num_groups * self.group_size


def num_dn_groups(max_gts: int, num_dn_queries: int) -> int:
    """Dynamic groups: ``num_dn_queries // max_gts``, at least 1 (1 when no image has a box)."""
    return max(1, num_dn_queries // max_gts) if max_gts > 0 else 1


def dn_attention_mask(num_groups: int, group_size: int, num_queries: int, device=None) -> Tensor:
    """[pad + Q, pad + Q] bool: matching queries cannot see denoising queries; a group sees only itself."""
    pad = num_groups * group_size
    mask = torch.zeros(pad + num_queries, pad + num_queries, dtype=torch.bool, device=device)
    mask[pad:, :pad] = True
    for g in range(num_groups):
        lo, hi = g * group_size, (g + 1) * group_size
        mask[lo:hi, :lo] = True
        mask[lo:hi, hi:pad] = True
    return mask


def build_denoising_queries(gt_labels: list[Tensor], gt_boxes_cxcywh_norm: list[Tensor], label_embedding: nn.Embedding,
                            num_classes: int, num_queries: int, num_dn_queries: int = 100,
                            label_noise: float = 0.5, box_noise: float = 1.0) -> DenoisingQueries:
    """CDN queries for a batch. gt_labels [G_i] int64, gt_boxes [G_i, 4] cxcywh normalised to each
    image's unpadded size; ``num_queries``: the matching queries that follow in the decoder."""
    device = label_embedding.weight.device
    dims = label_embedding.weight.shape[1]
    b = len(gt_labels)
    counts = [int(t.numel()) for t in gt_labels]
    max_gts = max(counts, default=0)
    groups = num_dn_groups(max_gts, num_dn_queries)
    pad = 2 * groups * max_gts
    labels = torch.cat(gt_labels).to(device)                                      # [N] all gts, image-major
    dtype = full_dtype(label_embedding.weight)
    boxes = torch.cat(gt_boxes_cxcywh_norm).to(device=device, dtype=dtype)        # [N, 4]
    image = torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(counts)])
    n = labels.numel()
    # 2G copies, copy-major: copy c = group c // 2, positive if c is even
    labels_rep = labels.repeat(2 * groups)
    boxes_rep = boxes.repeat(2 * groups, 1)
    noised_labels = labels_rep.clone()
    if label_noise > 0:
        p = torch.rand_like(labels_rep.float())
        chosen = torch.nonzero(p < label_noise * 0.5).view(-1)
        noised_labels.scatter_(0, chosen, torch.randint_like(chosen, 0, num_classes))
    noised_boxes = boxes_rep
    if box_noise > 0:
        xyxy = box_cxcywh_to_xyxy(boxes_rep)
        half_wh = boxes_rep[:, 2:].repeat(1, 2) / 2
        sign = torch.randint_like(boxes_rep, low=0, high=2) * 2.0 - 1.0
        magnitude = torch.rand_like(boxes_rep)
        negative = torch.arange(2 * groups, device=device).repeat_interleave(n) % 2 == 1   # odd copies
        magnitude = magnitude + negative[:, None].to(dtype)
        xyxy = (xyxy + magnitude * sign * half_wh * box_noise).clamp(min=0.0, max=1.0)
        noised_boxes = box_xyxy_to_cxcywh(xyxy)
    content = torch.zeros(b, pad, dims, device=device, dtype=label_embedding.weight.dtype)
    boxes_unact = torch.zeros(b, pad, 4, device=device, dtype=dtype)
    if n:
        within = torch.cat([torch.arange(c, device=device) for c in counts])      # gt j of its image
        slot = torch.cat([within + max_gts * c for c in range(2 * groups)])
        bid = image.repeat(2 * groups)
        content = content.index_put((bid, slot), label_embedding(noised_labels))
        boxes_unact = boxes_unact.index_put((bid, slot), inverse_sigmoid(noised_boxes, eps=1e-3))
    return DenoisingQueries(content, boxes_unact, dn_attention_mask(groups, 2 * max_gts, num_queries, device),
                            groups, 2 * max_gts)


def denoising_targets(gt_labels: list[Tensor], gt_boxes_cxcywh_norm: list[Tensor], dn: DenoisingQueries
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The positives of the denoising queries: (batch_idx [P], slot_idx [P], labels [P], boxes [P, 4]),
    P = G x total gts; every other slot is background."""
    batch_idx, slot_idx, labels, boxes = [], [], [], []
    for i, (lab, box) in enumerate(zip(gt_labels, gt_boxes_cxcywh_norm)):
        k = lab.numel()
        if k == 0:
            continue
        j = torch.arange(k, device=lab.device)
        for g in range(dn.num_groups):
            batch_idx.append(torch.full((k,), i, dtype=torch.long, device=lab.device))
            slot_idx.append(g * dn.group_size + j)
            labels.append(lab)
            boxes.append(box)
    if not batch_idx:
        device = dn.content.device
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, empty, torch.zeros(0, 4, device=device)
    return torch.cat(batch_idx), torch.cat(slot_idx), torch.cat(labels), torch.cat(boxes)
