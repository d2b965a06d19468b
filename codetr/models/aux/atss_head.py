"""ATSS auxiliary head (Zhang et al. 2020), as the Co-DETR recipe configures it.

One stacked conv + GroupNorm per branch, one square anchor per location (size 8 x stride),
ATSS assignment (top-9 per level, IoU >= mean + std), focal classification, GIoU on
decoded boxes weighted by the centerness target, centerness BCE, a learnable scale per level.
Candidates handed to the query head: every anchor with its assigned label (background for
negatives) and the encoder feature at its location; anchors outside the image's valid area are
zero boxes, as the reference's unmapped targets.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from codetr.config.aux_schema import ATSSConfig
from codetr.models.aux.anchors import AnchorGenerator
from codetr.models.aux.assigners import atss_assign
from codetr.models.aux.base import (PYRAMID_STRIDES, Scale, conv_gn_tower, flatten_levels,
                                    init_conv_head, positive_normaliser, reduce_mean, targets_to_device)
from codetr.models.aux.box_coder import DeltaXYWHCoder
from codetr.models.aux.positives import Candidates
from codetr.models.aux.one_stage import OneStageHead
from codetr.models.precision import full_dtype, upcast


def centerness_target(points_xy: Tensor, boxes_xyxy: Tensor) -> Tensor:
    """[..., 2] points inside [..., 4] boxes -> [...] sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))."""
    lt = points_xy - boxes_xyxy[..., :2]
    rb = boxes_xyxy[..., 2:] - points_xy
    lr = torch.stack([lt[..., 0], rb[..., 0]], dim=-1)
    tb = torch.stack([lt[..., 1], rb[..., 1]], dim=-1)
    ratio_lr = lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)
    ratio_tb = tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6)
    ratio = ratio_lr * ratio_tb
    return ratio.clamp(min=0).sqrt()


class ATSSHead(OneStageHead):
    """ATSS head on the 5-level pyramid. Loss keys: loss_cls, loss_bbox, loss_centerness."""

    def __init__(self, in_channels: int, num_classes: int, cfg: ATSSConfig | None = None, *,
                 strides: Sequence[int] = PYRAMID_STRIDES) -> None:
        super().__init__()
        cfg = cfg or ATSSConfig()
        self.cfg = cfg
        self.num_classes = num_classes
        self.strides = list(strides)
        c = in_channels
        self.cls_convs = conv_gn_tower(c, cfg.stacked_convs)
        self.reg_convs = conv_gn_tower(c, cfg.stacked_convs)
        self.atss_cls = nn.Conv2d(c, num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(c, 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(c, 1, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])
        self.anchor_generator = AnchorGenerator(strides=self.strides, ratios=[1.0], scales=[cfg.octave_base_scale])
        self.coder = DeltaXYWHCoder(stds=cfg.target_stds)
        self.loss_weights = {"loss_cls": cfg.cls_weight, "loss_bbox": cfg.bbox_weight,
                             "loss_centerness": cfg.centerness_weight}
        init_conv_head(self, cls_conv=self.atss_cls)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """feats: per level [B, C, H, W] -> per level cls logits [B, K, H, W], deltas [B, 4, H, W],
        centerness logits [B, 1, H, W]."""
        cls_scores, bbox_preds, centernesses = [], [], []
        for x, scale in zip(feats, self.scales):
            cls_feat = self.cls_convs(x)
            reg_feat = self.reg_convs(x)
            cls_scores.append(self.atss_cls(cls_feat))
            bbox_preds.append(upcast(scale(self.atss_reg(reg_feat))))
            centernesses.append(self.atss_centerness(reg_feat))
        return cls_scores, bbox_preds, centernesses

    @torch.no_grad()
    def assign(self, anchors_xyxy: Tensor, num_level_anchors: Sequence[int], valid: Tensor,
               gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Per-image ATSS assignment, stacked.

        anchors_xyxy: [A, 4]; valid: [B, A] bool; gt_boxes / gt_labels: per image [N_i, 4] / [N_i].
        Returns labels [B, A] int64 (num_classes = background), targets_xyxy [B, A, 4]
        (the anchor itself where not positive), pos_mask [B, A] bool.
        """
        labels, targets = [], []
        for i, (boxes, cls) in enumerate(zip(gt_boxes, gt_labels)):
            gt_inds = atss_assign(anchors_xyxy, num_level_anchors, boxes, topk=self.cfg.topk, valid=valid[i])
            pos = gt_inds > 0
            idx = (gt_inds - 1).clamp(min=0)
            if boxes.shape[0] == 0:
                labels.append(torch.full_like(gt_inds, self.num_classes))
                targets.append(anchors_xyxy.clone())
                continue
            labels.append(torch.where(pos, cls[idx], torch.full_like(gt_inds, self.num_classes)))
            targets.append(torch.where(pos[:, None], boxes[idx], anchors_xyxy))
        labels_t = torch.stack(labels)
        return labels_t, torch.stack(targets), labels_t < self.num_classes

    def loss(self, outputs: tuple[list[Tensor], list[Tensor], list[Tensor]], anchors_xyxy: Tensor, valid: Tensor,
             labels: Tensor, targets_xyxy: Tensor, pos_mask: Tensor) -> dict[str, Tensor]:
        """outputs: from :meth:`forward`; anchors_xyxy [A, 4]; valid, labels, pos_mask [B, A];
        targets_xyxy [B, A, 4]. Returns the three unweighted, normalised losses."""
        cls_scores, bbox_preds, centernesses = outputs
        cls_logits = flatten_levels(cls_scores, self.num_classes)                  # [B, A, K]
        deltas = flatten_levels(bbox_preds, 4)                                     # [B, A, 4]
        ctr_logits = flatten_levels(centernesses, 1)[..., 0]                       # [B, A]
        # ATSS counts every image as having at least one positive
        num_pos = positive_normaliser(pos_mask.sum(dim=1).clamp(min=1).sum())

        onehot = F.one_hot(labels, self.num_classes + 1)[..., :self.num_classes].to(cls_logits.dtype)
        focal = sigmoid_focal_loss(cls_logits, onehot, alpha=self.cfg.focal_alpha, gamma=self.cfg.focal_gamma,
                                   reduction="none").sum(-1)
        loss_cls = torch.where(valid, focal, torch.zeros_like(focal)).sum() / num_pos

        anchors = anchors_xyxy[None].expand_as(deltas)
        anchor_ctr = (anchors[..., :2] + anchors[..., 2:]) / 2
        ctr_target = torch.where(pos_mask, centerness_target(anchor_ctr, targets_xyxy), torch.zeros_like(ctr_logits))
        boxes_xyxy = self.coder.decode(anchors, deltas)
        giou = generalized_box_iou_loss(boxes_xyxy, targets_xyxy, reduction="none")
        zero = torch.zeros_like(giou)
        bbox_norm = reduce_mean(ctr_target.sum().detach()).clamp(min=1.0)
        loss_bbox = torch.where(pos_mask, giou * ctr_target, zero).sum() / bbox_norm
        bce = F.binary_cross_entropy_with_logits(ctr_logits, ctr_target, reduction="none")
        loss_ctr = torch.where(pos_mask, bce, zero).sum() / num_pos
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_ctr}

    def forward_train(self, feats: list[Tensor], targets: list[dict],
                      image_sizes: list[tuple[int, int]]) -> tuple[dict[str, Tensor], Candidates]:
        feats = list(feats)[:len(self.strides)]
        outputs = self(feats)
        sizes = [tuple(f.shape[-2:]) for f in feats]
        device = feats[0].device
        anchors_xyxy = torch.cat(self.anchor_generator.grid_anchors(sizes, dtype=full_dtype(feats[0]), device=device))         # [A, 4]
        num_level_anchors = [h * w * self.anchor_generator.num_base_anchors for h, w in sizes]
        valid = torch.cat(self.anchor_generator.valid_flags(sizes, image_sizes, device), dim=1)   # [B, A]
        gt_boxes, gt_labels = targets_to_device(targets, device, full_dtype(feats[0]))
        labels, targets_xyxy, pos_mask = self.assign(anchors_xyxy, num_level_anchors, valid, gt_boxes, gt_labels)
        losses = self.loss(outputs, anchors_xyxy, valid, labels, targets_xyxy, pos_mask)
        boxes_xyxy = torch.where(valid[..., None], anchors_xyxy[None], torch.zeros_like(anchors_xyxy)[None])
        candidates = Candidates(boxes_xyxy, labels, targets_xyxy, feats=flatten_levels(feats, feats[0].shape[1]))
        return losses, candidates

    def priors(self, featmap_sizes: list[tuple[int, int]], like: Tensor) -> list[Tensor]:
        return self.anchor_generator.grid_anchors(featmap_sizes, dtype=like.dtype, device=like.device)

    def decode(self, priors: Tensor, regressions: Tensor) -> Tensor:
        return self.coder.decode(priors, regressions)
