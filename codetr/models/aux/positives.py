"""From an auxiliary head's assignment to the customized positive queries of the query head.

Every auxiliary head hands over all its candidates (:class:`Candidates`: anchors or sampled
proposals, positives and negatives, dense over the batch). :func:`select_positive_queries`
turns them into a fixed number of query slots per image, as the official Co-DETR does:

* slots per image = ``max(min_slots, min(max_pos, largest positive count in the batch))``;
* an image with more positives than slots keeps a random subset (``torch.randperm``);
* ``padding="negatives"`` (official): the remaining slots take randomly drawn *negative*
  candidates of the same head with their real boxes and features, labelled background;
  every slot enters the classification loss, only positives the box losses, and all
  slots see each other in self-attention;
* ``padding="masked"`` (the official ``use_zero_padding`` variant, without its all-masked
  attention rows): the remaining slots are empty (zero box, background), out of every loss,
  and no real query attends to them.

Boxes are divided by the image's unpadded size and *not* clipped: an anchor may extend past
the border (stride-64 and -128 ATSS anchors are 512 and 1024 px wide).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from codetr.box_ops import box_xyxy_to_cxcywh

PaddingMode = Literal["negatives", "masked"]


@dataclass
class Candidates:
    """All assignment candidates of one auxiliary head over a batch of B images and N candidates.

    ``labels`` use ``num_classes`` for negatives (background) and -1 for slots that are no
    candidate at all (e.g. the padding of a per-image list); they are never drawn.
    """

    boxes_xyxy: Tensor           # [B, N, 4] or [N, 4] (shared anchors) input pixels, no gradient needed
    labels: Tensor               # [B, N] int64: class of a positive, num_classes = negative, -1 = none
    targets_xyxy: Tensor         # [B, N, 4] input pixels: the assigned gt box of a positive (anything else)
    feats: Tensor | None = None  # [B, N / anchors_per_location, C] features (keep their gradient), or None
    anchors_per_location: int = 1  # candidate n uses feature row n // anchors_per_location


@dataclass
class PositiveQueries:
    """The query slots of one auxiliary head, [B, P] per image (P >= 1 unless a head has no candidate)."""

    boxes_cxcywh_norm: Tensor    # [B, P, 4] candidate boxes / image size (detached, not clipped)
    labels: Tensor               # [B, P] int64, num_classes = background
    targets_cxcywh_norm: Tensor  # [B, P, 4] assigned gt boxes / image size (meaningful where ``positive``)
    positive: Tensor             # [B, P] bool: a real positive (box losses, the loss normaliser)
    in_loss: Tensor              # [B, P] bool: the slot enters the classification loss
    attended: Tensor             # [B, P] bool: other queries may attend to this slot (False = masked padding)
    feats: Tensor | None = None  # [B, P, C] per-slot features, or None


def _image_scale(image_sizes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype) -> Tensor:
    hw = torch.tensor(image_sizes, dtype=dtype, device=device).reshape(-1, 2)
    return torch.cat([hw.flip(-1), hw.flip(-1)], dim=-1)                          # [B, 4] (w, h, w, h)


def num_query_slots(num_positives: Sequence[int], max_pos: int, min_slots: int = 9) -> int:
    """Slots per image: ``max(min_slots, min(max_pos, largest positive count))``."""
    return max(min_slots, min(max_pos, max(num_positives, default=0)))


@torch.no_grad()
def _pick(labels: Tensor, num_classes: int, slots: int, padding: PaddingMode) -> tuple[Tensor, int]:
    """One image: indices of the chosen candidates (positives first) and how many are positives."""
    pos = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
    if pos.numel() > slots:
        pos = pos[torch.randperm(pos.numel(), device=labels.device)[:slots]]
    chosen = pos
    if padding == "negatives" and pos.numel() < slots:
        neg = (labels == num_classes).nonzero().squeeze(1)
        neg = neg[torch.randperm(neg.numel(), device=labels.device)[:slots - pos.numel()]]
        chosen = torch.cat([pos, neg])
    return chosen, int(pos.numel())


def select_positive_queries(cands: Candidates, num_classes: int, image_sizes: Sequence[tuple[int, int]],
                            max_pos: int, *, min_slots: int = 9,
                            padding: PaddingMode = "negatives") -> PositiveQueries:
    """:class:`Candidates` -> :class:`PositiveQueries` (see the module docstring for the rules).

    Random draws use the global torch RNG in the official order (per image: the positive subset,
    then the negatives), so they are deterministic under ``torch.manual_seed``.
    """
    labels_all = cands.labels
    b, n = labels_all.shape
    device = labels_all.device
    boxes_all = cands.boxes_xyxy.detach()
    if boxes_all.dim() == 2:
        boxes_all = boxes_all[None].expand(b, n, 4)
    targets_all = cands.targets_xyxy.detach()
    counts = ((labels_all >= 0) & (labels_all < num_classes)).sum(1).tolist()     # host sync, as the reference
    slots = num_query_slots(counts, max_pos, min_slots)
    scale = _image_scale(image_sizes, device, boxes_all.dtype)

    idx = torch.zeros(b, slots, dtype=torch.long, device=device)
    filled = torch.zeros(b, slots, dtype=torch.bool, device=device)
    positive = torch.zeros(b, slots, dtype=torch.bool, device=device)
    for i in range(b):
        chosen, num_pos = _pick(labels_all[i], num_classes, slots, padding)
        idx[i, :chosen.numel()] = chosen
        filled[i, :chosen.numel()] = True
        positive[i, :num_pos] = True

    idx4 = idx[..., None].expand(-1, -1, 4)
    boxes = box_xyxy_to_cxcywh(boxes_all.gather(1, idx4) / scale[:, None])
    targets = box_xyxy_to_cxcywh(targets_all.gather(1, idx4) / scale[:, None])
    labels = labels_all.gather(1, idx)
    empty = ~filled
    boxes = boxes.masked_fill(empty[..., None], 0.0)
    targets = targets.masked_fill(empty[..., None], 0.0)
    labels = labels.masked_fill(empty, num_classes)
    feats = None
    if cands.feats is not None:
        loc = idx // cands.anchors_per_location
        feats = cands.feats.gather(1, loc[..., None].expand(-1, -1, cands.feats.shape[-1]))
        feats = feats.masked_fill(empty[..., None], 0.0)
    return PositiveQueries(boxes_cxcywh_norm=boxes, labels=labels, targets_cxcywh_norm=targets, positive=positive,
                           in_loss=filled, attended=filled, feats=feats)


def candidates_from_lists(boxes_xyxy: Sequence[Tensor], labels: Sequence[Tensor], targets_xyxy: Sequence[Tensor],
                          feats: Sequence[Tensor] | None = None) -> Candidates:
    """Per-image lists ([n_i, 4], [n_i], [n_i, 4], optional [n_i, C]) -> dense :class:`Candidates`
    (slots beyond an image's list are labelled -1: never drawn)."""
    b = len(boxes_xyxy)
    n = max([x.shape[0] for x in boxes_xyxy], default=0)
    ref = boxes_xyxy[0]

    def pad(xs: Sequence[Tensor], tail: tuple[int, ...], dtype: torch.dtype, fill: float | int = 0) -> Tensor:
        out = torch.full((b, n) + tail, fill, dtype=dtype, device=ref.device)
        for i, x in enumerate(xs):
            out[i, :x.shape[0]] = x
        return out

    dense_feats = None if feats is None else pad(feats, (feats[0].shape[-1],), feats[0].dtype)
    return Candidates(pad(boxes_xyxy, (4,), ref.dtype), pad(labels, (), torch.long, -1),
                      pad(targets_xyxy, (4,), ref.dtype), dense_feats)
