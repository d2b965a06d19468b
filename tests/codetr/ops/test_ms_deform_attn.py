"""The deformable attention op: float64 gradcheck and agreement with a loop-based bilinear reference."""
import math

import torch

from codetr.ops import multi_scale_deformable_attention

SHAPES = [(4, 5), (2, 3)]


def _inputs(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    bs, nq, nh, hd, nl, npt = 2, 3, 2, 3, len(SHAPES), 2
    nk = sum(h * w for h, w in SHAPES)
    value = torch.randn(bs, nk, nh, hd, generator=g, dtype=dtype)
    # include points outside [0, 1] to exercise zero padding
    loc = torch.rand(bs, nq, nh, nl, npt, 2, generator=g, dtype=dtype) * 1.2 - 0.1
    w = torch.rand(bs, nq, nh, nl, npt, generator=g, dtype=dtype)
    w = w / w.flatten(-2).sum(-1)[..., None, None]
    return value, loc, w


def _bilinear(img, x, y):
    """img [h, w, d]; (x, y) in pixel units with centres at integer + 0.5 -> [d], zeros outside."""
    h, w, d = img.shape
    x, y = x - 0.5, y - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(d, dtype=img.dtype)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < h and 0 <= xx < w:
                out += img[yy, xx] * (1 - abs(x - xx)) * (1 - abs(y - yy))
    return out


def _loop_reference(value, loc, weights):
    bs, nk, nh, hd = value.shape
    _, nq, _, nl, npt, _ = loc.shape
    out = torch.zeros(bs, nq, nh, hd, dtype=value.dtype)
    starts = [0]
    for h, w in SHAPES:
        starts.append(starts[-1] + h * w)
    for b in range(bs):
        for q in range(nq):
            for m in range(nh):
                for lvl, (h, w) in enumerate(SHAPES):
                    img = value[b, starts[lvl]:starts[lvl + 1], m].view(h, w, hd)
                    for p in range(npt):
                        x = loc[b, q, m, lvl, p, 0].item() * w
                        y = loc[b, q, m, lvl, p, 1].item() * h
                        out[b, q, m] += weights[b, q, m, lvl, p] * _bilinear(img, x, y)
    return out.view(bs, nq, nh * hd)


def test_matches_loop_reference():
    value, loc, w = _inputs()
    got = multi_scale_deformable_attention(value, torch.tensor(SHAPES), loc, w)
    torch.testing.assert_close(got, _loop_reference(value, loc, w), rtol=1e-10, atol=1e-10)


def test_accepts_list_shapes_and_float32():
    value, loc, w = _inputs(torch.float32)
    a = multi_scale_deformable_attention(value, SHAPES, loc, w)
    b = multi_scale_deformable_attention(value, torch.tensor(SHAPES), loc, w)
    assert a.shape == (2, 3, 6)
    torch.testing.assert_close(a, b)


def test_gradcheck_float64():
    value, loc, w = _inputs()
    # keep points away from pixel-centre grid lines where bilinear sampling is not differentiable
    loc = (loc * 0.9 + 0.05).requires_grad_()
    value.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, l, a: multi_scale_deformable_attention(v, SHAPES, l, a), (value, loc, w), eps=1e-6, atol=1e-5)
