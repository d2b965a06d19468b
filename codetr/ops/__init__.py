"""Custom operators (pure PyTorch)."""
from codetr.ops.ms_deform_attn import multi_scale_deformable_attention

__all__ = ["multi_scale_deformable_attention"]
