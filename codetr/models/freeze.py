"""``model.freeze``: parts of the detector kept fixed while the rest trains (fine-tuning on small datasets).

A frozen part's parameters get ``requires_grad = False`` (so the optimizer never sees them:
:func:`codetr.engine.optim.build_param_groups` skips them, and DDP does not all-reduce them) and
its modules stay in eval mode when the detector trains (BatchNorm statistics and dropout fixed),
as the backbone's own ``frozen_stages`` does. The parts (:data:`codetr.config.schema.FREEZE_PARTS`):

    backbone                  the whole backbone
    backbone.stem             ResNet's stem (conv1, bn1) / Swin's patch embedding
    backbone.stage1 .. stage4 ResNet's layer1-4 / Swin's stages 0-3 (with their patch merging and output norm)
    neck                      the channel mapper
    encoder                   the transformer encoder and the level embeddings
    decoder                   the transformer decoder (not the class / box branches)
    query_head                all of the query head (encoder, decoder, two-stage, branches, positive queries)
    aux_heads                 every auxiliary head
"""
from __future__ import annotations

from torch import nn

from codetr.config.schema import FREEZE_PARTS


def part_modules(model: nn.Module, part: str) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """The modules (and loose parameters) of one part of a :class:`codetr.models.detector.CoDETR`."""
    if part not in FREEZE_PARTS:
        raise ValueError(f"model.freeze: unknown part {part!r}; valid parts: {', '.join(FREEZE_PARTS)}")
    backbone, head = model.backbone, model.query_head
    swin = hasattr(backbone, "stages")
    if part == "backbone":
        return [backbone], []
    if part == "backbone.stem":
        return [backbone.patch_embed if swin else backbone.stem], []
    if part.startswith("backbone.stage"):
        i = int(part.removeprefix("backbone.stage")) - 1
        if not swin:
            return [getattr(backbone, f"layer{i + 1}")], []
        modules = [backbone.stages[i]]
        if str(i) in backbone.out_norms:
            modules.append(backbone.out_norms[str(i)])
        return modules, []
    if part == "neck":
        return [model.neck], []
    if part == "encoder":
        return [head.encoder], [head.level_embeds]
    if part == "decoder":
        return [head.decoder], []
    if part == "query_head":
        return [head], []
    return [model.aux_heads], []


def freeze_parts(model: nn.Module, parts: list[str]) -> list[nn.Module]:
    """Freeze ``parts`` of ``model`` (see the module docstring); returns the modules to keep in eval mode."""
    frozen: list[nn.Module] = []
    for part in parts:
        modules, params = part_modules(model, part)
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(False)
        for p in params:
            p.requires_grad_(False)
        frozen += modules
    return frozen
