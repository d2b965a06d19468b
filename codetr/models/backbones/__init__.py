"""Backbones, chosen by ``model.backbone.type`` in :func:`build_backbone`: torchvision ResNet
(:mod:`.resnet`) and Swin (:mod:`.swin`, its official weights in :mod:`.swin_weights`).

The detector's interface: ``forward(images [B, 3, H, W]) -> list of maps`` (one per stage in
``model.backbone.out_indices``, stage i at stride 4 x 2^i), with ``out_channels`` and
``out_strides`` describing them.
"""
from __future__ import annotations

from torch import nn

from codetr.config.schema import BackboneConfig
from codetr.models.backbones.resnet import FrozenBatchNorm2d, ResNetBackbone
from codetr.models.backbones.swin import SwinBackbone, build_swin


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """The backbone of ``model.backbone``: :class:`ResNetBackbone` or, for ``type: swin``,
    :class:`SwinBackbone` (both with ``out_channels`` / ``out_strides``)."""
    if cfg.type == "swin":
        return build_swin(cfg)
    return ResNetBackbone(cfg)


__all__ = ["FrozenBatchNorm2d", "ResNetBackbone", "SwinBackbone", "build_backbone", "build_swin"]
