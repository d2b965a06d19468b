"""Evaluation loop: detections of every validation image into a COCO evaluator, across ranks."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from codetr.engine.checkpoint import unwrap_model
from codetr.engine.dist import get_rank
from codetr.engine.precision import autocast_context
from codetr.models.tta import tta_detections


@dataclass
class EvalSample:
    """One validation image with its detections and ground truth, for drawing (all on the CPU).

    ``image`` is [3, H, W] in [0, 1] as fed to the model; boxes are xyxy pixels of that image.
    """
    image: torch.Tensor
    prediction: dict[str, torch.Tensor]   # boxes [N, 4], scores [N], labels [N]
    target: dict[str, Any]                # boxes [M, 4], labels [M], image_id, ...


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, evaluator: Any, device: torch.device, *, amp: bool = False,
             num_samples: int = 0, tta: Any = None) -> tuple[dict[str, float], list[EvalSample]]:
    """Run ``model`` in eval mode over ``loader`` and return ``(metrics, samples)``.

    Every rank feeds its shard of the validation set to ``evaluator.update(predictions, targets)``;
    ``evaluator.synchronize()`` gathers them over torch.distributed and ``evaluator.summarize()``
    returns ``{"coco/AP": ..., ...}`` on rank 0 (``{}`` on other ranks). ``samples`` are the first
    ``num_samples`` images of rank 0. The model is put back in train mode afterwards. An evaluator
    with ``wants_outputs`` (:class:`codetr.evaluation.suite.EvaluationSuite` with auxiliary branches or
    diagnostics) gets the model's ``predict_all`` outputs through ``update_outputs`` instead. What the
    evaluator prints (COCOeval's table) is kept out of the console; it stays on
    ``evaluator.summary_text`` when the evaluator keeps it. ``tta`` (the run's ``eval`` section: ``tta``,
    ``tta_scales``, ``tta_nms_iou``) replaces the query head's detections by their test-time augmented
    ones (:mod:`codetr.models.tta`); the auxiliary branches and the diagnostics keep the plain pass.
    """
    augment = tta is not None and tta.tta != "none"

    def query_detections(net, images, plain=None):
        return tta_detections(net, images, tta.tta, tta.tta_scales, tta.tta_nms_iou, plain=plain)

    net = unwrap_model(model)   # no DDP hooks or buffer broadcasts in eval
    was_training = net.training
    net.eval()
    samples: list[EvalSample] = []
    try:
        # an evaluation suite with branches or diagnostics (codetr.evaluation.suite) reads the model's internals
        with_outputs = bool(getattr(evaluator, "wants_outputs", False)) and hasattr(net, "predict_all")
        for images, targets in loader:
            images = [img.to(device, non_blocking=True) for img in images]
            targets_cpu = [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
            if with_outputs:
                with autocast_context(device, amp):
                    outputs = net.predict_all(images, evaluator.branches)
                    if augment:
                        outputs.detections["query"] = query_detections(net, images, outputs.detections["query"])
                predictions = evaluator.update_outputs(outputs, targets_cpu)
            else:
                with autocast_context(device, amp):
                    predictions = query_detections(net, images) if augment else net(images)
                predictions = [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in p.items()}
                               for p in predictions]
                evaluator.update(predictions, targets_cpu)
            if get_rank() == 0:
                for img, pred, tgt in zip(images, predictions, targets_cpu):
                    if len(samples) >= num_samples:
                        break
                    samples.append(EvalSample(img.float().cpu(), pred, tgt))
        evaluator.synchronize()
        with contextlib.redirect_stdout(io.StringIO()):
            metrics = evaluator.summarize() if get_rank() == 0 else {}
    finally:
        net.train(was_training)
    return {k: float(v) for k, v in (metrics or {}).items()}, samples
