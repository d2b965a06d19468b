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

    def validate(self, prefix: str) -> None:
        check_range(self.depth in (18, 34, 50, 101), f"{prefix}.depth", f"must be 18, 34, 50 or 101, got {self.depth}")
        check_range(0 <= self.frozen_stages <= 4, f"{prefix}.frozen_stages", "must be in 0..4")


@dataclass
class LossWeightsConfig:
    cls: float = 2.0                   # focal classification loss weight
    bbox: float = 5.0                  # L1 on normalised cxcywh
    giou: float = 2.0                  # GIoU on xyxy pixels
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def validate(self, prefix: str) -> None:
        for name in ("cls", "bbox", "giou", "focal_gamma"):
            check_range(getattr(self, name) >= 0, f"{prefix}.{name}", "must be >= 0")
        check_range(0 <= self.focal_alpha <= 1, f"{prefix}.focal_alpha", "must be in [0, 1]")


@dataclass
class MatchCostConfig:
    cls: float = 2.0                   # focal-style class cost
    bbox: float = 5.0                  # L1 cost on normalised cxcywh
    giou: float = 2.0                  # -GIoU cost


@dataclass
class ModelConfig:
    num_classes: int | None = None     # null: taken from the training annotation file
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    embed_dims: int = 256
    num_levels: int = 4                # neck levels fed to the transformer (strides 8, 16, 32, 64)
    num_heads: int = 8
    num_points: int = 4
    ffn_dims: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float = 0.0
    num_queries: int = 300
    mixed_selection: bool = True       # content queries learned, positions from the two-stage proposals
    num_detections: int = 100          # eval: top-k over queries x classes
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
        check_range(self.num_levels == 4, f"{p}.num_levels", "only 4 levels (strides 8-64) are supported")
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

    def unused_keys(self) -> list[str]:
        """Keys (relative to ``model``) that cannot change this model: the settings of auxiliary
        heads it does not have, and with no head at all the positive-query branch and both lambdas
        (a sweep runs such combinations once)."""
        out = [f"aux.{name}" for name in sorted(AUX_HEAD_TYPES) if name not in self.aux_heads]
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
