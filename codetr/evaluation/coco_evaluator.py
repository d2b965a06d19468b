"""COCO bbox evaluation (pycocotools COCOeval), distributed-safe.

    evaluator = CocoEvaluator.from_dataset(val_set)
    for images, targets in loader:                 # each rank: its shard
        evaluator.update(model(images), targets)
    metrics = evaluator.summarize()                # every rank calls it; rank 0 gets the metrics

Metric names: ``coco/AP``, ``coco/AP50``, ``coco/AP75``, ``coco/APs``, ``coco/APm``, ``coco/APl``,
``coco/AR1``, ``coco/AR10``, ``coco/AR100``, ``coco/ARs``, ``coco/ARm``, ``coco/ARl`` (COCOeval's 12
statistics, in [0, 1]) and ``coco/AP/<category name>`` per class (IoU 0.50:0.95, all areas, 100
detections). As in COCOeval, -1 means "no ground truth to score" (e.g. no small objects).
Only images passed to :meth:`CocoEvaluator.update` are scored.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from codetr.evaluation.coco_results import arrays_to_coco_results, detections_to_arrays
from codetr.evaluation.gather import PerImageGather, distributed_rank_and_size

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
METRIC_NAMES = tuple(f"coco/{name}" for name in STAT_NAMES)


def _coco_from_results(coco_gt: COCO, results: list[dict]) -> COCO:
    """A COCO object of detections (what ``loadRes`` builds for bbox results, also for an empty list)."""
    coco_dt = COCO()
    annotations = []
    for i, result in enumerate(results):
        x, y, w, h = result["bbox"]
        annotations.append({**result, "area": float(w * h), "id": i + 1, "iscrowd": 0})
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                       "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def evaluate_coco_results(coco_gt: COCO, results: list[dict], image_ids: Sequence[int]) -> tuple[dict[str, float], str]:
    """COCOeval (bbox) of COCO results entries on ``image_ids``.

    Returns (metrics named as in the module docstring, COCOeval's printed summary).
    """
    categories = sorted(coco_gt.dataset["categories"], key=lambda c: c["id"])
    if not image_ids:
        metrics = {name: -1.0 for name in METRIC_NAMES}
        metrics.update({f"coco/AP/{c['name']}": -1.0 for c in categories})
        return metrics, "no image evaluated"
    coco_dt = _coco_from_results(coco_gt, results)
    cocoeval = COCOeval(coco_gt, coco_dt, iouType="bbox")
    cocoeval.params.imgIds = sorted(int(i) for i in image_ids)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    metrics = {name: float(value) for name, value in zip(METRIC_NAMES, cocoeval.stats)}
    # precision: [IoU thresholds, recall points, categories, area ranges, max detections]
    precision = cocoeval.eval["precision"]
    cat_index = {cat_id: k for k, cat_id in enumerate(cocoeval.params.catIds)}
    for cat in categories:
        p = precision[:, :, cat_index[cat["id"]], 0, -1]
        valid = p[p > -1]
        metrics[f"coco/AP/{cat['name']}"] = float(valid.mean()) if valid.size else -1.0
    return metrics, text.getvalue()


class CocoEvaluator(PerImageGather[dict[str, np.ndarray]]):
    """Accumulates detections per image, gathers them across ranks, runs COCOeval.

    Build it from the evaluated dataset, ``CocoEvaluator(val_set)`` (a
    :class:`codetr.data.CocoDetection`: its ``coco`` and ``label_to_cat_id`` are used), or from
    ``CocoEvaluator(coco, label_to_cat_id)``: the pycocotools ground truth of the split (crowd
    boxes included) and the contiguous label -> category id map (list or dict).
    """

    primary_metric = "coco/AP"   # the metric that ranks checkpoints and trials

    def __init__(self, dataset_or_coco, label_to_cat_id: Sequence[int] | Mapping[int, int] | None = None):
        if isinstance(dataset_or_coco, COCO):
            if label_to_cat_id is None:
                raise ValueError("CocoEvaluator(coco, label_to_cat_id): label_to_cat_id is required with a COCO object")
            self.coco = dataset_or_coco
        else:
            self.coco = dataset_or_coco.coco
            if label_to_cat_id is None:
                label_to_cat_id = dataset_or_coco.label_to_cat_id
        self.label_to_cat_id = label_to_cat_id
        self.summary_text = ""
        self.reset()

    @classmethod
    def from_dataset(cls, dataset) -> CocoEvaluator:
        """Same as ``CocoEvaluator(dataset)``."""
        return cls(dataset)

    def reset(self) -> None:
        """Forget all detections (e.g. before the next evaluation round)."""
        self._start_gather()

    @property
    def image_ids(self) -> list[int]:
        """Image ids with detections recorded so far (on this rank, or all ranks after synchronize)."""
        return sorted(self._per_image)

    def update(self, predictions: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping]) -> None:
        """Record one batch.

        ``predictions[i]``: ``{"boxes": [N, 4] xyxy in the transformed input-image pixels,
        "scores": [N], "labels": [N] contiguous}``; ``targets[i]``: needs ``"image_id"``,
        ``"size"`` (h, w after transforms) and ``"orig_size"`` (h, w of the file). An image
        seen twice keeps its latest detections.
        """
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
        if self._synchronized:
            raise RuntimeError("update() after synchronize(): call reset() to start a new evaluation")
        for prediction, target in zip(predictions, targets):
            self._per_image[int(target["image_id"])] = detections_to_arrays(prediction, target, self.label_to_cat_id)

    def results(self) -> list[dict]:
        """COCO results entries of the recorded detections (this rank's, or all after synchronize)."""
        return [entry for image_id, arrays in sorted(self._per_image.items())
                for entry in arrays_to_coco_results(image_id, arrays)]

    def summarize(self) -> dict[str, float]:
        """COCOeval on rank 0; ranks other than 0 get ``{}``.

        Synchronizes first if :meth:`synchronize` was not called: then every rank must call
        ``summarize`` (a collective); after ``synchronize()`` rank 0 may call it alone.
        """
        self.synchronize()
        rank, _ = distributed_rank_and_size()
        if rank != 0:
            return {}
        unknown = [i for i in self._per_image if i not in self.coco.imgs]
        if unknown:
            raise ValueError(f"detections for image ids not in the ground truth: {unknown[:10]}")
        if not self._per_image:
            logger.warning("CocoEvaluator.summarize: no image was evaluated")
        metrics, self.summary_text = evaluate_coco_results(self.coco, self.results(), self.image_ids)
        return metrics
