"""The config tree: one dataclass per section, defaults = the official Co-DETR R50 1x recipe.

Sections live in small files named for what they hold:
``schema.py`` (root + model), ``aux_schema.py`` (auxiliary heads),
``data_schema.py`` (datasets, augmentation), ``run_schema.py`` (schedule, platform).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from codetr.config.aux_schema import AUX_HEAD_TYPES, AuxHeadsConfig
from codetr.config.data_schema import DataConfig
from codetr.config.loader import check_range
from codetr.config.run_schema import PlatformConfig, TrainConfig


@dataclass
class BackboneConfig:
    depth: int = 50                    # torchvision ResNet depth: 18, 34, 50 or 101
    pretrained: bool = True            # load ImageNet weights (from weights_path or the torch hub cache); never downloaded
    weights_path: str | None = None    # explicit weights file; default: the torch hub cache's torchvision file
    frozen_stages: int = 1             # stem + this many stages are frozen (official: 1)
    norm: Literal["frozen_bn", "bn"] = "frozen_bn"   # frozen_bn with ImageNet weights; bn to train from scratch
    out_indices: list[int] = field(default_factory=lambda: [1, 2, 3])  # stages fed to the neck: [1, 2, 3] = strides 8-32, [0, 1, 2, 3] = 4-32

    def validate(self, prefix: str) -> None:
        check_range(self.depth in (18, 34, 50, 101), f"{prefix}.depth", f"must be 18, 34, 50 or 101, got {self.depth}")
        check_range(0 <= self.frozen_stages <= 4, f"{prefix}.frozen_stages", "must be in 0..4")
        check_range(self.out_indices in ([1, 2, 3], [0, 1, 2, 3]), f"{prefix}.out_indices",
                    f"must be [1, 2, 3] or [0, 1, 2, 3], got {self.out_indices}")


@dataclass
class LossWeightsConfig:
    cls: float | None = None           # classification loss weight; null: the official one of the query head (focal 2, Co-DINO's quality focal 1)
    bbox: float = 5.0                  # L1 on normalised cxcywh
    giou: float = 2.0                  # GIoU on xyxy pixels
    focal_alpha: float = 0.25          # focal loss (deformable_detr head)
    focal_gamma: float = 2.0
    quality_focal_beta: float = 2.0    # Quality Focal Loss (dino head): the target is the box's IoU

    def validate(self, prefix: str) -> None:
        for name in ("bbox", "giou", "focal_gamma"):
            check_range(getattr(self, name) >= 0, f"{prefix}.{name}", "must be >= 0")
        check_range(self.cls is None or self.cls >= 0, f"{prefix}.cls", "must be >= 0 or null")
        check_range(0 <= self.focal_alpha <= 1, f"{prefix}.focal_alpha", "must be in [0, 1]")


@dataclass
class MatchCostConfig:
    cls: float = 2.0                   # focal-style class cost
    bbox: float = 5.0                  # L1 cost on normalised cxcywh
    giou: float = 2.0                  # -GIoU cost


@dataclass
class DenoisingConfig:
    num_queries: int = 100             # denoising queries per batch (dynamic groups: this // largest gt count)
    label_noise: float = 0.5           # a copy's class is redrawn with probability label_noise / 2
    box_noise: float = 1.0             # corner shift in units of half the box size (negatives: 1-2x, positives: < 1x)

    def validate(self, prefix: str) -> None:
        check_range(self.num_queries >= 1, f"{prefix}.num_queries", "must be >= 1")
        check_range(0.0 <= self.label_noise <= 1.0, f"{prefix}.label_noise", "must be in [0, 1]")
        check_range(self.box_noise >= 0.0, f"{prefix}.box_noise", "must be >= 0")


@dataclass
class ModelConfig:
    num_classes: int | None = None     # null: taken from the training annotation file
    query_head: Literal["deformable_detr", "dino"] = "deformable_detr"  # Co-Deformable-DETR or Co-DINO
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    embed_dims: int = 256
    num_levels: int = 4                # neck levels fed to the transformer: 4 (strides 8-64) or 5 (strides 4-64)
    encoder_checkpoint_layers: int = 0  # activation checkpointing of the first N encoder layers (all when fewer; official Co-DINO: 4)
    num_heads: int = 8
    num_points: int = 4
    ffn_dims: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float = 0.0
    num_queries: int = 300
    mixed_selection: bool = True       # content queries learned, positions from the two-stage proposals
    num_detections: int = 100          # eval: detections kept per image (top-k over queries x classes, or after NMS)
    nms: Literal["auto", "none", "soft"] = "auto"  # eval: none, or class-wise linear soft-NMS over the top num_queries; auto: the head's official (dino: soft)
    nms_iou: float = 0.8               # soft-NMS IoU threshold
    dn: DenoisingConfig = field(default_factory=DenoisingConfig)   # contrastive denoising (query_head dino)
    pixel_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # images in [0, 1]
    pixel_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    loss: LossWeightsConfig = field(default_factory=LossWeightsConfig)
    match: MatchCostConfig = field(default_factory=MatchCostConfig)
    aux_heads: list[str] = field(default_factory=list)   # ordered auxiliary heads, K = len; [] = Deformable-DETR
    lambda1: float = 1.0               # weight of the customized positive-query losses
    lambda2: float = 2.0               # weight of the auxiliary heads' losses (x num_decoder_layers)
    max_pos_queries: int = 300         # positive-query slots per auxiliary head and image (cap; at least 9)
    with_coord_feat: bool = True       # positive queries get LayerNorm(Linear(feature)) in their content, a per-head scalar in their position
    pos_query_padding: Literal["negatives", "masked"] = "negatives"  # empty slots: the head's negatives as background (official), or masked out
    neck_norm: Literal["group_norm", "masked_group_norm"] = "group_norm"  # masked: GroupNorm statistics ignore padded pixels (not official)
    init_from: str | None = None       # weights only (project or converted official checkpoint); class layers re-initialised when classes differ
    aux: AuxHeadsConfig = field(default_factory=AuxHeadsConfig)

    def validate(self, prefix: str) -> None:
        p = prefix
        if self.num_classes is not None:
            check_range(self.num_classes >= 1, f"{p}.num_classes", "must be >= 1 or null")
        check_range(self.embed_dims > 0 and self.embed_dims % self.num_heads == 0, f"{p}.embed_dims",
                    f"must be a positive multiple of num_heads ({self.num_heads})")
        check_range(self.embed_dims % 2 == 0, f"{p}.embed_dims", "must be even (sine positional encoding)")
        check_range(self.num_levels in (4, 5), f"{p}.num_levels", "must be 4 (strides 8-64) or 5 (strides 4-64)")
        check_range(len(self.backbone.out_indices) + 1 == self.num_levels, f"{p}.num_levels",
                    f"{self.num_levels} levels need {self.num_levels - 1} backbone stages plus the extra level, but "
                    f"{p}.backbone.out_indices is {self.backbone.out_indices}")
        check_range(self.encoder_checkpoint_layers >= 0, f"{p}.encoder_checkpoint_layers", "must be >= 0")
        check_range(0.0 < self.nms_iou <= 1.0, f"{p}.nms_iou", "must be in (0, 1]")
        self.dn.validate(f"{p}.dn")
        for name in ("num_heads", "num_points", "ffn_dims", "num_encoder_layers",
                     "num_decoder_layers", "num_queries", "num_detections", "max_pos_queries"):
            check_range(getattr(self, name) >= 1, f"{p}.{name}", "must be >= 1")
        check_range(0.0 <= self.dropout < 1.0, f"{p}.dropout", "must be in [0, 1)")
        check_range(len(self.pixel_mean) == 3 and len(self.pixel_std) == 3, f"{p}.pixel_mean",
                    "pixel_mean and pixel_std need 3 values")
        check_range(all(s > 0 for s in self.pixel_std), f"{p}.pixel_std", "must be > 0")
        for i, name in enumerate(self.aux_heads):
            check_range(name in AUX_HEAD_TYPES, f"{p}.aux_heads[{i}]",
                        f"unknown auxiliary head {name!r}; choose from {sorted(AUX_HEAD_TYPES)}")
        check_range(self.lambda1 >= 0, f"{p}.lambda1", f"must be >= 0, got {self.lambda1}")
        check_range(self.lambda2 >= 0, f"{p}.lambda2", f"must be >= 0, got {self.lambda2}")
        self.aux.validate(f"{p}.aux")
        if "fcos" in self.aux_heads:
            n = len(self.aux.fcos.regress_ranges)
            check_range(n == self.num_levels + 1, f"{p}.aux.fcos.regress_ranges",
                        f"needs one [lo, hi] pair per pyramid level: {self.num_levels + 1} with num_levels "
                        f"{self.num_levels}, got {n}")

    def cls_loss_weight(self) -> float:
        """The classification loss weight: ``loss.cls``, or the official one of the query head."""
        if self.loss.cls is not None:
            return self.loss.cls
        return 1.0 if self.query_head == "dino" else 2.0

    def eval_nms(self) -> str:
        """``none`` or ``soft``: ``nms``, or the official test-time NMS of the query head."""
        if self.nms != "auto":
            return self.nms
        return "soft" if self.query_head == "dino" else "none"

    def unused_keys(self) -> list[str]:
        """Keys (relative to ``model``) that cannot change this model: the settings of auxiliary
        heads it does not have, and with no head at all the positive-query branch and both lambdas
        (a sweep runs such combinations once)."""
        out = [f"aux.{name}" for name in sorted(AUX_HEAD_TYPES) if name not in self.aux_heads]
        if self.query_head != "dino":
            out.append("dn")
        if not self.aux_heads:
            out += ["lambda1", "lambda2", "max_pos_queries", "with_coord_feat", "pos_query_padding"]
        return out


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)

    def unused_keys(self) -> list[str]:
        """Dotted keys (and key prefixes) whose values cannot change a run of this config."""
        return [f"model.{key}" for key in self.model.unused_keys()]

    def is_unused(self, key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in self.unused_keys())
