"""LVIS v1 box AP (the ``lvis`` package's ``LVISEval`` protocol), in NumPy.

LVIS is federated: each image lists the categories verified absent (``neg_category_ids``) and the
present ones whose instances were not all annotated (``not_exhaustive_category_ids``). A category is
scored on an image only when it is annotated there or listed as absent; there, an unmatched detection
of a not-exhaustive category is ignored rather than counted as a false positive. Per image the
``max_dets`` highest-scoring detections over all categories are kept (LVIS: 300). Then per category
and area range, COCO-style greedy matching at IoU 0.50:0.95 and 101-point interpolated precision
(no crowd boxes, no per-category detection cap). AP averages over the categories that have ground
truth; APr / APc / APf over those of frequency ``r`` / ``c`` / ``f``.

``tests/codetr/evaluation/test_lvis.py`` checks every number against the ``lvis`` package.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e10)}
FREQUENCIES = ("r", "c", "f")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR", "ARs", "ARm", "ARl")


def limit_detections_per_image(results: list[dict], max_dets: int) -> list[dict]:
    """The ``max_dets`` highest-scoring results of every image (stable: ties keep their order)."""
    per_image: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        per_image[r["image_id"]].append(r)
    out = []
    for entries in per_image.values():
        if len(entries) > max_dets:
            entries = sorted(entries, key=lambda r: r["score"], reverse=True)[:max_dets]
        out.extend(entries)
    return out


def box_iou_xywh(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """[D, 4] x [G, 4] xywh boxes -> [D, G] IoU (pycocotools' bbox IoU, no crowd)."""
    dt_x2, dt_y2 = dt[:, 0] + dt[:, 2], dt[:, 1] + dt[:, 3]
    gt_x2, gt_y2 = gt[:, 0] + gt[:, 2], gt[:, 1] + gt[:, 3]
    w = np.minimum(dt_x2[:, None], gt_x2[None]) - np.maximum(dt[:, 0:1], gt[None, :, 0])
    h = np.minimum(dt_y2[:, None], gt_y2[None]) - np.maximum(dt[:, 1:2], gt[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    union = (dt[:, 2] * dt[:, 3])[:, None] + (gt[:, 2] * gt[:, 3])[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match(ious: np.ndarray, gt_ignore: np.ndarray) -> np.ndarray:
    """Greedy matching at every IoU threshold.

    ``ious`` [D, G] with detections by decreasing score and ground truths non-ignored first;
    ``gt_ignore`` [G] bool. Returns ``matched`` [T, D]: the index of each detection's ground truth,
    -1 when unmatched. A detection takes the unmatched ground truth of highest IoU (>= the threshold;
    ties: the later one), preferring non-ignored ones, as COCOeval and LVISEval do.
    """
    num_dt, num_gt = ious.shape
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
    matched = np.full((len(thresholds), num_dt), -1, dtype=np.int64)
    if num_dt == 0 or num_gt == 0:
        return matched
    taken = np.zeros((len(thresholds), num_gt), dtype=bool)
    reversed_gt = np.arange(num_gt)[::-1]
    for d in range(num_dt):
        candidate = ~taken & (ious[d][None] >= thresholds[:, None])                 # [T, G]
        for group in (~gt_ignore, gt_ignore):
            allowed = candidate & group[None]
            score = np.where(allowed, ious[d][None], -1.0)[:, ::-1]                  # later gt first: ties go to it
            best = reversed_gt[score.argmax(1)]
            found = allowed.any(1) & (matched[:, d] < 0)
            matched[found, d] = best[found]
            taken[found, best[found]] = True
    return matched


def evaluate_lvis(gt: dict, results: list[dict], image_ids: Sequence[int], max_dets: int = 300
                  ) -> tuple[dict[str, float], dict[int, float]]:
    """LVIS bbox evaluation of COCO-style ``results`` on ``image_ids``.

    ``gt``: the LVIS annotation dict (``images`` with ``neg_category_ids`` and
    ``not_exhaustive_category_ids``, ``annotations`` with ``bbox`` xywh and ``area``, ``categories``
    with ``frequency``). ``results``: ``[{"image_id", "category_id", "bbox" [x, y, w, h], "score"}]``.
    Returns (``{"AP", "AP50", ..., "APr", "APc", "APf", "AR", "ARs", "ARm", "ARl"}`` in [0, 1], -1 when
    nothing to score; per category id: AP over IoU 0.50:0.95, all areas, -1 without ground truth).
    """
    image_ids = sorted({int(i) for i in image_ids})
    wanted = set(image_ids)
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    cat_ids = [c["id"] for c in categories]
    images = {img["id"]: img for img in gt["images"] if img["id"] in wanted}
    # the lvis package keeps ground truth and detections of area strictly inside (0, inf)
    gts: dict[tuple[int, int], list[dict]] = defaultdict(list)
    present: dict[int, set[int]] = defaultdict(set)
    for ann in gt["annotations"]:
        if ann["image_id"] in wanted and ann["area"] > 0:
            gts[ann["image_id"], ann["category_id"]].append(ann)
            present[ann["image_id"]].add(ann["category_id"])
    dts: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for r in limit_detections_per_image([r for r in results if r["image_id"] in wanted], max_dets):
        img_id, cat_id = r["image_id"], r["category_id"]
        area = r["bbox"][2] * r["bbox"][3]
        if area <= 0 or (cat_id not in present[img_id] and cat_id not in images[img_id]["neg_category_ids"]):
            continue
        dts[img_id, cat_id].append({"bbox": r["bbox"], "score": r["score"], "area": area})

    num_t, num_r, num_a = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES)
    precision = -np.ones((num_t, num_r, len(cat_ids), num_a))
    recall = -np.ones((num_t, len(cat_ids), num_a))
    for k, cat_id in enumerate(cat_ids):
        # per image: detections by score, their IoUs with the ground truth
        pairs = []
        for img_id in image_ids:
            g, d = gts.get((img_id, cat_id), []), dts.get((img_id, cat_id), [])
            if not g and not d:
                continue
            order = np.argsort([-x["score"] for x in d], kind="mergesort")
            d = [d[i] for i in order]
            g_boxes = np.array([x["bbox"] for x in g], dtype=np.float64).reshape(-1, 4)
            d_boxes = np.array([x["bbox"] for x in d], dtype=np.float64).reshape(-1, 4)
            not_exhaustive = cat_id in images[img_id]["not_exhaustive_category_ids"]
            pairs.append((g, d, box_iou_xywh(d_boxes, g_boxes), not_exhaustive))
        for a, (lo, hi) in enumerate(AREA_RANGES.values()):
            scores, matched_all, ignored_all, num_gt = [], [], [], 0
            for g, d, ious, not_exhaustive in pairs:
                g_ignore = np.array([x["area"] < lo or x["area"] > hi for x in g], dtype=bool)
                g_order = np.argsort(g_ignore, kind="mergesort")                      # non-ignored first
                g_ignore = g_ignore[g_order]
                matched = match(ious[:, g_order], g_ignore)                            # [T, D]
                d_out = np.array([x["area"] < lo or x["area"] > hi for x in d], dtype=bool)
                # ignored: matched to an ignored gt; or unmatched and out of the area range or not exhaustive
                matched_ignored = g_ignore[np.maximum(matched, 0)] if len(g) else np.zeros(matched.shape, dtype=bool)
                ignored = np.where(matched >= 0, matched_ignored, (d_out | not_exhaustive)[None])
                scores.append(np.array([x["score"] for x in d], dtype=np.float64))
                matched_all.append(matched >= 0)
                ignored_all.append(ignored.reshape(num_t, -1))
                num_gt += int((~g_ignore).sum())
            if num_gt == 0:
                continue
            score = np.concatenate(scores) if scores else np.zeros(0)
            order = np.argsort(-score, kind="mergesort")
            tp_flags = np.concatenate(matched_all, axis=1)[:, order]
            ig_flags = np.concatenate(ignored_all, axis=1)[:, order]
            tp = np.cumsum(tp_flags & ~ig_flags, axis=1).astype(np.float64)
            fp = np.cumsum(~tp_flags & ~ig_flags, axis=1).astype(np.float64)
            for t in range(num_t):
                rc = tp[t] / num_gt
                recall[t, k, a] = rc[-1] if len(rc) else 0.0
                pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
                pr = np.maximum.accumulate(pr[::-1])[::-1]       # precision envelope: max to the right
                index = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
                valid = index < len(pr)
                precision[t, valid, k, a] = pr[index[valid]]
                precision[t, ~valid, k, a] = 0.0

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    area_index = {name: i for i, name in enumerate(AREA_RANGES)}
    freq = np.array([c.get("frequency") for c in categories])
    t50, t75 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.5))), int(np.argmin(np.abs(IOU_THRESHOLDS - 0.75)))
    metrics = {
        "AP": mean(precision[..., 0]), "AP50": mean(precision[t50, ..., 0]), "AP75": mean(precision[t75, ..., 0]),
        "APs": mean(precision[..., area_index["small"]]), "APm": mean(precision[..., area_index["medium"]]),
        "APl": mean(precision[..., area_index["large"]]),
        **{f"AP{f}": mean(precision[:, :, freq == f, 0]) for f in FREQUENCIES},
        "AR": mean(recall[..., 0]), "ARs": mean(recall[..., area_index["small"]]),
        "ARm": mean(recall[..., area_index["medium"]]), "ARl": mean(recall[..., area_index["large"]]),
    }
    per_category = {cat_id: mean(precision[:, :, k, 0]) for k, cat_id in enumerate(cat_ids)}
    return metrics, per_category
