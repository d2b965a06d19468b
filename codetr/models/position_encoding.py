"""Sine positional encoding of padded feature maps (normalize=True, offset=-0.5 as the reference)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from codetr.models.precision import full_dtype, upcast


class SinePositionalEncoding(nn.Module):
    """Position of every valid pixel, cumulated over the non-padded area, as sin/cos features."""

    def __init__(self, num_feats: int, temperature: float = 10000.0, offset: float = -0.5,
                 scale: float = 2 * math.pi, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature
        self.offset = offset
        self.scale = scale
        self.eps = eps

    def forward(self, mask: Tensor) -> Tensor:
        """mask [B, H, W] (True = padding) -> [B, 2 * num_feats, H, W] (y features then x)."""
        not_mask = (~mask).to(torch.float32)
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
        x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_feats)
        pos_x = x_embed[..., None] / dim_t  # [B, H, W, num_feats]
        pos_y = y_embed[..., None] / dim_t
        # interleave sin (even) and cos (odd): [B, H, W, num_feats/2, 2] -> [B, H, W, num_feats]
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        # [B, H, W, 2*num_feats] -> [B, 2*num_feats, H, W]
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def box_position_embedding(boxes_unact: Tensor, num_pos_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of boxes for query positions (the two-stage / positive-query encoder).

    boxes_unact: [B, N, 4] un-sigmoided cxcywh -> [B, N, 4 * num_pos_feats].
    """
    scale = 2 * math.pi
    dim_t = torch.arange(num_pos_feats, dtype=full_dtype(boxes_unact), device=boxes_unact.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos = upcast(boxes_unact).sigmoid()[..., None] * scale / dim_t  # [B, N, 4, num_pos_feats]
    # [B, N, 4, num_pos_feats/2, 2] -> [B, N, 4 * num_pos_feats]
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)
