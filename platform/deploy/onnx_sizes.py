"""The exported graph at several input sizes and batches against PyTorch: the parity table of the export.

Each row runs onnxruntime (CPU) on ``[batch, 3, H, W]`` and the PyTorch deployable model on the same
images through :func:`platform.deploy.onnx.check_onnx` (nothing compared rank by rank; a soft-NMS head's
candidates through the shipped :func:`platform.deploy.postprocess.postprocess` on both sides) and keeps
the detections' largest box and score differences over the pairs and the fraction paired.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
import onnxslim
from torch import Tensor

from platform.deploy.onnx import check_onnx, input_batch


@dataclass
class SizeParity:
    height: int
    width: int
    batch: int
    boxes_max_abs_diff: float     # pixels
    scores_max_abs_diff: float
    labels_agree: float           # fraction of detections paired by label, score and box
    ok: bool


def metadata_of(path: str | Path) -> dict[str, str]:
    return dict(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
                .custom_metadata_map)


def parity_table(path: str | Path, predictor, image_uint8: Tensor, sizes: list[tuple[int, int]],
                 batches: tuple[int, ...] = (1, 2)) -> list[SizeParity]:
    """One row per (size, batch): ``image_uint8`` [3, h, w] resized to each size (the batch's second image
    its mirror, see :func:`platform.deploy.onnx.input_batch`)."""
    rows = []
    for height, width in sizes:
        for batch in batches:
            report = check_onnx(path, predictor, input_batch(image_uint8, height, width, batch))
            d = report.detections
            rows.append(SizeParity(height, width, batch, d.max_box_diff, d.max_score_diff, d.matched_fraction,
                                   report.ok))
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
