"""Multi-scale deformable attention, the sampling core, in pure PyTorch.

Same argument order and shapes as the reference CUDA op, so a fused kernel can be
dropped in later without touching the callers.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _as_shape_list(spatial_shapes: Tensor | Sequence[Sequence[int]]) -> list[tuple]:
    """Per level (h, w): Python ints, or, while an ONNX export traces the model, 0-dim tensors, which keep
    the level sizes symbolic in the graph (any input size); never converted to ints there."""
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(h, w) if isinstance(h, Tensor) or isinstance(w, Tensor) else (int(h), int(w)) for h, w in spatial_shapes]


def level_shapes_tensor(spatial_shapes: Tensor | Sequence[Sequence[int]], dtype: torch.dtype,
                        device: torch.device) -> Tensor:
    """The level sizes as a ``[num_levels, 2]`` (h, w) tensor; built from the traced sizes while exporting
    (``torch.tensor`` of them would freeze the export's example size into the graph)."""
    shapes = _as_shape_list(spatial_shapes)
    if any(isinstance(v, Tensor) for hw in shapes for v in hw):
        return torch.stack([torch.stack([torch.as_tensor(h), torch.as_tensor(w)]) for h, w in shapes]).to(
            dtype=dtype, device=device)
    return torch.tensor(shapes, dtype=dtype, device=device)


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Tensor | Sequence[Sequence[int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Bilinearly sample every level at the given points and sum them with the attention weights.

    Args:
        value: [bs, num_keys, num_heads, head_dim], the levels flattened row-major and concatenated
            (num_keys = sum of h * w).
        spatial_shapes: [num_levels, 2] as (h, w), a tensor or a list of pairs.
        sampling_locations: [bs, num_queries, num_heads, num_levels, num_points, 2] as (x, y) in
            [0, 1] relative to each level's full (padded) map; points outside sample zeros.
        attention_weights: [bs, num_queries, num_heads, num_levels, num_points] (softmax-normalised
            over levels x points by the caller).

    Returns:
        [bs, num_queries, num_heads * head_dim].
    """
    shapes = _as_shape_list(spatial_shapes)
    bs, num_keys, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    if isinstance(num_keys, int) and sum(h * w for h, w in shapes) != num_keys:   # (not checked in a traced graph)
        raise ValueError(f"spatial_shapes {shapes} cover {sum(h * w for h, w in shapes)} keys, value has {num_keys}")
    value_per_level, start = [], 0
    for h, w in shapes:   # slices, not split(): the sizes may be traced tensors (ONNX export at any size)
        value_per_level.append(value[:, start:start + h * w])
        start = start + h * w
    # grid_sample wants coordinates in [-1, 1]; align_corners=False matches the reference kernel
    sampling_grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        # [bs, h*w, num_heads, head_dim] -> [bs*num_heads, head_dim, h, w]
        value_l = value_per_level[level].flatten(2).transpose(1, 2).reshape(bs * num_heads, head_dim, h, w)
        # [bs, num_queries, num_heads, num_points, 2] -> [bs*num_heads, num_queries, num_points, 2]
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # -> [bs*num_heads, head_dim, num_queries, num_points]
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [bs, num_queries, num_heads, num_levels, num_points] -> [bs*num_heads, 1, num_queries, num_levels*num_points]
    weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries, num_levels * num_points)
    # [bs*num_heads, head_dim, num_queries, num_levels*num_points] -> weighted sum over the last dim
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    # [bs*num_heads, head_dim, num_queries] -> [bs, num_queries, num_heads*head_dim]
    return output.view(bs, num_heads * head_dim, num_queries).transpose(1, 2).contiguous()
