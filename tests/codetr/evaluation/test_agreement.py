"""Tie-robust agreement of two detection sets, on hand cases."""
import numpy as np
import pytest
import torch

from codetr.evaluation.agreement import batch_agreement, detection_agreement, max_abs_diff, selection_agreement

BOXES = [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 50.0], [5.0, 60.0, 30.0, 90.0], [50.0, 5.0, 70.0, 25.0]]


def dets(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def test_identical_sets_agree_exactly():
    a = dets(BOXES, [0.9, 0.8, 0.5, 0.3], [1, 2, 1, 0])
    r = detection_agreement(a, a, score_tol=1e-4)
    assert (r.matched, r.unmatched, r.max_score_diff, r.max_box_diff, r.same_label_at_rank) == (4, 0, 0.0, 0.0, 4)
    assert r.ok(1e-4, 0.05) and r.matched_fraction == 1.0


def test_a_swapped_tied_pair_matches_by_box():
    """Two near-tied detections (different labels, then the same label) in swapped ranks: rank by rank the
    labels and boxes differ, paired they agree."""
    ref = dets(BOXES, [0.9, 0.50001, 0.5, 0.3], [1, 2, 1, 0])
    other = dets([BOXES[0], BOXES[2], BOXES[1], BOXES[3]], [0.9, 0.50001, 0.5, 0.3], [1, 1, 2, 0])
    r = detection_agreement(ref, other, score_tol=1e-4)
    assert r.matched == 4 and r.max_box_diff == 0.0 and r.same_label_at_rank == 2 and r.ok(1e-4, 0.05)
    # the same label: which box goes with which score is decided by the boxes
    ref = dets(BOXES[:2], [0.70002, 0.7], [3, 3])
    other = dets([BOXES[1], BOXES[0]], [0.70001, 0.70001], [3, 3])
    r = detection_agreement(ref, other, score_tol=1e-4)
    assert r.matched == 2 and r.max_box_diff == 0.0 and r.max_score_diff == pytest.approx(1e-5, abs=2e-7)


def test_a_moved_box_is_reported():
    ref = dets(BOXES, [0.9, 0.8, 0.5, 0.3], [1, 2, 1, 0])
    moved = [list(b) for b in BOXES]
    moved[1][2] += 7.5
    r = detection_agreement(ref, dets(moved, [0.9, 0.8, 0.5, 0.3], [1, 2, 1, 0]), score_tol=1e-4)
    assert r.matched == 4 and r.max_box_diff == 7.5 and not r.ok(1e-4, 0.05)
    assert "max |dbox| 7.50e+00 px" in r.summary()


def test_a_changed_score_or_label_is_unmatched():
    ref = dets(BOXES, [0.9, 0.8, 0.5, 0.3], [1, 2, 1, 0])
    r = detection_agreement(ref, dets(BOXES, [0.9, 0.81, 0.5, 0.3], [1, 2, 1, 0]), score_tol=1e-4)
    assert r.matched == 3 and r.unmatched == 2 and r.unmatched_at_cut == 0 and not r.ok(1e-4, 0.05)
    r = detection_agreement(ref, dets(BOXES, [0.9, 0.8, 0.5, 0.3], [1, 2, 4, 0]), score_tol=1e-4)
    assert r.matched == 3 and not r.ok(1e-4, 0.05)


def test_a_near_tie_at_the_top_k_cut_is_allowed():
    """Top-3 of four detections whose last two are near-tied: each side keeps another of them."""
    ref = dets(BOXES[:3], [0.9, 0.8, 0.40001], [1, 2, 1])
    other = dets([BOXES[0], BOXES[1], BOXES[3]], [0.9, 0.8, 0.40002], [1, 2, 0])
    r = detection_agreement(ref, other, score_tol=1e-4)
    assert r.matched == 2 and r.unmatched == 2 and r.unmatched_at_cut == 2 and r.ok(1e-4, 0.05)
    # far from the cut, a missing detection is not excused
    other = dets([BOXES[0], BOXES[3], BOXES[2]], [0.9, 0.6, 0.40001], [1, 0, 1])
    r = detection_agreement(ref, other, score_tol=1e-4)
    assert r.unmatched == 2 and r.unmatched_at_cut == 0 and not r.ok(1e-4, 0.05)


def test_batches_merge_and_bad_input_is_named():
    a = dets(BOXES, [0.9, 0.8, 0.5, 0.3], [1, 2, 1, 0])
    b = {k: v.numpy() for k, v in a.items()}
    b["boxes"] = b["boxes"] + np.float32(0.25)
    r = batch_agreement([a, a], [a, b], score_tol=1e-4)
    assert (r.num_reference, r.matched) == (8, 8) and r.max_box_diff == 0.25
    assert detection_agreement(a, dets(np.zeros((0, 4)), [], []), 1e-4).matched == 0
    with pytest.raises(ValueError, match="differ in length"):
        detection_agreement(a, {"boxes": a["boxes"], "scores": a["scores"][:3], "labels": a["labels"]}, 1e-4)
    with pytest.raises(ValueError, match="2 reference images against 1"):
        batch_agreement([a, a], [a], 1e-4)
    assert max_abs_diff(torch.ones(2, 3), np.full((2, 3), 1.5)) == 0.5
    with pytest.raises(ValueError, match="shapes differ"):
        max_abs_diff(torch.ones(2, 3), torch.ones(3, 2))


def test_a_selection_with_near_tied_positions_swapped_is_a_top_k():
    scores = torch.tensor([[5.0, 4.0, 3.00001, 3.0, 1.0, -float("inf")]])
    ref = torch.tensor([[0, 1, 2, 3]])
    swapped = torch.tensor([[0, 1, 3, 2]])                      # within 1e-4: either order is a top-k
    r = selection_agreement(scores, ref, swapped, tol=1e-4)
    assert r.consistent and (r.same_rank, r.same_set) == (2, 4) and "2/4 at the same rank" in r.summary()
    assert not selection_agreement(scores, ref, swapped, tol=1e-6).consistent
    assert not selection_agreement(scores, ref, torch.tensor([[1, 0, 2, 3]]), tol=1e-4).consistent  # 4 before 5
    cut = selection_agreement(scores, ref, torch.tensor([[0, 1, 2, 4]]), tol=1e-4)                  # 1 kept, 3 left
    assert not cut.consistent and cut.worst_violation == pytest.approx(2.0)
    assert not selection_agreement(scores, ref, torch.tensor([[0, 1, 2, 5]]), tol=1e-4).consistent  # an invalid one
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.99999]])
    assert selection_agreement(scores, torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 3]]), tol=1e-4).consistent
