"""What an exported Co-DINO needs after onnxruntime: class-wise linear soft-NMS, in NumPy only.

The export copies this file next to the model (``postprocess.py``): it imports nothing but NumPy and
the standard library, so a deployment can use it as it is::

    import json, onnxruntime as ort
    from postprocess import postprocess
    session = ort.InferenceSession("model.onnx")
    spec = json.loads(session.get_modelmeta().custom_metadata_map["postprocess"])
    boxes, scores, labels = session.run(["boxes", "scores", "labels"], {"images": images})      # [B, K, 4], [B, K], [B, K]
    detections = postprocess(boxes, scores, labels, spec)               # per image: boxes, scores, labels

Soft-NMS (Bodla et al. 2017), as the official Co-DINO's test time and ``codetr.models.soft_nms``: the
highest-scoring remaining candidate is kept with its current score; every other remaining candidate of
the same class overlapping it by IoU > ``iou_threshold`` has its score multiplied by (1 - IoU); those
falling below ``min_score`` are dropped; the first ``max_detections`` kept are the detections. Same
float32 arithmetic in the same order as the PyTorch function, so the detections are the same.
With ``spec["type"] == "none"`` (Co-Deformable-DETR) the outputs pass through unchanged.
"""
from __future__ import annotations

import numpy as np


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[4], [N, 4] xyxy float32 -> [N] IoU."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, np.float32(1e-12))


def soft_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float,
             min_score: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """[N, 4], [N], [N] -> (indices of the kept candidates in the order kept [K], their decayed scores [K])."""
    boxes = np.asarray(boxes, np.float32)
    scores = np.array(scores, np.float32)
    labels = np.asarray(labels)
    alive = np.ones(len(scores), bool)
    keep, kept_scores = [], []
    while alive.any():
        i = int(np.argmax(np.where(alive, scores, -np.inf)))
        keep.append(i)
        kept_scores.append(scores[i])
        alive[i] = False
        others = np.nonzero(alive & (labels == labels[i]))[0]
        if len(others):
            iou = iou_one_to_many(boxes[i], boxes[others])
            decay = np.where(iou > np.float32(iou_threshold), np.float32(1) - iou, np.float32(1))
            scores[others] = scores[others] * decay
            alive[others] = scores[others] >= np.float32(min_score)
    return np.asarray(keep, np.int64), np.asarray(kept_scores, np.float32)


def postprocess(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, spec: dict) -> list[dict]:
    """The graph's outputs ``[B, K, 4]``, ``[B, K]``, ``[B, K]`` and the metadata ``postprocess`` (a dict)
    -> per image ``{"boxes": [k, 4], "scores": [k], "labels": [k]}``, the model's detections."""
    kind = spec.get("type", "none")
    if kind not in ("none", "soft_nms"):
        raise ValueError(f"postprocess type {kind!r}: this function knows 'none' and 'soft_nms'")
    results = []
    for b, s, lab in zip(boxes, scores, labels):
        if kind == "soft_nms":
            keep, s = soft_nms(b, s, lab, spec["iou_threshold"], spec.get("min_score", 1e-3))
            keep, s = keep[:spec["max_detections"]], s[:spec["max_detections"]]
            b, lab = b[keep], lab[keep]
        results.append({"boxes": np.asarray(b, np.float32), "scores": np.asarray(s, np.float32),
                        "labels": np.asarray(lab, np.int64)})
    return results
