"""The deployable model as an ONNX graph of plain operators, checked against PyTorch with onnxruntime.

The graph (``OnnxDetector``): ``images`` float32 ``[batch, 3, H, W]`` RGB in [0, 1], every image exactly
H x W (no padding mask) -> ``boxes`` ``[batch, K, 4]`` xyxy in pixels of the input, ``scores``
``[batch, K]`` (sigmoid), ``labels`` ``[batch, K]`` int64 class indices, K = min(num_detections,
num_queries x num_classes): the same top-k decoding as ``CoDETR.postprocess``; and what that top-k ranks,
every query's ``query_logits`` ``[batch, Q, C]`` and ``query_boxes`` ``[batch, Q, 4]`` (cxcywh in [0, 1]).
The deformable attention is ``grid_sample`` (ONNX opset >= 16), no custom kernel.

The check (:func:`check_onnx`) compares the tensors before the top-k directly, and the detections paired
by label, score and box (:mod:`codetr.evaluation.agreement`), not rank by rank: two scores closer than
float32 rounding may come out in either order (an untrained model has many such near-ties, all its
scores sit near the class prior), and onnxruntime's kernels round otherwise than PyTorch's.

What it supports: the batch is dynamic; the height and width are fixed at export (the multi-scale
deformable attention's level shapes and the encoder's reference points are constants of the graph):
export once per input size. Exported with PyTorch's TorchScript-based exporter (``dynamo=False``),
which needs nothing beyond ``onnx``; the export also writes the class names and the input size into
the model's metadata (``label_names``, ``input_size``).
"""
from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codetr.box_ops import box_cxcywh_to_xyxy
from codetr.evaluation.agreement import Agreement, batch_agreement, max_abs_diff
from codetr.models.query_heads import deformable_detr

DEFAULT_OPSET = 17
MIN_SIDE = 64
BOX_TOLERANCE_PX = 0.05       # parity limits of the check (float32 accumulation-order differences only)
SCORE_TOLERANCE = 1e-4        # also: detections whose scores differ by less are interchangeable
LOGIT_TOLERANCE = 4e-4        # the logits before the sigmoid (its slope is at most 1/4)
OUTPUT_NAMES = ["boxes", "scores", "labels", "query_logits", "query_boxes"]


class OnnxDetector(nn.Module):
    """A deployable ``CoDETR`` (``for_inference()``) on fixed-size batches, decoded in tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if len(getattr(model, "aux_heads", [])):
            raise ValueError("export the deployable model (model.for_inference()), not the training model")
        self.model = model.eval()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        height, width = images.shape[-2:]
        batch = (images - m.pixel_mean) / m.pixel_std
        mask = torch.zeros_like(images[:, 0], dtype=torch.bool)              # [B, H, W]: no padding
        feats, masks = m.neck(m.backbone(batch), mask)
        out = m.query_head(feats, masks)
        logits, boxes_cxcywh_norm = out.logits[-1], out.boxes_cxcywh_norm[-1]  # [B, Q, C], [B, Q, 4]
        num_classes = logits.shape[-1]
        k = min(m.cfg.num_detections, logits.shape[1] * num_classes)
        scores, index = logits.sigmoid().flatten(1).topk(k, dim=1)            # [B, k]
        query, labels = index // num_classes, index % num_classes
        boxes_xyxy = box_cxcywh_to_xyxy(boxes_cxcywh_norm.gather(1, query[..., None].expand(-1, -1, 4)))
        size = torch.tensor([width, height, width, height], dtype=boxes_xyxy.dtype, device=boxes_xyxy.device)
        boxes_xyxy = torch.minimum((boxes_xyxy * size).clamp(min=0), size)    # clipped to the image
        return boxes_xyxy, scores, labels, logits, boxes_cxcywh_norm


def masked_topk(scores: Tensor, invalid: Tensor, k: int) -> Tensor:
    """[bs, N] scores, [bs, N] bool -> [bs, k] indices of the top-k valid scores, without a data-dependent branch."""
    return scores.masked_fill(invalid, float("-inf")).topk(k, dim=1).indices


@contextlib.contextmanager
def traceable_two_stage_selection():
    """The model's two-stage selection (``codetr.models.query_heads.deformable_detr.select_valid_topk``) takes the plain
    top-k, or the masked one when the plain one picks an invalid position: a branch on the data, of which
    a trace would keep only the one its example input took. While exporting, the masked top-k stands in:
    it picks the same positions in both cases."""
    original = getattr(deformable_detr, "select_valid_topk", None)
    if original is None:   # no such branch in this model version
        yield
        return
    deformable_detr.select_valid_topk = masked_topk
    try:
        yield
    finally:
        deformable_detr.select_valid_topk = original


def export_onnx(predictor, path: str | Path, height: int, width: int, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``predictor.model`` (a :class:`codetr.inference.Predictor`) for ``height`` x ``width`` inputs."""
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ValueError(f"--height / --width must be at least {MIN_SIDE} pixels, got {height}x{width}")
    if opset < 16:
        raise ValueError(f"grid_sample needs ONNX opset >= 16, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = OnnxDetector(predictor.model.cpu()).eval()
    example = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    batch_axis = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad(), traceable_two_stage_selection():
        # the tracer's notes on Python ints and shapes are the fixed input size, by design
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*TorchScript-based ONNX export")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=OUTPUT_NAMES,
                          dynamic_axes={name: batch_axis for name in ["images", *OUTPUT_NAMES]})
    graph = onnx.load(str(path))
    for key, value in {"label_names": json.dumps(predictor.category_names), "input_size": f"{height}x{width}",
                       "input_format": "float32 [batch, 3, H, W] RGB in [0, 1]",
                       "outputs": "boxes [batch, K, 4] xyxy pixels, scores [batch, K], labels [batch, K] int64; "
                                  "before the top-k: query_logits [batch, Q, C], query_boxes [batch, Q, 4] "
                                  "cxcywh in [0, 1]"}.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))
    return path


@dataclass
class ParityReport:
    batch: int
    logits_max_abs_diff: float       # every query's logits, before the top-k (nothing ranked)
    query_boxes_max_abs_diff: float  # every query's box before the top-k, pixels
    detections: Agreement            # the top-k detections paired by label, score and box (boxes in pixels)

    @property
    def ok(self) -> bool:
        return (self.logits_max_abs_diff <= LOGIT_TOLERANCE and self.query_boxes_max_abs_diff <= BOX_TOLERANCE_PX
                and self.detections.ok(SCORE_TOLERANCE, BOX_TOLERANCE_PX))

    def summary(self) -> str:
        return (f"before the top-k max abs diff logits {self.logits_max_abs_diff:.2e}, boxes "
                f"{self.query_boxes_max_abs_diff:.2e} px; detections {self.detections.summary()}")


def check_onnx(path: str | Path, predictor, images: Tensor) -> ParityReport:
    """Run the ONNX file with onnxruntime (CPU) and the PyTorch deployable model on the same ``images``
    [B, 3, H, W]: every query's logits and box before the top-k (PyTorch: the exported module itself), and
    the detections of the model's public forward, paired by label, score and box (near-tied scores may rank
    otherwise in the two runtimes)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images.numpy()})))
    missing = [name for name in OUTPUT_NAMES if name not in outputs]
    if missing:
        raise RuntimeError(f"{path} has no output {missing}: export it again with this version")
    model = predictor.model.cpu().eval()
    with torch.no_grad():
        reference = model([image for image in images])
        _, _, _, ref_logits, ref_query_boxes = OnnxDetector(model)(images)
    if outputs["boxes"].shape != (len(reference), *reference[0]["boxes"].shape):
        raise RuntimeError(f"onnxruntime gave boxes {outputs['boxes'].shape}, PyTorch "
                           f"{(len(reference), *reference[0]['boxes'].shape)}")
    height, width = images.shape[-2:]
    size = np.array([width, height, width, height], np.float64)
    ort_detections = [{"boxes": b, "scores": s, "labels": lab}
                      for b, s, lab in zip(outputs["boxes"], outputs["scores"], outputs["labels"])]
    return ParityReport(batch=int(images.shape[0]),
                        logits_max_abs_diff=max_abs_diff(outputs["query_logits"], ref_logits),
                        query_boxes_max_abs_diff=max_abs_diff(outputs["query_boxes"] * size,
                                                              ref_query_boxes.numpy() * size),
                        detections=batch_agreement(reference, ort_detections, SCORE_TOLERANCE))


def check_other_size(path: str | Path, height: int, width: int) -> str:
    """What onnxruntime does with an input of another size than the export's: the error's first line,
    or ``"ran"`` (it should not: the graph's shapes are fixed)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    try:
        session.run(None, {"images": np.zeros((1, 3, height + 32, width + 32), np.float32)})
    except Exception as e:   # onnxruntime's own error types
        return str(e).strip().splitlines()[0][:200]
    return "ran"


def input_batch(image_uint8: Tensor, height: int, width: int, batch: int) -> Tensor:
    """``image_uint8`` [3, h, w] resized to ``height`` x ``width`` (float in [0, 1]); the batch's second
    image is its mirror, the third its vertical flip, and so on."""
    image = F.interpolate(image_uint8[None].float() / 255.0, size=(height, width), mode="bilinear",
                          align_corners=False, antialias=True)[0].clamp(0, 1)
    variants = [image, image.flip(-1), image.flip(-2), image.flip(-1, -2)]
    return torch.stack([variants[i % len(variants)] for i in range(batch)])


def test_pattern(height: int, width: int):
    """A deterministic uint8 [3, H, W] image: a gradient with a few filled rectangles."""
    y = torch.linspace(0, 1, height)[:, None].expand(height, width)
    x = torch.linspace(0, 1, width)[None].expand(height, width)
    image = torch.stack([x, y, 1 - x]) * 160
    for i, (cx, cy, w, h) in enumerate([(0.3, 0.3, 0.25, 0.2), (0.7, 0.6, 0.2, 0.35), (0.45, 0.75, 0.3, 0.15)]):
        y0, y1 = int((cy - h / 2) * height), int((cy + h / 2) * height)
        x0, x1 = int((cx - w / 2) * width), int((cx + w / 2) * width)
        image[:, y0:y1, x0:x1] = torch.tensor([[230.0], [40.0 + 90 * i], [60.0]])[:, :, None]
    return image.to(torch.uint8)

