"""Backbones of official Co-DETR checkpoints: name rules, fixed buffers, dimensions read off a state dict.

Rules are ``(official template, project template)`` pairs (see :mod:`codetr.convert.names`), the
more specific first (the first matching rule wins, in both directions).

* ResNet (torchvision layout on both sides): ``conv1`` / ``bn1`` are the project's ``stem.0`` /
  ``stem.1``; the stages keep their names.
* Swin (the official ``SwinTransformerV1``, ``projects/models/swin_transformer.py``):

  ============================================  =============================================
  official (under ``backbone.``)                project (under ``backbone.``)
  ============================================  =============================================
  ``patch_embed.{proj,norm}``                   ``patch_embed.{proj,norm}``
  ``layers.i.blocks.j.mlp.fc1`` / ``fc2``       ``stages.i.blocks.j.mlp.0`` / ``mlp.3``
  ``layers.i.blocks.j.{norm1,norm2}``           ``stages.i.blocks.j.{norm1,norm2}``
  ``layers.i.blocks.j.attn.{qkv,proj}``         ``stages.i.blocks.j.attn.{qkv,proj}``
  ``layers.i.blocks.j.attn.relative_position_bias_table``  the same under ``stages.i.blocks.j``
  ``layers.i.downsample.{reduction,norm}``      ``stages.i.downsample.{reduction,norm}``
  ``norm{i}`` (LayerNorm of output stage i)     ``out_norms.{i}``
  ============================================  =============================================

  ``layers.i.blocks.j.attn.relative_position_index`` is a buffer fixed by the window size: the
  project recomputes it and does not save it (:func:`swin_fixed_buffers` gives its official value).
  The shift masks are computed in the forward pass on both sides (no buffer).
"""
from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from codetr.config.schema import SWIN_SIZES, BackboneConfig

RELATIVE_POSITION_INDEX = "relative_position_index"


class BackboneInferenceError(ValueError):
    """An official backbone this project cannot build."""


def resnet_rules(prefix: str = "backbone.") -> list[tuple[str, str]]:
    rules = [(f"{prefix}conv1.{{leaf}}", f"{prefix}stem.0.{{leaf}}"),
             (f"{prefix}bn1.{{leaf}}", f"{prefix}stem.1.{{leaf}}")]
    return rules + [(f"{prefix}layer{s}.{{leaf}}", f"{prefix}layer{s}.{{leaf}}") for s in range(1, 5)]


def swin_rules(depths: tuple[int, ...] | list[int], out_indices: list[int], prefix: str = "backbone."
               ) -> list[tuple[str, str]]:
    rules = [(f"{prefix}patch_embed.{{leaf}}", f"{prefix}patch_embed.{{leaf}}")]
    for i, depth in enumerate(depths):
        for j in range(depth):
            o, p = f"{prefix}layers.{i}.blocks.{j}.", f"{prefix}stages.{i}.blocks.{j}."
            rules += [(o + "mlp.fc1.{leaf}", p + "mlp.0.{leaf}"), (o + "mlp.fc2.{leaf}", p + "mlp.3.{leaf}")]
            rules += [(f"{o}{m}.{{leaf}}", f"{p}{m}.{{leaf}}") for m in ("norm1", "norm2", "attn.qkv", "attn.proj")]
            rules.append((o + "attn.relative_position_bias_table", p + "attn.relative_position_bias_table"))
        if i < len(depths) - 1:
            rules.append((f"{prefix}layers.{i}.downsample.{{leaf}}", f"{prefix}stages.{i}.downsample.{{leaf}}"))
    rules += [(f"{prefix}norm{i}.{{leaf}}", f"{prefix}out_norms.{i}.{{leaf}}") for i in out_indices]
    return rules


def backbone_rules(cfg: BackboneConfig) -> list[tuple[str, str]]:
    """The name rules of the backbone of ``model.backbone``."""
    if cfg.type == "swin":
        return swin_rules(cfg.swin_arch().depths, cfg.out_indices)
    return resnet_rules()


def relative_position_index(window: int) -> Tensor:
    """[N, N] int64, N = window^2 tokens in row-major order: the row of the (2 window - 1)^2 bias
    table that holds the offset (dy, dx) from token a to token b, (dy + window - 1) x (2 window - 1)
    + dx + window - 1 (the official and torchvision's index)."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])                 # [2, N]
    offset = coords[:, :, None] - coords[:, None, :] + (window - 1)    # [2, N, N]
    return offset[0] * (2 * window - 1) + offset[1]


def swin_fixed_buffers(cfg: BackboneConfig, prefix: str = "backbone.") -> dict[str, Tensor]:
    """The official Swin's saved buffers that the project recomputes: every block's relative
    position index (official names)."""
    if cfg.type != "swin":
        return {}
    arch = cfg.swin_arch()
    index = relative_position_index(arch.window_size)
    return {f"{prefix}layers.{i}.blocks.{j}.attn.{RELATIVE_POSITION_INDEX}": index.clone()
            for i, depth in enumerate(arch.depths) for j in range(depth)}


# ------------------------------------------------------------------------------------ dimensions

def _indices(sd: dict, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for name in sd for m in [rx.match(name)] if m})


def infer_resnet(sd: dict[str, Tensor]) -> dict[str, object]:
    blocks = [len(_indices(sd, rf"^backbone\.layer{s}\.(\d+)\.conv1\.weight$")) for s in range(1, 5)]
    bottleneck = "backbone.layer1.0.conv3.weight" in sd
    depths = {(3, 4, 6, 3, True): 50, (3, 4, 23, 3, True): 101, (2, 2, 2, 2, False): 18, (3, 4, 6, 3, False): 34}
    depth = depths.get((*blocks, bottleneck))
    if depth is None:
        raise BackboneInferenceError(f"unsupported backbone: ResNet stages with {blocks} blocks "
                                     f"({'bottleneck' if bottleneck else 'basic'}); supported depths 18, 34, 50, 101")
    return {"model.backbone.type": "resnet", "model.backbone.depth": depth}


def infer_swin(sd: dict[str, Tensor]) -> dict[str, object]:
    """Swin dimensions: embed dim (patch embedding), blocks per stage, heads and window (the
    relative position bias tables: [(2 window - 1)^2, heads]), output stages (``norm{i}``)."""
    proj = sd["backbone.patch_embed.proj.weight"]                      # [C, 3, 4, 4]
    if tuple(proj.shape[1:]) != (3, 4, 4):
        raise BackboneInferenceError(f"unsupported Swin: patch embedding {list(proj.shape)} (only 3 x 4 x 4 patches)")
    embed_dim = int(proj.shape[0])
    stages = _indices(sd, r"^backbone\.layers\.(\d+)\.blocks\.")
    if stages != [0, 1, 2, 3]:
        raise BackboneInferenceError(f"unsupported Swin: stages {stages} (only 4 stages)")
    depths, heads, windows = [], [], set()
    for i in stages:
        blocks = _indices(sd, rf"^backbone\.layers\.{i}\.blocks\.(\d+)\.norm1\.weight$")
        depths.append(len(blocks))
        table = sd[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"]
        heads.append(int(table.shape[1]))
        side = math.isqrt(int(table.shape[0]))
        if side * side != table.shape[0] or side % 2 == 0:
            raise BackboneInferenceError(f"backbone.layers.{i}: a relative position bias table of {table.shape[0]} "
                                         f"rows is not (2 window - 1)^2")
        windows.add((side + 1) // 2)
        fc1 = sd[f"backbone.layers.{i}.blocks.0.mlp.fc1.weight"]
        if fc1.shape[0] != 4 * embed_dim * 2 ** i:
            raise BackboneInferenceError(f"unsupported Swin: MLP ratio {fc1.shape[0] / (embed_dim * 2 ** i)} (only 4)")
    if len(windows) != 1:
        raise BackboneInferenceError(f"unsupported Swin: different window sizes per stage {sorted(windows)}")
    out = {"model.backbone.type": "swin"}
    for size, (e, d, h, _, _) in SWIN_SIZES.items():
        if (e, d, h) == (embed_dim, depths, heads):
            out["model.backbone.swin_size"] = size
    out.update({"model.backbone.embed_dim": embed_dim, "model.backbone.depths": depths,
                "model.backbone.num_heads": heads, "model.backbone.window_size": windows.pop(),
                "model.backbone.out_indices": _indices(sd, r"^backbone\.norm(\d+)\.weight$")})
    return out


def infer_backbone(sd: dict[str, Tensor]) -> dict[str, object]:
    """Config values (dotted keys) of the backbone of an official state dict: its type, size and
    output stages (ResNet: the last stages, one per neck input)."""
    if "backbone.patch_embed.proj.weight" in sd:
        out = infer_swin(sd)
    elif "backbone.conv1.weight" in sd:
        out = infer_resnet(sd)
    else:
        raise BackboneInferenceError("unknown backbone: neither ResNet (backbone.conv1.weight) nor Swin "
                                     "(backbone.patch_embed.proj.weight)")
    num_inputs = len(_indices(sd, r"^neck\.convs\.(\d+)\.conv\.weight$"))
    from_neck = list(range(4 - num_inputs, 4))
    if out.setdefault("model.backbone.out_indices", from_neck) != from_neck:
        raise BackboneInferenceError(f"the Swin output norms {out['model.backbone.out_indices']} do not match the "
                                     f"{num_inputs} neck inputs")
    return out
