"""Where the model keeps full precision under mixed-precision training.

Under ``torch.autocast`` (``train.amp: bf16 | fp16``) matrix products run in half precision; the
parts whose numerics need more stay in float32: the deformable-attention sampling (locations in
[0, 1] of maps up to ~200 px wide: bf16 keeps 8 bits), box refinement and decoding (the same
reason), matching costs and losses. These helpers say it in one way everywhere:

- :func:`upcast` lifts a half-precision tensor to float32 and leaves float32 / float64 alone
  (a float64 model stays float64: the gradient-accumulation equivalence test runs in float64);
- :func:`full_dtype` is that dtype, for tensors made from scratch (anchors, scales, targets);
- :func:`float32_region` turns autocast off on a tensor's device for a block whose inputs are
  upcast, so that every op inside runs in their (full) precision.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)


def full_dtype(t: Tensor | torch.dtype) -> torch.dtype:
    """float32 for a half-precision (or non-float) tensor / dtype, float64 for float64, float32 otherwise."""
    dtype = t if isinstance(t, torch.dtype) else t.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def upcast(t: Tensor) -> Tensor:
    """``t`` in :func:`full_dtype` (a copy only when the dtype changes)."""
    return t.to(full_dtype(t))


def float32_region(t: Tensor):
    """A context with autocast disabled on ``t``'s device (a no-op context when autocast is off)."""
    device_type = t.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
