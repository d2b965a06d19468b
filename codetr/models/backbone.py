"""ResNet backbone (torchvision), stages 2-4 out, with the reference's freezing rules."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

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


class ResNetBackbone(nn.Module):
    """torchvision ResNet returning the stride 8 / 16 / 32 maps (stages 2, 3, 4).

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
        self.out_channels = [64 * 2 ** i * expansion for i in self.out_indices]
        self.out_strides = [4 * 2 ** i for i in self.out_indices]
        frozen = [self.stem, self.layer1, self.layer2, self.layer3, self.layer4][: cfg.frozen_stages + 1] \
            if cfg.frozen_stages > 0 else []
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
        """[B, 3, H, W] normalised images -> the maps of ``out_indices`` (stage i: stride 4 x 2^i),
        by default [C3 x H/8, C4 x H/16, C5 x H/32]."""
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        maps = [c2, c3, c4, c5]
        return [maps[i] for i in self.out_indices]
