"""Config of the auxiliary heads (one-to-many assignments); defaults = the official Co-DETR recipe.

Loss weights here are each head's own per-term weights; the detector multiplies them by
lambda_2 x num_decoder_layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from codetr.config.loader import check_range

# The menu of auxiliary heads that ``model.aux_heads`` may name.
AUX_HEAD_TYPES = ("faster_rcnn", "atss", "fcos", "retinanet")


@dataclass
class FasterRCNNConfig:
    # RPN
    rpn_octave_base_scale: float = 4.0  # anchor size = stride x this x 2^(i / scales_per_octave)
    rpn_scales_per_octave: int = 3
    rpn_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])   # anchor h / w
    rpn_pos_iou_thresh: float = 0.7    # MaxIoU: positive at IoU >= this
    rpn_neg_iou_thresh: float = 0.3    # MaxIoU: negative below this, ignored in between
    rpn_min_pos_iou: float = 0.3       # low-quality matches: a gt's best anchors if IoU >= this
    rpn_batch_size: int = 256          # sampled anchors per image
    rpn_pos_fraction: float = 0.5
    rpn_pre_nms_top_n: int = 4000      # proposals per level and image before NMS
    rpn_post_nms_top_n: int = 1000     # proposals kept after NMS
    rpn_nms_thresh: float = 0.7
    rpn_min_box_size: float = 0.0      # proposals with a side <= this are dropped
    # RoI head
    roi_output_size: int = 7           # RoIAlign output (square)
    roi_finest_scale: float = 112.0    # level = floor(log2(sqrt(area) / finest_scale)), clamped to the 4 finest levels
    roi_sampling_ratio: int = 0        # RoIAlign samples per bin (0 = adaptive)
    roi_pos_iou_thresh: float = 0.5    # MaxIoU: positive at IoU >= this (no low-quality matches)
    roi_neg_iou_thresh: float = 0.5
    roi_batch_size: int = 512          # sampled proposals per image
    roi_pos_fraction: float = 0.25
    roi_add_gt_as_proposals: bool = True
    roi_target_stds: list[float] = field(default_factory=lambda: [0.1, 0.1, 0.2, 0.2])  # delta coder stds
    fc_dims: int = 1024                # the two shared fully connected layers
    # per-term loss weights
    rpn_cls_weight: float = 1.0        # binary cross-entropy on sampled anchors
    rpn_bbox_weight: float = 1.0       # L1 on deltas of positive anchors
    roi_cls_weight: float = 1.0        # softmax cross-entropy on sampled proposals
    roi_bbox_weight: float = 10.0      # GIoU on decoded boxes of positive proposals


@dataclass
class ATSSConfig:
    topk: int = 9                      # candidates per level
    stacked_convs: int = 1             # conv + GN + ReLU layers in each branch
    octave_base_scale: float = 8.0     # anchor size = stride x this (one anchor per location)
    target_stds: list[float] = field(default_factory=lambda: [0.1, 0.1, 0.2, 0.2])  # delta coder stds
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    cls_weight: float = 1.0            # focal loss
    bbox_weight: float = 2.0           # GIoU weighted by the centerness target
    centerness_weight: float = 1.0     # binary cross-entropy on centerness


@dataclass
class FCOSConfig:
    center_sampling: bool = True       # positives only near the gt centre
    center_sampling_radius: float = 1.5  # centre region half-size in strides
    regress_ranges: list[list[float]] = field(
        default_factory=lambda: [[-1.0, 64.0], [64.0, 128.0], [128.0, 256.0], [256.0, 512.0], [512.0, 1e8]])
    stacked_convs: int = 1             # conv + GN + ReLU layers in each branch (as the ATSS aux head)
    norm_on_bbox: bool = True          # distances in units of the stride (ReLU instead of exp)
    centerness_on_reg: bool = True     # centerness predicted from the regression branch
    pos_box_size: float = 1.0          # a positive point's box for the positive queries: side = this x stride
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    cls_weight: float = 1.0            # focal loss
    bbox_weight: float = 1.0           # GIoU weighted by the centerness target
    centerness_weight: float = 1.0     # binary cross-entropy on centerness


@dataclass
class RetinaNetConfig:
    pos_iou_thresh: float = 0.5
    neg_iou_thresh: float = 0.4
    min_pos_iou: float = 0.0           # low-quality matches: any gt's best anchors
    octave_base_scale: float = 4.0     # anchor size = stride x this x 2^(i / scales_per_octave)
    scales_per_octave: int = 3
    ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    stacked_convs: int = 1             # conv + ReLU layers in each branch (as the ATSS aux head)
    bbox_loss: Literal["l1", "giou"] = "l1"   # L1 on deltas (stds 1) or GIoU on decoded boxes
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    cls_weight: float = 1.0            # focal loss
    bbox_weight: float = 1.0           # L1 (or GIoU) on positive anchors


@dataclass
class AuxHeadsConfig:
    faster_rcnn: FasterRCNNConfig = field(default_factory=FasterRCNNConfig)
    atss: ATSSConfig = field(default_factory=ATSSConfig)
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    retinanet: RetinaNetConfig = field(default_factory=RetinaNetConfig)

    def validate(self, prefix: str) -> None:
        f = self.faster_rcnn
        for name in ("rpn_pos_fraction", "roi_pos_fraction"):
            check_range(0 < getattr(f, name) <= 1, f"{prefix}.faster_rcnn.{name}", "must be in (0, 1]")
        for name in ("rpn_batch_size", "roi_batch_size", "rpn_pre_nms_top_n", "rpn_post_nms_top_n", "fc_dims",
                     "roi_output_size", "rpn_scales_per_octave"):
            check_range(getattr(f, name) >= 1, f"{prefix}.faster_rcnn.{name}", "must be >= 1")
        check_range(len(f.roi_target_stds) == 4, f"{prefix}.faster_rcnn.roi_target_stds", "needs 4 values")
        check_range(self.atss.topk >= 1, f"{prefix}.atss.topk", "must be >= 1")
        check_range(len(self.atss.target_stds) == 4, f"{prefix}.atss.target_stds", "needs 4 values")
        check_range(all(len(r) == 2 for r in self.fcos.regress_ranges),
                    f"{prefix}.fcos.regress_ranges", "needs [lo, hi] pairs, one per pyramid level")
        check_range(self.retinanet.neg_iou_thresh <= self.retinanet.pos_iou_thresh,
                    f"{prefix}.retinanet.neg_iou_thresh", "must be <= pos_iou_thresh")
        for head in ("atss", "fcos", "retinanet"):
            check_range(getattr(self, head).stacked_convs >= 0, f"{prefix}.{head}.stacked_convs", "must be >= 0")
