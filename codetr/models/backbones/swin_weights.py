"""ImageNet weights of a Swin backbone, from a local file only (never downloaded).

Two formats are read:

* torchvision (``swin_t-704ceda3.pth``, ``swin_s-5e29d889.pth``, ``swin_b-68c6b09e.pth``): a bare
  state dict; ``features.0.{0,2}`` the patch embedding (conv, LayerNorm), ``features.{2i+1}.{j}``
  block j of stage i, ``features.{2i+2}`` the patch merging after stage i;
* the official / Microsoft release (``swin_tiny_patch4_window7_224.pth``,
  ``swin_large_patch4_window12_384_22k.pth``, ...), what the official Co-DETR configs load:
  ``{"model": state dict}`` with ``patch_embed.*``, ``layers.{i}.blocks.{j}.*`` (MLP ``fc1`` /
  ``fc2``) and ``layers.{i}.downsample.*``.

Not used from either: the classifier (``norm``, ``head``) and the buffers fixed by the window size
(``relative_position_index``, ``attn_mask``). The per-output LayerNorms (``out_norms``) keep
their 1 / 0 init, as in the official backbone (its ``norm{i}`` are not in these files).

A relative position bias table of another window size (e.g. a window-7 file into a window-12
model) is resized bicubically to the model's, as the official loader (``mmcv_custom``'s
``load_checkpoint``) does; a warning says so.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from codetr.config.schema import SWIN_SIZES, BackboneConfig
from codetr.convert.safe_load import load_untrusted

_TORCHVISION_WEIGHTS = {
    "t": torchvision.models.Swin_T_Weights.IMAGENET1K_V1,
    "s": torchvision.models.Swin_S_Weights.IMAGENET1K_V1,
    "b": torchvision.models.Swin_B_Weights.IMAGENET1K_V1,
}
_UNUSED = re.compile(r"^(norm|head)\.|\.relative_position_index$|\.attn_mask$|^absolute_pos_embed$")


def swin_weights_path(cfg: BackboneConfig) -> Path:
    """``model.backbone.weights_path``, else torchvision's file in the torch hub cache for the
    t / s / b sizes (torchvision has no Swin-L: it needs an explicit file)."""
    if cfg.weights_path:
        path = Path(cfg.weights_path)
    else:
        arch = cfg.swin_arch()
        size = cfg.swin_size
        preset = SWIN_SIZES[size][:3]
        if size not in _TORCHVISION_WEIGHTS or (arch.embed_dim, list(arch.depths), list(arch.num_heads)) != (
                preset[0], preset[1], preset[2]):
            raise FileNotFoundError(
                "model.backbone.pretrained is true but model.backbone.weights_path is not set, and torchvision has no "
                f"ImageNet weights for this Swin (swin_size {size}, embed_dim {arch.embed_dim}, depths "
                f"{list(arch.depths)}): set model.backbone.weights_path to a local Swin file (e.g. the official "
                "swin_large_patch4_window12_384_22k.pth), or model.backbone.pretrained=false")
        filename = os.path.basename(_TORCHVISION_WEIGHTS[size].url)
        path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"model.backbone.pretrained is true but the Swin ImageNet weights are not at {path}. Put the file there "
            "(torchvision's or the official / Microsoft release's) or set model.backbone.weights_path, or train from "
            "scratch with model.backbone.pretrained=false. Weights are never downloaded implicitly.")
    return path


def _project_name(name: str, torchvision_format: bool) -> str | None:
    """A classification file's name -> the backbone's (None: not used)."""
    if _UNUSED.search(name):
        return None
    if torchvision_format:
        m = re.match(r"^features\.(\d+)\.(.+)$", name)
        if not m:
            return name                                   # unknown: reported by the caller
        idx, rest = int(m.group(1)), m.group(2)
        if idx == 0:                                      # Sequential(conv, permute, LayerNorm)
            part, leaf = rest.split(".", 1)
            return f"patch_embed.{ {'0': 'proj', '2': 'norm'}.get(part, part)}.{leaf}"
        if idx % 2 == 1:
            return f"stages.{(idx - 1) // 2}.blocks.{rest}"
        return f"stages.{idx // 2 - 1}.downsample.{rest}"
    name = re.sub(r"^layers\.(\d+)\.", r"stages.\1.", name)
    return name.replace(".mlp.fc1.", ".mlp.0.").replace(".mlp.fc2.", ".mlp.3.")


def read_swin_weights(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """A Swin classification file -> (state dict in :class:`SwinBackbone` names, format name)."""
    ck = load_untrusted(path)
    sd = ck
    if isinstance(ck, dict):
        for key in ("model", "state_dict"):
            if isinstance(ck.get(key), dict):
                sd = ck[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a Swin state dict (expected a dict of tensors, or one under 'model')")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    if "features.0.0.weight" in sd:
        fmt = "torchvision"
    elif "patch_embed.proj.weight" in sd:
        fmt = "official"
    else:
        raise ValueError(f"{path}: not a Swin state dict: neither torchvision's names (features.0.0.weight) nor the "
                         f"official ones (patch_embed.proj.weight); it starts with {list(sd)[:5]}")
    out = {}
    for name, tensor in sd.items():
        new = _project_name(name, fmt == "torchvision")
        if new is not None:
            out[new] = tensor
    return out, fmt


def resize_bias_table(table: Tensor, rows: int) -> Tensor:
    """[(2 w1 - 1)^2, heads] -> [rows, heads], bicubic over the (2w - 1) x (2w - 1) grid of offsets
    (the official loader's resize)."""
    side, heads = int(round(table.shape[0] ** 0.5)), table.shape[1]
    new_side = int(round(rows ** 0.5))
    # [L1, heads] -> [1, heads, S1, S1] -> [1, heads, S2, S2] -> [L2, heads]
    grid = table.permute(1, 0).reshape(1, heads, side, side)
    grid = F.interpolate(grid.float(), size=(new_side, new_side), mode="bicubic")
    return grid.reshape(heads, rows).permute(1, 0).to(table.dtype)


def load_swin_weights(backbone: nn.Module, path: str | Path) -> list[str]:
    """Load a Swin classification file into ``backbone`` (a :class:`SwinBackbone`); returns notes
    on what was adapted. Errors name the file: a missing tensor, an unknown one, a shape of another
    Swin size."""
    weights, fmt = read_swin_weights(path)
    own = backbone.state_dict()
    notes, wrong = [], []
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} tensors of this {fmt}-format file have no place in the Swin "
                         f"backbone: {unknown[:6]}")
    for name, tensor in list(weights.items()):
        if tensor.shape == own[name].shape:
            continue
        if name.endswith("relative_position_bias_table") and tensor.shape[1] == own[name].shape[1]:
            weights[name] = resize_bias_table(tensor, own[name].shape[0])
            notes.append(f"{name}: {tensor.shape[0]} -> {own[name].shape[0]} rows (bicubic)")
        else:
            wrong.append(f"{name} {list(tensor.shape)} (model {list(own[name].shape)})")
    if wrong:
        raise ValueError(f"{path}: weights of another Swin size ({len(wrong)} shapes differ, e.g. {wrong[:3]}); the "
                         f"model is {backbone.arch}")
    missing = [k for k in own if k not in weights and not k.startswith("out_norms.")]
    if missing:
        raise ValueError(f"{path}: not a complete Swin state dict for {backbone.arch}: {len(missing)} tensors missing, "
                         f"e.g. {missing[:5]}")
    if notes:
        warnings.warn(f"{path}: relative position bias tables resized to the model's window "
                      f"({len(notes)} tables, e.g. {notes[0]})", stacklevel=2)
    backbone.load_state_dict(weights, strict=False)
    return notes
