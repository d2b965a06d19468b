"""The deployable model as an ONNX graph of plain operators, checked against PyTorch with onnxruntime.

The graph (``OnnxDetector``): ``images`` float32 ``[batch, 3, H, W]`` RGB in [0, 1], every image of a
batch exactly H x W (no padding mask) -> ``boxes`` ``[batch, K, 4]`` xyxy in pixels of the input, ``scores``
``[batch, K]`` (sigmoid), ``labels`` ``[batch, K]`` int64 class indices: the same top-k decoding as
``CoDETR.postprocess``. Without NMS (Co-Deformable-DETR) K = min(num_detections, num_queries x
num_classes), the final detections; with soft-NMS (Co-DINO) K = min(num_queries, num_queries x
num_classes), the candidates that :func:`platform.deploy.postprocess.postprocess` (NumPy, written next to
the model) reduces to the model's detections, as the metadata ``postprocess`` says. Then what that top-k
ranks, every query's ``query_logits`` ``[batch, Q, C]`` and ``query_boxes`` ``[batch, Q, 4]`` (cxcywh in
[0, 1]); and the two-stage selection that made the queries: ``proposal_scores`` ``[batch, N]`` (every
encoder position's score, -inf where invalid) and ``proposal_index`` ``[batch, Q]`` (the positions
taken, in rank order). The deformable attention is ``grid_sample`` (ONNX opset >= 16), no custom kernel.

The check (:func:`check_onnx`) compares nothing rank by rank: two scores closer than float32 rounding
may come out in either order, and onnxruntime's kernels round otherwise than PyTorch's (by how much
depends on the CPU). An untrained or barely trained model has many such near-ties (its scores all sit
near the prior), in the final top-k and in the two-stage selection, where one swapped position changes
a whole query (its content is learned per rank). So it compares the two-stage scores directly, accepts
onnxruntime's selection when it is a top-k of PyTorch's scores up to the tolerance, runs PyTorch again on
that selection to compare every query's logits and box, and pairs the detections by label, score and box
(:mod:`codetr.evaluation.agreement`).

What it supports: batch, height and width are all dynamic: the level shapes of the multi-scale
deformable attention, the encoder's reference points and proposals, the padding mask and the output
scale are computed in the graph from the input's shape. One limit: the two-stage selection keeps
``num_queries`` encoder positions, a constant of the graph, so the input needs at least that many
positions over the levels (:func:`min_input_side`; 64 px for the tiny configs). Exported with PyTorch's
TorchScript-based exporter (``dynamo=False``), which needs nothing beyond ``onnx``; the export writes the
class names, the input format and normalisation, the size limits and the post-processing into the
model's metadata.
"""
from __future__ import annotations

import contextlib
import json
import shutil
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
from platform.deploy import postprocess as postprocess_module

DEFAULT_OPSET = 17
MIN_SIDE = 64
BOX_TOLERANCE_PX = 0.05       # parity limits of the check (float32 accumulation-order differences only)
SCORE_TOLERANCE = 1e-4        # also: detections whose scores differ by less are interchangeable
LOGIT_TOLERANCE = 4e-4        # the logits before the sigmoid (its slope is at most 1/4)
SOFT_NMS_MIN_SCORE = 1e-3     # codetr.models.soft_nms.soft_nms's default
OUTPUT_NAMES = ["boxes", "scores", "labels", "query_logits", "query_boxes", "proposal_scores", "proposal_index"]
DYNAMIC_AXES = {"images": {0: "batch", 2: "height", 3: "width"}, "boxes": {0: "batch"}, "scores": {0: "batch"},
                "labels": {0: "batch"}, "query_logits": {0: "batch"}, "query_boxes": {0: "batch"},
                "proposal_scores": {0: "batch", 1: "positions"}, "proposal_index": {0: "batch"}}


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
    """A deployable ``CoDETR`` (``for_inference()``) on batches of one size (any size), decoded in tensors;
    with ``forced_selection`` [B, k] its two-stage selection takes those encoder positions (checks only)."""

    def __init__(self, model: nn.Module, forced_selection: Tensor | None = None):
        super().__init__()
        if len(getattr(model, "aux_heads", [])):
            raise ValueError("export the deployable model (model.for_inference()), not the training model")
        self.model = model.eval()
        self.forced_selection = forced_selection

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        height, width = images.shape[-2:]       # 0-dim tensors while exporting: the graph keeps them symbolic
        batch = (images - m.pixel_mean) / m.pixel_std
        mask = torch.zeros_like(images[:, 0], dtype=torch.bool)              # [B, H, W]: no padding
        feats, masks = m.neck(m.backbone(batch), mask)
        with TwoStageSelection(self.forced_selection).installed() as selection:
            out = m.query_head(feats, masks)
        logits, boxes_cxcywh_norm = out.logits[-1], out.boxes_cxcywh_norm[-1]  # [B, Q, C], [B, Q, 4]
        num_classes = logits.shape[-1]
        k = min(candidates_per_image(m.cfg), logits.shape[1] * num_classes)
        scores, index = logits.sigmoid().flatten(1).topk(k, dim=1)            # [B, k]
        query, labels = index // num_classes, index % num_classes
        boxes_xyxy = box_cxcywh_to_xyxy(boxes_cxcywh_norm.gather(1, query[..., None].expand(-1, -1, 4)))
        size = torch.stack([torch.as_tensor(v) for v in (width, height, width, height)]).to(boxes_xyxy)
        boxes_xyxy = torch.minimum((boxes_xyxy * size).clamp(min=0), size)    # clipped to the image
        return boxes_xyxy, scores, labels, logits, boxes_cxcywh_norm, selection.scores, selection.index


def candidates_per_image(cfg) -> int:
    """K of the graph's top-k: the detections (no NMS), or the soft-NMS candidates (``CoDETR.postprocess``)."""
    return cfg.num_queries if cfg.eval_nms() == "soft" else cfg.num_detections


def level_strides(cfg) -> list[int]:
    """The strides of the encoder's levels: 8..64 (4 levels) or 4..64 (5 levels)."""
    return [64 // 2 ** (cfg.num_levels - 1 - i) for i in range(cfg.num_levels)]


def encoder_positions(cfg, height: int, width: int) -> int:
    """How many encoder positions an input of ``height`` x ``width`` gives (every level: ceil(side / stride))."""
    return sum(-(-height // s) * -(-width // s) for s in level_strides(cfg))


def min_input_side(cfg) -> int:
    """The smallest square side the graph runs at: >= MIN_SIDE, and at least ``num_queries`` encoder
    positions (the two-stage top-k's k is a constant of the graph)."""
    side = MIN_SIDE
    while encoder_positions(cfg, side, side) < cfg.num_queries:
        side += 8
    return side


def postprocess_spec(cfg) -> dict:
    """What the ONNX outputs still need (the metadata ``postprocess``)."""
    if cfg.eval_nms() == "soft":
        return {"type": "soft_nms", "method": "linear", "class_wise": True, "iou_threshold": cfg.nms_iou,
                "min_score": SOFT_NMS_MIN_SCORE, "max_detections": cfg.num_detections,
                "function": "postprocess.postprocess (NumPy), written next to the model"}
    return {"type": "none"}


def masked_topk(scores: Tensor, invalid: Tensor, k: int) -> Tensor:
    """[bs, N] scores, [bs, N] bool -> [bs, k] indices of the top-k valid scores, without a data-dependent branch
    (what :class:`TwoStageSelection` picks)."""
    return scores.masked_fill(invalid, float("-inf")).topk(k, dim=1).indices


def export_onnx(predictor, path: str | Path, height: int, width: int, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``predictor.model`` (a :class:`codetr.inference.Predictor`); ``height`` x ``width`` is the
    example traced (the graph takes any size of at least :func:`min_input_side`)."""
    cfg = predictor.model.cfg
    pad = cfg.input_padding
    if pad.size is not None or pad.size_divisor > 1:
        raise ValueError(f"model.input_padding (size {pad.size}, size_divisor {pad.size_divisor}) pads every "
                         f"batch in the model; the graph takes unpadded images: export a model with no "
                         f"input_padding.size and size_divisor 1")
    low = min_input_side(cfg)
    if height < low or width < low:
        raise ValueError(f"--height / --width must be at least {low} pixels (at least {MIN_SIDE}, and "
                         f"{cfg.num_queries} encoder positions for the two-stage top-k), got {height}x{width}")
    if opset < 16:
        raise ValueError(f"grid_sample needs ONNX opset >= 16, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = OnnxDetector(predictor.model.cpu()).eval()
    example = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        # the tracer's notes: the top-k sizes (num_queries, num_detections) are constants by design
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*TorchScript-based ONNX export")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=OUTPUT_NAMES, dynamic_axes=DYNAMIC_AXES)
    graph = onnx.load(str(path))
    for key, value in metadata(predictor).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))
    if postprocess_spec(cfg)["type"] != "none":
        shutil.copyfile(Path(postprocess_module.__file__), path.with_name("postprocess.py"))
    return path


def metadata(predictor) -> dict[str, str]:
    """The model's metadata: class names, what goes in (format, normalisation, sizes), what comes out."""
    cfg, aug = predictor.model.cfg, predictor.cfg.data.augment
    return {
        "label_names": json.dumps(predictor.category_names),
        "query_head": cfg.query_head,
        "input_format": "float32 [batch, 3, H, W] RGB in [0, 1]; every image of a batch H x W (no padding)",
        "input_size": f"dynamic: batch, height and width; at least {min_input_side(cfg)} px a side",
        "normalisation": json.dumps({"in_graph": True, "mean": list(cfg.pixel_mean), "std": list(cfg.pixel_std),
                                     "note": "(x - mean) / std on [0, 1] RGB, inside the graph"}),
        "resize": json.dumps({"shorter_side": aug.eval_scale, "max_size": aug.eval_max_size,
                              "note": "the evaluation resize the model was trained for; boxes are in pixels of "
                                      "the input given to the graph"}),
        "outputs": "boxes [batch, K, 4] xyxy pixels, scores [batch, K], labels [batch, K] int64; before the top-k: "
                   "query_logits [batch, Q, C], query_boxes [batch, Q, 4] cxcywh in [0, 1]; the two-stage "
                   "selection: proposal_scores [batch, N] (every encoder position, -inf where invalid), "
                   "proposal_index [batch, Q] int64",
        "postprocess": json.dumps(postprocess_spec(cfg)),
    }


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
       selected the same positions in the same order, else against the run of 3); for a soft-NMS head
       (Co-DINO) after :func:`platform.deploy.postprocess.postprocess` on both sides' candidates."""
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
    spec = postprocess_spec(model.cfg)
    if spec["type"] != "none":   # soft-NMS (Co-DINO): the graph's candidates through the shipped post-processing
        ort_detections = postprocess_module.postprocess(outputs["boxes"], outputs["scores"], outputs["labels"], spec)
        if public is None:
            public = postprocess_module.postprocess(*(t.numpy() for t in same[:3]), spec)
    else:
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

