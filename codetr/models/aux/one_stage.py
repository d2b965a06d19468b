"""What the one-stage auxiliary heads (ATSS, FCOS, RetinaNet) share at test time: their own detections.

A head's :meth:`forward` returns ``(class scores, box regressions[, centerness])`` per level; the head
says where its priors are (:meth:`OneStageHead.priors`: anchors or points) and how a regression
decodes against them (:meth:`OneStageHead.decode`). The filtering is :func:`dense_detections`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from codetr.models.aux.base import AuxHead
from codetr.models.aux.predict import ONE_STAGE_TEST, BranchTestConfig, dense_detections, per_image_maps


class OneStageHead(AuxHead):
    """An auxiliary head that predicts a class score (and a centerness, if it has one) per prior."""

    strides: tuple[int, ...]
    num_classes: int

    def priors(self, featmap_sizes: list[tuple[int, int]], like: Tensor) -> list[Tensor]:
        """Per level the priors of every location, [H_l * W_l * A, 2 or 4], dtype and device of ``like``."""
        raise NotImplementedError

    def decode(self, priors: Tensor, regressions: Tensor) -> Tensor:
        """Boxes [n, 4] xyxy from ``n`` priors and their regressions [n, 4]."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, feats: list[Tensor], image_sizes: list[tuple[int, int]],
                cfg: BranchTestConfig = ONE_STAGE_TEST) -> list[dict[str, Tensor]]:
        """This branch's own detections (:mod:`codetr.models.aux.predict`): sigmoid scores (x centerness
        where the head has one), class-wise NMS."""
        feats = list(feats)[:len(self.strides)]
        return self.detections(self(feats), [tuple(f.shape[-2:]) for f in feats], image_sizes, cfg)

    @torch.no_grad()
    def detections(self, outputs: tuple, featmap_sizes: list[tuple[int, int]], image_sizes: list[tuple[int, int]],
                   cfg: BranchTestConfig = ONE_STAGE_TEST) -> list[dict[str, Tensor]]:
        """Per-image detections from :meth:`forward`'s outputs on maps of ``featmap_sizes``."""
        cls_scores, regressions = outputs[0], outputs[1]
        centernesses = outputs[2] if len(outputs) > 2 else None
        priors = self.priors(featmap_sizes, regressions[0])
        results = []
        for i, size in enumerate(image_sizes):
            scores = [s.sigmoid() for s in per_image_maps(cls_scores, i, self.num_classes)]
            regs = per_image_maps(regressions, i, 4)
            factors = (None if centernesses is None
                       else [c.sigmoid()[:, 0] for c in per_image_maps(centernesses, i, 1)])
            decoders = [lambda loc, p=p, r=r: self.decode(p[loc], r[loc]) for p, r in zip(priors, regs)]
            results.append(dense_detections(scores, decoders, factors, size, cfg))
        return results
