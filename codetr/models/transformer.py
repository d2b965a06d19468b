"""Deformable encoder and decoder (post-norm layers, iterative box refinement, look-forward-twice)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from codetr.box_ops import inverse_sigmoid
from codetr.models.deformable_attention import MultiScaleDeformableAttention
from codetr.models.precision import upcast


@dataclass
class MemoryContext:
    """What the decoder needs of the encoder output (shared by the main and the positive queries)."""

    memory: Tensor                         # [bs, num_keys, embed_dims]
    padding_mask: Tensor                   # [bs, num_keys], True = padding
    spatial_shapes: list[tuple[int, int]]  # per level (h, w)
    valid_ratios: Tensor                   # [bs, num_levels, 2] as (w, h) fraction of each map that is image


class FFN(nn.Module):
    def __init__(self, embed_dims: int, ffn_dims: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(embed_dims, ffn_dims), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                    nn.Linear(ffn_dims, embed_dims), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


class EncoderLayer(nn.Module):
    """self deformable attention -> norm -> FFN -> norm."""

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int, ffn_dims: int,
                 dropout: float, msda_impl: str = "auto") -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(embed_dims, num_heads, num_levels, num_points, msda_impl)
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, ffn_dims, dropout)
        self.norm2 = nn.LayerNorm(embed_dims)

    def forward(self, x: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]],
                padding_mask: Tensor, bias_after_product: bool = False) -> Tensor:
        attn = self.self_attn(x + pos, reference_points, x, spatial_shapes, padding_mask, bias_after_product)
        x = self.norm1(x + self.dropout(attn))
        return self.norm2(self.ffn(x))


class DecoderLayer(nn.Module):
    """self attention -> norm -> deformable cross attention -> norm -> FFN -> norm."""

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int, ffn_dims: int,
                 dropout: float, msda_impl: str = "auto") -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.cross_attn = MultiScaleDeformableAttention(embed_dims, num_heads, num_levels, num_points, msda_impl)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, ffn_dims, dropout)
        self.norm3 = nn.LayerNorm(embed_dims)

    def forward(self, x: Tensor, pos: Tensor, reference_points: Tensor, ctx: MemoryContext,
                query_padding_mask: Tensor | None, self_attn_mask: Tensor | None = None) -> Tensor:
        """``self_attn_mask``: optional [Q, Q] bool, True = query i must not attend to query j."""
        q = k = x + pos
        attn = self.self_attn(q, k, x, key_padding_mask=query_padding_mask, attn_mask=self_attn_mask,
                              need_weights=False)[0]
        x = self.norm1(x + self.dropout1(attn))
        attn = self.cross_attn(x + pos, reference_points, ctx.memory, ctx.spatial_shapes, ctx.padding_mask)
        x = self.norm2(x + self.dropout2(attn))
        return self.norm3(self.ffn(x))


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
    """Pixel centres of every level as reference points.

    Returns [bs, num_keys, num_levels, 2] (x, y): each key's centre normalised to its own level's
    valid area, then re-expressed in every level's padded map (times that level's valid ratio).
    """
    refs = []
    device = valid_ratios.device
    for level, (h, w) in enumerate(spatial_shapes):
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device), indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * w)
        refs.append(torch.stack((ref_x, ref_y), -1))
    reference_points = torch.cat(refs, 1)  # [bs, num_keys, 2]
    return reference_points[:, :, None] * valid_ratios[:, None]


class DeformableEncoder(nn.Module):
    """``checkpoint_layers``: the first N layers recompute their activations in the backward pass
    during training (activation checkpointing: less memory, one more forward of those layers)."""

    def __init__(self, num_layers: int, checkpoint_layers: int = 0, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(**layer_kwargs) for _ in range(num_layers))
        self.checkpoint_layers = checkpoint_layers

    def forward(self, x: Tensor, pos: Tensor, spatial_shapes: list[tuple[int, int]], valid_ratios: Tensor,
                padding_mask: Tensor) -> Tensor:
        """x, pos: [bs, num_keys, embed_dims] -> memory [bs, num_keys, embed_dims]."""
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        for i, layer in enumerate(self.layers):
            # the official encoder's layers after the first get sequence-first tensors: their projections
            # round as a product, then the bias (codetr.models.deformable_attention.linear_bias_after_product)
            args = (x, pos, reference_points, spatial_shapes, padding_mask, i > 0)
            if self.training and i < self.checkpoint_layers and torch.is_grad_enabled():
                x = checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        return x


class DeformableDecoder(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, query: Tensor, query_pos: Tensor, init_boxes_cxcywh_norm: Tensor, ctx: MemoryContext,
                cls_branches: nn.ModuleList, reg_branches: nn.ModuleList,
                query_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the layers with iterative box refinement.

        Args:
            query, query_pos: [bs, num_queries, embed_dims].
            init_boxes_cxcywh_norm: [bs, num_queries, 4] initial reference boxes (no gradient).
            query_padding_mask: [bs, num_queries], True = a padding query other queries must not attend to.
        Returns:
            logits [num_layers, bs, num_queries, num_classes] and boxes_cxcywh_norm
            [num_layers, bs, num_queries, 4]. Layer l's box refines layer l-1's box *with* its gradient
            (look forward twice); the reference the next layer samples around is detached.
        """
        valid_ratios_boxes = torch.cat([ctx.valid_ratios, ctx.valid_ratios], -1)[:, None]  # [bs, 1, L, 4]
        reference = init_boxes_cxcywh_norm  # detached: where layer l samples
        prev_refined = init_boxes_cxcywh_norm  # layer l-1's refinement of its (detached) reference
        all_logits, all_boxes = [], []
        for lid, layer in enumerate(self.layers):
            query = layer(query, query_pos, reference[:, :, None] * valid_ratios_boxes, ctx, query_padding_mask)
            delta = upcast(reg_branches[lid](query))     # box refinement in full precision
            # the output box is refined from the previous layer's box with its gradient (one step back) ...
            all_boxes.append((delta + inverse_sigmoid(prev_refined)).sigmoid())
            all_logits.append(cls_branches[lid](query))
            # ... while the chain of references stays detached, so gradients reach back only one layer
            prev_refined = (delta + inverse_sigmoid(reference)).sigmoid()
            reference = prev_refined.detach()
        return torch.stack(all_logits), torch.stack(all_boxes)
