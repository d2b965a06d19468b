"""FCOS auxiliary head (Tian et al. 2019), the mmdetection "center-sampling, norm-on-bbox,
centerness-on-reg, GIoU" variant.

Points at the cell centres of strides 8..128, per-level regress ranges, center sampling
(radius 1.5 strides), focal classification, GIoU on the decoded boxes weighted by the
centerness target, centerness BCE, a learnable scale per level.

Candidates handed to the query head (every point, background for negatives): a point's box is the square of
side ``pos_box_size x stride`` centred on the point (the level's stride-scaled size, as
Co-DETR builds FCOS positive coordinates); the decoded prediction is not used because it
is meaningless early in training and would make the positive queries depend on this
head's own regression quality.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from codetr.config.aux_schema import FCOSConfig
from codetr.models.aux.anchors import grid_points
from codetr.models.aux.assigners import fcos_assign
from codetr.models.aux.atss_head import centerness_target
from codetr.models.aux.base import (PYRAMID_STRIDES, Scale, conv_gn_tower, flatten_levels,
                                    init_conv_head, positive_normaliser, reduce_mean, targets_to_device)
from codetr.models.aux.positives import Candidates
from codetr.models.aux.one_stage import OneStageHead
from codetr.models.precision import full_dtype, upcast


class FCOSHead(OneStageHead):
    """FCOS head on the 5-level pyramid. Loss keys: loss_cls, loss_bbox, loss_centerness."""

    def __init__(self, in_channels: int, num_classes: int, cfg: FCOSConfig | None = None, *,
                 strides: Sequence[int] = PYRAMID_STRIDES) -> None:
        super().__init__()
        cfg = cfg or FCOSConfig()
        self.cfg = cfg
        self.num_classes = num_classes
        self.strides = list(strides)
        c = in_channels
        self.cls_convs = conv_gn_tower(c, cfg.stacked_convs)
        self.reg_convs = conv_gn_tower(c, cfg.stacked_convs)
        self.conv_cls = nn.Conv2d(c, num_classes, 3, padding=1)
        self.conv_reg = nn.Conv2d(c, 4, 3, padding=1)
        self.conv_centerness = nn.Conv2d(c, 1, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])
        self.loss_weights = {"loss_cls": cfg.cls_weight, "loss_bbox": cfg.bbox_weight,
                             "loss_centerness": cfg.centerness_weight}
        init_conv_head(self, cls_conv=self.conv_cls)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """feats: per level [B, C, H, W] -> per level cls logits [B, K, H, W], distances (l, t, r, b)
        in pixels [B, 4, H, W] (non-negative), centerness logits [B, 1, H, W]."""
        cls_scores, distances, centernesses = [], [], []
        for x, scale, stride in zip(feats, self.scales, self.strides):
            cls_feat = self.cls_convs(x)
            reg_feat = self.reg_convs(x)
            cls_scores.append(self.conv_cls(cls_feat))
            pred = upcast(scale(self.conv_reg(reg_feat)))
            # norm_on_bbox: the network regresses distances in strides
            distances.append(F.relu(pred) * stride if self.cfg.norm_on_bbox else pred.exp())
            centernesses.append(self.conv_centerness(reg_feat if self.cfg.centerness_on_reg else cls_feat))
        return cls_scores, distances, centernesses

    @torch.no_grad()
    def assign(self, points_xy: Tensor, num_level_points: Sequence[int], gt_boxes: Sequence[Tensor],
               gt_labels: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """points_xy [N, 2]; per image gt [G_i, 4], [G_i].

        Returns labels [B, N] (num_classes = background), targets_xyxy [B, N, 4] (a unit box around
        the point where not positive), pos_mask [B, N]."""
        c = self.cfg
        ranges = [tuple(r) for r in c.regress_ranges]
        filler = torch.cat([points_xy - 0.5, points_xy + 0.5], dim=-1)
        labels, targets = [], []
        for boxes, cls in zip(gt_boxes, gt_labels):
            gt_inds = fcos_assign(points_xy, num_level_points, self.strides, ranges, boxes,
                                  center_sampling=c.center_sampling, center_radius=c.center_sampling_radius)
            if boxes.shape[0] == 0:
                labels.append(torch.full_like(gt_inds, self.num_classes))
                targets.append(filler)
                continue
            pos = gt_inds > 0
            idx = (gt_inds - 1).clamp(min=0)
            labels.append(torch.where(pos, cls[idx], torch.full_like(gt_inds, self.num_classes)))
            targets.append(torch.where(pos[:, None], boxes[idx], filler))
        labels_t = torch.stack(labels)
        return labels_t, torch.stack(targets), labels_t < self.num_classes

    def loss(self, outputs: tuple[list[Tensor], list[Tensor], list[Tensor]], points_xy: Tensor, labels: Tensor,
             targets_xyxy: Tensor, pos_mask: Tensor) -> dict[str, Tensor]:
        """Focal over all points / num_pos; centerness-weighted GIoU / sum of centerness targets;
        centerness BCE / num_pos."""
        cls_logits = flatten_levels(outputs[0], self.num_classes)                  # [B, N, K]
        dist = flatten_levels(outputs[1], 4)                                       # [B, N, 4]
        ctr_logits = flatten_levels(outputs[2], 1)[..., 0]                         # [B, N]
        num_pos = positive_normaliser(pos_mask.sum())
        onehot = F.one_hot(labels, self.num_classes + 1)[..., :self.num_classes].to(cls_logits.dtype)
        loss_cls = sigmoid_focal_loss(cls_logits, onehot, alpha=self.cfg.focal_alpha, gamma=self.cfg.focal_gamma,
                                      reduction="sum") / num_pos
        pts = points_xy[None].expand(dist.shape[0], -1, -1)
        boxes_xyxy = torch.cat([pts - dist[..., :2], pts + dist[..., 2:]], dim=-1)
        ctr_target = torch.where(pos_mask, centerness_target(pts, targets_xyxy), torch.zeros_like(ctr_logits))
        giou = generalized_box_iou_loss(boxes_xyxy, targets_xyxy, reduction="none")
        zero = torch.zeros_like(giou)
        ctr_norm = reduce_mean(ctr_target.sum().detach()).clamp(min=1e-6)
        loss_bbox = torch.where(pos_mask, giou * ctr_target, zero).sum() / ctr_norm
        bce = F.binary_cross_entropy_with_logits(ctr_logits, ctr_target, reduction="none")
        loss_ctr = torch.where(pos_mask, bce, zero).sum() / num_pos
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_ctr}

    def forward_train(self, feats: list[Tensor], targets: list[dict],
                      image_sizes: list[tuple[int, int]]) -> tuple[dict[str, Tensor], Candidates]:
        feats = list(feats)[:len(self.strides)]
        outputs = self(feats)
        sizes = [tuple(f.shape[-2:]) for f in feats]
        device = feats[0].device
        level_points = grid_points(sizes, self.strides, dtype=full_dtype(feats[0]), device=device)
        points_xy = torch.cat(level_points)                                        # [N, 2]
        num_level_points = [p.shape[0] for p in level_points]
        gt_boxes, gt_labels = targets_to_device(targets, device, full_dtype(feats[0]))
        labels, targets_xyxy, pos_mask = self.assign(points_xy, num_level_points, gt_boxes, gt_labels)
        losses = self.loss(outputs, points_xy, labels, targets_xyxy, pos_mask)
        half = 0.5 * self.cfg.pos_box_size * torch.repeat_interleave(
            torch.tensor(self.strides, dtype=points_xy.dtype, device=device),
            torch.tensor(num_level_points, device=device))[:, None]
        point_boxes = torch.cat([points_xy - half, points_xy + half], dim=-1)      # [N, 4]
        candidates = Candidates(point_boxes, labels, targets_xyxy, feats=flatten_levels(feats, feats[0].shape[1]))
        return losses, candidates

    def priors(self, featmap_sizes: list[tuple[int, int]], like: Tensor) -> list[Tensor]:
        return grid_points(featmap_sizes, self.strides, dtype=like.dtype, device=like.device)

    def decode(self, priors: Tensor, regressions: Tensor) -> Tensor:
        return torch.cat([priors - regressions[:, :2], priors + regressions[:, 2:]], dim=-1)
