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
from codetr.config.run_schema import EvalConfig, PlatformConfig, TrainConfig


# Swin presets (embed_dim, depths, num_heads, window_size, drop_path_rate) as the official Co-DETR
# Swin configs set them (co_deformable_detr_swin_{tiny,small,base,large}_1x_coco.py)
SWIN_SIZES = {
    "t": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 0.2),
    "s": (96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 0.2),
    "b": (128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 0.2),
    "l": (192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 0.3),
}


# parts of the detector model.freeze may keep fixed (codetr/models/freeze.py says what each holds)
FREEZE_PARTS = ("backbone", "backbone.stem", "backbone.stage1", "backbone.stage2", "backbone.stage3", "backbone.stage4",
                "neck", "encoder", "decoder", "query_head", "aux_heads")


@dataclass(frozen=True)
class SwinArch:
    """The resolved Swin settings (preset of ``swin_size`` with the explicit values on top)."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    drop_path_rate: float


@dataclass
class BackboneConfig:
    type: Literal["resnet", "swin"] = "resnet"   # resnet: torchvision ResNet; swin: Swin Transformer (V1, as the official Co-DETR)
    depth: int = 50                    # ResNet depth: 18, 34, 50 or 101
    pretrained: bool = True            # load ImageNet weights (from weights_path or the torch hub cache); never downloaded
    weights_path: str | None = None    # explicit weights file; default: the torch hub cache's torchvision file (ResNet, Swin t/s/b)
    # frozen (no grad, eval mode): null = the official setting (ResNet 1, Swin 0); ResNet k = stem + k stages,
    # Swin k = patch embedding + k - 1 stages (the official frozen_stages k; its -1 is 0 here)
    frozen_stages: int | None = None
    norm: Literal["frozen_bn", "bn"] = "frozen_bn"   # ResNet: frozen_bn with ImageNet weights; bn to train from scratch
    out_indices: list[int] = field(default_factory=lambda: [1, 2, 3])  # stages (0-3) to the neck: [1, 2, 3] = strides 8-32, [0, 1, 2, 3] = strides 4-32
    swin_size: Literal["t", "s", "b", "l"] = "t"   # Swin preset: t / s / b / l (window 7 for t / s, 12 for b / l, as the official configs)
    embed_dim: int | None = None       # Swin: channels of stage 0 (null: the swin_size preset's)
    depths: list[int] | None = None    # Swin: blocks per stage, 4 values (null: the preset's)
    num_heads: list[int] | None = None  # Swin: attention heads per stage, 4 values (null: the preset's)
    window_size: int | None = None     # Swin: attention window (null: the preset's)
    drop_path_rate: float | None = None  # Swin: stochastic depth of the last block, linear from 0 (null: 0.2, swin l 0.3)
    with_cp: bool = False              # Swin: activation checkpointing of every block (less memory, one recompute)

    def frozen(self) -> int:
        """``frozen_stages`` with null resolved to the official setting of the backbone type."""
        if self.frozen_stages is not None:
            return self.frozen_stages
        return 1 if self.type == "resnet" else 0

    def swin_arch(self) -> SwinArch:
        """The Swin settings: the ``swin_size`` preset, overridden by each explicit value."""
        embed_dim, depths, num_heads, window, dpr = SWIN_SIZES[self.swin_size]
        return SwinArch(
            embed_dim=self.embed_dim if self.embed_dim is not None else embed_dim,
            depths=tuple(self.depths if self.depths is not None else depths),
            num_heads=tuple(self.num_heads if self.num_heads is not None else num_heads),
            window_size=self.window_size if self.window_size is not None else window,
            drop_path_rate=self.drop_path_rate if self.drop_path_rate is not None else dpr)

    def unused_keys(self) -> list[str]:
        """Keys that cannot change a backbone of this type."""
        swin = ["swin_size", "embed_dim", "depths", "num_heads", "window_size", "drop_path_rate", "with_cp"]
        return swin if self.type == "resnet" else ["depth", "norm"]

    def validate(self, prefix: str) -> None:
        p = prefix
        check_range(self.depth in (18, 34, 50, 101), f"{p}.depth", f"must be 18, 34, 50 or 101, got {self.depth}")
        if self.frozen_stages is not None:
            check_range(0 <= self.frozen_stages <= 4, f"{p}.frozen_stages", "must be in 0..4 or null")
        idx = self.out_indices
        check_range(len(idx) >= 1 and all(0 <= i <= 3 for i in idx) and list(idx) == sorted(set(idx)),
                    f"{p}.out_indices", f"must be increasing stage indices in 0..3, got {idx}")
        if self.type != "swin":
            return
        for name in ("depths", "num_heads"):
            value = getattr(self, name)
            if value is not None:
                check_range(len(value) == 4 and all(v >= 1 for v in value), f"{p}.{name}",
                            f"must be 4 positive values (one per stage) or null, got {value}")
        if self.embed_dim is not None:
            check_range(self.embed_dim >= 1, f"{p}.embed_dim", f"must be >= 1 or null, got {self.embed_dim}")
        if self.window_size is not None:
            check_range(self.window_size >= 2, f"{p}.window_size", f"must be >= 2 or null, got {self.window_size}")
        if self.drop_path_rate is not None:
            check_range(0.0 <= self.drop_path_rate < 1.0, f"{p}.drop_path_rate", "must be in [0, 1) or null")
        arch = self.swin_arch()
        for i, heads in enumerate(arch.num_heads):
            dim = arch.embed_dim * 2 ** i
            check_range(dim % heads == 0, f"{p}.num_heads",
                        f"stage {i} has {dim} channels (embed_dim x 2^{i}), not a multiple of its {heads} heads")


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
class InputPaddingConfig:
    size: int | None = None            # pad every image to size x size, bottom / right (official LSJ: 1024); null: to the batch's largest
    size_divisor: int = 1              # round the padded height and width up to a multiple of this (official O365 configs: 32)
    pixel_value: float | None = None   # padding pixel on the 0-255 scale before normalisation (official LSJ: 114); null: 0 after it
    # true: padded pixels are masked out of attention and proposals, boxes normalised by each image's own size;
    # false (official LSJ, with_attn_mask=False): padding is image content and boxes are normalised by the padded size
    mask: bool = True

    def validate(self, prefix: str) -> None:
        if self.size is not None:
            check_range(self.size >= 1, f"{prefix}.size", "must be >= 1 or null")
        check_range(self.size_divisor >= 1, f"{prefix}.size_divisor", "must be >= 1")
        if self.pixel_value is not None:
            check_range(0 <= self.pixel_value <= 255, f"{prefix}.pixel_value", "must be in [0, 255] or null")


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
    msda_impl: Literal["auto", "pytorch", "triton"] = "auto"  # deformable attention op: triton = fused kernels (CUDA), pytorch = grid_sample; auto: triton on CUDA when it imports
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
    input_padding: InputPaddingConfig = field(default_factory=InputPaddingConfig)   # how a batch is padded (LSJ: fixed square, no mask)
    loss: LossWeightsConfig = field(default_factory=LossWeightsConfig)
    match: MatchCostConfig = field(default_factory=MatchCostConfig)
    aux_heads: list[str] = field(default_factory=list)   # ordered auxiliary heads, K = len; [] = Deformable-DETR
    lambda1: float = 1.0               # weight of the customized positive-query losses
    lambda2: float = 2.0               # weight of the auxiliary heads' losses (x num_decoder_layers)
    max_pos_queries: int = 300         # positive-query slots per auxiliary head and image (cap; at least 9)
    with_coord_feat: bool = True       # positive queries get LayerNorm(Linear(feature)) in their content, a per-head scalar in their position
    pos_query_padding: Literal["negatives", "masked"] = "negatives"  # empty slots: the head's negatives as background (official), or masked out
    neck_norm: Literal["group_norm", "masked_group_norm"] = "group_norm"  # masked: GroupNorm statistics ignore padded pixels (not official)
    init_from: str | None = None       # weights only (project or converted official checkpoint); classes, query count and feature levels may differ (docs/fine-tuning.md)
    # parts kept fixed (no gradient, not in the optimizer, eval mode): backbone, backbone.stem, backbone.stage1-4, neck, encoder, decoder, query_head, aux_heads
    freeze: list[str] = field(default_factory=list)
    aux: AuxHeadsConfig = field(default_factory=AuxHeadsConfig)

    def validate(self, prefix: str) -> None:
        p = prefix
        if self.num_classes is not None:
            check_range(self.num_classes >= 1, f"{p}.num_classes", "must be >= 1 or null")
        check_range(self.embed_dims > 0 and self.embed_dims % self.num_heads == 0, f"{p}.embed_dims",
                    f"must be a positive multiple of num_heads ({self.num_heads})")
        check_range(self.embed_dims % 2 == 0, f"{p}.embed_dims", "must be even (sine positional encoding)")
        check_range(self.num_levels in (4, 5), f"{p}.num_levels", "must be 4 (strides 8-64) or 5 (strides 4-64)")
        # the neck adds one level on the last backbone output: the backbone gives the other num_levels - 1
        needed = list(range(4 - (self.num_levels - 1), 4))
        check_range(self.backbone.out_indices == needed, f"{p}.backbone.out_indices",
                    f"must be {needed} for num_levels {self.num_levels}, got {self.backbone.out_indices}")
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
        for i, part in enumerate(self.freeze):
            check_range(part in FREEZE_PARTS, f"{p}.freeze[{i}]",
                        f"unknown part {part!r}; valid parts: {', '.join(FREEZE_PARTS)}")
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
        heads it does not have, the other backbone type's settings, and with no head at all the
        positive-query branch and both lambdas (a sweep runs such combinations once)."""
        out = [f"aux.{name}" for name in sorted(AUX_HEAD_TYPES) if name not in self.aux_heads]
        if self.query_head != "dino":
            out.append("dn")
        out += [f"backbone.{key}" for key in self.backbone.unused_keys()]
        if not self.aux_heads:
            out += ["lambda1", "lambda2", "max_pos_queries", "with_coord_feat", "pos_query_padding"]
        return out


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)

    def validate(self, prefix: str) -> None:
        """Checks across sections: every resized image must fit a fixed padding size."""
        size, aug = self.model.input_padding.size, self.data.augment
        if size is None:
            return
        largest = {"data.augment.eval_max_size": aug.eval_max_size}
        if aug.policy == "lsj":
            largest["data.augment.lsj.image_size"] = aug.lsj.image_size
        else:
            largest["data.augment.max_size"] = aug.max_size
        for key, value in largest.items():
            check_range(value <= size, "model.input_padding.size",
                        f"{size} is smaller than {key} ({value}): such images would not fit the padded batch")

    def unused_keys(self) -> list[str]:
        """Dotted keys (and key prefixes) whose values cannot change a run of this config."""
        return [f"model.{key}" for key in self.model.unused_keys()]

    def is_unused(self, key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in self.unused_keys())
