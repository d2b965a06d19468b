"""Multi-scale deformable attention as fused Triton kernels: forward and backward.

Same arguments, shapes and numerics as the PyTorch path
(:func:`codetr.ops.ms_deform_attn.multi_scale_deformable_attention`): bilinear sampling with zeros
outside the map and ``grid_sample``'s ``align_corners=False`` pixel convention (a location ``x`` in
[0, 1] is pixel ``x * w - 0.5``, pixel centres at integers), the gradient of a location taken on the
cell ``floor(pixel)`` as ``grid_sample`` does (at a pixel centre: the derivative towards the next
pixel). What changes is the memory: no per-level copy of the value, no [bs * heads, head_dim,
queries, levels * points] tensor of samples; one program gathers the four corners of every point of
``BLOCK_Q`` queries of one head and sums them in registers.

- Forward: ``out[b, q, h] = sum_{l, p} weight[b, q, h, l, p] * bilinear(value_l[b, :, h], loc[b, q, h, l, p])``,
  accumulated in fp32 (fp64 for fp64 inputs), stored in the value's dtype.
- Backward: recomputes the corners, writes the gradients of the locations and the attention weights
  (each program owns its queries: no atomics) and scatters the value gradient with atomic adds into
  an fp32 buffer (fp64 for fp64 inputs), cast to the value's dtype at the end. The order of those
  additions varies from run to run: the value gradient is not bit-reproducible on a GPU.

CUDA tensors run the compiled kernels. With ``TRITON_INTERPRET=1`` set before Triton is first
imported (``triton.language`` decorates its own helpers, ``tl.zeros``, ``tl.sum``, at that moment,
so it cannot be switched later in a process) the same kernels run in Triton's interpreter on the
host, CPU tensors included: that is how the tests check them on a machine without a GPU
(tests/conftest.py sets the variable).
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction
from torch import Tensor
from torch.autograd.function import once_differentiable

BLOCK_Q_FORWARD = 64     # queries per program in the forward
BLOCK_Q_BACKWARD = 32    # ... in the backward (it holds the output gradient tile too)


@triton.jit
def _forward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, weight_ptr, out_ptr,
                    num_keys, num_queries, num_heads, head_dim,
                    NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr, BLOCK_Q: tl.constexpr,
                    BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """Grid (cdiv(num_queries, BLOCK_Q), bs * num_heads): one block of queries of one (image, head).

    value [bs, num_keys, num_heads, head_dim], loc [bs, num_queries, num_heads, L, P, 2] (x, y),
    weight [bs, num_queries, num_heads, L, P], out [bs, num_queries, num_heads, head_dim]; all contiguous.
    shapes [L, 2] (h, w) and starts [L] (first key of each level), int32.
    """
    b = tl.program_id(1) // num_heads
    head = tl.program_id(1) % num_heads
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ch = tl.arange(0, BLOCK_D)
    q_ok = q < num_queries
    ch_ok = ch < head_dim
    row_stride = num_heads * head_dim
    value_base = value_ptr + b.to(tl.int64) * num_keys * row_stride + head * head_dim
    # flat index of (b, q, head, level 0, point 0) in weight; loc has 2 entries per point
    point_base = ((b.to(tl.int64) * num_queries + q) * num_heads + head) * (NUM_LEVELS * NUM_POINTS)
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=ACC)
    for level in tl.static_range(NUM_LEVELS):
        height = tl.load(shapes_ptr + 2 * level)
        width = tl.load(shapes_ptr + 2 * level + 1)
        start = tl.load(starts_ptr + level)
        for point in tl.static_range(NUM_POINTS):
            idx = point_base + level * NUM_POINTS + point
            attn = tl.load(weight_ptr + idx, mask=q_ok, other=0.0).to(ACC)
            # pixel coordinates (align_corners=False); clamping far-away points changes nothing (all
            # four corners stay outside) and keeps the int32 conversion in range
            x = tl.load(loc_ptr + 2 * idx, mask=q_ok, other=0.0).to(ACC) * width.to(ACC) - 0.5
            y = tl.load(loc_ptr + 2 * idx + 1, mask=q_ok, other=0.0).to(ACC) * height.to(ACC) - 0.5
            x = tl.minimum(tl.maximum(x, -2.0), width.to(ACC) + 1.0)
            y = tl.minimum(tl.maximum(y, -2.0), height.to(ACC) + 1.0)
            x0f = tl.floor(x)
            y0f = tl.floor(y)
            lx = x - x0f
            ly = y - y0f
            x0 = x0f.to(tl.int32)
            y0 = y0f.to(tl.int32)
            for corner in tl.static_range(4):
                cx = x0 + (corner % 2)
                cy = y0 + (corner // 2)
                wx = lx if corner % 2 == 1 else 1.0 - lx
                wy = ly if corner // 2 == 1 else 1.0 - ly
                ok = q_ok & (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
                key = start + cy * width + cx
                v = tl.load(value_base + key[:, None].to(tl.int64) * row_stride + ch[None, :],
                            mask=ok[:, None] & ch_ok[None, :], other=0.0).to(ACC)
                acc += (attn * wx * wy)[:, None] * v
    out_row = (b.to(tl.int64) * num_queries + q) * num_heads + head
    tl.store(out_ptr + out_row[:, None] * head_dim + ch[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=q_ok[:, None] & ch_ok[None, :])


@triton.jit
def _backward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, weight_ptr, grad_out_ptr,
                     grad_value_ptr, grad_loc_ptr, grad_weight_ptr,
                     num_keys, num_queries, num_heads, head_dim,
                     NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr, BLOCK_Q: tl.constexpr,
                     BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """Same grid and layouts as the forward; grad_out [bs, num_queries, num_heads, head_dim];
    grad_value [bs, num_keys, num_heads, head_dim] in ACC, zero-initialised (atomic adds);
    grad_loc / grad_weight shaped as loc / weight (every entry written).

    With g = grad_out[b, q, head] and a corner c of weight w_c = wx_c * wy_c holding v_c:
    d/d weight = sum_c w_c <g, v_c>; d/d x = weight * w * sum_c (+-1) wy_c <g, v_c> (+ for the right
    corners; w, h from the pixel scaling), d/d y alike; d/d v_c = weight * w_c * g.
    """
    b = tl.program_id(1) // num_heads
    head = tl.program_id(1) % num_heads
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ch = tl.arange(0, BLOCK_D)
    q_ok = q < num_queries
    ch_ok = ch < head_dim
    row_stride = num_heads * head_dim
    value_base = value_ptr + b.to(tl.int64) * num_keys * row_stride + head * head_dim
    grad_value_base = grad_value_ptr + b.to(tl.int64) * num_keys * row_stride + head * head_dim
    point_base = ((b.to(tl.int64) * num_queries + q) * num_heads + head) * (NUM_LEVELS * NUM_POINTS)
    out_row = (b.to(tl.int64) * num_queries + q) * num_heads + head
    g = tl.load(grad_out_ptr + out_row[:, None] * head_dim + ch[None, :],
                mask=q_ok[:, None] & ch_ok[None, :], other=0.0).to(ACC)
    for level in tl.static_range(NUM_LEVELS):
        height = tl.load(shapes_ptr + 2 * level)
        width = tl.load(shapes_ptr + 2 * level + 1)
        start = tl.load(starts_ptr + level)
        for point in tl.static_range(NUM_POINTS):
            idx = point_base + level * NUM_POINTS + point
            attn = tl.load(weight_ptr + idx, mask=q_ok, other=0.0).to(ACC)
            x = tl.load(loc_ptr + 2 * idx, mask=q_ok, other=0.0).to(ACC) * width.to(ACC) - 0.5
            y = tl.load(loc_ptr + 2 * idx + 1, mask=q_ok, other=0.0).to(ACC) * height.to(ACC) - 0.5
            x = tl.minimum(tl.maximum(x, -2.0), width.to(ACC) + 1.0)
            y = tl.minimum(tl.maximum(y, -2.0), height.to(ACC) + 1.0)
            x0f = tl.floor(x)
            y0f = tl.floor(y)
            lx = x - x0f
            ly = y - y0f
            x0 = x0f.to(tl.int32)
            y0 = y0f.to(tl.int32)
            grad_attn = tl.zeros([BLOCK_Q], dtype=ACC)
            grad_x = tl.zeros([BLOCK_Q], dtype=ACC)
            grad_y = tl.zeros([BLOCK_Q], dtype=ACC)
            for corner in tl.static_range(4):
                cx = x0 + (corner % 2)
                cy = y0 + (corner // 2)
                wx = lx if corner % 2 == 1 else 1.0 - lx
                wy = ly if corner // 2 == 1 else 1.0 - ly
                sign_x = 1.0 if corner % 2 == 1 else -1.0
                sign_y = 1.0 if corner // 2 == 1 else -1.0
                ok = q_ok & (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
                offsets = (start + cy * width + cx)[:, None].to(tl.int64) * row_stride + ch[None, :]
                mask = ok[:, None] & ch_ok[None, :]
                v = tl.load(value_base + offsets, mask=mask, other=0.0).to(ACC)
                g_dot_v = tl.sum(g * v, axis=1)
                grad_attn += wx * wy * g_dot_v
                grad_x += sign_x * wy * g_dot_v
                grad_y += sign_y * wx * g_dot_v
                tl.atomic_add(grad_value_base + offsets, (attn * wx * wy)[:, None] * g, mask=mask)
            tl.store(grad_weight_ptr + idx, grad_attn.to(grad_weight_ptr.dtype.element_ty), mask=q_ok)
            tl.store(grad_loc_ptr + 2 * idx, (attn * width.to(ACC) * grad_x).to(grad_loc_ptr.dtype.element_ty),
                     mask=q_ok)
            tl.store(grad_loc_ptr + 2 * idx + 1,
                     (attn * height.to(ACC) * grad_y).to(grad_loc_ptr.dtype.element_ty), mask=q_ok)


# True when this process runs Triton's interpreter (TRITON_INTERPRET=1 when triton was imported):
# triton.jit then wraps the kernels for the interpreter instead of compiling them
INTERPRETED = not isinstance(_forward_kernel, JITFunction)


def _check_device(*tensors: Tensor) -> None:
    if INTERPRETED:
        return
    bad = [t.device for t in tensors if t.device.type != "cuda"]
    if bad:
        raise RuntimeError(f"the Triton deformable attention needs CUDA tensors, got {bad[0]} (on the CPU, "
                           "set TRITON_INTERPRET=1 before triton is imported to run Triton's interpreter, slowly)")


def _acc_dtype(value: Tensor):
    return tl.float64 if value.dtype == torch.float64 else tl.float32


def _level_tensors(shapes: list[tuple[int, int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """(h, w) per level as int32 [L, 2] and each level's first key as int32 [L], on ``device``."""
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    return (torch.tensor(shapes, dtype=torch.int32, device=device),
            torch.tensor(starts, dtype=torch.int32, device=device))


class MSDeformAttnFunction(torch.autograd.Function):
    """The fused op with its backward. Inputs as :func:`multi_scale_deformable_attention_triton`
    (contiguous), plus the level tensors of :func:`_level_tensors`; output [bs, Q, H, D]."""

    @staticmethod
    def forward(ctx, value: Tensor, shapes: Tensor, starts: Tensor, loc: Tensor, weights: Tensor) -> Tensor:
        bs, num_keys, num_heads, head_dim = value.shape
        _, num_queries, _, num_levels, num_points, _ = loc.shape
        out = value.new_empty(bs, num_queries, num_heads, head_dim)
        grid = (triton.cdiv(num_queries, BLOCK_Q_FORWARD), bs * num_heads)
        _forward_kernel[grid](value, shapes, starts, loc, weights, out, num_keys, num_queries, num_heads, head_dim,
                              NUM_LEVELS=num_levels, NUM_POINTS=num_points, BLOCK_Q=BLOCK_Q_FORWARD,
                              BLOCK_D=triton.next_power_of_2(head_dim), ACC=_acc_dtype(value))
        ctx.save_for_backward(value, shapes, starts, loc, weights)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        value, shapes, starts, loc, weights = ctx.saved_tensors
        bs, num_keys, num_heads, head_dim = value.shape
        _, num_queries, _, num_levels, num_points, _ = loc.shape
        acc_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
        grad_value = torch.zeros(value.shape, dtype=acc_dtype, device=value.device)
        grad_loc = torch.empty_like(loc)
        grad_weights = torch.empty_like(weights)
        grid = (triton.cdiv(num_queries, BLOCK_Q_BACKWARD), bs * num_heads)
        _backward_kernel[grid](value, shapes, starts, loc, weights, grad_out.contiguous(),
                               grad_value, grad_loc, grad_weights, num_keys, num_queries, num_heads, head_dim,
                               NUM_LEVELS=num_levels, NUM_POINTS=num_points, BLOCK_Q=BLOCK_Q_BACKWARD,
                               BLOCK_D=triton.next_power_of_2(head_dim), ACC=_acc_dtype(value))
        needs = ctx.needs_input_grad
        return (grad_value.to(value.dtype) if needs[0] else None, None, None,
                grad_loc if needs[3] else None, grad_weights if needs[4] else None)


def multi_scale_deformable_attention_triton(
    value: Tensor,
    spatial_shapes: Tensor | Sequence[Sequence[int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """The fused kernels; arguments and result as the PyTorch path's.

    Args:
        value: [bs, num_keys, num_heads, head_dim] (fp32, bf16, fp16 or fp64), levels flattened row-major
            and concatenated.
        spatial_shapes: [num_levels, 2] as (h, w), a tensor or a list of pairs.
        sampling_locations: [bs, num_queries, num_heads, num_levels, num_points, 2] as (x, y) in [0, 1]
            of each level's map (any float dtype; under autocast typically fp32 while value is bf16).
        attention_weights: [bs, num_queries, num_heads, num_levels, num_points].

    Returns:
        [bs, num_queries, num_heads * head_dim] in value's dtype (the sums are fp32 / fp64 inside).
    """
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    bs, num_keys, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    if sum(h * w for h, w in shapes) != num_keys:
        raise ValueError(f"spatial_shapes {shapes} cover {sum(h * w for h, w in shapes)} keys, value has {num_keys}")
    if len(shapes) != num_levels or attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(f"{len(shapes)} levels in spatial_shapes; sampling_locations {tuple(sampling_locations.shape)} "
                         f"and attention_weights {tuple(attention_weights.shape)} must agree")
    _check_device(value, sampling_locations, attention_weights)
    shapes_t, starts_t = _level_tensors(shapes, value.device)
    out = MSDeformAttnFunction.apply(value.contiguous(), shapes_t, starts_t, sampling_locations.contiguous(),
                                     attention_weights.contiguous())
    # [bs, num_queries, num_heads, head_dim] -> [bs, num_queries, num_heads * head_dim]
    return out.view(bs, num_queries, num_heads * head_dim)
