"""Query-head losses: Hungarian one-to-one losses per decoder layer and on the two-stage proposals,
and the direct (unmatched) losses of the customized positive queries. All returned unweighted."""
from __future__ import annotations

import torch
from torch import Tensor

from codetr.box_ops import aligned_box_iou, box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from codetr.config.schema import ModelConfig
from codetr.models.aux.positives import PositiveQueries
from codetr.models.query_heads.denoising import DenoisingQueries, denoising_targets
from codetr.models.losses import mean_over_workers, quality_focal_loss_sum, sigmoid_focal_loss_sum
from codetr.models.matcher import hungarian_match
from codetr.models.precision import full_dtype, upcast


def _pair_losses(logits: Tensor, boxes_cxcywh_norm: Tensor, batch_idx: Tensor, query_idx: Tensor,
                 labels: Tensor, gt_boxes_cxcywh_norm: Tensor, scales_xyxy: Tensor, normalizer: Tensor,
                 alpha: float, gamma: float, cls_rows: Tensor | None = None,
                 quality_beta: float | None = None) -> dict[str, Tensor]:
    """Classification / L1 / GIoU losses given which (image, query) is supervised by which target.

    Args:
        logits: [B, Q, C]; boxes_cxcywh_norm: [B, Q, 4].
        batch_idx, query_idx: [M] the supervised predictions; labels [M]; gt_boxes_cxcywh_norm [M, 4].
        scales_xyxy: [B, 4] per image (w, h, w, h), to compute GIoU on pixel boxes.
        normalizer: scalar, the number of targets averaged over workers (>= 1).
        cls_rows: optional [B, Q] bool: only these predictions enter the classification loss
            (default: all, unsupervised ones are negatives).
        quality_beta: None: sigmoid focal loss (alpha, gamma) on one-hot targets; a number: Quality
            Focal Loss with that beta, the target of a supervised prediction being the IoU of its
            (detached) box with its target.
    """
    pred = upcast(boxes_cxcywh_norm[batch_idx, query_idx])
    target = gt_boxes_cxcywh_norm.to(pred.dtype)
    rows = cls_rows if cls_rows is not None else torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
    if quality_beta is None:
        target_cls = torch.zeros_like(logits, dtype=full_dtype(logits))
        target_cls[batch_idx, query_idx, labels] = 1.0
        loss_cls = sigmoid_focal_loss_sum(logits[rows], target_cls[rows], alpha, gamma) / normalizer
    else:
        num_classes = logits.shape[-1]
        label_map = torch.full(logits.shape[:2], num_classes, dtype=torch.long, device=logits.device)
        label_map[batch_idx, query_idx] = labels
        score_map = torch.zeros(logits.shape[:2], dtype=full_dtype(logits), device=logits.device)
        score_map[batch_idx, query_idx] = aligned_box_iou(box_cxcywh_to_xyxy(pred.detach()), box_cxcywh_to_xyxy(target))
        loss_cls = quality_focal_loss_sum(logits[rows], label_map[rows], score_map[rows], quality_beta) / normalizer
    loss_bbox = (pred - target).abs().sum() / normalizer
    scale = scales_xyxy[batch_idx]
    giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(pred) * scale, box_cxcywh_to_xyxy(target) * scale)
    loss_giou = (1 - giou).sum() / normalizer
    # keep every term connected to the graph, also when nothing is supervised
    zero = upcast(boxes_cxcywh_norm).sum() * 0.0
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox + zero, "loss_giou": loss_giou + zero}


def layer_prefix(base: str, layer: int, num_layers: int) -> str:
    """The naming rule of per-layer terms: ``base`` (``"query/"``, ``"atss/pos."``) for the last decoder
    layer, ``<base>d<i>.`` for the earlier ones."""
    return base if layer == num_layers - 1 else f"{base}d{layer}."


class QueryCriterion:
    """Computes the query head's unweighted losses with the one naming rule:
    ``query/<term>`` for the last decoder layer, ``query/d<i>.<term>`` for earlier ones,
    ``query/enc.<term>`` for the two-stage proposals, ``query/dn.[d<i>.]<term>`` for the denoising
    queries (DINO), and ``<head>/pos.<term>``, ``<head>/pos.d<i>.<term>`` for one auxiliary head's
    positive queries.

    Deformable-DETR head: focal classification, class-agnostic two-stage proposals (every encoder
    position). DINO head: Quality Focal Loss, the two-stage loss on the selected top-k with the
    real classes, and the denoising losses."""

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        self.num_classes = num_classes
        self.match = cfg.match
        self.alpha = cfg.loss.focal_alpha
        self.gamma = cfg.loss.focal_gamma
        self.dino = cfg.query_head == "dino"
        self.quality_beta = cfg.loss.quality_focal_beta if self.dino else None

    def _matched(self, logits: Tensor, boxes: Tensor, gt_labels: list[Tensor], gt_boxes: list[Tensor],
                 scales_xyxy: Tensor, normalizer: Tensor) -> dict[str, Tensor]:
        indices = hungarian_match(logits, boxes, gt_labels, gt_boxes, scales_xyxy, self.match.cls,
                                  self.match.bbox, self.match.giou, self.alpha, self.gamma)
        batch_idx = torch.cat([torch.full_like(p, i) for i, (p, _) in enumerate(indices)])
        query_idx = torch.cat([p for p, _ in indices])
        labels = torch.cat([gt_labels[i][g] for i, (_, g) in enumerate(indices)])
        targets = torch.cat([gt_boxes[i][g] for i, (_, g) in enumerate(indices)])
        return _pair_losses(logits, boxes, batch_idx, query_idx, labels, targets, scales_xyxy, normalizer,
                            self.alpha, self.gamma, quality_beta=self.quality_beta)

    def hungarian_losses(self, logits: Tensor, boxes_cxcywh_norm: Tensor, enc_logits: Tensor | None,
                         enc_boxes_cxcywh_norm: Tensor | None, gt_labels: list[Tensor],
                         gt_boxes_cxcywh_norm: list[Tensor], scales_xyxy: Tensor) -> dict[str, Tensor]:
        """logits [L, B, Q, C], boxes [L, B, Q, 4] (matching queries only); enc_* [B, N, C] / [B, N, 4]."""
        num_gts = sum(len(t) for t in gt_labels)
        normalizer = mean_over_workers(float(num_gts), logits.device).clamp(min=1.0)
        losses: dict[str, Tensor] = {}
        num_layers = logits.shape[0]
        for layer in range(num_layers):
            prefix = layer_prefix("query/", layer, num_layers)
            for term, value in self._matched(logits[layer], boxes_cxcywh_norm[layer], gt_labels,
                                             gt_boxes_cxcywh_norm, scales_xyxy, normalizer).items():
                losses[prefix + term] = value
        if enc_logits is not None:
            # Deformable-DETR: class-agnostic proposals (channel 0 is "object"); DINO: the real classes
            enc_labels = gt_labels if self.dino else [torch.zeros_like(t) for t in gt_labels]
            for term, value in self._matched(enc_logits, enc_boxes_cxcywh_norm, enc_labels, gt_boxes_cxcywh_norm,
                                             scales_xyxy, normalizer).items():
                losses["query/enc." + term] = value
        return losses

    def denoising_losses(self, logits: Tensor, boxes_cxcywh_norm: Tensor, dn: DenoisingQueries,
                         gt_labels: list[Tensor], gt_boxes_cxcywh_norm: list[Tensor],
                         scales_xyxy: Tensor) -> dict[str, Tensor]:
        """logits [L, B, pad, C], boxes [L, B, pad, 4] of the denoising queries: each positive copy is
        supervised by its own gt (no matching), every other slot is background; normalised by the
        number of positive copies averaged over workers (>= 1)."""
        batch_idx, slot_idx, labels, targets = denoising_targets(gt_labels, gt_boxes_cxcywh_norm, dn)
        normalizer = mean_over_workers(float(batch_idx.numel()), logits.device).clamp(min=1.0)
        losses: dict[str, Tensor] = {}
        num_layers = logits.shape[0]
        for layer in range(num_layers):
            prefix = layer_prefix("query/dn.", layer, num_layers)
            for term, value in _pair_losses(logits[layer], boxes_cxcywh_norm[layer], batch_idx, slot_idx, labels,
                                            targets, scales_xyxy, normalizer, self.alpha, self.gamma,
                                            quality_beta=self.quality_beta).items():
                losses[prefix + term] = value
        return losses

    def positive_losses(self, head_name: str, logits: Tensor, boxes_cxcywh_norm: Tensor, queries: PositiveQueries,
                        scales_xyxy: Tensor) -> dict[str, Tensor]:
        """Direct supervision of one auxiliary head's query slots (no matching).

        logits [L, B, P, C], boxes [L, B, P, 4]. Classification over the slots in the loss (positives
        with their class, negative padding as background), box losses over the positives; all
        normalised by the number of positives averaged over workers (>= 1).
        """
        positive = queries.positive
        batch_idx, query_idx = positive.nonzero(as_tuple=True)
        normalizer = mean_over_workers(positive.sum().float(), logits.device).clamp(min=1.0)
        sel_labels = queries.labels[batch_idx, query_idx]
        sel_targets = queries.targets_cxcywh_norm[batch_idx, query_idx]
        losses: dict[str, Tensor] = {}
        num_layers = logits.shape[0]
        for layer in range(num_layers):
            prefix = layer_prefix(f"{head_name}/pos.", layer, num_layers)
            for term, value in _pair_losses(logits[layer], boxes_cxcywh_norm[layer], batch_idx, query_idx,
                                            sel_labels, sel_targets, scales_xyxy, normalizer, self.alpha,
                                            self.gamma, cls_rows=queries.in_loss,
                                            quality_beta=self.quality_beta).items():
                losses[prefix + term] = value
        return losses
