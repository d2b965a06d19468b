"""Shared pieces of the auxiliary heads: anchors, box coder, assigners, sampler, normalisers."""
import math

import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from codetr.models.aux.anchors import AnchorGenerator, grid_points, valid_location_flags
from codetr.models.aux.assigners import atss_assign, fcos_assign, max_iou_assign
from codetr.models.aux.base import positive_normaliser
from codetr.models.aux.box_coder import DeltaXYWHCoder
from codetr.models.aux.sampler import random_sample, sampled_slots


# ----------------------------------------------------------------------------- anchors

def test_anchors_match_torchvision_where_they_coincide():
    # ratios 1/4, 1, 4 and even sizes: torchvision's rounding of half sizes changes nothing
    strides, scales, ratios = [8, 16], [4.0, 8.0], [0.25, 1.0, 4.0]
    ours = AnchorGenerator(strides=strides, ratios=ratios, scales=scales)
    sizes = tuple(tuple(float(s * k) for k in scales) for s in strides)
    tv = TVAnchorGenerator(sizes=sizes, aspect_ratios=(tuple(ratios),) * len(strides))
    images = ImageList(torch.zeros(1, 3, 128, 160), [(128, 160)])
    feats = [torch.zeros(1, 4, 16, 20), torch.zeros(1, 4, 8, 10)]
    expected = tv(images, feats)[0]
    got = torch.cat(ours.grid_anchors([(16, 20), (8, 10)]))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)


def test_anchor_base_sizes_octave_scales():
    gen = AnchorGenerator(strides=[8], ratios=[0.5, 1.0, 2.0], octave_base_scale=4, scales_per_octave=3)
    base = gen.base_anchors(0)
    assert gen.num_base_anchors == 9
    wh = base[:, 2:] - base[:, :2]
    # ratio 1, first scale: 4 * 8 = 32 pixels square; areas per scale independent of ratio
    torch.testing.assert_close(wh[3], torch.tensor([32.0, 32.0]))
    areas = (wh[:, 0] * wh[:, 1]).reshape(3, 3)
    torch.testing.assert_close(areas[0], areas[2])
    torch.testing.assert_close(areas[1, 1] / areas[1, 0], torch.tensor(2.0 ** (2 / 3)))
    assert torch.allclose(wh[0, 1] / wh[0, 0], torch.tensor(0.5))            # ratio = h / w


def test_valid_flags_padding():
    flags = valid_location_flags([(4, 5)], [8], [(20, 17), (32, 40)])[0].reshape(2, 4, 5)
    # image 0: ceil(20/8)=3 rows, ceil(17/8)=3 columns
    assert flags[0, :3, :3].all() and not flags[0, 3:].any() and not flags[0, :, 3:].any()
    assert flags[1].all()
    gen = AnchorGenerator(strides=[8], ratios=[0.5, 1, 2], scales=[1.0])
    assert gen.valid_flags([(4, 5)], [(20, 17)])[0].shape == (1, 4 * 5 * 3)


def test_grid_points_centres():
    pts = grid_points([(2, 3)], [16])[0]
    torch.testing.assert_close(pts[0], torch.tensor([8.0, 8.0]))
    torch.testing.assert_close(pts[4], torch.tensor([24.0, 24.0]))


# ----------------------------------------------------------------------------- box coder

def test_box_coder_round_trip_and_torchvision_agreement():
    torch.manual_seed(0)
    xy = torch.rand(50, 2) * 100
    refs = torch.cat([xy, xy + 5 + torch.rand(50, 2) * 60], dim=1)
    xy = torch.rand(50, 2) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(50, 2) * 60], dim=1)
    coder = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
    deltas = coder.encode(refs, boxes)
    torch.testing.assert_close(coder.decode(refs, deltas), boxes, rtol=1e-4, atol=1e-3)
    tv = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(deltas, tv.encode_single(boxes, refs), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(coder.decode(refs, deltas), tv.decode_single(deltas, refs), rtol=1e-4, atol=1e-3)


def test_box_coder_clamps_and_clips():
    coder = DeltaXYWHCoder()
    refs = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    big = coder.decode(refs, torch.tensor([[0.0, 0.0, 100.0, 100.0]]))
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big[0, 2] - big[0, 0], torch.tensor(10 * 1000 / 16))
    clipped = coder.decode(refs, torch.tensor([[0.0, 0.0, 3.0, 3.0]]), max_hw=torch.tensor([[20.0, 30.0]]))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 30.0, 20.0]]))


# ----------------------------------------------------------------------------- MaxIoU

def _box(x, y, w, h):
    return [x, y, x + w, y + h]


def test_max_iou_thresholds_and_ignore():
    gt = torch.tensor([_box(0, 0, 10, 10)], dtype=torch.float)
    boxes = torch.tensor([
        _box(0, 0, 10, 10),     # IoU 1      -> positive
        _box(0, 0, 10, 8),      # IoU 0.8    -> positive
        _box(0, 0, 10, 5),      # IoU 0.5    -> ignore (between 0.3 and 0.7)
        _box(0, 0, 10, 2),      # IoU 0.2    -> negative
        _box(50, 50, 10, 10),   # IoU 0      -> negative
    ], dtype=torch.float)
    got = max_iou_assign(boxes, gt, pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=False)
    assert got.tolist() == [1, 1, -1, 0, 0]


def test_max_iou_low_quality_matches():
    gt = torch.tensor([_box(0, 0, 10, 10), _box(100, 100, 10, 10)], dtype=torch.float)
    boxes = torch.tensor([
        _box(0, 0, 10, 5),        # IoU 0.5 with gt0: its best -> low-quality positive
        _box(0, 5, 10, 5),        # IoU 0.5 with gt0 too: ties the best -> also positive
        _box(100, 100, 10, 2),    # IoU 0.2 with gt1: best but < min_pos_iou 0.3 -> stays negative
        _box(50, 50, 5, 5),
    ], dtype=torch.float)
    kw = dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)
    assert max_iou_assign(boxes, gt, match_low_quality=True, **kw).tolist() == [1, 1, 0, 0]
    assert max_iou_assign(boxes, gt, match_low_quality=False, **kw).tolist() == [-1, -1, 0, 0]
    kw["min_pos_iou"] = 0.1
    assert max_iou_assign(boxes, gt, match_low_quality=True, **kw).tolist() == [1, 1, 2, 0]


def test_max_iou_later_gt_wins_low_quality_and_valid_mask():
    gt = torch.tensor([_box(0, 0, 10, 10), _box(0, 0, 10, 10)], dtype=torch.float)
    boxes = torch.tensor([_box(0, 0, 10, 5), _box(0, 0, 10, 10)], dtype=torch.float)
    got = max_iou_assign(boxes, gt, pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)
    assert got.tolist() == [-1, 2]
    valid = torch.tensor([True, False])
    got = max_iou_assign(boxes, gt, pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, valid=valid)
    assert got.tolist() == [2, -1]      # the invalid box is ignored; the valid one is now gt's best


def test_max_iou_no_gt():
    boxes = torch.tensor([_box(0, 0, 10, 10)], dtype=torch.float)
    assert max_iou_assign(boxes, torch.zeros(0, 4), pos_iou_thr=0.5, neg_iou_thr=0.4).tolist() == [0]
    boxes = boxes.repeat(2, 1)
    got = max_iou_assign(boxes, torch.zeros(0, 4), pos_iou_thr=0.5, neg_iou_thr=0.4, valid=torch.tensor([True, False]))
    assert got.tolist() == [0, -1]


# ----------------------------------------------------------------------------- ATSS

def test_atss_topk_and_mean_std_threshold():
    # one level of 10x10 anchors along x; gt [0, 10] x [0, 10]
    centres = torch.tensor([5.0, 7.0, 9.0, 13.0, 40.0])
    anchors = torch.stack([centres - 5, torch.zeros(5), centres + 5, torch.full((5,), 10.0)], dim=1)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # top-3 nearest: centres 5, 7, 9 with IoU 1, 8/12, 6/14; threshold mean + std lies between 8/12 and 1
    ious = torch.tensor([1.0, 8 / 12, 6 / 14])
    assert 8 / 12 < ious.mean() + ious.std() < 1.0
    assert atss_assign(anchors, [5], gt, topk=3).tolist() == [1, 0, 0, 0, 0]


def test_atss_threshold_depends_on_the_candidate_count():
    # two anchors at centres 4 and 6 (IoU 9/11 each) and far ones (IoU 0)
    centres = torch.tensor([4.0, 6.0, 15.0, -5.0, 16.0, 40.0])
    anchors = torch.stack([centres - 5, torch.zeros(6), centres + 5, torch.full((6,), 10.0)], dim=1)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    x = 9 / 11
    # k=3: IoUs [x, x, 0]: mean 2x/3 + std 0.577x > x -> nobody
    assert atss_assign(anchors, [6], gt, topk=3).tolist() == [0] * 6
    # k=5: IoUs [x, x, 0, 0, 0]: mean 0.4x + std 0.548x < x -> both
    ious = torch.tensor([x, x, 0.0, 0.0, 0.0])
    assert ious.mean() + ious.std() < x
    assert atss_assign(anchors, [6], gt, topk=5).tolist() == [1, 1, 0, 0, 0, 0]


def test_atss_per_level_topk_centre_inside_and_valid():
    # level 0: anchors 10x10; level 1: anchors 20x20 (one far away); gt 10x10 at origin
    l0 = torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10], [30, 30, 40, 40]])
    l1 = torch.tensor([[-5.0, -5, 15, 15], [60, 60, 80, 80]])
    anchors = torch.cat([l0, l1])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    got = atss_assign(anchors, [3, 2], gt, topk=2)
    # candidates: l0 anchors 0, 1 (IoU 1, 8/12) and, from level 1, both anchors (IoU 0.25, 0)
    ious = torch.tensor([1.0, 8 / 12, 0.25, 0.0])
    assert 8 / 12 < ious.mean() + ious.std() < 1.0
    assert got.tolist() == [1, 0, 0, 0, 0]
    # invalid anchor 1: the next nearest valid one (anchor 2) becomes the candidate
    valid = torch.tensor([True, False, True, True, True])
    got = atss_assign(anchors, [3, 2], gt, topk=2, valid=valid)
    assert got[1] == -1 and got[0] == 1
    # centre outside the gt: never positive even with high IoU rank
    gt_small = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    got = atss_assign(l0[:2], [2], gt_small, topk=2)
    assert got.tolist() == [0, 0]


def test_atss_highest_iou_gt_wins_and_no_gt():
    far = [[100.0, 100, 110, 110], [200, 200, 210, 210], [300, 300, 310, 310]]
    anchors = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 11]] + far)
    gt = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 11]])
    # both anchors pass both gts' thresholds (IoUs [1, 10/11, 0, 0, 0]); each takes its IoU-1 gt
    assert atss_assign(anchors, [5], gt, topk=5).tolist() == [1, 2, 0, 0, 0]
    assert atss_assign(anchors, [5], torch.zeros(0, 4), topk=5).tolist() == [0] * 5


# ----------------------------------------------------------------------------- FCOS

def test_fcos_center_sampling_and_regress_ranges():
    strides = [8, 16]
    ranges = [(-1.0, 64.0), (64.0, 1e8)]
    gt = torch.tensor([[0.0, 0.0, 100.0, 40.0]])     # centre (50, 20), max side distance >= 50
    pts0 = torch.tensor([[50.0, 20.0], [60.0, 20.0], [4.0, 4.0]])
    pts1 = torch.tensor([[50.0, 20.0], [90.0, 20.0]])
    points = torch.cat([pts0, pts1])
    got = fcos_assign(points, [3, 2], strides, ranges, gt, center_sampling=True, center_radius=1.5)
    # level 0 (radius 12): (50,20) max dist 50 in range -> pos; (60,20) outside centre box (38..62)? inside,
    # max distance 60 <= 64 -> pos; (4,4) outside the centre box -> neg.
    # level 1 (radius 24): (50,20) max dist 50 < 64 -> out of range; (90,20) outside centre box (26..74)
    assert got.tolist() == [1, 1, 0, 0, 0]
    got = fcos_assign(points, [3, 2], strides, ranges, gt, center_sampling=False)
    # no centre sampling: (4,4) is inside with max distance 96 > 64 -> neg at level 0;
    # (90,20) at level 1: max distance 90 >= 64 -> pos
    assert got.tolist() == [1, 1, 0, 0, 1]


def test_fcos_smallest_area_wins():
    gt = torch.tensor([[0.0, 0.0, 40.0, 40.0], [10.0, 10.0, 30.0, 30.0]])
    points = torch.tensor([[20.0, 20.0]])
    got = fcos_assign(points, [1], [8], [(-1.0, 1e8)], gt, center_sampling=False)
    assert got.tolist() == [2]
    assert fcos_assign(points, [1], [8], [(-1.0, 1e8)], torch.zeros(0, 4)).tolist() == [0]


# ----------------------------------------------------------------------------- sampler

def test_random_sampler_ratios():
    torch.manual_seed(0)
    gt_inds = torch.zeros(1000, dtype=torch.long)
    gt_inds[:300] = 1
    gt_inds[300:350] = -1
    pos, neg = random_sample(gt_inds, num=256, pos_fraction=0.5)
    assert pos.sum() == 128 and neg.sum() == 128
    assert (gt_inds[pos] > 0).all() and (gt_inds[neg] == 0).all()
    # few positives: negatives fill the rest
    gt_inds = torch.zeros(1000, dtype=torch.long)
    gt_inds[:10] = 2
    pos, neg = random_sample(gt_inds, num=256, pos_fraction=0.5)
    assert pos.sum() == 10 and neg.sum() == 246
    # few candidates: everything is taken
    pos, neg = random_sample(torch.tensor([0, 1, -1, 0]), num=256, pos_fraction=0.25)
    assert pos.tolist() == [False, True, False, False] and neg.tolist() == [True, False, False, True]


def test_random_sampler_is_uniform_and_seeded():
    gt_inds = torch.ones(10, dtype=torch.long)
    counts = torch.zeros(10)
    torch.manual_seed(1)
    for _ in range(400):
        counts += random_sample(gt_inds, num=4, pos_fraction=0.5)[0].float()
    assert counts.sum() == 800 and counts.min() > 50          # each picked ~80 times
    torch.manual_seed(3)
    a = random_sample(gt_inds, num=4, pos_fraction=0.5)[0]
    torch.manual_seed(3)
    assert torch.equal(a, random_sample(gt_inds, num=4, pos_fraction=0.5)[0])


def test_sampled_slots_order():
    pos = torch.tensor([False, True, False, False, True])
    neg = torch.tensor([True, False, False, True, False])
    idx, valid = sampled_slots(pos, neg, num=5)
    assert idx.tolist()[:4] == [1, 4, 0, 3] and valid.tolist() == [True, True, True, True, False]
    idx, valid = sampled_slots(pos, neg, num=3)
    assert idx.tolist() == [1, 4, 0] and valid.all()


# ----------------------------------------------------------------------------- normalisers

def test_positive_normaliser_clamps():
    assert positive_normaliser(torch.tensor(0)).item() == 1.0
    assert positive_normaliser(torch.tensor(7)).item() == 7.0
    assert math.isclose(positive_normaliser(torch.tensor(2.5)).item(), 2.5)


def test_positive_normaliser_is_averaged_over_workers(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        assert positive_normaliser(torch.tensor(0.0)).item() == 1.0
        assert positive_normaliser(torch.tensor(5.0)).item() == 5.0
    finally:
        dist.destroy_process_group()
