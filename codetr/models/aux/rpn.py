"""Region proposal network: the first stage of the ``faster_rcnn`` auxiliary head.

Anchors: 3 scales per octave from base 4 x stride, ratios 0.5 / 1 / 2 (9 per location).
Assignment: MaxIoU 0.7 / 0.3 with low-quality matches (min IoU 0.3); a random sample of 256
anchors per image, half positive at most. Losses: binary cross-entropy and L1 on the
deltas (stds 1), both normalised by the number of sampled anchors (the reference's
``num_total_pos + num_total_neg`` with ``sampling``). Proposals: per level the 4000 best
anchors, decoded and clipped to the image, NMS 0.7 inside each level, the 1000 best of an image kept.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from codetr.config.aux_schema import FasterRCNNConfig
from codetr.models.aux.anchors import AnchorGenerator
from codetr.models.aux.assigners import max_iou_assign
from codetr.models.aux.base import PYRAMID_STRIDES, flatten_levels, init_conv_head
from codetr.models.aux.box_coder import DeltaXYWHCoder
from codetr.models.aux.sampler import random_sample


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 objectness (one logit per anchor) and 1x1 deltas."""

    def __init__(self, in_channels: int, cfg: FasterRCNNConfig | None = None, *,
                 strides: Sequence[int] = PYRAMID_STRIDES) -> None:
        super().__init__()
        cfg = cfg or FasterRCNNConfig()
        self.cfg = cfg
        self.anchor_generator = AnchorGenerator(strides=strides, ratios=cfg.rpn_ratios,
                                                octave_base_scale=cfg.rpn_octave_base_scale,
                                                scales_per_octave=cfg.rpn_scales_per_octave)
        a = self.anchor_generator.num_base_anchors
        self.rpn_conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(in_channels, a, 1)
        self.rpn_reg = nn.Conv2d(in_channels, a * 4, 1)
        self.coder = DeltaXYWHCoder()
        init_conv_head(self)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """feats: per level [B, C, H, W] -> per level objectness logits [B, A, H, W] and deltas [B, 4A, H, W]."""
        logits, deltas = [], []
        for x in feats:
            x = F.relu(self.rpn_conv(x))
            logits.append(self.rpn_cls(x))
            deltas.append(self.rpn_reg(x))
        return logits, deltas

    @torch.no_grad()
    def assign(self, anchors_xyxy: Tensor, valid: Tensor,
               gt_boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """anchors_xyxy [N, 4]; valid [B, N]; gt_boxes per image [G_i, 4].

        Returns sampled pos_mask, sampled neg_mask [B, N] bool and targets_xyxy [B, N, 4]
        (the anchor itself where not positive)."""
        c = self.cfg
        pos_masks, neg_masks, targets = [], [], []
        for i, boxes in enumerate(gt_boxes):
            gt_inds = max_iou_assign(anchors_xyxy, boxes, pos_iou_thr=c.rpn_pos_iou_thresh,
                                     neg_iou_thr=c.rpn_neg_iou_thresh, min_pos_iou=c.rpn_min_pos_iou,
                                     match_low_quality=True, valid=valid[i])
            pos, neg = random_sample(gt_inds, c.rpn_batch_size, c.rpn_pos_fraction)
            pos_masks.append(pos)
            neg_masks.append(neg)
            if boxes.shape[0] == 0:
                targets.append(anchors_xyxy.clone())
            else:
                targets.append(torch.where(pos[:, None], boxes[(gt_inds - 1).clamp(min=0)], anchors_xyxy))
        return torch.stack(pos_masks), torch.stack(neg_masks), torch.stack(targets)

    def loss(self, outputs: tuple[list[Tensor], list[Tensor]], anchors_xyxy: Tensor, pos_mask: Tensor,
             neg_mask: Tensor, targets_xyxy: Tensor) -> dict[str, Tensor]:
        """Keys loss_cls, loss_bbox; normalised by the sampled count (each image counting >= 1 pos and neg)."""
        logits = flatten_levels(outputs[0], 1)[..., 0]                             # [B, N]
        deltas = flatten_levels(outputs[1], 4)                                     # [B, N, 4]
        num_samples = (pos_mask.sum(1).clamp(min=1) + neg_mask.sum(1).clamp(min=1)).sum().float()
        sampled = pos_mask | neg_mask
        bce = F.binary_cross_entropy_with_logits(logits, pos_mask.to(logits.dtype), reduction="none")
        loss_cls = torch.where(sampled, bce, torch.zeros_like(bce)).sum() / num_samples
        target_deltas = self.coder.encode(anchors_xyxy[None], targets_xyxy)
        l1 = (deltas - target_deltas).abs().sum(-1)
        loss_bbox = torch.where(pos_mask, l1, torch.zeros_like(l1)).sum() / num_samples
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}

    @torch.no_grad()
    def proposals(self, outputs: tuple[list[Tensor], list[Tensor]], level_anchors_xyxy: Sequence[Tensor],
                  image_sizes: Sequence[tuple[int, int]], *, pre_nms_top_n: int | None = None,
                  post_nms_top_n: int | None = None, nms_thresh: float | None = None) -> list[Tensor]:
        """Per image [n_i <= rpn_post_nms_top_n, 4] proposals_xyxy (detached), best first.

        ``pre_nms_top_n`` / ``post_nms_top_n`` / ``nms_thresh``: the test-time settings, when they differ
        from the training ones of the config."""
        c = self.cfg
        pre_nms_top_n = c.rpn_pre_nms_top_n if pre_nms_top_n is None else pre_nms_top_n
        post_nms_top_n = c.rpn_post_nms_top_n if post_nms_top_n is None else post_nms_top_n
        nms_thresh = c.rpn_nms_thresh if nms_thresh is None else nms_thresh
        logits_l, deltas_l = outputs
        b = logits_l[0].shape[0]
        max_hw = torch.tensor(image_sizes, dtype=logits_l[0].dtype, device=logits_l[0].device)[:, None, :]  # [B, 1, 2]
        scores, boxes, levels = [], [], []
        for level, (logit, delta, anchors) in enumerate(zip(logits_l, deltas_l, level_anchors_xyxy)):
            score = logit.permute(0, 2, 3, 1).reshape(b, -1).sigmoid()             # [B, N_l]
            delta = delta.permute(0, 2, 3, 1).reshape(b, -1, 4)                    # [B, N_l, 4]
            k = min(pre_nms_top_n, score.shape[1])
            score, idx = score.topk(k, dim=1)
            scores.append(score)
            boxes.append(self.coder.decode(anchors[idx], delta.gather(1, idx[..., None].expand(-1, -1, 4)),
                                           max_hw=max_hw))                         # clipped to the image
            levels.append(torch.full_like(idx, level))
        scores_t = torch.cat(scores, dim=1)                                        # [B, M]
        boxes_t = torch.cat(boxes, dim=1)                                          # [B, M, 4]
        levels_t = torch.cat(levels, dim=1)                                        # [B, M]
        wh = boxes_t[..., 2:] - boxes_t[..., :2]
        keep = (wh > c.rpn_min_box_size).all(-1)                                   # [B, M]
        counts = keep.sum(1).tolist()                                              # the one host sync
        per_image = zip(boxes_t[keep].split(counts), scores_t[keep].split(counts), levels_t[keep].split(counts))
        return [level_nms_top_n(bx, sc, lv, nms_thresh, post_nms_top_n) for bx, sc, lv in per_image]


@torch.no_grad()
def level_nms_top_n(boxes_xyxy: Tensor, scores: Tensor, levels: Tensor, iou_thresh: float, top_n: int) -> Tensor:
    """NMS inside each level of one image, then the ``top_n`` best survivors of all levels.

    boxes_xyxy [M, 4], scores [M], levels [M] -> [n <= top_n, 4] boxes_xyxy, best first.
    Equal to ``batched_nms(boxes, scores, levels)[:top_n]`` (the reference's level offsets),
    but cheaper: greedy NMS keeps a box iff no better kept box of its level overlaps it, so
    NMS on the best P boxes gives exactly the survivors among them; once P boxes leave
    ``top_n`` survivors, the rest of the list cannot change the first ``top_n``.
    """
    order = scores.argsort(descending=True)
    # levels never suppress each other: shift each level to its own region (the offset trick)
    offsets = levels.to(boxes_xyxy.dtype)[:, None] * (boxes_xyxy.max() + 1 if boxes_xyxy.numel() else 1.0)
    shifted = boxes_xyxy + offsets
    prefix = min(order.numel(), 2 * top_n)
    while True:
        cand = order[:prefix]
        kept = cand[nms(shifted[cand], scores[cand], iou_thresh)]                  # score order
        if kept.numel() >= top_n or prefix == order.numel():
            return boxes_xyxy[kept[:top_n]]
        prefix = min(order.numel(), 4 * prefix)
