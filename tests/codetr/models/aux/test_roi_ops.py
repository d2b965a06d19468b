"""The faster_rcnn head's fast paths equal the plain ones: RoIAlign as matmuls, NMS on a prefix."""
import torch
from torchvision.ops import batched_nms, roi_align

from torchvision.ops import nms

from codetr.models.aux.roi_align_matmul import roi_align_matmul
from codetr.models.aux.rpn import level_nms_top_n


def _rois(n: int, h: int, w: int, stride: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * torch.tensor([w, h], dtype=dtype) * stride - 10
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 120
    boxes = torch.cat([xy, xy + wh], 1)
    # edge cases: zero-size, outside the map, straddling the far border, one full-map box
    extra = torch.tensor([[5.0, 5.0, 5.0, 5.0], [-40.0, -40.0, -20.0, -20.0],
                          [w * stride - 8.0, h * stride - 8.0, w * stride + 30.0, h * stride + 30.0],
                          [0.0, 0.0, w * stride, h * stride]], dtype=dtype)
    return torch.cat([boxes, extra])


def test_roi_align_matmul_equals_torchvision_forward_and_backward():
    torch.manual_seed(0)
    for ratio in (0, 2):
        feat = torch.randn(6, 12, 10, requires_grad=True)
        boxes = _rois(40, 12, 10, stride=8)
        rois = torch.cat([torch.zeros(boxes.shape[0], 1), boxes], 1)
        ref = roi_align(feat[None], rois, 7, 1 / 8, ratio, aligned=True)
        out = roi_align_matmul(feat, boxes, 7, 1 / 8, ratio)
        assert torch.allclose(out, ref, atol=1e-5)
        g = torch.randn_like(ref)
        ref_grad, = torch.autograd.grad(ref, feat, g)
        out_grad, = torch.autograd.grad(out, feat, g)
        assert torch.allclose(out_grad, ref_grad, atol=1e-4)


def test_roi_align_matmul_gradcheck_float64():
    feat = torch.randn(3, 6, 5, dtype=torch.float64, requires_grad=True)
    boxes = _rois(5, 6, 5, stride=4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align_matmul(f, boxes, 3, 0.25, 0), (feat,))


def test_roi_align_matmul_no_rois():
    out = roi_align_matmul(torch.randn(4, 5, 5), torch.zeros(0, 4), 7, 0.125)
    assert out.shape == (0, 4, 7, 7)


def test_level_nms_top_n_equals_batched_nms_then_top_n():
    g = torch.Generator().manual_seed(0)
    # clustered boxes so that NMS removes many, forcing the prefix to grow
    centres = torch.rand(30, 2, generator=g) * 200
    xy = centres[torch.randint(0, 30, (3000,), generator=g)] + torch.randn(3000, 2, generator=g) * 3
    boxes = torch.cat([xy, xy + 20 + torch.rand(3000, 2, generator=g) * 5], 1)
    scores = torch.randperm(3000, generator=g).float() / 3000        # distinct: no ties to order
    levels = torch.randint(0, 5, (3000,), generator=g)
    for top_n in (10, 100, 1000):
        ref = boxes[batched_nms(boxes, scores, levels, 0.7)[:top_n]]
        assert torch.equal(level_nms_top_n(boxes, scores, levels, 0.7, top_n), ref)
    assert level_nms_top_n(boxes[:0], scores[:0], levels[:0], 0.7, 10).shape == (0, 4)


def _single_call_level_nms_top_n(boxes_xyxy, scores, levels, iou_thresh, top_n):
    """The former implementation: one NMS call over all levels (offset trick) on a growing prefix."""
    order = scores.argsort(descending=True)
    offsets = levels.to(boxes_xyxy.dtype)[:, None] * (boxes_xyxy.max() + 1 if boxes_xyxy.numel() else 1.0)
    shifted = boxes_xyxy + offsets
    prefix = min(order.numel(), 2 * top_n)
    while True:
        cand = order[:prefix]
        kept = cand[nms(shifted[cand], scores[cand], iou_thresh)]
        if kept.numel() >= top_n or prefix == order.numel():
            return boxes_xyxy[kept[:top_n]]
        prefix = min(order.numel(), 4 * prefix)


def test_level_nms_top_n_equals_the_single_call_form_with_ties_float32_and_float64():
    """Per-level NMS returns the very boxes, in the very order, of one NMS call over the offset levels,
    tied scores included (RPN scores tie where the features are equal, e.g. in the padding)."""
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        for trial in range(6):
            n = 400 + 300 * trial
            centres = torch.rand(25, 2, generator=g, dtype=dtype) * 180
            xy = centres[torch.randint(0, 25, (n,), generator=g)] + torch.randn(n, 2, generator=g, dtype=dtype) * 4
            boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g, dtype=dtype) * 30], 1).clamp(min=0)
            # few distinct values: many ties, inside a level and across levels
            scores = (torch.randint(0, 12 if trial % 2 else 1000, (n,), generator=g) / 12).to(dtype)
            # unequal levels, one of them absent
            levels = torch.multinomial(torch.tensor([0.5, 0.3, 0.0, 0.15, 0.05]), n, replacement=True, generator=g)
            for top_n in (1, 30, 200, 1000):
                ref = _single_call_level_nms_top_n(boxes, scores, levels, 0.7, top_n)
                got = level_nms_top_n(boxes, scores, levels, 0.7, top_n)
                assert torch.equal(got, ref), (dtype, trial, top_n)
