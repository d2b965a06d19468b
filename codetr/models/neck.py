"""Channel mapper neck: 1x1 conv (no bias) + GroupNorm(32) per input, plus one extra stride-64 level.

As in the official model the GroupNorm statistics are taken over the whole padded map, so a
padded image's features depend on how much padding its batch adds. ``masked=True`` (config
``model.neck_norm: masked_group_norm``, not official) takes them over the image part only.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics ignore padded positions (mask True = padding)."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if mask is None:
            return super().forward(x)
        bs, channels, h, w = x.shape
        # [bs, C, h, w] -> [bs, G, C/G, h, w]
        xg = x.view(bs, self.num_groups, channels // self.num_groups, h, w)
        valid = (~mask).to(x.dtype)[:, None, None]  # [bs, 1, 1, h, w]
        count = valid.sum((2, 3, 4), keepdim=True).clamp(min=1) * (channels // self.num_groups)
        mean = (xg * valid).sum((2, 3, 4), keepdim=True) / count
        var = (((xg - mean) * valid) ** 2).sum((2, 3, 4), keepdim=True) / count
        out = ((xg - mean) / (var + self.eps).sqrt()).view(bs, channels, h, w)
        return out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def mask_like(mask: Tensor, feat: Tensor) -> Tensor:
    """Resize a [bs, H, W] padding mask to ``feat``'s [.., h, w] (nearest, as the reference)."""
    return F.interpolate(mask[None].float(), size=feat.shape[-2:]).to(mask.dtype)[0]


class ChannelMapper(nn.Module):
    """Maps the backbone's C3-C5 to ``embed_dims`` and adds a 3x3 stride-2 level on C5 (4 levels)."""

    def __init__(self, in_channels: list[int], embed_dims: int, num_groups: int = 32, masked: bool = False) -> None:
        super().__init__()
        groups = min(num_groups, embed_dims)
        self.masked = masked
        # a conv followed by a norm has no bias (the norm's shift replaces it), as the official ConvModule
        self.lateral = nn.ModuleList(nn.Conv2d(c, embed_dims, kernel_size=1, bias=False) for c in in_channels)
        self.lateral_norm = nn.ModuleList(MaskedGroupNorm(groups, embed_dims) for _ in in_channels)
        self.extra = nn.Conv2d(in_channels[-1], embed_dims, kernel_size=3, stride=2, padding=1, bias=False)
        self.extra_norm = MaskedGroupNorm(groups, embed_dims)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, feats: list[Tensor], mask: Tensor | None = None) -> tuple[list[Tensor], list[Tensor | None]]:
        """[C3, C4, C5] and the image padding mask [bs, H, W] -> 4 maps [bs, embed_dims, H_l, W_l]
        at strides 8, 16, 32, 64, and their padding masks [bs, H_l, W_l]."""
        outs, masks = [], []
        for conv, norm, f in zip(self.lateral, self.lateral_norm, feats):
            m = mask_like(mask, f) if mask is not None else None
            outs.append(norm(conv(f), m if self.masked else None))
            masks.append(m)
        extra = self.extra(feats[-1])
        m = mask_like(mask, extra) if mask is not None else None
        outs.append(self.extra_norm(extra, m if self.masked else None))
        masks.append(m)
        return outs, masks
