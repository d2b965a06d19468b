"""Which deformable-attention implementation runs: the PyTorch path or the fused Triton kernels.

``model.msda_impl``:
- ``pytorch``: ``grid_sample`` per level (:mod:`codetr.ops.ms_deform_attn`), every device.
- ``triton``: the fused kernels (:mod:`codetr.ops.ms_deform_attn_triton`): CUDA tensors, or any
  tensors when the process runs Triton's interpreter (``TRITON_INTERPRET=1``: slow, for tests).
- ``auto``: ``triton`` when the value is a CUDA tensor, Triton imports and compiles (no interpreter),
  ``pytorch`` otherwise.

Whatever the setting, ONNX export, TorchScript tracing and ``torch.compile`` / ``torch.export``
graphs take the PyTorch path: a graph must hold plain operators.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from codetr.ops.ms_deform_attn import multi_scale_deformable_attention

try:  # Triton is optional: CPU-only installs of torch come without it
    from codetr.ops.ms_deform_attn_triton import INTERPRETED, multi_scale_deformable_attention_triton
    TRITON_IMPORT_ERROR: str | None = None
except ImportError as error:
    INTERPRETED, multi_scale_deformable_attention_triton = False, None
    TRITON_IMPORT_ERROR = f"{type(error).__name__}: {error}"

MSDA_IMPLS = ("auto", "pytorch", "triton")


def building_a_graph() -> bool:
    """True inside ONNX export, TorchScript tracing or a torch.compile / torch.export trace."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def resolve_msda_impl(impl: str, value: Tensor) -> str:
    """``"pytorch"`` or ``"triton"``: what ``impl`` (one of :data:`MSDA_IMPLS`) runs for ``value``."""
    if impl not in MSDA_IMPLS:
        raise ValueError(f"model.msda_impl: {impl!r} is not one of {list(MSDA_IMPLS)}")
    if impl == "pytorch" or building_a_graph():
        return "pytorch"
    if impl == "auto":
        return "triton" if value.is_cuda and TRITON_IMPORT_ERROR is None and not INTERPRETED else "pytorch"
    if TRITON_IMPORT_ERROR is not None:
        raise RuntimeError(f"model.msda_impl: triton needs the triton package, which does not import "
                           f"({TRITON_IMPORT_ERROR}); use auto or pytorch")
    return "triton"


def ms_deform_attn(value: Tensor, spatial_shapes: Tensor | Sequence[Sequence[int]], sampling_locations: Tensor,
                   attention_weights: Tensor, impl: str = "auto") -> Tensor:
    """Multi-scale deformable attention by the implementation ``impl`` selects (see the module docstring).

    Arguments and result as :func:`codetr.ops.ms_deform_attn.multi_scale_deformable_attention`:
    value [bs, num_keys, num_heads, head_dim], sampling_locations [bs, num_queries, num_heads,
    num_levels, num_points, 2], attention_weights [bs, num_queries, num_heads, num_levels, num_points]
    -> [bs, num_queries, num_heads * head_dim].
    """
    if resolve_msda_impl(impl, value) == "triton":
        return multi_scale_deformable_attention_triton(value, spatial_shapes, sampling_locations, attention_weights)
    return multi_scale_deformable_attention(value, spatial_shapes, sampling_locations, attention_weights)
