"""Label assignment of anchors / proposals / points to ground-truth boxes (all under ``no_grad``).

Every assigner returns ``gt_inds`` [N] int64 with mmdetection's convention:

* ``0``  negative (background),
* ``-1`` ignored (no loss),
* ``k > 0`` positive, assigned to ground truth ``k - 1``.

Invalid candidates (anchors whose cell lies in the padding) are never positive; the
caller gives them zero weight.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from codetr.box_ops import box_iou

NEGATIVE = 0
IGNORE = -1
_INF = 1e8


@torch.no_grad()
def max_iou_assign(
    boxes_xyxy: Tensor,
    gt_boxes_xyxy: Tensor,
    *,
    pos_iou_thr: float,
    neg_iou_thr: float,
    min_pos_iou: float = 0.0,
    match_low_quality: bool = True,
    valid: Tensor | None = None,
) -> Tensor:
    """MaxIoU assignment (mmdetection ``MaxIoUAssigner``, ``gt_max_assign_all=True``).

    boxes_xyxy: [N, 4] candidates; gt_boxes_xyxy: [G, 4]; valid: optional [N] bool.
    Rules: max IoU < neg_iou_thr -> 0; max IoU >= pos_iou_thr -> its best gt; other -> -1.
    With ``match_low_quality`` every gt whose best IoU is >= min_pos_iou (and > 0) also claims all
    candidates that reach that best IoU (a later gt overwrites an earlier one).
    Returns gt_inds [N] int64.
    """
    num_boxes, num_gts = boxes_xyxy.shape[0], gt_boxes_xyxy.shape[0]
    if num_gts == 0 or num_boxes == 0:
        gt_inds = torch.zeros(num_boxes, dtype=torch.long, device=boxes_xyxy.device)
        return gt_inds if valid is None else gt_inds.masked_fill(~valid, IGNORE)
    overlaps = box_iou(gt_boxes_xyxy, boxes_xyxy)                                  # [G, N]
    if valid is not None:
        overlaps = overlaps.masked_fill(~valid[None, :], -1.0)
    max_overlaps, argmax_overlaps = overlaps.max(dim=0)                            # [N]
    is_neg = (max_overlaps >= 0) & (max_overlaps < neg_iou_thr)
    gt_inds = torch.where(is_neg, NEGATIVE, IGNORE).long()
    pos = max_overlaps >= pos_iou_thr
    gt_inds = torch.where(pos, argmax_overlaps + 1, gt_inds)
    if match_low_quality:
        gt_max = overlaps.max(dim=1).values                                        # [G]
        # gt_max > 0 also: a gt overlapping nothing (e.g. degenerate) must not claim every IoU-0 box
        ok = (gt_max >= min_pos_iou) & (gt_max > 0)
        claims = (overlaps == gt_max[:, None]) & ok[:, None]                       # [G, N]
        if valid is not None:
            claims &= valid[None, :]
        gt_ids = torch.arange(1, num_gts + 1, device=boxes_xyxy.device)[:, None]
        # the loop "for each gt in order: claim its best candidates" lets the last gt win
        last_claim = torch.where(claims, gt_ids, torch.zeros_like(gt_ids)).max(dim=0).values   # [N]
        gt_inds = torch.where(last_claim > 0, last_claim, gt_inds)
    if valid is not None:
        gt_inds = torch.where(valid, gt_inds, torch.full_like(gt_inds, IGNORE))
    return gt_inds


@torch.no_grad()
def atss_assign(
    anchors_xyxy: Tensor,
    num_level_anchors: Sequence[int],
    gt_boxes_xyxy: Tensor,
    *,
    topk: int = 9,
    valid: Tensor | None = None,
) -> Tensor:
    """Adaptive Training Sample Selection (Zhang et al. 2020, mmdetection ``ATSSAssigner``).

    anchors_xyxy: [N, 4] all levels concatenated, ``num_level_anchors`` per level; gt: [G, 4];
    valid: optional [N] bool (invalid anchors are treated as absent).
    For each gt: on each level the ``topk`` valid anchors whose centres are closest to the gt
    centre are candidates; the IoU threshold is mean + std (unbiased) of the candidates' IoUs;
    a candidate is positive when its IoU >= threshold and its centre lies inside the gt
    (margin 0.01). An anchor positive for several gts takes the one of highest IoU.
    Returns gt_inds [N] int64 (0 negative, k > 0 gt k - 1; invalid anchors -1).
    """
    num_anchors, num_gts = anchors_xyxy.shape[0], gt_boxes_xyxy.shape[0]
    device = anchors_xyxy.device
    if valid is None:
        valid = torch.ones(num_anchors, dtype=torch.bool, device=device)
    if num_gts == 0 or num_anchors == 0:
        return torch.where(valid, 0, IGNORE).long()
    overlaps = box_iou(anchors_xyxy, gt_boxes_xyxy)                                # [N, G]
    anchor_ctr = (anchors_xyxy[:, :2] + anchors_xyxy[:, 2:]) / 2                   # [N, 2]
    gt_ctr = (gt_boxes_xyxy[:, :2] + gt_boxes_xyxy[:, 2:]) / 2                     # [G, 2]
    distances = torch.cdist(anchor_ctr, gt_ctr)                                    # [N, G]
    # invalid anchors sort last, so the top-k valid ones are the candidates
    distances = distances.masked_fill(~valid[:, None], _INF)

    candidate_idxs = []
    start = 0
    for n in num_level_anchors:
        k = min(topk, n)
        if k > 0:
            idx = distances[start:start + n].topk(k, dim=0, largest=False).indices    # [k, G]
            candidate_idxs.append(idx + start)
        start += n
    candidate_idxs = torch.cat(candidate_idxs, dim=0)                              # [K, G]
    gt_range = torch.arange(num_gts, device=device)
    cand_overlaps = overlaps[candidate_idxs, gt_range[None, :]]                    # [K, G]
    cand_valid = valid[candidate_idxs]                                             # [K, G]

    # mean + unbiased std of the IoUs of the valid candidates, per gt
    n_valid = cand_valid.sum(0).clamp(min=1).to(overlaps.dtype)                    # [G]
    masked = torch.where(cand_valid, cand_overlaps, torch.zeros_like(cand_overlaps))
    mean = masked.sum(0) / n_valid
    var = torch.where(cand_valid, (cand_overlaps - mean) ** 2, torch.zeros_like(cand_overlaps)).sum(0)
    std = (var / (n_valid - 1).clamp(min=1)).sqrt()
    std = torch.where(n_valid > 1, std, torch.full_like(std, float("nan")))       # torch.std of 1 value
    is_pos = (cand_overlaps >= (mean + std)[None, :]) & cand_valid

    # the candidate's centre must lie inside the gt
    cand_ctr = anchor_ctr[candidate_idxs]                                          # [K, G, 2]
    lt = cand_ctr - gt_boxes_xyxy[None, :, :2]
    rb = gt_boxes_xyxy[None, :, 2:] - cand_ctr
    is_in_gt = torch.cat([lt, rb], dim=-1).min(dim=-1).values > 0.01               # [K, G]
    is_pos &= is_in_gt

    # an anchor chosen by several gts goes to the one with the highest IoU
    pos_src = torch.where(is_pos, cand_overlaps, torch.full_like(cand_overlaps, -_INF))
    pos_overlaps = torch.full_like(overlaps, -_INF).scatter_reduce(
        0, candidate_idxs, pos_src, reduce="amax")                                 # [N, G]
    max_overlaps, argmax = pos_overlaps.max(dim=1)
    gt_inds = torch.where(max_overlaps > -_INF, argmax + 1, torch.zeros_like(argmax))
    return torch.where(valid, gt_inds, torch.full_like(gt_inds, IGNORE))


@torch.no_grad()
def fcos_assign(
    points_xy: Tensor,
    num_level_points: Sequence[int],
    strides: Sequence[int],
    regress_ranges: Sequence[tuple[float, float]],
    gt_boxes_xyxy: Tensor,
    *,
    center_sampling: bool = True,
    center_radius: float = 1.5,
) -> Tensor:
    """FCOS assignment (Tian et al. 2019, mmdetection ``FCOSHead._get_target_single``).

    points_xy: [N, 2] all levels concatenated, ``num_level_points`` per level with the level's
    ``stride`` and ``regress_range`` (lo, hi); gt: [G, 4].
    A point is positive for a gt when (a) it lies inside the gt, or with center sampling inside
    the gt's centre box of half-size ``stride * center_radius`` (clipped to the gt), and (b) its
    largest distance to the gt's sides is in [lo, hi]. Several gts: the smallest area wins.
    Returns gt_inds [N] int64 (0 negative, k > 0 gt k - 1).
    """
    num_points, num_gts = points_xy.shape[0], gt_boxes_xyxy.shape[0]
    device = points_xy.device
    if num_gts == 0 or num_points == 0:
        return torch.zeros(num_points, dtype=torch.long, device=device)
    counts = torch.tensor(list(num_level_points), device=device)
    point_stride = torch.repeat_interleave(torch.tensor(list(strides), dtype=points_xy.dtype, device=device), counts)
    ranges = torch.repeat_interleave(torch.tensor(list(regress_ranges), dtype=points_xy.dtype, device=device),
                                     counts, dim=0)                                # [N, 2]
    gt = gt_boxes_xyxy[None]                                                       # [1, G, 4]
    xy = points_xy[:, None, :]                                                     # [N, 1, 2]
    ltrb = torch.cat([xy - gt[..., :2], gt[..., 2:] - xy], dim=-1)                 # [N, G, 4]
    if center_sampling:
        gt_ctr = (gt[..., :2] + gt[..., 2:]) / 2                                   # [1, G, 2]
        radius = (point_stride * center_radius)[:, None, None]                     # [N, 1, 1]
        center_lt = torch.maximum(gt_ctr - radius, gt[..., :2])
        center_rb = torch.minimum(gt_ctr + radius, gt[..., 2:])
        inside = torch.cat([xy - center_lt, center_rb - xy], dim=-1).min(dim=-1).values > 0
    else:
        inside = ltrb.min(dim=-1).values > 0                                       # [N, G]
    max_dist = ltrb.max(dim=-1).values
    in_range = (max_dist >= ranges[:, :1]) & (max_dist <= ranges[:, 1:])
    areas = ((gt_boxes_xyxy[:, 2] - gt_boxes_xyxy[:, 0]) * (gt_boxes_xyxy[:, 3] - gt_boxes_xyxy[:, 1]))
    areas = areas[None].expand(num_points, num_gts).masked_fill(~(inside & in_range), _INF)
    min_area, min_idx = areas.min(dim=1)
    return torch.where(min_area < _INF, min_idx + 1, torch.zeros_like(min_idx))
