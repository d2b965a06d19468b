"""Matching instability (paper Fig. 5, after DN-DETR): how many queries change the ground truth they
are matched to between two evaluations.

At every evaluation, for each image of a fixed validation subset, the last decoder layer's queries are
matched one-to-one to the image's ground truth (the training matcher's Hungarian costs); each query
slot gets the index of its gt box or -1. ``diag/instability`` is the number of slots whose entry changed
since the previous evaluation, averaged over the images (0 for an unchanged matching). The first
evaluation of a run (or of a resumed worker) has no previous matching and logs nothing.

With two-stage query selection (Co-DETR's default) a query slot is not a persistent identity: slot q
holds the q-th best encoder proposal of this evaluation, not the same learned embedding. The metric then
counts how often the k-th ranked proposal changes its target; it still falls as the encoder's ranking and
the decoder's predictions settle, which is what the paper's figure shows.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from codetr.box_ops import box_xyxy_to_cxcywh
from codetr.evaluation.gather import PerImageGather

# (logits [1, Q, C], boxes [1, Q, 4] normalised cxcywh, gt labels [G], gt boxes [G, 4] normalised cxcywh,
#  scale [1, 4] (w, h, w, h)) -> per image (query index, gt index): the training matcher
Matcher = Callable[[Tensor, Tensor, list[Tensor], list[Tensor], Tensor], list[tuple[Tensor, Tensor]]]


def query_assignment(num_queries: int, pred_idx: Tensor, gt_idx: Tensor) -> np.ndarray:
    """[Q] int: each query's matched gt index, -1 for none."""
    out = np.full(num_queries, -1, dtype=np.int64)
    out[pred_idx.cpu().numpy()] = gt_idx.cpu().numpy()
    return out


def changed_matches(previous: np.ndarray, current: np.ndarray) -> int:
    """Number of query slots whose assignment differs."""
    if previous.shape != current.shape:
        raise ValueError(f"matchings of {previous.shape[0]} and {current.shape[0]} queries cannot be compared")
    return int((previous != current).sum())


class MatchHistory:
    """The previous evaluation's matchings, kept by the caller across evaluations (rank 0)."""

    def __init__(self) -> None:
        self.previous: dict[int, np.ndarray] = {}


class MatchingInstability(PerImageGather[np.ndarray]):
    """One evaluation's matchings of the subset; ``summarize()`` compares them with ``history`` and stores them."""

    def __init__(self, image_ids: Sequence[int], matcher: Matcher, history: MatchHistory) -> None:
        self.image_ids = {int(i) for i in image_ids}
        self.matcher = matcher
        self.history = history
        self._start_gather()

    def update(self, outputs, targets: Sequence[dict]) -> None:
        for i, target in enumerate(targets):
            image_id = int(target["image_id"])
            if image_id not in self.image_ids:
                continue
            h, w = outputs.sizes[i]
            logits, boxes = outputs.logits[i:i + 1].float(), outputs.boxes_cxcywh_norm[i:i + 1].float()
            scale = torch.tensor([[w, h, w, h]], dtype=torch.float32, device=logits.device)
            gt_boxes = box_xyxy_to_cxcywh(target["boxes"].to(logits.device).float().reshape(-1, 4)) / scale
            gt_labels = target["labels"].to(logits.device).long().reshape(-1)
            (pred_idx, gt_idx), = self.matcher(logits, boxes, [gt_labels], [gt_boxes], scale)
            self._per_image[image_id] = query_assignment(logits.shape[1], pred_idx, gt_idx)

    def summarize(self) -> dict[str, float]:
        common = [i for i in self._per_image if i in self.history.previous
                  and self.history.previous[i].shape == self._per_image[i].shape]
        metrics = {}
        if common:
            metrics["diag/instability"] = float(np.mean([changed_matches(self.history.previous[i], self._per_image[i])
                                                         for i in common]))
        self.history.previous = dict(self._per_image)
        return metrics
