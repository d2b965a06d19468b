"""Auxiliary one-to-many heads of Co-DETR: Faster R-CNN (RPN + RoI head), ATSS, FCOS, RetinaNet.

Each head is an :class:`AuxHead`: ``forward_train(feats, targets, image_sizes)`` returns
``(losses, positives)`` with unweighted, normalised losses (keys without the head prefix)
and the :class:`Candidates` from which the customized positive queries are drawn.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from codetr.models.aux.atss_head import ATSSHead
from codetr.models.aux.base import AuxHead
from codetr.models.aux.faster_rcnn import FasterRCNNHead
from codetr.models.aux.fcos_head import FCOSHead
from codetr.models.aux.positives import (Candidates, PositiveQueries, candidates_from_lists,
                                         select_positive_queries)
from codetr.models.aux.retinanet_head import RetinaNetHead

if TYPE_CHECKING:
    from codetr.config.schema import ModelConfig

__all__ = ["AuxHead", "ATSSHead", "Candidates", "FasterRCNNHead", "FCOSHead", "PositiveQueries", "RetinaNetHead",
           "build_aux_head", "candidates_from_lists", "select_positive_queries"]


def pyramid_strides(num_levels: int) -> tuple[int, ...]:
    """The auxiliary heads' pyramid: the transformer's levels plus one more (4 levels: strides 8-128,
    5 levels: strides 4-128)."""
    first = 8 if num_levels == 4 else 4
    return tuple(first * 2 ** i for i in range(num_levels + 1))


def build_aux_head(name: str, model_cfg: "ModelConfig", num_classes: int) -> AuxHead:
    """The auxiliary head ``name`` (one of ``AUX_HEAD_TYPES``) on ``model_cfg.embed_dims`` channels."""
    dims, aux = model_cfg.embed_dims, model_cfg.aux
    strides = pyramid_strides(model_cfg.num_levels)
    if name == "atss":
        return ATSSHead(dims, num_classes, aux.atss, strides=strides)
    if name == "faster_rcnn":
        return FasterRCNNHead(dims, num_classes, aux.faster_rcnn, strides=strides)
    if name == "fcos":
        return FCOSHead(dims, num_classes, aux.fcos, strides=strides)
    if name == "retinanet":
        return RetinaNetHead(dims, num_classes, aux.retinanet, strides=strides)
    raise ValueError(f"unknown auxiliary head {name!r}; choose from faster_rcnn, atss, fcos, retinanet")
