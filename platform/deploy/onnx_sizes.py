"""The exported graph at several input sizes and batches against PyTorch: the parity table of the export.

Each row runs onnxruntime (CPU) on ``[batch, 3, H, W]`` and the PyTorch deployable model on the same
images, both to the model's detections: for a head without NMS :func:`platform.deploy.onnx.check_onnx`
compares the graph's outputs; for a soft-NMS head (Co-DINO) the graph's candidates go through the
shipped :func:`platform.deploy.postprocess.postprocess` first, and the detections are compared image by
image (same count, labels, scores and boxes).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxslim
import torch
from torch import Tensor

from platform.deploy.onnx import BOX_TOLERANCE_PX, SCORE_TOLERANCE, check_onnx, input_batch
from platform.deploy.postprocess import postprocess


@dataclass
class SizeParity:
    height: int
    width: int
    batch: int
    boxes_max_abs_diff: float     # pixels
    scores_max_abs_diff: float
    labels_agree: float           # fraction of detections with the same label
    ok: bool


def metadata_of(path: str | Path) -> dict[str, str]:
    return dict(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
                .custom_metadata_map)


def check_postprocessed(path: str | Path, predictor, images: Tensor) -> tuple[float, float, float, bool]:
    """onnxruntime + the metadata's post-processing against the PyTorch model on ``images`` [B, 3, H, W]:
    (max box diff px, max score diff, fraction of labels agreeing, counts equal)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = json.loads(session.get_modelmeta().custom_metadata_map["postprocess"])
    detections = postprocess(*session.run(None, {"images": images.numpy()}), spec)
    with torch.no_grad():
        reference = predictor.model.cpu().eval()([image for image in images])
    box_diff = score_diff = 0.0
    agree = total = 0
    counts_equal = True
    for det, ref in zip(detections, reference):
        if len(det["scores"]) != len(ref["scores"]):
            counts_equal = False
            continue
        if len(det["scores"]):
            box_diff = max(box_diff, float(np.abs(det["boxes"] - ref["boxes"].numpy()).max()))
            score_diff = max(score_diff, float(np.abs(det["scores"] - ref["scores"].numpy()).max()))
        agree += int((det["labels"] == ref["labels"].numpy()).sum())
        total += len(det["labels"])
    return box_diff, score_diff, agree / max(total, 1), counts_equal


def parity_table(path: str | Path, predictor, image_uint8: Tensor, sizes: list[tuple[int, int]],
                 batches: tuple[int, ...] = (1, 2)) -> list[SizeParity]:
    """One row per (size, batch): ``image_uint8`` [3, h, w] resized to each size (the batch's second image
    its mirror, see :func:`platform.deploy.onnx.input_batch`)."""
    soft_nms = json.loads(metadata_of(path).get("postprocess", '{"type": "none"}'))["type"] != "none"
    rows = []
    for height, width in sizes:
        for batch in batches:
            images = input_batch(image_uint8, height, width, batch)
            if soft_nms:
                boxes, scores, labels, counts_equal = check_postprocessed(path, predictor, images)
                ok = counts_equal and boxes <= BOX_TOLERANCE_PX and scores <= SCORE_TOLERANCE and labels == 1.0
            else:
                report = check_onnx(path, predictor, images)
                boxes, scores, labels, ok = (report.boxes_max_abs_diff, report.scores_max_abs_diff,
                                             report.labels_agree, report.ok)
            rows.append(SizeParity(height, width, batch, boxes, scores, labels, ok))
    return rows


def default_check_sizes(height: int, width: int, low: int) -> list[tuple[int, int]]:
    """The export size, a square, a portrait and a landscape size, and one that is no multiple of 32
    (sides >= ``low``)."""
    base = max(low, min(height, width))
    long = base * 4 // 3
    sizes = [(height, width), (base, base), (long, base), (base, long), (base + 13, long + 7)]
    return list(dict.fromkeys(sizes))


def simplify(path: str | Path) -> tuple[int, int]:
    """Simplify the ONNX file in place with onnxslim (constant folding, dead and duplicate node removal;
    the metadata is kept): (nodes before, nodes after)."""
    model = onnx.load(str(path))
    slim = onnxslim.slim(model)
    onnx.save(slim, str(path))
    return len(model.graph.node), len(slim.graph.node)


def describe_io(path: str | Path) -> list[str]:
    """``name dtype [dims]`` of each input and output, as onnxruntime sees them (names for dynamic dims)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    lines = [f"opset {opset} (ai.onnx)"]
    for kind, items in (("input", session.get_inputs()), ("output", session.get_outputs())):
        lines += [f"{kind} {i.name}: {i.type} {list(i.shape)}" for i in items]
    return lines
