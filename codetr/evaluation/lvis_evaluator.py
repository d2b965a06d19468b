"""LVIS v1 bbox evaluation, distributed-safe, with the interface of :class:`CocoEvaluator`.

    evaluator = build_evaluator(val_set)           # LvisEvaluator for data.format lvis
    for images, targets in loader:
        evaluator.update(model(images), targets)
    metrics = evaluator.summarize()                # rank 0: lvis/AP, lvis/APr, ...

Metric names: ``lvis/AP``, ``lvis/AP50``, ``lvis/AP75``, ``lvis/APs``, ``lvis/APm``, ``lvis/APl``,
``lvis/APr``, ``lvis/APc``, ``lvis/APf`` and ``lvis/AR``, ``lvis/ARs``, ``lvis/ARm``, ``lvis/ARl`` (at
``max_dets`` detections per image), in [0, 1], -1 when there is nothing to score. Per-category AP is
kept on :attr:`LvisEvaluator.per_category_ap` (1203 categories: not logged as metrics).
"""
from __future__ import annotations

import logging

from codetr.evaluation.coco_evaluator import CocoEvaluator
from codetr.evaluation.gather import distributed_rank_and_size
from codetr.evaluation.lvis_eval import STAT_NAMES, evaluate_lvis

logger = logging.getLogger(__name__)

LVIS_METRIC_NAMES = tuple(f"lvis/{name}" for name in STAT_NAMES)


class LvisEvaluator(CocoEvaluator):
    """:class:`CocoEvaluator` with the LVIS protocol (:mod:`codetr.evaluation.lvis_eval`) in ``summarize``.

    ``max_dets``: detections per image scored (LVIS: 300; Co-DETR's own LVIS evaluation: 1000).
    """

    primary_metric = "lvis/AP"

    def __init__(self, dataset_or_coco, label_to_cat_id=None, max_dets: int = 300):
        super().__init__(dataset_or_coco, label_to_cat_id)
        self.max_dets = max_dets
        self.per_category_ap: dict[int, float] = {}

    def summarize(self) -> dict[str, float]:
        """LVIS metrics on rank 0 (``{}`` on other ranks); a collective unless synchronized first."""
        self.synchronize()
        rank, _ = distributed_rank_and_size()
        if rank != 0:
            return {}
        unknown = [i for i in self._per_image if i not in self.coco.imgs]
        if unknown:
            raise ValueError(f"detections for image ids not in the ground truth: {unknown[:10]}")
        if not self._per_image:
            logger.warning("LvisEvaluator.summarize: no image was evaluated")
        stats, self.per_category_ap = evaluate_lvis(self.coco.dataset, self.results(), self.image_ids, self.max_dets)
        metrics = {f"lvis/{name}": value for name, value in stats.items()}
        self.summary_text = "\n".join(f"{name:<10} {value:.4f}" for name, value in metrics.items())
        return metrics


def build_evaluator(dataset, lvis_max_dets: int = 300) -> CocoEvaluator:
    """The evaluator of a dataset's annotation format (``dataset.annotation_format``, a
    :class:`codetr.data.CocoDetection`): :class:`LvisEvaluator` for ``lvis`` (scoring ``lvis_max_dets``
    detections per image, ``data.lvis_max_dets``), else :class:`CocoEvaluator`."""
    if getattr(dataset, "annotation_format", "coco") == "lvis":
        return LvisEvaluator(dataset, max_dets=lvis_max_dets)
    return CocoEvaluator(dataset)
