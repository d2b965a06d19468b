"""Model construction from a config."""
from __future__ import annotations

import dataclasses

from codetr.config.schema import Config
from codetr.models.detector import CoDETR


def build_model(cfg: Config, num_classes: int | None = None) -> CoDETR:
    """Build Co-DETR from ``cfg.model``. ``num_classes`` fills a null ``model.num_classes``
    (e.g. from the dataset); a conflict with a pinned value is an error. With ``model.init_from`` set the
    backbone's ImageNet weights are not read (the checkpoint's replace them)."""
    pinned = cfg.model.num_classes
    if num_classes is not None and pinned is not None and num_classes != pinned:
        raise ValueError(f"model.num_classes is {pinned} but {num_classes} classes were given (from the dataset?)")
    n = pinned if pinned is not None else num_classes
    if n is None:
        raise ValueError("model.num_classes is null: pass num_classes (the dataset's) or set model.num_classes")
    model_cfg = cfg.model
    if model_cfg.init_from and model_cfg.backbone.pretrained:
        # init_from replaces every backbone weight: no need for (or failure over) the ImageNet file
        model_cfg = dataclasses.replace(model_cfg, backbone=dataclasses.replace(model_cfg.backbone, pretrained=False))
    aux = []
    if cfg.model.aux_heads:
        from codetr.models.aux import build_aux_head

        aux = [build_aux_head(name, model_cfg, n) for name in model_cfg.aux_heads]
    return CoDETR(model_cfg, n, aux)
