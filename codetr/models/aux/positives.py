"""The positives an auxiliary head hands to the customized positive queries.

Every head keeps its candidates dense ([B, N] with a positive mask); :func:`gather_positives`
picks at most ``max_pos`` of them per image (a random subset when there are more,
deterministic under ``torch.manual_seed``), pads to the batch's largest count and
normalises by each image's unpadded size. :func:`pad_positives` does the same from
per-image lists.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from codetr.box_ops import box_xyxy_to_cxcywh


@dataclass
class Positives:
    """Positive boxes of one auxiliary head, padded over the batch (P may be 0)."""

    boxes_cxcywh_norm: Tensor    # [B, P, 4] positive anchors / proposals (detached), clipped to the image
    labels: Tensor               # [B, P] int64 assigned class in [0, num_classes)
    targets_cxcywh_norm: Tensor  # [B, P, 4] assigned ground-truth boxes
    mask: Tensor                 # [B, P] bool: True = real positive, False = padding
    feats: Tensor | None = None  # [B, P, C] per-positive features (not detached), or None


def _size_xyxy(image_sizes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype) -> Tensor:
    hw = torch.tensor(image_sizes, dtype=dtype, device=device).reshape(-1, 2)
    return torch.cat([hw.flip(-1), hw.flip(-1)], dim=-1)                          # [B, 4] (w, h, w, h)


def _normalise(boxes_xyxy: Tensor, size_xyxy: Tensor) -> Tensor:
    """[B, P, 4] xyxy pixels, [B, 4] -> [B, P, 4] cxcywh in [0, 1] (clipped to the image)."""
    size = size_xyxy[:, None, :]
    boxes = torch.minimum(boxes_xyxy.clamp(min=0), size)
    return box_xyxy_to_cxcywh(boxes / size)


@torch.no_grad()
def _select(pos_mask: Tensor, max_pos: int) -> tuple[Tensor, Tensor]:
    """[B, N] mask -> (indices [B, P], valid [B, P]); a random subset where an image has more than max_pos."""
    counts = pos_mask.sum(dim=1)
    p = int(counts.max().clamp(max=max_pos)) if pos_mask.numel() else 0           # the one host sync
    if p == 0:
        empty = torch.zeros(pos_mask.shape[0], 0, dtype=torch.long, device=pos_mask.device)
        return empty, empty.bool()
    # positives get a random key in [1, 2), others 0: top-p keys = a uniform random subset
    key = torch.where(pos_mask, 1.0 + torch.rand(pos_mask.shape, device=pos_mask.device),
                      torch.zeros((), device=pos_mask.device))
    idx = key.topk(p, dim=1).indices                                              # [B, P]
    return idx, pos_mask.gather(1, idx)


def gather_positives(
    pos_mask: Tensor,
    boxes_xyxy: Tensor,
    labels: Tensor,
    targets_xyxy: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    max_pos: int,
    feats: Tensor | None = None,
    anchors_per_location: int = 1,
) -> Positives:
    """Dense candidates -> :class:`Positives`.

    pos_mask: [B, N] bool; boxes_xyxy: [B, N, 4] or [N, 4] (shared anchors), input pixels;
    labels: [B, N] int64; targets_xyxy: [B, N, 4] input pixels; image_sizes: per image unpadded (h, w);
    feats: optional [B, N / anchors_per_location, C], one vector per location (candidate n uses
    location n // anchors_per_location).
    """
    b, n = pos_mask.shape
    idx, valid = _select(pos_mask, max_pos)
    if boxes_xyxy.dim() == 2:
        boxes_xyxy = boxes_xyxy[None].expand(b, n, 4)
    idx4 = idx[..., None].expand(-1, -1, 4)
    size = _size_xyxy(image_sizes, boxes_xyxy.device, boxes_xyxy.dtype)
    boxes = _normalise(boxes_xyxy.detach().gather(1, idx4), size)
    targets = _normalise(targets_xyxy.detach().gather(1, idx4), size)
    lab = labels.gather(1, idx)
    out_feats = None
    if feats is not None:
        loc = idx // anchors_per_location
        out_feats = feats.gather(1, loc[..., None].expand(-1, -1, feats.shape[-1]))
    # padding slots: a harmless box, label 0
    zero_box = boxes.new_tensor([0.5, 0.5, 1.0, 1.0])
    vm = valid[..., None]
    return Positives(
        boxes_cxcywh_norm=torch.where(vm, boxes, zero_box),
        labels=torch.where(valid, lab, torch.zeros_like(lab)),
        targets_cxcywh_norm=torch.where(vm, targets, zero_box),
        mask=valid,
        feats=None if out_feats is None else torch.where(vm, out_feats, torch.zeros_like(out_feats)),
    )


def pad_positives(
    boxes_xyxy: Sequence[Tensor],
    labels: Sequence[Tensor],
    targets_xyxy: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    max_pos: int,
    feats: Sequence[Tensor] | None = None,
) -> Positives:
    """Per-image lists ([n_i, 4] xyxy, [n_i], [n_i, 4] xyxy, optional [n_i, C]) -> :class:`Positives`."""
    b = len(boxes_xyxy)
    n = max([x.shape[0] for x in boxes_xyxy], default=0)
    ref = boxes_xyxy[0]

    def pad(xs: Sequence[Tensor], tail: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        out = torch.zeros((b, n) + tail, dtype=dtype, device=ref.device)
        for i, x in enumerate(xs):
            out[i, :x.shape[0]] = x
        return out

    mask = torch.zeros(b, n, dtype=torch.bool, device=ref.device)
    for i, x in enumerate(boxes_xyxy):
        mask[i, :x.shape[0]] = True
    dense_feats = None
    if feats is not None:
        dense_feats = pad(feats, (feats[0].shape[-1],), feats[0].dtype)
    return gather_positives(
        mask, pad(boxes_xyxy, (4,), ref.dtype), pad(labels, (), torch.long), pad(targets_xyxy, (4,), ref.dtype),
        image_sizes, max_pos, dense_feats)
