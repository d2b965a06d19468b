"""Co-DETR: backbone -> neck -> query head (Deformable-DETR) + K auxiliary heads in training.

torchvision's detection conventions: ``model(images, targets)`` returns a dict of weighted scalar
losses in train mode (their sum is the objective), ``model(images)`` returns per-image
``{"boxes", "scores", "labels"}`` in eval mode.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codetr.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from codetr.config.schema import ModelConfig
from codetr.models.backbones import build_backbone
from codetr.models.aux.assign_stats import assignment_stats
from codetr.models.aux.positives import select_positive_queries
from codetr.models.criterion import QueryCriterion, layer_prefix
from codetr.models.freeze import freeze_parts
from codetr.models.precision import full_dtype
from codetr.models.query_heads.denoising import DenoisingQueries, build_denoising_queries
from codetr.models.query_heads.dino import DINOQueryHead
from codetr.models.soft_nms import soft_nms
from codetr.models.neck import ChannelMapper
from codetr.models.query_heads.deformable_detr import QueryHead


@dataclass
class EvalOutputs:
    """One eval-mode forward pass with what the evaluation's diagnostics need (:meth:`CoDETR.predict_all`)."""
    detections: dict[str, list[dict]]     # "query" and each evaluated auxiliary head key -> per-image detections
    encoder_maps: list[Tensor]            # the encoder memory as maps, num_levels x [B, C, H_l, W_l]
    logits: Tensor                        # the last decoder layer's class logits [B, Q, C]
    boxes_cxcywh_norm: Tensor             # its boxes [B, Q, 4], normalised to each image's (h, w)
    sizes: list[tuple[int, int]]          # each image's (h, w) in the batch (the padded batch starts top-left)
    padded_size: tuple[int, int]          # the padded batch's (H, W)


def aux_head_keys(names: list[str]) -> list[str]:
    """Unique loss prefixes for the auxiliary heads: a repeated name gets ``_2``, ``_3``... from its second use."""
    keys, seen = [], {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return keys


class CoDETR(nn.Module):
    """The detector. ``aux_heads`` are built by :func:`codetr.models.build.build_model`."""

    def __init__(self, cfg: ModelConfig, num_classes: int, aux_heads: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        aux_heads = aux_heads or []
        self.backbone = build_backbone(cfg.backbone)
        self.neck = ChannelMapper(self.backbone.out_channels, cfg.embed_dims, masked=cfg.neck_norm == "masked_group_norm")
        head_cls = DINOQueryHead if cfg.query_head == "dino" else QueryHead
        self.query_head = head_cls(cfg, num_classes, num_aux_heads=len(aux_heads))
        self.aux_heads = nn.ModuleList(aux_heads)
        self.aux_keys = aux_head_keys(list(cfg.aux_heads))[: len(aux_heads)]
        self.criterion = QueryCriterion(cfg, num_classes)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(3, 1, 1), persistent=False)
        self._frozen_parts = freeze_parts(self, cfg.freeze)
        # the assignment statistics of the last training forward (assign/<head>/...: detached device scalars)
        self.train_stats: dict[str, Tensor] = {}

    def train(self, mode: bool = True) -> "CoDETR":
        super().train(mode)
        for module in self._frozen_parts:   # model.freeze: fixed BatchNorm statistics and dropout
            module.eval()
        return self

    # ------------------------------------------------------------------ inputs / outputs

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """Normalise and pad to one batch (``model.input_padding``).

        Returns the batch [B, 3, H, W] (images top-left, padding bottom / right: 0 after normalisation,
        or ``pixel_value`` before it), the padding mask [B, H, W] (True = padding) and each image's
        (h, w). H x W is the largest image, or ``size`` x ``size``, rounded up to ``size_divisor``.
        With ``mask: false`` (official LSJ) nothing is masked and every image's (h, w) is H x W: the
        padding is image content and boxes are normalised by the padded size.
        """
        if not images:
            raise ValueError("empty list of images")
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"images[{i}] must be [3, H, W], got {tuple(img.shape)}")
        pad = self.cfg.input_padding
        sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
        max_h = max(h for h, _ in sizes)
        max_w = max(w for _, w in sizes)
        if pad.size is not None:
            if max(max_h, max_w) > pad.size:
                raise ValueError(f"an image of {max_h}x{max_w} does not fit model.input_padding.size {pad.size}")
            max_h = max_w = pad.size
        if pad.size_divisor > 1:
            max_h = -(-max_h // pad.size_divisor) * pad.size_divisor
            max_w = -(-max_w // pad.size_divisor) * pad.size_divisor
        if pad.pixel_value is None:
            batch = images[0].new_zeros((len(images), 3, max_h, max_w))
        else:   # the official pipelines pad the 0-255 image before normalising it
            fill = (pad.pixel_value / 255.0 - self.pixel_mean) / self.pixel_std   # [3, 1, 1]
            batch = fill.to(images[0].dtype).expand(len(images), 3, max_h, max_w).clone()
        mask = torch.ones((len(images), max_h, max_w), dtype=torch.bool, device=images[0].device)
        for i, (img, (h, w)) in enumerate(zip(images, sizes)):
            batch[i, :, :h, :w] = (img - self.pixel_mean) / self.pixel_std
            mask[i, :h, :w] = False
        if not pad.mask:
            mask.zero_()
            sizes = [(max_h, max_w)] * len(images)
        return batch, mask, sizes

    def box_dtype(self) -> torch.dtype:
        """dtype of targets and image scales: float32 (also under autocast), float64 in a float64 model."""
        return full_dtype(self.pixel_mean)

    def _scales(self, sizes: list[tuple[int, int]], device: torch.device) -> Tensor:
        return torch.tensor([[w, h, w, h] for h, w in sizes], dtype=self.box_dtype(), device=device)

    @torch.no_grad()
    def postprocess(self, logits: Tensor, boxes_cxcywh_norm: Tensor, sizes: list[tuple[int, int]]) -> list[dict]:
        """Top-k over queries x classes (sigmoid), boxes to xyxy pixels clipped to the image.

        NMS ``none`` (Co-Deformable-DETR): the top ``num_detections``. ``soft`` (official Co-DINO): the top
        ``num_queries`` candidates, class-wise linear soft-NMS, then the first ``num_detections``.
        logits [B, Q, C], boxes [B, Q, 4] -> per image {"boxes" [k, 4], "scores" [k], "labels" [k]}.
        """
        bs, num_queries, num_classes = logits.shape
        use_nms = self.cfg.eval_nms() == "soft"
        k = min(num_queries if use_nms else self.cfg.num_detections, num_queries * num_classes)
        scores, index = logits.sigmoid().flatten(1).topk(k, dim=1)
        query = index // num_classes
        labels = index % num_classes
        boxes_xyxy = box_cxcywh_to_xyxy(boxes_cxcywh_norm.gather(1, query[..., None].expand(-1, -1, 4)))
        results = []
        for i, (h, w) in enumerate(sizes):
            b = boxes_xyxy[i] * boxes_xyxy.new_tensor([w, h, w, h])
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            s, lab = scores[i], labels[i]
            if use_nms:
                keep, s = soft_nms(b, s, lab, self.cfg.nms_iou)
                keep, s = keep[:self.cfg.num_detections], s[:self.cfg.num_detections].to(scores.dtype)
                b, lab = b[keep], lab[keep]
            results.append({"boxes": b, "scores": s, "labels": lab})
        return results

    # ------------------------------------------------------------------ forward

    def forward(self, images: list[Tensor], targets: list[dict] | None = None, *, return_unweighted: bool = False):
        """Train mode: weighted losses (and the unweighted terms with ``return_unweighted``).
        Eval mode: detections in input-image pixels."""
        batch, mask, sizes = self.preprocess(images)
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        feats, masks = self.neck(self.backbone(batch), mask)
        if isinstance(self.query_head, DINOQueryHead) and self.training:
            out = self.query_head(feats, masks, self.denoising_queries(targets, sizes))
        else:
            out = self.query_head(feats, masks)
        if not self.training:
            return self.postprocess(out.logits[-1], out.boxes_cxcywh_norm[-1], sizes)
        unweighted = self.compute_losses(out, targets, sizes)
        weighted = self.weight_losses(unweighted)
        return (weighted, unweighted) if return_unweighted else weighted

    @torch.no_grad()
    def predict_all(self, images: list[Tensor], branches: Sequence[str] = ()) -> EvalOutputs:
        """Eval mode, one backbone + encoder pass: the query head's detections (as ``model(images)``), those
        of the auxiliary heads named in ``branches`` (their keys, :attr:`aux_keys`) from the shared encoder
        pyramid (:mod:`codetr.models.aux.predict`), and the internals the diagnostics read."""
        unknown = [name for name in branches if name not in self.aux_keys]
        if unknown:
            raise ValueError(f"unknown branch(es) {unknown}: this model's auxiliary heads are {self.aux_keys}")
        batch, mask, sizes = self.preprocess(images)
        feats, masks = self.neck(self.backbone(batch), mask)
        out = self.query_head(feats, masks, keep_pyramid=True)
        detections = {"query": self.postprocess(out.logits[-1], out.boxes_cxcywh_norm[-1], sizes)}
        for key in branches:
            head = self.aux_heads[self.aux_keys.index(key)]
            detections[key] = head.predict(out.pyramid, sizes)
        return EvalOutputs(detections, out.pyramid[:self.cfg.num_levels], out.logits[-1], out.boxes_cxcywh_norm[-1],
                           sizes, (int(batch.shape[-2]), int(batch.shape[-1])))

    def _normalised_targets(self, targets: list[dict], sizes: list[tuple[int, int]], device: torch.device
                            ) -> tuple[list[Tensor], list[Tensor]]:
        scales = self._scales(sizes, device)
        gt_labels = [t["labels"].to(device=device, dtype=torch.int64) for t in targets]
        gt_boxes = [box_xyxy_to_cxcywh(t["boxes"].to(device=device, dtype=scales.dtype).reshape(-1, 4)) / scales[i]
                    for i, t in enumerate(targets)]
        return gt_labels, gt_boxes

    def denoising_queries(self, targets: list[dict], sizes: list[tuple[int, int]]) -> DenoisingQueries:
        """DINO's contrastive denoising queries for a training batch."""
        dn = self.cfg.dn
        gt_labels, gt_boxes = self._normalised_targets(targets, sizes, self.pixel_mean.device)
        return build_denoising_queries(gt_labels, gt_boxes, self.query_head.label_embedding, self.num_classes,
                                       self.query_head.num_queries, dn.num_queries, dn.label_noise, dn.box_noise)

    def compute_losses(self, out, targets: list[dict], sizes: list[tuple[int, int]]) -> dict[str, Tensor]:
        """All unweighted loss terms: the query head's (and its denoising queries'), each auxiliary head's
        and its positive queries'."""
        device = out.logits.device
        scales = self._scales(sizes, device)
        gt_labels, gt_boxes = self._normalised_targets(targets, sizes, device)
        logits, boxes = out.logits, out.boxes_cxcywh_norm
        losses: dict[str, Tensor] = {}
        if out.dn is not None:   # the denoising queries come first
            pad = out.dn.pad_size
            losses.update(self.criterion.denoising_losses(logits[:, :, :pad], boxes[:, :, :pad], out.dn, gt_labels,
                                                          gt_boxes, scales))
            logits, boxes = logits[:, :, pad:], boxes[:, :, pad:]
        losses.update(self.criterion.hungarian_losses(logits, boxes, out.enc_logits, out.enc_boxes_cxcywh_norm,
                                                      gt_labels, gt_boxes, scales))
        head_targets = [{"boxes": t["boxes"].to(device=device, dtype=self.box_dtype()),
                         "labels": t["labels"].to(device=device, dtype=torch.int64)} for t in targets]
        num_queries = logits.shape[2]
        stats = {"assign/query/matched_per_image": torch.tensor(
            sum(min(num_queries, len(labels)) for labels in gt_labels) / max(len(gt_labels), 1), device=device)}
        for idx, (key, head) in enumerate(zip(self.aux_keys, self.aux_heads)):
            head_losses, candidates = head.forward_train(out.pyramid, head_targets, sizes)
            losses.update({f"{key}/{term}": value for term, value in head_losses.items()})
            stats.update({f"assign/{key}/{name}": value for name, value in
                          assignment_stats(candidates, [t["boxes"] for t in head_targets], self.num_classes).items()})
            queries = select_positive_queries(candidates, self.num_classes, sizes, self.cfg.max_pos_queries,
                                              padding=self.cfg.pos_query_padding)
            stats[f"assign/{key}/pos_queries_per_image"] = queries.positive.sum().float() / max(len(targets), 1)
            if queries.positive.shape[1] == 0 or not queries.in_loss.any():
                # nothing to decode (masked padding and no positive in the batch): keep the branch in the
                # graph with zero losses
                zero = sum(p.sum() for p in self.query_head.positive_branch_parameters(idx)) * 0.0
                if queries.feats is not None:
                    zero = zero + queries.feats.sum() * 0.0
                for layer in range(self.cfg.num_decoder_layers):
                    prefix = layer_prefix(f"{key}/pos.", layer, self.cfg.num_decoder_layers)
                    for term in ("loss_cls", "loss_bbox", "loss_giou"):
                        losses[prefix + term] = zero
                continue
            logits, boxes = self.query_head.forward_positive(out.ctx, queries.boxes_cxcywh_norm, queries.attended,
                                                             idx, queries.feats)
            losses.update(self.criterion.positive_losses(key, logits, boxes, queries, scales))
        self.train_stats = stats
        return losses

    def loss_weight(self, name: str) -> float:
        """The weight of one named loss term (the single place where weights are decided).

        ``query/...``: the query head's term weight. ``<head>/pos...``: query term weight x lambda1.
        ``<head>/<term>``: the head's own term weight x lambda2 x num_decoder_layers.
        """
        head, term = name.split("/", 1)
        query_weights = {"loss_cls": self.cfg.cls_loss_weight(), "loss_bbox": self.cfg.loss.bbox,
                         "loss_giou": self.cfg.loss.giou}
        last = term.rsplit(".", 1)[-1]
        if head == "query":
            return query_weights[last]
        if term.startswith("pos."):
            return query_weights[last] * self.cfg.lambda1
        aux = self.aux_heads[self.aux_keys.index(head)]
        return aux.loss_weights[term] * self.cfg.lambda2 * self.cfg.num_decoder_layers

    def weight_losses(self, unweighted: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: value * self.loss_weight(name) for name, value in unweighted.items()}

    # ------------------------------------------------------------------ deployment

    def for_inference(self) -> "CoDETR":
        """A copy without the auxiliary heads and the positive-query branch: a plain Deformable-DETR
        with exactly the parameters of a model built with ``aux_heads: []``."""
        model = copy.deepcopy(self)
        model.aux_heads = nn.ModuleList()
        model.aux_keys = []
        model.query_head.drop_aux_branch()
        model.cfg = copy.deepcopy(self.cfg)
        model.cfg.aux_heads = []
        return model.eval()
