"""RetinaNet auxiliary head (Lin et al. 2017).

9 anchors per location (3 scales per octave from base 4 x stride, ratios 0.5 / 1 / 2),
MaxIoU 0.5 / 0.4 with low-quality matches, focal classification and L1 on the deltas
(stds 1) or GIoU on decoded boxes, normalised by the number of positives. The branches
have ``stacked_convs`` conv + ReLU layers (1 by default, light like the ATSS aux head).
Candidates handed to the query head: every anchor with its assigned label (background for
negatives and ignored anchors) and the encoder feature at its location; anchors outside the
image's valid area are zero boxes, as the reference's unmapped targets.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from codetr.config.aux_schema import RetinaNetConfig
from codetr.models.aux.anchors import AnchorGenerator
from codetr.models.aux.assigners import max_iou_assign
from codetr.models.aux.base import (PYRAMID_STRIDES, flatten_levels, init_conv_head,
                                    positive_normaliser, targets_to_device)
from codetr.models.aux.box_coder import DeltaXYWHCoder
from codetr.models.aux.positives import Candidates
from codetr.models.aux.one_stage import OneStageHead
from codetr.models.precision import full_dtype


class RetinaNetHead(OneStageHead):
    """RetinaNet head on the 5-level pyramid. Loss keys: loss_cls, loss_bbox."""

    def __init__(self, in_channels: int, num_classes: int, cfg: RetinaNetConfig | None = None, *,
                 strides: Sequence[int] = PYRAMID_STRIDES) -> None:
        super().__init__()
        cfg = cfg or RetinaNetConfig()
        self.cfg = cfg
        self.num_classes = num_classes
        self.strides = list(strides)
        self.anchor_generator = AnchorGenerator(strides=self.strides, ratios=cfg.ratios,
                                                octave_base_scale=cfg.octave_base_scale,
                                                scales_per_octave=cfg.scales_per_octave)
        a = self.anchor_generator.num_base_anchors
        c = in_channels

        def branch() -> nn.Sequential:
            return nn.Sequential(*[m for _ in range(cfg.stacked_convs)
                                   for m in (nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True))])

        self.cls_convs = branch()
        self.reg_convs = branch()
        self.retina_cls = nn.Conv2d(c, a * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(c, a * 4, 3, padding=1)
        self.coder = DeltaXYWHCoder()
        self.loss_weights = {"loss_cls": cfg.cls_weight, "loss_bbox": cfg.bbox_weight}
        init_conv_head(self, cls_conv=self.retina_cls)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """feats: per level [B, C, H, W] -> per level cls logits [B, A*K, H, W] and deltas [B, A*4, H, W]."""
        cls_scores, bbox_preds = [], []
        for x in feats:
            cls_scores.append(self.retina_cls(self.cls_convs(x)))
            bbox_preds.append(self.retina_reg(self.reg_convs(x)))
        return cls_scores, bbox_preds

    @torch.no_grad()
    def assign(self, anchors_xyxy: Tensor, valid: Tensor, gt_boxes: Sequence[Tensor],
               gt_labels: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """anchors_xyxy [N, 4]; valid [B, N]; per image gt [G_i, 4], [G_i].

        Returns labels [B, N] (num_classes = background), targets_xyxy [B, N, 4] (the anchor where
        not positive), pos_mask [B, N], label_weights [B, N] bool (positives and negatives)."""
        c = self.cfg
        labels, targets, weights = [], [], []
        for i, (boxes, cls) in enumerate(zip(gt_boxes, gt_labels)):
            gt_inds = max_iou_assign(anchors_xyxy, boxes, pos_iou_thr=c.pos_iou_thresh, neg_iou_thr=c.neg_iou_thresh,
                                     min_pos_iou=c.min_pos_iou, match_low_quality=True, valid=valid[i])
            pos = gt_inds > 0
            weights.append(gt_inds >= 0)
            if boxes.shape[0] == 0:
                labels.append(torch.full_like(gt_inds, self.num_classes))
                targets.append(anchors_xyxy.clone())
                continue
            idx = (gt_inds - 1).clamp(min=0)
            labels.append(torch.where(pos, cls[idx], torch.full_like(gt_inds, self.num_classes)))
            targets.append(torch.where(pos[:, None], boxes[idx], anchors_xyxy))
        labels_t = torch.stack(labels)
        return labels_t, torch.stack(targets), labels_t < self.num_classes, torch.stack(weights)

    def loss(self, outputs: tuple[list[Tensor], list[Tensor]], anchors_xyxy: Tensor, labels: Tensor,
             targets_xyxy: Tensor, pos_mask: Tensor, label_weights: Tensor) -> dict[str, Tensor]:
        """Focal loss over positives and negatives, box loss over positives, both / number of positives."""
        cls_logits = flatten_levels(outputs[0], self.num_classes)                  # [B, N, K]
        deltas = flatten_levels(outputs[1], 4)                                     # [B, N, 4]
        num_pos = positive_normaliser(pos_mask.sum(dim=1).clamp(min=1).sum())
        onehot = F.one_hot(labels, self.num_classes + 1)[..., :self.num_classes].to(cls_logits.dtype)
        focal = sigmoid_focal_loss(cls_logits, onehot, alpha=self.cfg.focal_alpha, gamma=self.cfg.focal_gamma,
                                   reduction="none").sum(-1)
        loss_cls = torch.where(label_weights, focal, torch.zeros_like(focal)).sum() / num_pos
        anchors = anchors_xyxy[None].expand_as(deltas)
        if self.cfg.bbox_loss == "giou":
            box_loss = generalized_box_iou_loss(self.coder.decode(anchors, deltas), targets_xyxy, reduction="none")
        else:
            box_loss = (deltas - self.coder.encode(anchors, targets_xyxy)).abs().sum(-1)
        loss_bbox = torch.where(pos_mask, box_loss, torch.zeros_like(box_loss)).sum() / num_pos
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}

    def forward_train(self, feats: list[Tensor], targets: list[dict],
                      image_sizes: list[tuple[int, int]]) -> tuple[dict[str, Tensor], Candidates]:
        feats = list(feats)[:len(self.strides)]
        outputs = self(feats)
        sizes = [tuple(f.shape[-2:]) for f in feats]
        device = feats[0].device
        anchors_xyxy = torch.cat(self.anchor_generator.grid_anchors(sizes, dtype=full_dtype(feats[0]), device=device))         # [N, 4]
        valid = torch.cat(self.anchor_generator.valid_flags(sizes, image_sizes, device), dim=1)   # [B, N]
        gt_boxes, gt_labels = targets_to_device(targets, device, full_dtype(feats[0]))
        labels, targets_xyxy, pos_mask, label_weights = self.assign(anchors_xyxy, valid, gt_boxes, gt_labels)
        losses = self.loss(outputs, anchors_xyxy, labels, targets_xyxy, pos_mask, label_weights)
        boxes_xyxy = torch.where(valid[..., None], anchors_xyxy[None], torch.zeros_like(anchors_xyxy)[None])
        candidates = Candidates(boxes_xyxy, labels, targets_xyxy, feats=flatten_levels(feats, feats[0].shape[1]),
                                anchors_per_location=self.anchor_generator.num_base_anchors)
        return losses, candidates

    def priors(self, featmap_sizes: list[tuple[int, int]], like: Tensor) -> list[Tensor]:
        return self.anchor_generator.grid_anchors(featmap_sizes, dtype=like.dtype, device=like.device)

    def decode(self, priors: Tensor, regressions: Tensor) -> Tensor:
        return self.coder.decode(priors, regressions)
