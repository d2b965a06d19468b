"""Numeric precision of training and evaluation (``train.amp``): the autocast context and the fp16 loss scaler.

- ``none``: float32 (the official recipes), no autocast;
- ``bf16``: forward passes under ``torch.autocast(dtype=torch.bfloat16)``; bf16 has float32's
  range, so no loss scaling;
- ``fp16``: forward passes under ``torch.autocast(dtype=torch.float16)`` and a dynamic loss scale
  (:class:`torch.amp.GradScaler`, starting at 512 as the official configs' commented
  ``fp16 = dict(loss_scale=dict(init_scale=512))``): the loss is multiplied by the scale before the
  backward pass, the gradients are divided by it before clipping, a step whose gradients overflow
  (inf / nan) is skipped and the scale halved; after 2000 good steps it doubles.

Autocast applies on every device type (CPU autocast runs bf16 and fp16 too, slowly: meant for tests).
The parts of the model that need full precision keep it under autocast (:mod:`codetr.models.precision`).
``train.amp: true`` / ``false`` (the key's former boolean form) read as ``bf16`` / ``none``.
"""
from __future__ import annotations

import contextlib
from typing import Literal

import torch

AmpMode = Literal["none", "bf16", "fp16"]
AMP_MODES: tuple[str, ...] = ("none", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FP16_INIT_SCALE = 512.0   # the official Co-DINO configs' (commented) fp16 loss_scale init_scale


def amp_mode(amp: str | bool) -> str:
    """``train.amp`` as one of :data:`AMP_MODES` (``True`` -> ``bf16``, ``False`` -> ``none``)."""
    if isinstance(amp, bool):
        return "bf16" if amp else "none"
    if amp not in AMP_MODES:
        raise ValueError(f"train.amp must be one of {list(AMP_MODES)} (or true / false for bf16 / none), got {amp!r}")
    return amp


def autocast_context(device: torch.device, amp: str | bool):
    """The forward pass's autocast for ``amp`` on ``device`` (a no-op context for ``none``)."""
    mode = amp_mode(amp)
    if mode == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[mode])


def make_grad_scaler(amp: str | bool, device: torch.device) -> torch.amp.GradScaler | None:
    """The dynamic loss scaler of ``fp16`` training on ``device``; None for ``none`` / ``bf16``."""
    if amp_mode(amp) != "fp16":
        return None
    return torch.amp.GradScaler(device.type, init_scale=FP16_INIT_SCALE)
