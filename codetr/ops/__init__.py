"""Custom operators: multi-scale deformable attention in pure PyTorch and as fused Triton kernels.

- :mod:`codetr.ops.ms_deform_attn`: the PyTorch path (``grid_sample``), every device, ONNX export
- :mod:`codetr.ops.ms_deform_attn_triton`: the fused forward / backward kernels (CUDA; optional)
- :mod:`codetr.ops.ms_deform_attn_dispatch`: ``ms_deform_attn(..., impl)``, the choice between them
"""
from codetr.ops.ms_deform_attn import multi_scale_deformable_attention
from codetr.ops.ms_deform_attn_dispatch import MSDA_IMPLS, ms_deform_attn, resolve_msda_impl

__all__ = ["MSDA_IMPLS", "ms_deform_attn", "multi_scale_deformable_attention", "resolve_msda_impl"]
