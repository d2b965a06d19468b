"""Do two detection sets of the same image agree? A comparison that near-tied scores cannot break.

Two runs of one model (PyTorch and onnxruntime, two CPUs, two implementations) round float32 sums
differently; where two detections' scores differ by less than that rounding, their order, and which of
them survives a top-k cut, is arbitrary. A barely trained model has many such near-ties (all its scores
sit close to the class prior), so comparing detections rank by rank reports hundreds of pixels where
nothing differs but the order. :func:`detection_agreement` pairs the detections instead:

* two detections can pair when their labels are equal and their scores differ by at most ``score_tol``
  (detections whose scores lie within ``score_tol`` of each other are interchangeable);
* among those, the pairing is the one that pairs the most detections and, with that, has the smallest total
  box difference (an optimal assignment): tied detections swapped in rank pair with their own boxes;
* it reports how many paired, the largest score and box differences of the pairs (a moved box shows
  here), the unpaired detections that sit at the other set's cut (within ``score_tol`` of its lowest
  score: a near-tie decided which of them the top-k kept), and, for information, the fraction of ranks
  with the same label (the tie-sensitive rank-by-rank figure).

The sets agree (:meth:`Agreement.ok`) when every detection is paired or unpaired only at the cut, and the
pairs' score and box differences are within the tolerances. Compare the tensors before a top-k directly:
they have no ranking, and :func:`max_abs_diff` is all they need. Where a top-k feeds later stages (a
two-stage selection of queries), :func:`selection_agreement` says whether another run's selection is a
valid top-k of the reference's scores up to a tolerance (only near-tied positions swapped); run the
reference again on that selection to compare what follows exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class Agreement:
    """How two detection sets (a reference and another) agree; combine images with :meth:`merge`."""
    num_reference: int
    num_other: int
    matched: int                  # pairs of the same label and scores within the tolerance
    unmatched_at_cut: int         # unpaired detections within the tolerance of the other set's lowest score
    max_score_diff: float         # over the pairs (0 when there are none)
    max_box_diff: float           # over the pairs, largest absolute coordinate difference (the boxes' unit)
    same_label_at_rank: int       # ranks with the same label (information only: tie-sensitive)

    @property
    def unmatched(self) -> int:
        return self.num_reference + self.num_other - 2 * self.matched

    @property
    def matched_fraction(self) -> float:
        return self.matched / max(self.num_reference, self.num_other, 1)

    def ok(self, score_tol: float, box_tol: float) -> bool:
        return (self.num_reference == self.num_other and self.unmatched == self.unmatched_at_cut
                and self.max_score_diff <= score_tol and self.max_box_diff <= box_tol)

    def merge(self, other: "Agreement") -> "Agreement":
        return Agreement(self.num_reference + other.num_reference, self.num_other + other.num_other,
                         self.matched + other.matched, self.unmatched_at_cut + other.unmatched_at_cut,
                         max(self.max_score_diff, other.max_score_diff), max(self.max_box_diff, other.max_box_diff),
                         self.same_label_at_rank + other.same_label_at_rank)

    def summary(self, box_unit: str = "px") -> str:
        n = max(self.num_reference, self.num_other)
        at_cut = f" ({self.unmatched_at_cut} unpaired at the top-k cut)" if self.unmatched_at_cut else ""
        return (f"{self.matched}/{n} matched by label and score{at_cut}, max |dscore| {self.max_score_diff:.2e}, "
                f"max |dbox| {self.max_box_diff:.2e} {box_unit}; same label at the same rank "
                f"{self.same_label_at_rank}/{min(self.num_reference, self.num_other)}")


def _array(x, dtype=np.float64) -> np.ndarray:
    if hasattr(x, "detach"):   # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def detection_agreement(reference: dict, other: dict, score_tol: float) -> Agreement:
    """Pair the detections of one image: ``reference`` and ``other`` are ``{boxes [n, 4], scores [n],
    labels [n]}`` (tensors or arrays, any order); see the module's docstring."""
    ref_boxes, ref_scores = _array(reference["boxes"]).reshape(-1, 4), _array(reference["scores"]).reshape(-1)
    oth_boxes, oth_scores = _array(other["boxes"]).reshape(-1, 4), _array(other["scores"]).reshape(-1)
    ref_labels, oth_labels = _array(reference["labels"], np.int64).reshape(-1), _array(other["labels"], np.int64).reshape(-1)
    n_ref, n_oth = len(ref_scores), len(oth_scores)
    if not (len(ref_boxes) == len(ref_labels) == n_ref and len(oth_boxes) == len(oth_labels) == n_oth):
        raise ValueError(f"boxes, scores and labels differ in length: reference {len(ref_boxes)}/{n_ref}/"
                         f"{len(ref_labels)}, other {len(oth_boxes)}/{n_oth}/{len(oth_labels)}")
    n_rank = min(n_ref, n_oth)
    ref_rank, oth_rank = np.argsort(-ref_scores, kind="stable"), np.argsort(-oth_scores, kind="stable")
    same_rank = int((ref_labels[ref_rank][:n_rank] == oth_labels[oth_rank][:n_rank]).sum())
    matched_ref = np.zeros(n_ref, bool)
    matched_oth = np.zeros(n_oth, bool)
    max_ds = max_db = 0.0
    if n_ref and n_oth:
        score_diff = np.abs(ref_scores[:, None] - oth_scores[None])                        # [n_ref, n_oth]
        box_diff = np.abs(ref_boxes[:, None] - oth_boxes[None]).max(-1)
        can_pair = (ref_labels[:, None] == oth_labels[None]) & (score_diff <= score_tol)
        # the most pairs first (a non-pair costs more than any set of pairs), then the least box difference
        forbidden = (box_diff[can_pair].sum() if can_pair.any() else 0.0) + 1.0
        rows, cols = linear_sum_assignment(np.where(can_pair, box_diff, forbidden))
        keep = can_pair[rows, cols]
        rows, cols = rows[keep], cols[keep]
        matched_ref[rows], matched_oth[cols] = True, True
        if len(rows):
            max_ds, max_db = float(score_diff[rows, cols].max()), float(box_diff[rows, cols].max())
    at_cut = 0
    if n_oth:
        at_cut += int((~matched_ref & (ref_scores <= oth_scores.min() + score_tol)).sum())
    if n_ref:
        at_cut += int((~matched_oth & (oth_scores <= ref_scores.min() + score_tol)).sum())
    return Agreement(n_ref, n_oth, int(matched_ref.sum()), at_cut, max_ds, max_db, same_rank)


def batch_agreement(reference: list[dict], other: list[dict], score_tol: float) -> Agreement:
    """:func:`detection_agreement` per image, merged over the images."""
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference images against {len(other)}")
    if not reference:
        return Agreement(0, 0, 0, 0, 0.0, 0.0, 0)
    result = detection_agreement(reference[0], other[0], score_tol)
    for a, b in zip(reference[1:], other[1:]):
        result = result.merge(detection_agreement(a, b, score_tol))
    return result


def max_abs_diff(a, b) -> float:
    """The largest absolute difference of two same-shaped tensors / arrays (raises on a shape mismatch)."""
    a, b = _array(a), _array(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} against {b.shape}")
    return float(np.abs(a - b).max()) if a.size else 0.0


@dataclass(frozen=True)
class SelectionAgreement:
    """Another run's top-k selection (indices, in rank order) against the reference scores it ranked."""
    k: int                 # per row
    rows: int
    same_rank: int         # positions selected at the same rank as the reference's own top-k
    same_set: int          # positions selected by both
    consistent: bool       # the other selection is a top-k of the reference scores within the tolerance
    worst_violation: float  # how far it is from one (0 when consistent): the largest out-of-order score step

    def summary(self) -> str:
        n = self.k * self.rows
        return (f"{self.same_set}/{n} positions selected by both, {self.same_rank}/{n} at the same rank; "
                + ("a top-k of the reference scores within the tolerance" if self.consistent else
                   f"NOT a top-k of the reference scores (off by {self.worst_violation:.2e})"))


def selection_agreement(reference_scores, reference_index, other_index, tol: float) -> SelectionAgreement:
    """``reference_scores`` [rows, N] (-inf: never to be selected), ``reference_index`` / ``other_index``
    [rows, k]: the reference's top-k and another run's. The other selection is consistent when its indices
    are distinct, select no -inf position, descend in the reference scores up to ``tol`` (a step up of at most
    ``tol`` between consecutive ranks) and its lowest selected score is at most ``tol`` below the best
    unselected one."""
    scores = _array(reference_scores)
    ref, other = _array(reference_index, np.int64), _array(other_index, np.int64)
    if scores.ndim != 2 or ref.shape != other.shape or ref.ndim != 2 or ref.shape[0] != scores.shape[0]:
        raise ValueError(f"selection_agreement: scores {scores.shape}, indices {ref.shape} and {other.shape} do not fit")
    rows, k = other.shape
    worst = 0.0
    consistent = True
    same_rank = same_set = 0
    for r in range(rows):
        picked = other[r]
        same_rank += int((picked == ref[r]).sum())
        same_set += len(set(picked.tolist()) & set(ref[r].tolist()))
        if len(set(picked.tolist())) != k or not np.isfinite(scores[r, picked]).all():
            consistent, worst = False, float("inf")
            continue
        s = scores[r, picked]
        step_up = float(np.max(s[1:] - s[:-1], initial=0.0))
        rest = np.delete(scores[r], picked)
        cut = float(rest.max() - s.min()) if rest.size else 0.0
        violation = max(step_up, cut)
        if violation > tol:
            consistent = False
        worst = max(worst, violation if violation > tol else 0.0)
    return SelectionAgreement(k, rows, same_rank, same_set, consistent, worst)
