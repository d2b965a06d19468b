"""The fused Triton kernels against a float64 reference (the PyTorch path in float64, and a hand-computed
case), run in Triton's interpreter on the CPU: tests/conftest.py sets ``TRITON_INTERPRET=1`` before
triton is imported. With ``TRITON_INTERPRET=0`` on a machine with a GPU the same tests check the
compiled kernels on CUDA. The interpreter runs every program in numpy: the shapes stay tiny.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import codetr.ops.ms_deform_attn_triton as triton_op
from codetr.ops import multi_scale_deformable_attention
from codetr.ops.ms_deform_attn_triton import (BLOCK_Q_BACKWARD, BLOCK_Q_FORWARD, INTERPRETED,
                                              multi_scale_deformable_attention_triton)

DEVICE = torch.device("cpu" if INTERPRETED else "cuda")


@pytest.fixture(autouse=True, scope="module")
def kernels_can_run():
    if not INTERPRETED and not torch.cuda.is_available():
        pytest.fail("triton was imported without TRITON_INTERPRET=1 and there is no GPU: run the tests from the "
                    "repository root as python -m pytest (tests/conftest.py sets the variable)")


def _is_pow2(n: int) -> bool:
    return n & (n - 1) == 0


def _special_coords(size: int) -> list[float]:
    """Normalised coordinates on a level of ``size`` pixels: the map's borders (0, 1), points outside it
    and, where exact in binary (size a power of two), pixel centres and the centres of the first
    pixels outside (where bilinear sampling switches cells: the gradient is one-sided there)."""
    coords = [0.0, 1.0, -0.3, 1.2, 0.5 - 0.25 / size]
    if _is_pow2(size):
        coords += [0.5 / size, (size - 0.5) / size, -0.5 / size, (size + 0.5) / size, 1.5 / size]
    return coords


def _inputs(shapes, bs, num_queries, num_heads, head_dim, num_points, seed=0):
    """float64 value, locations (random in [-0.25, 1.25], every special coordinate of each level placed on
    some of the points) and softmax-normalised weights."""
    g = torch.Generator().manual_seed(seed)
    num_keys = sum(h * w for h, w in shapes)
    num_levels = len(shapes)
    value = torch.randn(bs, num_keys, num_heads, head_dim, generator=g, dtype=torch.float64)
    loc = torch.rand(bs, num_queries, num_heads, num_levels, num_points, 2, generator=g, dtype=torch.float64)
    loc = loc * 1.5 - 0.25
    for level, (h, w) in enumerate(shapes):
        xs, ys = _special_coords(w), _special_coords(h)
        # [bs, num_queries, num_heads, num_points, 2] slots of this level, flattened
        slots = loc[:, :, :, level].reshape(-1, 2)
        for i in range(min(len(slots), 2 * max(len(xs), len(ys)))):
            slots[i, 0] = xs[i % len(xs)]
            slots[i, 1] = ys[(3 * i + 1) % len(ys)]
        loc[:, :, :, level] = slots.view(bs, num_queries, num_heads, num_points, 2)
    logits = torch.randn(bs, num_queries, num_heads, num_levels * num_points, generator=g, dtype=torch.float64)
    weights = logits.softmax(-1).view(bs, num_queries, num_heads, num_levels, num_points)
    grad_out = torch.randn(bs, num_queries, num_heads * head_dim, generator=g, dtype=torch.float64)
    return value, loc, weights, grad_out


def _run(op, shapes, value, loc, weights, grad_out, dtype=None):
    """op's output and gradients of (value, loc, weights) for <output, grad_out>; inputs cast to ``dtype``
    (None: as given)."""
    inputs = [t.detach().to(DEVICE, dtype or t.dtype).requires_grad_() for t in (value, loc, weights)]
    out = op(inputs[0], shapes, inputs[1], inputs[2])
    grads = torch.autograd.grad(out, inputs, grad_out.to(DEVICE, out.dtype))
    return out, grads


CASES = {
    # 4 levels with odd sizes (one power-of-two level for the exact pixel-centre points), batch 2,
    # 3 heads, 3 points, head_dim 5 (not a power of two: masked channels)
    "4 levels": dict(shapes=[(7, 9), (4, 8), (3, 5), (1, 1)], bs=2, num_queries=6, num_heads=3, head_dim=5,
                     num_points=3),
    # 5 levels as Co-DINO, more queries than one program's block (several query blocks per kernel)
    "5 levels": dict(shapes=[(11, 7), (6, 4), (3, 2), (2, 1), (1, 1)], bs=2,
                     num_queries=BLOCK_Q_FORWARD + 6, num_heads=1, head_dim=4, num_points=2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_pytorch_path_in_float64(case):
    spec = CASES[case]
    value, loc, weights, grad_out = _inputs(**spec)
    shapes = spec["shapes"]
    out, grads = _run(multi_scale_deformable_attention_triton, shapes, value, loc, weights, grad_out, torch.float64)
    ref_out, ref_grads = _run(multi_scale_deformable_attention, shapes, value, loc, weights, grad_out, torch.float64)
    assert out.dtype == torch.float64 and out.shape == ref_out.shape
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for name, got, want in zip(("value", "sampling_locations", "attention_weights"), grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")
    # the special points are really there: some sample nothing at all (outside every level)
    assert (loc < 0).any() and (loc > 1).any() and (loc == 0).any() and (loc == 1).any()


def test_float32_accumulates_to_the_float64_result():
    spec = CASES["4 levels"]
    value, loc, weights, grad_out = _inputs(**spec, seed=1)
    shapes = spec["shapes"]
    out, grads = _run(multi_scale_deformable_attention_triton, shapes, value, loc, weights, grad_out, torch.float32)
    # reference: the float32-rounded inputs, computed in float64
    rounded = [t.float().double() for t in (value, loc, weights)]
    ref_out, ref_grads = _run(multi_scale_deformable_attention, shapes, *rounded, grad_out.float().double(),
                              torch.float64)
    assert out.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    """bf16 / fp16 in, the result within one rounding of the output dtype of the float64 value: the sums
    run in fp32. Also the autocast mix: a bf16 / fp16 value with fp32 locations and weights."""
    shapes = [(5, 7), (2, 3)]
    value, loc, weights, grad_out = _inputs(shapes, bs=2, num_queries=4, num_heads=2, head_dim=8, num_points=2,
                                            seed=2)
    value_h, loc_h, weights_h = value.to(dtype), loc.to(dtype), weights.to(dtype)
    eps = torch.finfo(dtype).eps
    for loc_in, weights_in in ((loc_h, weights_h), (loc_h.float(), weights_h.float())):
        out, grads = _run(multi_scale_deformable_attention_triton, shapes, value_h, loc_in, weights_in, grad_out)
        ref_out, ref_grads = _run(multi_scale_deformable_attention, shapes, value_h, loc_in, weights_in,
                                  grad_out.to(dtype), torch.float64)
        assert out.dtype == dtype and [g.dtype for g in grads] == [dtype, loc_in.dtype, weights_in.dtype]
        assert (out.double() - ref_out).abs().max() <= eps * ref_out.abs().max()
        for got, want in zip(grads, ref_grads):
            # one rounding of the (fp32) result, plus the location / weight gradients' own rounding to dtype
            assert (got.double() - want).abs().max() <= 2 * eps * want.abs().max()


def test_hand_computed_case():
    """One level of 2 x 3 pixels, one channel, three points of one query; values by hand.

    Pixel coordinates are loc * (w, h) - 0.5.
    - point 0 at (0.5, 0.5) -> pixel (1, 0.5): on column 1's centre, between rows: (2 + 16) / 2 = 9;
      d/dx (right cell) = (4 - 2) / 2 + (32 - 16) / 2 = 9 per pixel -> x 3; d/dy = 16 - 2 = 14 -> x 2.
    - point 1 at (0, 0.25) -> pixel (-0.5, 0): on the left border, half of pixel (0, 0): 0.5;
      d/dx = 1 -> x 3; d/dy = 0.5 * (8 - 1) -> x 2.
    - point 2 at (1.25, 0.5) -> pixel (3.25, 0.5): outside, 0 and no gradient.
    """
    value = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0], dtype=torch.float64).view(1, 6, 1, 1)
    loc = torch.tensor([[0.5, 0.5], [0.0, 0.25], [1.25, 0.5]], dtype=torch.float64).view(1, 1, 1, 1, 3, 2)
    weights = torch.tensor([0.5, 2.0, 0.7], dtype=torch.float64).view(1, 1, 1, 1, 3)
    grad_out = torch.ones(1, 1, 1, dtype=torch.float64)
    for op in (multi_scale_deformable_attention_triton, multi_scale_deformable_attention):
        out, (g_value, g_loc, g_weights) = _run(op, [(2, 3)], value, loc, weights, grad_out, torch.float64)
        assert out.item() == pytest.approx(0.5 * 9 + 2.0 * 0.5, abs=1e-12)
        assert g_weights.flatten().tolist() == pytest.approx([9.0, 0.5, 0.0], abs=1e-12)
        assert g_loc.flatten().tolist() == pytest.approx(
            [0.5 * 9 * 3, 0.5 * 14 * 2, 2.0 * 1 * 3, 2.0 * 3.5 * 2, 0.0, 0.0], abs=1e-12)
        # each corner gets weight x its bilinear weight: (0, 1) and (1, 1) 0.5 * 0.5 from point 0, (0, 0) 2 * 0.5
        assert g_value.flatten().tolist() == pytest.approx([1.0, 0.25, 0.0, 0.0, 0.25, 0.0], abs=1e-12)


def test_gradcheck_float64():
    """Finite differences of the kernel itself (fast mode: random directions), points off the kinks."""
    shapes = [(3, 5), (2, 2)]
    value, loc, weights, _ = _inputs(shapes, bs=1, num_queries=BLOCK_Q_BACKWARD + 2, num_heads=2, head_dim=2,
                                     num_points=2, seed=3)
    loc = torch.rand(loc.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 1.2 - 0.1
    inputs = [t.to(DEVICE).requires_grad_() for t in (value, loc, weights)]
    assert torch.autograd.gradcheck(lambda v, l, a: multi_scale_deformable_attention_triton(v, shapes, l, a),
                                    inputs, eps=1e-6, atol=1e-6, fast_mode=True)


def test_list_and_tensor_shapes_agree_and_bad_shapes_are_errors():
    shapes = [(3, 4), (1, 2)]
    value, loc, weights, _ = _inputs(shapes, bs=1, num_queries=2, num_heads=1, head_dim=2, num_points=1)
    value, loc, weights = value.to(DEVICE), loc.to(DEVICE), weights.to(DEVICE)
    a = multi_scale_deformable_attention_triton(value, shapes, loc, weights)
    b = multi_scale_deformable_attention_triton(value, torch.tensor(shapes), loc, weights)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"cover 13 keys, value has 14"):
        multi_scale_deformable_attention_triton(value, [(3, 4), (1, 1)], loc, weights)
    with pytest.raises(ValueError, match="must agree"):
        multi_scale_deformable_attention_triton(value, shapes, loc, weights[..., :1, :])


def test_cpu_tensors_without_the_interpreter_are_an_error(monkeypatch):
    monkeypatch.setattr(triton_op, "INTERPRETED", False)
    shapes = [(2, 2)]
    value, loc, weights, _ = _inputs(shapes, bs=1, num_queries=1, num_heads=1, head_dim=1, num_points=1)
    with pytest.raises(RuntimeError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
        multi_scale_deformable_attention_triton(value, shapes, loc, weights)


def test_the_kernels_compile_for_hopper_with_vector_loads_and_no_spills():
    """What the interpreter cannot show: the kernels compile (sm_90, no GPU needed), their gathers are
    16-byte vector loads, nothing spills. In a process of its own: this one runs the interpreter."""
    script = Path(__file__).with_name("compile_kernels.py")
    proc = subprocess.run([sys.executable, str(script), "90"], env={**os.environ, "TRITON_INTERPRET": "0"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(proc.stdout)
    assert len(cases) == 2
    for case in cases:
        for kernel in ("forward", "backward"):
            report = case[kernel]
            assert report["spill_bytes"] == 0 and report["registers"] <= 128, case
            assert report["vector_loads"] > 0, case
        assert case["backward"]["atomics"] > 0 and case["forward"]["atomics"] == 0
