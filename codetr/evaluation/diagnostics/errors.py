"""The COCO error analysis: what each kind of mistake costs, PR curves and a confusion matrix.

Every detection is labelled in score order within its image, in the manner of TIDE (Bolya et al. 2020),
with the foreground IoU 0.5 and the background IoU 0.1:

    tp    IoU >= 0.5 with a gt box of its class not yet taken by a better detection
    dupl  IoU >= 0.5 with a gt box of its class, all such boxes already taken
    cls   IoU >= 0.5 with a gt box of another class
    loc   its class, 0.1 <= IoU < 0.5
    both  another class, 0.1 <= IoU < 0.5
    bkg   IoU < 0.1 with every gt box

and a gt box is ``missed`` when no detection reaches IoU 0.1 with it. ``dAP`` of a kind is the AP50 gained
when only that kind is fixed by an oracle (the rest left as it is): cls -> the overlapped box's class,
loc -> the overlapped box itself, both / dupl / bkg -> the detection removed, missed -> the box removed
from the ground truth. Fixes interact, so the dAPs need not add up to 1 - AP50. Crowd boxes are left out.
"""
from __future__ import annotations

import contextlib
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from codetr.evaluation.coco_evaluator import _coco_from_results

ERROR_KINDS = ("cls", "loc", "both", "dupl", "bkg", "missed")
FG_IOU, BG_IOU = 0.5, 0.1


def _iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4] x [M, 4] xywh -> [N, M] IoU."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, 0][:, None], b[:, 0][None]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, 1][:, None], b[:, 1][None]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / np.maximum(union, 1e-12)


@dataclass
class ImageErrors:
    """One image: each detection's kind and the gt box it overlaps most (index into the image's gts, -1)."""
    kinds: list[str]
    target: list[int]
    missed: list[int]                      # gt indices no detection reaches IoU 0.1 with


def classify_image(det_boxes: np.ndarray, det_scores: np.ndarray, det_cats: np.ndarray, gt_boxes: np.ndarray,
                   gt_cats: np.ndarray) -> ImageErrors:
    """Label one image's detections (xywh boxes) as tp / dupl / cls / loc / both / bkg (module docstring)."""
    order = np.argsort(-det_scores, kind="stable")
    ious = _iou_xywh(det_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    kinds, target = [""] * len(det_boxes), [-1] * len(det_boxes)
    for d in order:
        iou = ious[d] if len(gt_boxes) else np.zeros(0)
        same = gt_cats == det_cats[d]
        iou_same = np.where(same, iou, -1.0)
        if len(iou) and iou_same.max() >= FG_IOU:
            free = np.where(~taken & same & (iou >= FG_IOU), iou, -1.0)
            if free.max() >= FG_IOU:
                g = int(free.argmax())
                taken[g] = True
                kinds[d], target[d] = "tp", g
            else:
                kinds[d], target[d] = "dupl", int(iou_same.argmax())
        elif len(iou) and iou.max() >= FG_IOU:
            kinds[d], target[d] = "cls", int(iou.argmax())
        elif len(iou) and iou_same.max() >= BG_IOU:
            kinds[d], target[d] = "loc", int(iou_same.argmax())
        elif len(iou) and iou.max() >= BG_IOU:
            kinds[d], target[d] = "both", int(iou.argmax())
        else:
            kinds[d] = "bkg"
    reached = (ious >= BG_IOU).any(0) if len(det_boxes) else np.zeros(len(gt_boxes), dtype=bool)
    return ImageErrors(kinds, target, [int(g) for g in np.flatnonzero(~reached)])


@dataclass
class ErrorAnalysis:
    """The analysis of one detection set (see :func:`analyze_errors`)."""
    ap50: float
    dap: dict[str, float]                       # error kind -> AP50 gained by fixing it alone
    counts: dict[str, int]                      # detections of each kind (and missed gt boxes)
    per_image: dict[int, ImageErrors] = field(default_factory=dict)
    pr_curves: dict[str, np.ndarray] = field(default_factory=dict)   # "all" and each category name -> [101] at IoU 0.5
    recall: np.ndarray = field(default_factory=lambda: np.linspace(0, 1, 101))
    confusion: np.ndarray | None = None         # [C + 1, C + 1]: rows gt class + background, columns predicted + missed
    class_names: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """``errors/dAP_<kind>`` and ``errors/count_<kind>`` (plain metric names for MLflow)."""
        out = {f"errors/dAP_{k}": v for k, v in self.dap.items()}
        out.update({f"errors/count_{k}": float(v) for k, v in self.counts.items()})
        out["errors/AP50"] = self.ap50
        return out


def _cocoeval(coco_gt: COCO, results: list[dict], image_ids: Sequence[int]) -> COCOeval:
    ev = COCOeval(coco_gt, _coco_from_results(coco_gt, results), iouType="bbox")
    ev.params.imgIds = sorted(int(i) for i in image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _ap50(coco_gt: COCO, results: list[dict], image_ids: Sequence[int]) -> float:
    return float(max(_cocoeval(coco_gt, results, image_ids).stats[1], 0.0))


def _gt_without(coco_gt: COCO, removed: set[int]) -> COCO:
    gt = COCO()
    gt.dataset = {**coco_gt.dataset, "annotations": [a for a in coco_gt.dataset["annotations"] if a["id"] not in removed]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def analyze_errors(coco_gt: COCO, results: list[dict], image_ids: Sequence[int], score_thr: float = 0.3
                   ) -> ErrorAnalysis:
    """The error analysis of COCO ``results`` entries on ``image_ids`` (module docstring); the confusion
    matrix counts the detections scoring at least ``score_thr``, greedily matched at IoU 0.5 to any class."""
    image_ids = sorted(int(i) for i in image_ids)
    by_image: dict[int, list[int]] = {i: [] for i in image_ids}
    for k, r in enumerate(results):
        if int(r["image_id"]) in by_image:
            by_image[int(r["image_id"])].append(k)
    categories = sorted(coco_gt.dataset["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: k for k, c in enumerate(categories)}
    fixed = {kind: [dict(r) for r in results] for kind in ("cls", "loc")}
    removed: dict[str, set[int]] = {kind: set() for kind in ("both", "dupl", "bkg")}
    missed_ann: set[int] = set()
    counts: Counter = Counter()
    per_image: dict[int, ImageErrors] = {}
    num_cats = len(categories)
    confusion = np.zeros((num_cats + 1, num_cats + 1), dtype=np.int64)
    for image_id in image_ids:
        anns = [a for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        gt_boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        gt_cats = np.array([a["category_id"] for a in anns], dtype=np.int64)
        dets = by_image[image_id]
        boxes = np.array([results[k]["bbox"] for k in dets], dtype=np.float64).reshape(-1, 4)
        scores = np.array([results[k]["score"] for k in dets], dtype=np.float64)
        cats = np.array([results[k]["category_id"] for k in dets], dtype=np.int64)
        errors = classify_image(boxes, scores, cats, gt_boxes, gt_cats)
        per_image[image_id] = errors
        for local, (kind, g) in enumerate(zip(errors.kinds, errors.target)):
            counts[kind] += 1
            k = dets[local]
            if kind == "cls":
                fixed["cls"][k]["category_id"] = int(gt_cats[g])
            elif kind == "loc":
                fixed["loc"][k]["bbox"] = [float(v) for v in gt_boxes[g]]
            elif kind in removed:
                removed[kind].add(k)
        counts["missed"] += len(errors.missed)
        missed_ann.update(anns[g]["id"] for g in errors.missed)
        _confusion_update(confusion, boxes, scores, cats, gt_boxes, gt_cats, cat_index, score_thr)
    base = _cocoeval(coco_gt, results, image_ids)
    ap50 = float(max(base.stats[1], 0.0))
    dap = {"cls": _ap50(coco_gt, fixed["cls"], image_ids) - ap50, "loc": _ap50(coco_gt, fixed["loc"], image_ids) - ap50}
    for kind, gone in removed.items():
        dap[kind] = _ap50(coco_gt, [r for k, r in enumerate(results) if k not in gone], image_ids) - ap50
    dap["missed"] = (_ap50(_gt_without(coco_gt, missed_ann), results, image_ids) - ap50) if missed_ann else 0.0
    precision = base.eval["precision"][0, :, :, 0, -1]             # [R, K] at IoU 0.5, all areas, 100 detections
    curves = {"all": np.nanmean(np.where(precision > -1, precision, np.nan), axis=1)}
    for k, cat in enumerate(categories):
        curves[cat["name"]] = precision[:, base.params.catIds.index(cat["id"])] if cat["id"] in base.params.catIds \
            else np.full(precision.shape[0], np.nan)
    return ErrorAnalysis(ap50, {k: dap[k] for k in ERROR_KINDS}, {k: int(counts[k]) for k in ("tp",) + ERROR_KINDS},
                         per_image, curves, np.asarray(base.params.recThrs), confusion,
                         [c["name"] for c in categories])


def _confusion_update(confusion: np.ndarray, boxes: np.ndarray, scores: np.ndarray, cats: np.ndarray,
                      gt_boxes: np.ndarray, gt_cats: np.ndarray, cat_index: dict[int, int], score_thr: float) -> None:
    background = confusion.shape[0] - 1
    keep = scores >= score_thr
    boxes, scores, cats = boxes[keep], scores[keep], cats[keep]
    ious = _iou_xywh(boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for d in np.argsort(-scores, kind="stable"):
        candidates = np.where(~taken, ious[d], -1.0) if len(gt_boxes) else np.zeros(0)
        if len(candidates) and candidates.max() >= FG_IOU:
            g = int(candidates.argmax())
            taken[g] = True
            confusion[cat_index[int(gt_cats[g])], cat_index[int(cats[d])]] += 1
        else:
            confusion[background, cat_index[int(cats[d])]] += 1
    for g in np.flatnonzero(~taken):
        confusion[cat_index[int(gt_cats[g])], background] += 1
