"""Anchor boxes and anchor points on a feature pyramid, with valid flags for padded regions.

Conventions (mmdetection 2.x ``AnchorGenerator``): the base anchors of a level are
centred on (0, 0) (centre offset 0), ordered ratio-major then scale; a level's
anchors are ordered location-major (row, then column) then base anchor, which is
the order of ``pred.permute(0, 2, 3, 1).reshape(B, -1, C)`` for a prediction with
``num_base_anchors * C`` channels.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class AnchorGenerator:
    """Anchors on a multi-level grid.

    Scales are either given (``scales``) or built from ``octave_base_scale`` and
    ``scales_per_octave``: ``octave_base_scale * 2 ** (i / scales_per_octave)``. A base
    anchor of level ``l`` with ratio ``r = h / w`` and scale ``s`` has width
    ``stride_l * s / sqrt(r)`` and height ``stride_l * s * sqrt(r)``.
    """

    def __init__(
        self,
        *,
        strides: Sequence[int],
        ratios: Sequence[float],
        scales: Sequence[float] | None = None,
        octave_base_scale: float | None = None,
        scales_per_octave: int | None = None,
    ) -> None:
        if scales is None:
            if octave_base_scale is None or scales_per_octave is None:
                raise ValueError("give scales, or octave_base_scale and scales_per_octave")
            scales = [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
        self.strides = list(strides)
        self.ratios = list(ratios)
        self.scales = list(scales)

    @property
    def num_base_anchors(self) -> int:
        return len(self.ratios) * len(self.scales)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def base_anchors(self, level: int, dtype: torch.dtype = torch.float32,
                     device: torch.device | None = None) -> Tensor:
        """[num_base_anchors, 4] xyxy anchors of one level centred on (0, 0)."""
        stride = float(self.strides[level])
        ratios = torch.tensor(self.ratios, dtype=dtype, device=device)
        scales = torch.tensor(self.scales, dtype=dtype, device=device)
        h_ratios = ratios.sqrt()
        w_ratios = 1.0 / h_ratios
        ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)

    def grid_anchors(self, featmap_sizes: Sequence[tuple[int, int]], dtype: torch.dtype = torch.float32,
                     device: torch.device | None = None) -> list[Tensor]:
        """Per level [H_l * W_l * num_base_anchors, 4] anchors_xyxy in input pixels."""
        out = []
        for level, (h, w) in enumerate(featmap_sizes):
            stride = self.strides[level]
            shift_x = torch.arange(w, dtype=dtype, device=device) * stride
            shift_y = torch.arange(h, dtype=dtype, device=device) * stride
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)      # [H*W, 1, 4]
            base = self.base_anchors(level, dtype, device)[None]                  # [1, A, 4]
            out.append((shifts + base).reshape(-1, 4))                            # [H*W*A, 4]
        return out

    def valid_flags(self, featmap_sizes: Sequence[tuple[int, int]], image_sizes: Sequence[tuple[int, int]],
                    device: torch.device | None = None) -> list[Tensor]:
        """Per level [B, H_l * W_l * num_base_anchors] bool: the anchor's grid cell lies in the unpadded image."""
        return [
            flags.repeat_interleave(self.num_base_anchors, dim=1)
            for flags in valid_location_flags(featmap_sizes, self.strides, image_sizes, device)
        ]


def valid_location_flags(featmap_sizes: Sequence[tuple[int, int]], strides: Sequence[int],
                         image_sizes: Sequence[tuple[int, int]], device: torch.device | None = None) -> list[Tensor]:
    """Per level [B, H_l * W_l] bool: cell (y, x) is valid when x < ceil(w / stride) and y < ceil(h / stride).

    ``image_sizes`` are the unpadded (h, w) of each image; the padding is at the bottom / right.
    """
    sizes = torch.tensor(image_sizes, dtype=torch.float64, device=device).reshape(-1, 2)   # [B, 2] (h, w)
    out = []
    for (h, w), stride in zip(featmap_sizes, strides):
        valid_hw = torch.ceil(sizes / stride).long()
        ys = torch.arange(h, device=device)
        xs = torch.arange(w, device=device)
        valid_y = ys[None, :] < valid_hw[:, :1]                                   # [B, H]
        valid_x = xs[None, :] < valid_hw[:, 1:]                                   # [B, W]
        out.append((valid_y[:, :, None] & valid_x[:, None, :]).reshape(len(image_sizes), h * w))
    return out


def grid_points(featmap_sizes: Sequence[tuple[int, int]], strides: Sequence[int], dtype: torch.dtype = torch.float32,
                device: torch.device | None = None) -> list[Tensor]:
    """Per level [H_l * W_l, 2] (x, y) points at the cell centres: ``(index + 0.5) * stride``."""
    out = []
    for (h, w), stride in zip(featmap_sizes, strides):
        xs = (torch.arange(w, dtype=dtype, device=device) + 0.5) * stride
        ys = (torch.arange(h, dtype=dtype, device=device) + 0.5) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        out.append(torch.stack([xx, yy], dim=-1).reshape(-1, 2))
    return out
