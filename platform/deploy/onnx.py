"""The deployable model as an ONNX graph of plain operators, checked against PyTorch with onnxruntime.

The graph (``OnnxDetector``): ``images`` float32 ``[batch, 3, H, W]`` RGB in [0, 1], every image exactly
H x W (no padding mask) -> ``boxes`` ``[batch, K, 4]`` xyxy in pixels of the input, ``scores``
``[batch, K]`` (sigmoid), ``labels`` ``[batch, K]`` int64 class indices, K = min(num_detections,
num_queries x num_classes): the same top-k decoding as ``CoDETR.postprocess``; and what that top-k ranks,
every query's ``query_logits`` ``[batch, Q, C]`` and ``query_boxes`` ``[batch, Q, 4]`` (cxcywh in [0, 1]);
and the two-stage selection that made the queries: ``proposal_scores`` ``[batch, N]`` (every encoder
position's score, -inf where invalid) and ``proposal_index`` ``[batch, Q]`` (the positions taken, in rank
order). The deformable attention is ``grid_sample`` (ONNX opset >= 16), no custom kernel.

The check (:func:`check_onnx`) compares nothing rank by rank: two scores closer than float32 rounding
may come out in either order, and onnxruntime's kernels round otherwise than PyTorch's (by how much
depends on the CPU). An untrained or barely trained model has many such near-ties (its scores all sit
near the prior), in the final top-k and in the two-stage selection, where one swapped position changes
a whole query (its content is learned per rank). So it compares the two-stage scores directly, accepts
onnxruntime's selection when it is a top-k of PyTorch's scores up to the tolerance, runs PyTorch again on
that selection to compare every query's logits and box, and pairs the detections by label, score and box
(:mod:`codetr.evaluation.agreement`).

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
from codetr.evaluation.agreement import (Agreement, SelectionAgreement, batch_agreement, max_abs_diff,
                                         selection_agreement)
from codetr.models.query_heads import deformable_detr, dino

DEFAULT_OPSET = 17
MIN_SIDE = 64
BOX_TOLERANCE_PX = 0.05       # parity limits of the check (float32 accumulation-order differences only)
SCORE_TOLERANCE = 1e-4        # also: detections whose scores differ by less are interchangeable
LOGIT_TOLERANCE = 4e-4        # the logits before the sigmoid (its slope is at most 1/4)
OUTPUT_NAMES = ["boxes", "scores", "labels", "query_logits", "query_boxes", "proposal_scores", "proposal_index"]


class TwoStageSelection:
    """Stands in for the query heads' two-stage selection (``select_valid_topk``) while the deployable
    graph runs: the masked top-k, which has no data-dependent branch (the model's own takes the plain
    top-k unless it picks an invalid position: a trace would keep only the branch of its example input;
    both pick the same positions). It keeps what it ranked, every encoder position's score (-inf where
    invalid), and what it picked; given ``forced`` [B, k] indices it picks those instead (the check runs
    PyTorch on onnxruntime's selection)."""

    def __init__(self, forced: Tensor | None = None):
        self.forced = forced
        self.scores: Tensor | None = None
        self.index: Tensor | None = None

    def __call__(self, scores: Tensor, invalid: Tensor, k: int) -> Tensor:
        self.scores = scores.masked_fill(invalid, float("-inf"))
        self.index = self.scores.topk(k, dim=1).indices if self.forced is None else self.forced.to(scores.device)
        return self.index

    @contextlib.contextmanager
    def installed(self):
        """In both query heads' modules (Co-DINO's imports the function under its own name)."""
        modules = [m for m in (deformable_detr, dino) if hasattr(m, "select_valid_topk")]
        originals = [m.select_valid_topk for m in modules]
        for m in modules:
            m.select_valid_topk = self
        try:
            yield self
        finally:
            for m, original in zip(modules, originals):
                m.select_valid_topk = original


class OnnxDetector(nn.Module):
    """A deployable ``CoDETR`` (``for_inference()``) on fixed-size batches, decoded in tensors; with
    ``forced_selection`` [B, k] its two-stage selection takes those encoder positions (checks only)."""

    def __init__(self, model: nn.Module, forced_selection: Tensor | None = None):
        super().__init__()
        if len(getattr(model, "aux_heads", [])):
            raise ValueError("export the deployable model (model.for_inference()), not the training model")
        self.model = model.eval()
        self.forced_selection = forced_selection

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        height, width = images.shape[-2:]
        batch = (images - m.pixel_mean) / m.pixel_std
        mask = torch.zeros_like(images[:, 0], dtype=torch.bool)              # [B, H, W]: no padding
        feats, masks = m.neck(m.backbone(batch), mask)
        with TwoStageSelection(self.forced_selection).installed() as selection:
            out = m.query_head(feats, masks)
        logits, boxes_cxcywh_norm = out.logits[-1], out.boxes_cxcywh_norm[-1]  # [B, Q, C], [B, Q, 4]
        num_classes = logits.shape[-1]
        k = min(m.cfg.num_detections, logits.shape[1] * num_classes)
        scores, index = logits.sigmoid().flatten(1).topk(k, dim=1)            # [B, k]
        query, labels = index // num_classes, index % num_classes
        boxes_xyxy = box_cxcywh_to_xyxy(boxes_cxcywh_norm.gather(1, query[..., None].expand(-1, -1, 4)))
        size = torch.tensor([width, height, width, height], dtype=boxes_xyxy.dtype, device=boxes_xyxy.device)
        boxes_xyxy = torch.minimum((boxes_xyxy * size).clamp(min=0), size)    # clipped to the image
        return boxes_xyxy, scores, labels, logits, boxes_cxcywh_norm, selection.scores, selection.index


def masked_topk(scores: Tensor, invalid: Tensor, k: int) -> Tensor:
    """[bs, N] scores, [bs, N] bool -> [bs, k] indices of the top-k valid scores, without a data-dependent branch
    (what :class:`TwoStageSelection` picks)."""
    return scores.masked_fill(invalid, float("-inf")).topk(k, dim=1).indices


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
    with warnings.catch_warnings(), torch.no_grad():
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
                                  "cxcywh in [0, 1]; the two-stage selection: proposal_scores [batch, N] (every "
                                  "encoder position, -inf where invalid), proposal_index [batch, Q] int64"}.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))
    return path


@dataclass
class ParityReport:
    batch: int
    proposal_scores_max_abs_diff: float  # every encoder position's two-stage score (nothing ranked yet)
    selection: SelectionAgreement        # onnxruntime's two-stage top-k against PyTorch's scores
    logits_max_abs_diff: float           # every query's logits before the top-k, PyTorch on the same selection
    query_boxes_max_abs_diff: float      # every query's box, pixels, likewise
    detections: Agreement                # the top-k detections paired by label, score and box (boxes in pixels)

    @property
    def ok(self) -> bool:
        return (self.proposal_scores_max_abs_diff <= LOGIT_TOLERANCE and self.selection.consistent
                and self.logits_max_abs_diff <= LOGIT_TOLERANCE and self.query_boxes_max_abs_diff <= BOX_TOLERANCE_PX
                and self.detections.ok(SCORE_TOLERANCE, BOX_TOLERANCE_PX))

    def summary(self) -> str:
        return (f"two-stage scores max abs diff {self.proposal_scores_max_abs_diff:.2e}, selection "
                f"{self.selection.same_rank}/{self.selection.k * self.selection.rows} at the same rank"
                f"{'' if self.selection.consistent else ' (NOT a near-tie)'}; before the top-k max abs diff logits "
                f"{self.logits_max_abs_diff:.2e}, boxes {self.query_boxes_max_abs_diff:.2e} px; detections "
                f"{self.detections.summary()}")


def _finite_max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference where both are finite; inf where one is -inf and the other not."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} against {b.shape}")
    finite = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return float("inf")
    return float(np.abs(a - b)[finite].max()) if finite.any() else 0.0


def check_onnx(path: str | Path, predictor, images: Tensor) -> ParityReport:
    """Run the ONNX file with onnxruntime (CPU) and the PyTorch deployable model on the same ``images``
    [B, 3, H, W] and compare what no near-tie can move:

    1. every encoder position's two-stage score (before anything is ranked);
    2. onnxruntime's two-stage selection must be a top-k of PyTorch's scores up to ``LOGIT_TOLERANCE``
       (near-tied positions may swap: float32 rounds otherwise in the two runtimes);
    3. PyTorch run again on onnxruntime's selection: every query's logits and box;
    4. the top-k detections paired by label, score and box (against the model's public forward when both
       selected the same positions in the same order, else against the run of 3)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images.numpy()})))
    missing = [name for name in OUTPUT_NAMES if name not in outputs]
    if missing:
        raise RuntimeError(f"{path} has no output {missing}: export it again with this version")
    model = predictor.model.cpu().eval()
    ort_index = outputs["proposal_index"]
    with torch.no_grad():
        own = OnnxDetector(model)(images)
        same = OnnxDetector(model, forced_selection=torch.from_numpy(ort_index))(images)
        public = model([image for image in images]) if np.array_equal(own[6].numpy(), ort_index) else None
    height, width = images.shape[-2:]
    size = np.array([width, height, width, height], np.float64)
    if public is None:
        public = [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(*same[:3])]
    if outputs["boxes"].shape != (len(public), *public[0]["boxes"].shape):
        raise RuntimeError(f"onnxruntime gave boxes {outputs['boxes'].shape}, PyTorch "
                           f"{(len(public), *public[0]['boxes'].shape)}")
    ort_detections = [{"boxes": b, "scores": s, "labels": lab}
                      for b, s, lab in zip(outputs["boxes"], outputs["scores"], outputs["labels"])]
    return ParityReport(
        batch=int(images.shape[0]),
        proposal_scores_max_abs_diff=_finite_max_abs_diff(outputs["proposal_scores"], own[5].numpy()),
        selection=selection_agreement(own[5], own[6], ort_index, LOGIT_TOLERANCE),
        logits_max_abs_diff=max_abs_diff(outputs["query_logits"], same[3]),
        query_boxes_max_abs_diff=max_abs_diff(outputs["query_boxes"] * size, same[4].numpy() * size),
        detections=batch_agreement(public, ort_detections, SCORE_TOLERANCE))


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

