"""The torchvision ResNet backbone (``model.backbone.type: resnet``) and its frozen BatchNorm.

The detector's interface: ``forward(images [B, 3, H, W]) -> list of maps`` (one per stage in
``model.backbone.out_indices``, stage i at stride 4 x 2^i), with ``out_channels`` and
``out_strides`` describing them.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d as _TorchvisionFrozenBN

from codetr.config.schema import BackboneConfig

_WEIGHTS = {
    18: torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    34: torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    50: torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    101: torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
}


def default_weights_path(depth: int) -> Path:
    """Where torchvision's hub cache keeps the ImageNet weights of ResNet-``depth``."""
    filename = os.path.basename(_WEIGHTS[depth].url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


class FrozenBatchNorm2d(_TorchvisionFrozenBN):
    """BatchNorm with fixed statistics and affine parameters (buffers, not trained), computed by
    ``F.batch_norm`` in inference mode: the same arithmetic as a BatchNorm in eval mode, so the
    features are bitwise those of the official backbone (torchvision's version folds the statistics
    into one scale and shift, which rounds differently in the last bit)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class ResNetBackbone(nn.Module):
    """torchvision ResNet returning the maps of the stages in ``out_indices`` (0-3 = layer1-layer4,
    strides 4-32; default [1, 2, 3] = C3-C5 at strides 8 / 16 / 32).

    ``frozen_stages`` = 1 freezes the stem and stage 1 (the official setting); ``norm`` =
    ``frozen_bn`` uses FrozenBatchNorm2d everywhere (ImageNet statistics), ``bn`` trains
    BatchNorm (for from-scratch training).
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        norm_layer = FrozenBatchNorm2d if cfg.norm == "frozen_bn" else nn.BatchNorm2d
        builder = getattr(torchvision.models, f"resnet{cfg.depth}")
        net = builder(weights=None, norm_layer=norm_layer)
        if cfg.pretrained:
            path = Path(cfg.weights_path) if cfg.weights_path else default_weights_path(cfg.depth)
            if not path.is_file():
                raise FileNotFoundError(
                    f"model.backbone.pretrained is true but the ImageNet weights of ResNet-{cfg.depth} are not at "
                    f"{path}. Put the torchvision file there (or set model.backbone.weights_path), or train from "
                    f"scratch with model.backbone.pretrained=false. Weights are never downloaded implicitly.")
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise RuntimeError(f"{path}: not a ResNet-{cfg.depth} state dict (missing {missing[:5]}, "
                                   f"unexpected {unexpected[:5]})")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if cfg.depth >= 50 else 1
        self.out_indices = list(cfg.out_indices)
        self.out_channels = [64 * expansion * 2 ** i for i in self.out_indices]
        self.out_strides = [4 * 2 ** i for i in self.out_indices]
        frozen_stages = cfg.frozen()
        frozen = [self.stem, self.layer1, self.layer2, self.layer3, self.layer4][: frozen_stages + 1] \
            if frozen_stages > 0 else []
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        self._frozen = frozen

    def train(self, mode: bool = True) -> "ResNetBackbone":
        super().train(mode)
        for module in self._frozen:  # frozen stages keep their BatchNorm statistics
            module.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """[B, 3, H, W] normalised images -> one map per stage i in ``out_indices``: [B, C_i, H / 2^(i+2), W / 2^(i+2)]
        (default: C3 x H/8, C4 x H/16, C5 x H/32)."""
        x = self.stem(x)
        outs = []
        for i, layer in enumerate([self.layer1, self.layer2, self.layer3, self.layer4][: self.out_indices[-1] + 1]):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
        return outs

