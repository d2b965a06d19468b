"""RoIAlign (``aligned=True``) as two matrix products, for small feature maps on the CPU.

torchvision's CPU ``roi_align`` backward scatters every bilinear weight of every channel
one at a time (seconds for a few thousand RoIs). The bilinear sampling of RoIAlign is
separable: a bin's value is ``sum_{y, x} A_y[bin_row, y] * A_x[bin_col, x] * F[c, y, x]``,
where ``A_y`` averages the row weights of the bin's ``grid_h`` sample rows (and the same in
x). So ``pooled = A_y @ F @ A_x^T`` per RoI, which autograd differentiates as matmuls.
The cost grows with the map size (every RoI row of ``A_y`` spans the whole map height), so
it pays off on small maps only; ``roi_align_auto`` picks per call.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Above this many map cells (H * W), torchvision's kernel is used instead: the dense
# matmuls cost O(H * W) per RoI, the sparse kernel O(samples) per RoI.
MATMUL_MAX_CELLS = 1024


def _axis_weights(start: Tensor, extent: Tensor, bins: int, sampling_ratio: int, length: int) -> Tensor:
    """Bilinear weights of one axis, averaged over each bin's samples.

    start, extent: [R] RoI start and size along the axis, in map cells (already shifted by
    -0.5 for ``aligned=True``). Returns [R, bins, length], torchvision's rules included: a
    sample beyond [-1, length] contributes nothing, one within is clamped to the map.
    """
    bin_size = extent / bins                                                       # [R]
    if sampling_ratio > 0:
        grid = torch.full_like(extent, float(sampling_ratio))
    else:
        grid = torch.ceil(extent / bins)                                           # adaptive, per RoI
    max_grid = max(int(grid.max()), 1) if grid.numel() else 1
    p = torch.arange(bins, dtype=extent.dtype, device=extent.device)[None, :, None]
    i = torch.arange(max_grid, dtype=extent.dtype, device=extent.device)[None, None, :]
    g = grid.clamp(min=1)[:, None, None]
    coord = start[:, None, None] + p * bin_size[:, None, None] + (i + 0.5) * bin_size[:, None, None] / g
    weight = ((i < grid[:, None, None]) & (coord >= -1.0) & (coord <= length)).to(extent.dtype) / g
    coord = coord.clamp(min=0)
    low = coord.floor().long()
    at_edge = low >= length - 1
    low = torch.where(at_edge, torch.full_like(low, length - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coord), coord - low.to(coord.dtype))
    out = extent.new_zeros(extent.shape[0], bins, length)
    out.scatter_add_(2, low, (1 - frac) * weight)                                  # [R, bins, G] into [R, bins, L]
    out.scatter_add_(2, high, frac * weight)
    return out


def roi_align_matmul(feature: Tensor, boxes_xyxy: Tensor, output_size: int, spatial_scale: float,
                     sampling_ratio: int = 0) -> Tensor:
    """RoIAlign of one image's RoIs, equal to ``torchvision.ops.roi_align(..., aligned=True)``.

    feature [C, H, W]; boxes_xyxy [R, 4] in image coordinates. Returns [R, C, s, s].
    """
    c, h, w = feature.shape
    r, s = boxes_xyxy.shape[0], output_size
    scaled = boxes_xyxy.to(feature.dtype) * spatial_scale - 0.5
    wy = _axis_weights(scaled[:, 1], scaled[:, 3] - scaled[:, 1], s, sampling_ratio, h)   # [R, s, H]
    wx = _axis_weights(scaled[:, 0], scaled[:, 2] - scaled[:, 0], s, sampling_ratio, w)   # [R, s, W]
    rows = wy.reshape(r * s, h) @ feature.permute(1, 0, 2).reshape(h, c * w)      # [R*s, C*W]
    pooled = rows.reshape(r, s * c, w) @ wx.transpose(1, 2)                        # [R, s(ph)*C, s(pw)]
    return pooled.reshape(r, s, c, s).permute(0, 2, 1, 3)                          # [R, C, s(ph), s(pw)]
