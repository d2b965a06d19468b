"""What every auxiliary head shares: the interface, the positive-count normaliser, small layers."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from codetr.models.aux.positives import Candidates

# The input pyramid: the encoder's 4 levels plus one stride-128 map.
PYRAMID_STRIDES = (8, 16, 32, 64, 128)


class AuxHead(nn.Module):
    """An auxiliary (one-to-many) head.

    ``loss_weights`` holds the head's own weight for every loss key ``forward_train`` returns,
    before lambda_2 x num_decoder_layers (applied by the detector).
    """

    loss_weights: dict[str, float]

    def forward_train(self, feats: list[Tensor], targets: list[dict],
                      image_sizes: list[tuple[int, int]]) -> tuple[dict[str, Tensor], Candidates]:
        """feats: 5 maps [B, C, H_l, W_l] (strides 8..128, padded bottom / right);
        targets: per image {"boxes": [N, 4] xyxy pixels, "labels": [N] int64};
        image_sizes: per image unpadded (h, w).
        Returns unweighted normalised scalar losses and every assignment candidate (positives
        with their class, negatives labelled ``num_classes``) for the customized positive queries."""
        raise NotImplementedError


def reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over the distributed workers (``x`` itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    x = x.clone()
    dist.all_reduce(x.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return x


def positive_normaliser(num_pos: Tensor) -> Tensor:
    """Number of positives averaged over workers, clamped at >= 1 (a float tensor, no host sync)."""
    return reduce_mean(num_pos.detach().float()).clamp(min=1.0)


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, or the largest divisor of ``channels`` below it."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def conv_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (no bias) + GroupNorm + ReLU, the stacked conv of ATSS / FCOS heads."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         group_norm(out_channels), nn.ReLU(inplace=True))


def conv_gn_tower(channels: int, num_convs: int) -> nn.Sequential:
    """``num_convs`` stacked :func:`conv_gn_relu` blocks (one branch of an ATSS / FCOS head)."""
    return nn.Sequential(*[conv_gn_relu(channels, channels) for _ in range(num_convs)])


def init_conv_head(module: nn.Module, cls_conv: nn.Conv2d | None = None, prior_prob: float = 0.01) -> None:
    """Reference init: every conv normal(std 0.01) and zero bias; the focal classifier's bias log-odds of prior_prob."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if cls_conv is not None and cls_conv.bias is not None:
        nn.init.constant_(cls_conv.bias, -math.log((1 - prior_prob) / prior_prob))


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def flatten_levels(maps: Sequence[Tensor], channels: int) -> Tensor:
    """Per level [B, A * channels, H, W] -> [B, sum_l H_l * W_l * A, channels] (location-major, anchor-minor)."""
    out = []
    for m in maps:
        b = m.shape[0]
        out.append(m.permute(0, 2, 3, 1).reshape(b, -1, channels))                  # [B, H*W*A, channels]
    return torch.cat(out, dim=1)


def targets_to_device(targets: Sequence[dict], device: torch.device,
                      dtype: torch.dtype = torch.float32) -> tuple[list[Tensor], list[Tensor]]:
    """Per image gt boxes [N, 4] in ``dtype`` and labels [N] int64 on ``device``."""
    boxes = [t["boxes"].to(device=device, dtype=dtype).reshape(-1, 4) for t in targets]
    labels = [t["labels"].to(device=device, dtype=torch.long).reshape(-1) for t in targets]
    return boxes, labels
