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

import functools
from typing import Sequence

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction
from torch import Tensor
from torch.autograd.function import once_differentiable

# Queries per program and warps: [32, head_dim] tiles, 4 warps. With head_dim and the number of heads
# constexprs (the row stride is then known) and 16-byte-aligned tensors, the gathers compile to 16-byte
# vector loads and the value gradient to vector atomics (sm_90 PTX, checked without a GPU: 48 / 96
# registers for the forward / backward at fp32, 4 levels, head_dim 32; no spills).
BLOCK_Q_FORWARD = 32
BLOCK_Q_BACKWARD = 32
NUM_WARPS = 4


@triton.jit
def _forward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, weight_ptr, out_ptr,
                    num_keys, num_queries, NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                    NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr,
                    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """Grid (cdiv(num_queries, BLOCK_Q), bs * NUM_HEADS): one block of queries of one (image, head).

    value [bs, num_keys, NUM_HEADS, HEAD_DIM], loc [bs, num_queries, NUM_HEADS, L, P, 2] (x, y),
    weight [bs, num_queries, NUM_HEADS, L, P], out [bs, num_queries, NUM_HEADS, HEAD_DIM]; all contiguous.
    shapes [L, 2] (h, w) and starts [L] (first key of each level), int32. Offsets within one image
    are int32 (the caller checks they fit), the image's base pointers 64-bit.
    """
    image = tl.program_id(1) // NUM_HEADS
    head = tl.program_id(1) % NUM_HEADS
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ch = tl.arange(0, BLOCK_D)
    q_ok = q < num_queries
    row_stride = NUM_HEADS * HEAD_DIM
    value_base = value_ptr + image.to(tl.int64) * num_keys * row_stride + head * HEAD_DIM
    points_per_query = NUM_LEVELS * NUM_POINTS
    weight_base = weight_ptr + image.to(tl.int64) * num_queries * NUM_HEADS * points_per_query
    loc_base = loc_ptr + image.to(tl.int64) * num_queries * NUM_HEADS * points_per_query * 2
    # index of (q, head, level 0, point 0) among this image's weights; locations have 2 entries per point
    first_point = (q * NUM_HEADS + head) * points_per_query
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=ACC)
    # loops, not unrolled: every gather of 4 corners x points x levels in flight at once would spill
    # registers (and take minutes to compile)
    for level in range(NUM_LEVELS):
        height = tl.load(shapes_ptr + 2 * level)
        width = tl.load(shapes_ptr + 2 * level + 1)
        start = tl.load(starts_ptr + level)
        for point in range(NUM_POINTS):
            idx = first_point + level * NUM_POINTS + point
            attn = tl.load(weight_base + idx, mask=q_ok, other=0.0).to(ACC)
            # pixel coordinates (align_corners=False); clamping far-away points changes nothing (all
            # four corners stay outside) and keeps the int32 conversion in range
            x = tl.load(loc_base + 2 * idx, mask=q_ok, other=0.0).to(ACC) * width.to(ACC) - 0.5
            y = tl.load(loc_base + 2 * idx + 1, mask=q_ok, other=0.0).to(ACC) * height.to(ACC) - 0.5
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
                if BLOCK_D == HEAD_DIM:   # a mask constant along the channels: vector loads
                    mask = ok[:, None]
                else:
                    mask = ok[:, None] & (ch < HEAD_DIM)[None, :]
                offsets = (start + cy * width + cx)[:, None] * row_stride + ch[None, :]
                v = tl.load(value_base + offsets, mask=mask, other=0.0).to(ACC)
                acc += (attn * wx * wy)[:, None] * v
    out_base = out_ptr + image.to(tl.int64) * num_queries * row_stride + head * HEAD_DIM
    if BLOCK_D == HEAD_DIM:
        out_mask = q_ok[:, None]
    else:
        out_mask = q_ok[:, None] & (ch < HEAD_DIM)[None, :]
    tl.store(out_base + q[:, None] * row_stride + ch[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _backward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, weight_ptr, grad_out_ptr,
                     grad_value_ptr, grad_loc_ptr, grad_weight_ptr,
                     num_keys, num_queries, NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                     NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr,
                     BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """Same grid and layouts as the forward; grad_out [bs, num_queries, NUM_HEADS, HEAD_DIM];
    grad_value [bs, num_keys, NUM_HEADS, HEAD_DIM] in ACC, zero-initialised (atomic adds);
    grad_loc / grad_weight shaped as loc / weight (every entry written).

    With g = grad_out[b, q, head] and a corner c of weight w_c = wx_c * wy_c holding v_c:
    d/d weight = sum_c w_c <g, v_c>; d/d x = weight * w * sum_c (+-1) wy_c <g, v_c> (+ for the right
    corners; w, h from the pixel scaling), d/d y alike; d/d v_c = weight * w_c * g.
    """
    image = tl.program_id(1) // NUM_HEADS
    head = tl.program_id(1) % NUM_HEADS
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ch = tl.arange(0, BLOCK_D)
    q_ok = q < num_queries
    row_stride = NUM_HEADS * HEAD_DIM
    image_values = image.to(tl.int64) * num_keys * row_stride + head * HEAD_DIM
    value_base = value_ptr + image_values
    grad_value_base = grad_value_ptr + image_values
    points_per_query = NUM_LEVELS * NUM_POINTS
    image_points = image.to(tl.int64) * num_queries * NUM_HEADS * points_per_query
    weight_base = weight_ptr + image_points
    grad_weight_base = grad_weight_ptr + image_points
    loc_base = loc_ptr + 2 * image_points
    grad_loc_base = grad_loc_ptr + 2 * image_points
    first_point = (q * NUM_HEADS + head) * points_per_query
    if BLOCK_D == HEAD_DIM:
        out_mask = q_ok[:, None]
    else:
        out_mask = q_ok[:, None] & (ch < HEAD_DIM)[None, :]
    grad_out_base = grad_out_ptr + image.to(tl.int64) * num_queries * row_stride + head * HEAD_DIM
    g = tl.load(grad_out_base + q[:, None] * row_stride + ch[None, :], mask=out_mask, other=0.0).to(ACC)
    for level in range(NUM_LEVELS):
        height = tl.load(shapes_ptr + 2 * level)
        width = tl.load(shapes_ptr + 2 * level + 1)
        start = tl.load(starts_ptr + level)
        for point in range(NUM_POINTS):
            idx = first_point + level * NUM_POINTS + point
            attn = tl.load(weight_base + idx, mask=q_ok, other=0.0).to(ACC)
            x = tl.load(loc_base + 2 * idx, mask=q_ok, other=0.0).to(ACC) * width.to(ACC) - 0.5
            y = tl.load(loc_base + 2 * idx + 1, mask=q_ok, other=0.0).to(ACC) * height.to(ACC) - 0.5
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
                if BLOCK_D == HEAD_DIM:
                    mask = ok[:, None]
                else:
                    mask = ok[:, None] & (ch < HEAD_DIM)[None, :]
                offsets = (start + cy * width + cx)[:, None] * row_stride + ch[None, :]
                v = tl.load(value_base + offsets, mask=mask, other=0.0).to(ACC)
                g_dot_v = tl.sum(g * v, axis=1)
                grad_attn += wx * wy * g_dot_v
                grad_x += sign_x * wy * g_dot_v
                grad_y += sign_y * wx * g_dot_v
                tl.atomic_add(grad_value_base + offsets, (attn * wx * wy)[:, None] * g, mask=mask, sem="relaxed")
            tl.store(grad_weight_base + idx, grad_attn.to(grad_weight_ptr.dtype.element_ty), mask=q_ok)
            tl.store(grad_loc_base + 2 * idx, (attn * width.to(ACC) * grad_x).to(grad_loc_ptr.dtype.element_ty),
                     mask=q_ok)
            tl.store(grad_loc_base + 2 * idx + 1,
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


@functools.lru_cache(maxsize=256)
def _level_tensors(shapes: tuple[tuple[int, int], ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """(h, w) per level as int32 [L, 2] and each level's first key as int32 [L], on ``device``.

    Cached per level shapes: a copy to the GPU from pageable memory waits for the GPU, which every
    attention call would pay otherwise (multi-scale training sees a few hundred shape sets at most).
    """
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
        _forward_kernel[grid](value, shapes, starts, loc, weights, out, num_keys, num_queries,
                              NUM_HEADS=num_heads, HEAD_DIM=head_dim, NUM_LEVELS=num_levels,
                              NUM_POINTS=num_points,
                              BLOCK_Q=BLOCK_Q_FORWARD, BLOCK_D=triton.next_power_of_2(head_dim),
                              ACC=_acc_dtype(value), num_warps=NUM_WARPS)
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
                               grad_value, grad_loc, grad_weights, num_keys, num_queries,
                               NUM_HEADS=num_heads, HEAD_DIM=head_dim, NUM_LEVELS=num_levels,
                               NUM_POINTS=num_points,
                               BLOCK_Q=BLOCK_Q_BACKWARD, BLOCK_D=triton.next_power_of_2(head_dim),
                               ACC=_acc_dtype(value), num_warps=NUM_WARPS)
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
    shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    bs, num_keys, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    if sum(h * w for h, w in shapes) != num_keys:
        raise ValueError(f"spatial_shapes {shapes} cover {sum(h * w for h, w in shapes)} keys, value has {num_keys}")
    if len(shapes) != num_levels or attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(f"{len(shapes)} levels in spatial_shapes; sampling_locations "
                         f"{tuple(sampling_locations.shape)} and attention_weights "
                         f"{tuple(attention_weights.shape)} must agree")
    if max(num_keys, num_queries * num_levels * num_points * 2) * num_heads * head_dim >= 2 ** 31:
        raise ValueError(f"{num_keys} keys / {num_queries} queries of {num_heads} x {head_dim} channels per image: "
                         "offsets within an image must fit in int32")
    _check_device(value, sampling_locations, attention_weights)
    shapes_t, starts_t = _level_tensors(shapes, value.device)
    out = MSDeformAttnFunction.apply(value.contiguous(), shapes_t, starts_t, sampling_locations.contiguous(),
                                     attention_weights.contiguous())
    # [bs, num_queries, num_heads, head_dim] -> [bs, num_queries, num_heads * head_dim]
    return out.view(bs, num_queries, num_heads * head_dim)
