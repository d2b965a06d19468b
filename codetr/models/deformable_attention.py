"""Multi-scale deformable attention module (projections + the sampling op)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from codetr.models.precision import float32_region, upcast
from codetr.ops import ms_deform_attn, resolve_msda_impl


def linear_bias_after_product(linear: nn.Linear, x: Tensor) -> Tensor:
    """``linear(x)`` as the product, then the bias added: what PyTorch computes for ``linear`` on a
    non-contiguous input (on a contiguous one it fuses the bias into the product, which rounds otherwise).
    The official model hands some of its linears sequence-first tensors viewed batch-first (the encoder's
    layers after the first, the two-stage proposals' projection); these use this form, so that the
    encoder memory and the two-stage scores are bitwise the official ones on any CPU and a near-tie in
    the two-stage top-k breaks the same way on both sides (docs/parity.md, "What ties can move")."""
    out = torch.matmul(x, linear.weight.t())
    return out + linear.bias.to(out.dtype) if linear.bias is not None else out


class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to ``num_points`` sampled points per head and level around its reference.

    Initialised as the reference: sampling offsets start on a ring of directions (one per head)
    at growing radii per point, attention weights start uniform, projections Xavier.
    ``msda_impl`` picks the sampling op: auto, pytorch or triton (:mod:`codetr.ops.ms_deform_attn_dispatch`).
    """

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int,
                 msda_impl: str = "auto") -> None:
        super().__init__()
        self.msda_impl = msda_impl
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)  # [num_heads, 2]
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        # [num_heads, num_levels, num_points, 2], point i at radius i + 1
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: list[tuple[int, int]], value_padding_mask: Tensor | None,
                bias_after_product: bool = False) -> Tensor:
        """
        Args:
            query: [bs, num_queries, embed_dims] (positional embedding already added).
            reference_points: [bs, num_queries, num_levels, 2] as (x, y) or [..., 4] as (cx, cy, w, h),
                normalised to each level's padded map.
            value: [bs, num_keys, embed_dims].
            spatial_shapes: per level (h, w).
            value_padding_mask: [bs, num_keys], True = padding (sampled as zero).
            bias_after_product: the value, offset and weight projections as product + bias
                (:func:`linear_bias_after_product`; the official encoder's layers after the first).
        Returns:
            [bs, num_queries, embed_dims] (no residual).
        """
        bs, num_queries, _ = query.shape
        num_keys = value.shape[1]
        project = linear_bias_after_product if bias_after_product else (lambda linear, x: linear(x))
        value = project(self.value_proj, value)
        if value_padding_mask is not None:
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(bs, num_keys, self.num_heads, self.embed_dims // self.num_heads)
        # the sampling runs in full precision (under autocast the projections above and below do not):
        # locations in [0, 1] of maps ~200 px wide need more than bf16's 8 bits
        offsets = upcast(project(self.sampling_offsets, query)).view(
            bs, num_queries, self.num_heads, self.num_levels, self.num_points, 2)
        weights = upcast(project(self.attention_weights, query)).view(
            bs, num_queries, self.num_heads, self.num_levels * self.num_points).softmax(-1)
        weights = weights.view(bs, num_queries, self.num_heads, self.num_levels, self.num_points)
        reference_points = reference_points.to(offsets.dtype)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by (w, h)
            normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=offsets.dtype, device=query.device)
            # [bs, num_queries, 1, num_levels, 1, 2] + [..., num_heads, num_levels, num_points, 2]
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # offsets are relative to the box size, half-extent per num_points
            locations = reference_points[:, :, None, :, None, :2] + \
                offsets / self.num_points * reference_points[:, :, None, :, None, 2:] * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 or 4, got {tuple(reference_points.shape)}")
        with float32_region(value):
            # grid_sample in half precision would round the sampled values: the PyTorch path samples an
            # upcast copy; the Triton kernels read half-precision values and accumulate in float32
            impl = resolve_msda_impl(self.msda_impl, value)
            output = ms_deform_attn(value if impl == "triton" else upcast(value), spatial_shapes, upcast(locations),
                                    upcast(weights), impl=impl)
        return self.output_proj(output)
