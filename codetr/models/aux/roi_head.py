"""RoI head: the second stage of the ``faster_rcnn`` auxiliary head.

Proposals (plus the ground truth as proposals) are assigned by MaxIoU 0.5 without
low-quality matches, 512 per image are sampled with at most a quarter positive, pooled
by RoIAlign 7x7 from one of the 4 finest levels (FPN mapping with finest_scale 112; small
maps through the equal matmul form of ``roi_align_matmul``) and fed to two shared FC
layers of 1024. Losses: softmax cross-entropy over the sampled RoIs,
and GIoU between the class-specific decoded boxes (stds 0.1 / 0.1 / 0.2 / 0.2) and the gt
of the positives; both divided by the number of sampled RoIs, as the reference does.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, roi_align

from codetr.config.aux_schema import FasterRCNNConfig
from codetr.models.aux.assigners import max_iou_assign
from codetr.models.aux.box_coder import DeltaXYWHCoder
from codetr.models.aux.roi_align_matmul import MATMUL_MAX_CELLS, roi_align_matmul
from codetr.models.aux.sampler import random_sample, sampled_slots


def map_roi_levels(rois_xyxy: Tensor, num_levels: int, finest_scale: float) -> Tensor:
    """[R, 4] -> [R] level: floor(log2(sqrt(area) / finest_scale + 1e-6)) clamped to [0, num_levels - 1]."""
    wh = (rois_xyxy[:, 2:] - rois_xyxy[:, :2]).clamp(min=0)
    scale = (wh[:, 0] * wh[:, 1]).sqrt()
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(min=0, max=num_levels - 1).long()


class RoIHead(nn.Module):
    """Shared2FC box head with its RoI extractor, sampler and loss."""

    def __init__(self, in_channels: int, num_classes: int, cfg: FasterRCNNConfig | None = None, *,
                 strides: Sequence[int] = (8, 16, 32, 64)) -> None:
        super().__init__()
        cfg = cfg or FasterRCNNConfig()
        self.cfg = cfg
        self.num_classes = num_classes
        self.strides = list(strides)
        self.in_channels = in_channels
        s = cfg.roi_output_size
        self.fc1 = nn.Linear(in_channels * s * s, cfg.fc_dims)
        self.fc2 = nn.Linear(cfg.fc_dims, cfg.fc_dims)
        self.fc_cls = nn.Linear(cfg.fc_dims, num_classes + 1)      # last = background
        self.fc_reg = nn.Linear(cfg.fc_dims, num_classes * 4)      # class-specific deltas
        self.coder = DeltaXYWHCoder(stds=cfg.roi_target_stds)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    @torch.no_grad()
    def sample(self, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor],
               gt_labels: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Assign and sample per image, padded to the batch's largest sample count S.

        proposals / gt_boxes: per image [n_i, 4] / [G_i, 4] xyxy; gt_labels [G_i].
        Returns rois_xyxy [B, S, 4], slot_valid [B, S], labels [B, S] (num_classes = background),
        targets_xyxy [B, S, 4] (the roi itself where not positive), pos_mask [B, S].
        """
        c = self.cfg
        per_image = []
        for props, boxes, labels in zip(proposals, gt_boxes, gt_labels):
            gt_inds = max_iou_assign(props, boxes, pos_iou_thr=c.roi_pos_iou_thresh, neg_iou_thr=c.roi_neg_iou_thresh,
                                     min_pos_iou=c.roi_pos_iou_thresh, match_low_quality=False)
            if c.roi_add_gt_as_proposals and boxes.shape[0] > 0:
                props = torch.cat([boxes, props])
                gt_inds = torch.cat([torch.arange(1, boxes.shape[0] + 1, device=props.device), gt_inds])
            pos, neg = random_sample(gt_inds, c.roi_batch_size, c.roi_pos_fraction)
            idx, valid = sampled_slots(pos, neg, c.roi_batch_size)
            rois = props[idx]
            is_pos = pos[idx]
            if boxes.shape[0] > 0:
                matched = (gt_inds[idx] - 1).clamp(min=0)
                lab = torch.where(is_pos, labels[matched], torch.full_like(matched, self.num_classes))
                tgt = torch.where(is_pos[:, None], boxes[matched], rois)
            else:
                lab = torch.full_like(idx, self.num_classes)
                tgt = rois.clone()
            per_image.append((rois, valid, lab, tgt, is_pos))
        s = max(x[0].shape[0] for x in per_image)

        def pad(t: Tensor, fill: float | int | bool) -> Tensor:
            if t.shape[0] == s:
                return t
            return torch.cat([t, t.new_full((s - t.shape[0],) + t.shape[1:], fill)])

        rois, valid, lab, tgt, is_pos = (torch.stack([pad(x[k], f) for x in per_image])
                                         for k, f in enumerate((0.0, False, self.num_classes, 0.0, False)))
        return rois, valid, lab, tgt, is_pos

    def roi_features(self, feats: Sequence[Tensor], rois_xyxy: Tensor) -> Tensor:
        """feats: the 4 finest levels [B, C, H, W]; rois_xyxy [B, S, 4] -> [B * S, C, s, s] (RoIAlign, aligned)."""
        b, s, _ = rois_xyxy.shape
        num_levels = len(self.strides)
        boxes = rois_xyxy.reshape(-1, 4)
        batch_idx = torch.arange(b, device=boxes.device).repeat_interleave(s)     # [B*S]
        levels = map_roi_levels(boxes, num_levels, self.cfg.roi_finest_scale)
        # RoIs sorted by (level, image); one host sync for the group sizes
        order = torch.sort(levels * b + batch_idx, stable=True).indices
        counts = torch.bincount(levels * b + batch_idx, minlength=num_levels * b).reshape(num_levels, b).tolist()
        groups = order.split([n for per_level in counts for n in per_level])
        size, ratio = self.cfg.roi_output_size, self.cfg.roi_sampling_ratio
        pooled = []
        for level in range(num_levels):
            level_groups = groups[level * b:(level + 1) * b]
            if sum(counts[level]) == 0:
                continue
            feat, scale = feats[level], 1.0 / self.strides[level]
            if feat.shape[-2] * feat.shape[-1] <= MATMUL_MAX_CELLS:
                per_image = feat.unbind(0)
                pooled += [roi_align_matmul(per_image[i], boxes[idx], size, scale, ratio)
                           for i, idx in enumerate(level_groups) if idx.numel()]
            else:
                idx = torch.cat(level_groups)
                level_rois = torch.cat([batch_idx[idx, None].to(boxes.dtype), boxes[idx]], dim=1)   # [n, 5]
                pooled.append(roi_align(feat, level_rois, output_size=size, spatial_scale=scale,
                                        sampling_ratio=ratio, aligned=True))
        if not pooled:      # no RoI at all: an empty, still connected, result
            return feats[0].new_zeros(0, feats[0].shape[1], size, size) + 0.0 * feats[0].sum()
        pooled_t = torch.cat(pooled)                                               # [B*S, C, s, s] in sorted order
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return pooled_t[inverse]

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        """[R, C, s, s] -> class logits [R, num_classes + 1], deltas [R, num_classes * 4]."""
        x = roi_feats.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc_cls(x), self.fc_reg(x)

    def loss(self, cls_logits: Tensor, deltas: Tensor, rois_xyxy: Tensor, slot_valid: Tensor, labels: Tensor,
             targets_xyxy: Tensor, pos_mask: Tensor) -> dict[str, Tensor]:
        """cls_logits [B*S, K+1], deltas [B*S, 4K]; the rest [B, S(, 4)]. Keys loss_cls, loss_bbox."""
        valid = slot_valid.flatten()
        pos = pos_mask.flatten()
        lab = labels.flatten()
        num_samples = valid.sum().clamp(min=1).float()
        ce = F.cross_entropy(cls_logits, lab, reduction="none")
        loss_cls = torch.where(valid, ce, torch.zeros_like(ce)).sum() / num_samples
        r = deltas.shape[0]
        cls_deltas = deltas.reshape(r, self.num_classes, 4)                        # [R, K, 4]
        cls_deltas = cls_deltas.gather(1, lab.clamp(max=self.num_classes - 1)[:, None, None].expand(r, 1, 4))[:, 0]
        boxes = self.coder.decode(rois_xyxy.reshape(-1, 4), cls_deltas)
        giou = generalized_box_iou_loss(boxes, targets_xyxy.reshape(-1, 4), reduction="none")
        loss_bbox = torch.where(pos, giou, torch.zeros_like(giou)).sum() / num_samples
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}
