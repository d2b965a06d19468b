"""Numeric precision of the forward pass: the autocast context shared by training and evaluation."""
from __future__ import annotations

import contextlib

import torch


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``enabled``; a no-op elsewhere (CPU training stays fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
