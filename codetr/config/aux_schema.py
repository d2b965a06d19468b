"""Config of the auxiliary heads (one-to-many assignments); defaults = the official Co-DETR recipe."""
from __future__ import annotations

from dataclasses import dataclass, field

# The menu of auxiliary heads that ``model.aux_heads`` may name.
AUX_HEAD_TYPES = ("faster_rcnn", "atss", "fcos", "retinanet")


@dataclass
class FasterRCNNConfig:
    rpn_pre_nms_top_n: int = 4000      # proposals per image before NMS
    rpn_post_nms_top_n: int = 1000     # proposals kept after NMS
    rpn_nms_thresh: float = 0.7
    rpn_batch_size: int = 256          # sampled anchors per image
    rpn_pos_fraction: float = 0.5
    roi_batch_size: int = 512          # sampled proposals per image
    roi_pos_fraction: float = 0.25
    fc_dims: int = 1024


@dataclass
class ATSSConfig:
    topk: int = 9                      # candidates per level


@dataclass
class FCOSConfig:
    center_sampling_radius: float = 1.5


@dataclass
class RetinaNetConfig:
    pos_iou_thresh: float = 0.5
    neg_iou_thresh: float = 0.4


@dataclass
class AuxHeadsConfig:
    faster_rcnn: FasterRCNNConfig = field(default_factory=FasterRCNNConfig)
    atss: ATSSConfig = field(default_factory=ATSSConfig)
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    retinanet: RetinaNetConfig = field(default_factory=RetinaNetConfig)
