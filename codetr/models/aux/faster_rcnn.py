"""The ``faster_rcnn`` auxiliary head: RPN on the 5 levels, RoI head on the 4 finest.

Candidates handed to the query head: the RoI head's sampled proposals (ground truth added as
proposals included; positives first, then negatives), with their assigned labels (background
for negatives), gt boxes and RoI features averaged over the 7x7 bins (not detached), as the
official release does; every image keeps only as many as the image with the fewest samples
(the reference's per-batch truncation).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from codetr.config.aux_schema import FasterRCNNConfig
from codetr.models.aux.base import PYRAMID_STRIDES, AuxHead, targets_to_device
from codetr.models.aux.positives import Candidates
from codetr.models.aux.predict import TWO_STAGE_TEST, BranchTestConfig, class_nms, level_topk
from codetr.models.aux.roi_head import RoIHead
from codetr.models.aux.rpn import RPNHead
from codetr.models.precision import full_dtype


# the reference hands at most this many sampled proposals per image to the positive queries
MAX_CANDIDATES = 2000


class FasterRCNNHead(AuxHead):
    """RPN + RoI head. Loss keys: rpn.loss_cls, rpn.loss_bbox, roi.loss_cls, roi.loss_bbox."""

    def __init__(self, in_channels: int, num_classes: int, cfg: FasterRCNNConfig | None = None, *,
                 strides: Sequence[int] = PYRAMID_STRIDES) -> None:
        super().__init__()
        cfg = cfg or FasterRCNNConfig()
        self.cfg = cfg
        self.strides = list(strides)
        self.rpn = RPNHead(in_channels, cfg, strides=self.strides)
        self.roi_head = RoIHead(in_channels, num_classes, cfg, strides=self.strides[:-1])   # all but the coarsest
        self.loss_weights = {"rpn.loss_cls": cfg.rpn_cls_weight, "rpn.loss_bbox": cfg.rpn_bbox_weight,
                             "roi.loss_cls": cfg.roi_cls_weight, "roi.loss_bbox": cfg.roi_bbox_weight}

    def forward_train(self, feats: list[Tensor], targets: list[dict],
                      image_sizes: list[tuple[int, int]]) -> tuple[dict[str, Tensor], Candidates]:
        feats = list(feats)[:len(self.strides)]
        device = feats[0].device
        sizes = [tuple(f.shape[-2:]) for f in feats]
        gt_boxes, gt_labels = targets_to_device(targets, device, full_dtype(feats[0]))

        # stage 1: RPN losses and proposals
        rpn_out = self.rpn(feats)
        gen = self.rpn.anchor_generator
        level_anchors = gen.grid_anchors(sizes, dtype=full_dtype(feats[0]), device=device)
        anchors_xyxy = torch.cat(level_anchors)                                    # [N, 4]
        valid = torch.cat(gen.valid_flags(sizes, image_sizes, device), dim=1)      # [B, N]
        pos, neg, rpn_targets = self.rpn.assign(anchors_xyxy, valid, gt_boxes)
        rpn_losses = self.rpn.loss(rpn_out, anchors_xyxy, pos, neg, rpn_targets)
        proposals = self.rpn.proposals(rpn_out, level_anchors, image_sizes)

        # stage 2: sampled proposals through the RoI head
        rois, slot_valid, labels, roi_targets, roi_pos = self.roi_head.sample(proposals, gt_boxes, gt_labels)
        roi_feats = self.roi_head.roi_features(feats[:-1], rois)                  # [B*S, C, 7, 7]
        cls_logits, deltas = self.roi_head(roi_feats)
        roi_losses = self.roi_head.loss(cls_logits, deltas, rois, slot_valid, labels, roi_targets, roi_pos)

        losses = {f"rpn.{k}": v for k, v in rpn_losses.items()}
        losses.update({f"roi.{k}": v for k, v in roi_losses.items()})
        b, s = rois.shape[:2]
        pooled = roi_feats.mean(dim=(-2, -1)).reshape(b, s, -1)                   # [B, S, C]
        # sampled slots come positives first; every image keeps the first `common` of its samples
        counts = slot_valid.sum(dim=1)
        common = counts.min().clamp(max=MAX_CANDIDATES)
        keep = slot_valid & (torch.arange(s, device=device)[None] < common)
        cand_labels = torch.where(keep, labels, torch.full_like(labels, -1))
        return losses, Candidates(rois, cand_labels, roi_targets, feats=pooled)

    @torch.no_grad()
    def predict(self, feats: list[Tensor], image_sizes: list[tuple[int, int]],
                cfg: BranchTestConfig = TWO_STAGE_TEST) -> list[dict[str, Tensor]]:
        """This branch's own detections (:mod:`codetr.models.aux.predict`): RPN proposals, the RoI head's
        softmax scores and class-specific boxes, class-wise NMS."""
        feats = list(feats)[:len(self.strides)]
        device = feats[0].device
        sizes = [tuple(f.shape[-2:]) for f in feats]
        rpn_out = self.rpn(feats)
        level_anchors = self.rpn.anchor_generator.grid_anchors(sizes, dtype=full_dtype(feats[0]), device=device)
        # the test settings, never more proposals than the config trains with (a reduced recipe stays cheap)
        proposals = self.rpn.proposals(rpn_out, level_anchors, image_sizes,
                                       pre_nms_top_n=min(cfg.nms_pre, self.cfg.rpn_pre_nms_top_n),
                                       post_nms_top_n=min(cfg.rpn_max_per_img, self.cfg.rpn_post_nms_top_n),
                                       nms_thresh=cfg.rpn_nms_iou)
        s = max(max(p.shape[0] for p in proposals), 1)
        rois = torch.zeros(len(proposals), s, 4, dtype=full_dtype(feats[0]), device=device)
        for i, p in enumerate(proposals):
            rois[i, :p.shape[0]] = p
        cls_logits, deltas = self.roi_head(self.roi_head.roi_features(feats[:-1], rois))
        return self.roi_detections(proposals, cls_logits.reshape(len(proposals), s, -1),
                                   deltas.reshape(len(proposals), s, -1), image_sizes, cfg)

    @torch.no_grad()
    def roi_detections(self, proposals: list[Tensor], cls_logits: Tensor, deltas: Tensor,
                       image_sizes: list[tuple[int, int]], cfg: BranchTestConfig = TWO_STAGE_TEST
                       ) -> list[dict[str, Tensor]]:
        """Per image: proposals [n_i, 4] with the RoI head's outputs cls_logits [B, S >= n_i, K + 1] and
        class-specific deltas [B, S, 4 K] -> detections (softmax, background dropped, class-wise NMS)."""
        k = self.roi_head.num_classes
        scores = cls_logits.float().softmax(-1)[..., :k]
        deltas = deltas.reshape(deltas.shape[0], deltas.shape[1], k, 4)
        results = []
        for i, (p, (h, w)) in enumerate(zip(proposals, image_sizes)):
            n = p.shape[0]
            value, loc, label = level_topk(scores[i, :n], cfg.score_thr, n * k)
            max_hw = torch.tensor([h, w], dtype=p.dtype, device=p.device)
            boxes = self.roi_head.coder.decode(p[loc], deltas[i, loc, label].to(p.dtype), max_hw=max_hw)
            results.append(class_nms(boxes, value, label, cfg.nms_iou, cfg.max_per_img))
        return results
