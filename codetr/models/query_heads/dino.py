"""The DINO query head of Co-DINO: contrastive denoising, mixed query selection, look-forward-twice.

Differences from the Deformable-DETR head (:mod:`codetr.models.query_heads.deformable_detr`), as the official Co-DINO:

* two-stage selection ranks encoder positions by their best class score (max over classes) and
  the encoder loss is a matched loss on the selected top-k with the real classes;
* the decoder recomputes each layer's query position from its reference box (sine embedding ->
  two-layer MLP ``ref_point_head``) and normalises its outputs with a final LayerNorm; box
  refinement uses ``inverse_sigmoid(eps=1e-3)``; each layer's box is predicted from the previous
  layer's refined box *with* its gradient (look forward twice), while the reference it samples
  around is detached;
* training prepends contrastive denoising queries (:mod:`codetr.models.query_heads.denoising`);
* the customized positive queries get their content from ``LayerNorm(Linear(box sine embedding))``
  (2d -> d) and no separate position (the decoder derives it from the box); with
  ``with_coord_feat`` the feature branch is added to the content.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from codetr.box_ops import inverse_sigmoid
from codetr.config.schema import ModelConfig
from codetr.models.deformable_attention import MultiScaleDeformableAttention, linear_bias_after_product
from codetr.models.query_heads.denoising import DenoisingQueries
from codetr.models.precision import full_dtype, upcast
from codetr.models.position_encoding import SinePositionalEncoding, box_position_embedding
from codetr.models.query_heads.deformable_detr import MLP, QueryHeadOutput, encoder_proposals, select_valid_topk, valid_ratios_of
from codetr.models.transformer import DecoderLayer, DeformableEncoder, MemoryContext

REF_EPS = 1e-3   # inverse_sigmoid eps of DINO's box refinement


def reference_sine_embedding(boxes_cxcywh: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """[B, N, 4] (cx, cy, w, h) in [0, 1] -> [B, N, 4 num_feats], blocks ordered (y, x, w, h) as DINO."""
    dim_t = torch.arange(num_feats, dtype=full_dtype(boxes_cxcywh), device=boxes_cxcywh.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos = upcast(boxes_cxcywh)[..., None] * (2 * math.pi) / dim_t              # [B, N, 4, num_feats]
    # [B, N, 4, num_feats/2, 2] -> [B, N, 4, num_feats]: sin on even, cos on odd features
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(3)
    x, y, w, h = pos.unbind(2)
    return torch.cat((y, x, w, h), dim=-1)


class DinoDecoder(nn.Module):
    """Deformable decoder layers with per-layer query positions from the reference boxes."""

    def __init__(self, num_layers: int, embed_dims: int, **layer_kwargs) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.layers = nn.ModuleList(DecoderLayer(embed_dims=embed_dims, **layer_kwargs) for _ in range(num_layers))
        self.ref_point_head = MLP(2 * embed_dims, embed_dims, embed_dims, 2)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, query: Tensor, reference: Tensor, ctx: MemoryContext, reg_branches: nn.ModuleList,
                self_attn_mask: Tensor | None = None, query_padding_mask: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """
        Args:
            query: [bs, Q, embed_dims] content queries.
            reference: [bs, Q, 4] initial reference boxes, sigmoid cxcywh (no gradient).
        Returns:
            hidden states [L, bs, Q, embed_dims] (after the final LayerNorm) and the references
            [L + 1, bs, Q, 4]: the initial one, then each layer's refined box (with its gradient).
        """
        valid_ratios_boxes = torch.cat([ctx.valid_ratios, ctx.valid_ratios], -1)[:, None]   # [bs, 1, L, 4]
        states, references = [], [reference]
        for lid, layer in enumerate(self.layers):
            ref_input = reference[:, :, None] * valid_ratios_boxes                      # [bs, Q, L, 4]
            query_pos = self.ref_point_head(reference_sine_embedding(ref_input[:, :, 0], self.embed_dims // 2))
            query = layer(query, query_pos, ref_input, ctx, query_padding_mask, self_attn_mask)
            refined = (upcast(reg_branches[lid](query)) + inverse_sigmoid(reference, eps=REF_EPS)).sigmoid()
            reference = refined.detach()
            states.append(self.norm(query))
            references.append(refined)
        return torch.stack(states), torch.stack(references)


class DINOQueryHead(nn.Module):
    """DINO transformer + class / box branches; the positive-query branch of Co-DINO (training only)."""

    def __init__(self, cfg: ModelConfig, num_classes: int, num_aux_heads: int = 0) -> None:
        super().__init__()
        d = cfg.embed_dims
        self.embed_dims = d
        self.num_classes = num_classes
        self.num_queries = cfg.num_queries
        layer_kwargs = dict(num_heads=cfg.num_heads, num_levels=cfg.num_levels, num_points=cfg.num_points,
                            ffn_dims=cfg.ffn_dims, dropout=cfg.dropout, msda_impl=cfg.msda_impl)
        # DINO's positional encoding: temperature 20, no offset
        self.positional_encoding = SinePositionalEncoding(d // 2, temperature=20.0, offset=0.0)
        self.level_embeds = nn.Parameter(torch.empty(cfg.num_levels, d))
        self.encoder = DeformableEncoder(cfg.num_encoder_layers, checkpoint_layers=cfg.encoder_checkpoint_layers,
                                         embed_dims=d, **layer_kwargs)
        self.decoder = DinoDecoder(cfg.num_decoder_layers, d, **layer_kwargs)
        self.enc_output = nn.Linear(d, d)
        self.enc_output_norm = nn.LayerNorm(d)
        self.query_embedding = nn.Embedding(cfg.num_queries, d)       # content of the matching queries
        self.label_embedding = nn.Embedding(num_classes, d)           # content of the denoising queries
        cls_branch = nn.Linear(d, num_classes)
        reg_branch = MLP(d, d, 4, 3)
        self.cls_branches = nn.ModuleList(copy.deepcopy(cls_branch) for _ in range(cfg.num_decoder_layers))
        self.reg_branches = nn.ModuleList(copy.deepcopy(reg_branch) for _ in range(cfg.num_decoder_layers))
        self.enc_cls_branch = copy.deepcopy(cls_branch)
        self.enc_reg_branch = copy.deepcopy(reg_branch)
        self.downsample = nn.Sequential(nn.Conv2d(d, d, kernel_size=3, stride=2, padding=1),
                                        nn.GroupNorm(min(32, d), d)) if num_aux_heads > 0 else None
        self.aux_pos_trans = nn.ModuleList(nn.Linear(2 * d, d) for _ in range(num_aux_heads))
        self.aux_pos_trans_norm = nn.ModuleList(nn.LayerNorm(d) for _ in range(num_aux_heads))
        self.with_coord_feat = cfg.with_coord_feat and num_aux_heads > 0
        if self.with_coord_feat:
            self.pos_feats_trans = nn.ModuleList(nn.Linear(d, d) for _ in range(num_aux_heads))
            self.pos_feats_norm = nn.ModuleList(nn.LayerNorm(d) for _ in range(num_aux_heads))
        self.reset_parameters()

    def _transformer_modules(self) -> list[nn.Module]:
        mods = [self.encoder, self.decoder, self.enc_output, self.query_embedding, self.aux_pos_trans]
        if self.with_coord_feat:
            mods.append(self.pos_feats_trans)
        return mods

    def reset_parameters(self) -> None:
        """The official initialisation: Xavier-uniform on every matrix of the transformer, the deformable
        attention's own scheme, level embeddings and matching-query contents normal; class biases at
        prior 0.01, last box layers 0."""
        for module in self._transformer_modules():
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        nn.init.normal_(self.level_embeds)
        nn.init.normal_(self.query_embedding.weight)
        prior_bias = -math.log((1 - 0.01) / 0.01)
        for branch in list(self.cls_branches) + [self.enc_cls_branch]:
            nn.init.constant_(branch.bias, prior_bias)
        for branch in list(self.reg_branches) + [self.enc_reg_branch]:
            nn.init.zeros_(branch.layers[-1].weight)
            nn.init.zeros_(branch.layers[-1].bias)

    def drop_aux_branch(self) -> None:
        """Inference needs neither the positive-query encoders, the pyramid's extra level, nor the
        denoising label embedding."""
        self.downsample = None
        self.aux_pos_trans = nn.ModuleList()
        self.aux_pos_trans_norm = nn.ModuleList()
        if self.with_coord_feat:
            del self.pos_feats_trans, self.pos_feats_norm
            self.with_coord_feat = False
        self.label_embedding = None

    def _predict(self, states: Tensor, references: Tensor) -> tuple[Tensor, Tensor]:
        """hidden states [L, bs, Q, d], references [L + 1, bs, Q, 4] -> logits [L, bs, Q, C], boxes [L, bs, Q, 4]."""
        logits, boxes = [], []
        for lid in range(states.shape[0]):
            logits.append(self.cls_branches[lid](states[lid]))
            boxes.append((upcast(self.reg_branches[lid](states[lid])) + inverse_sigmoid(references[lid], eps=REF_EPS)).sigmoid())
        return torch.stack(logits), torch.stack(boxes)

    def forward(self, feats: list[Tensor], masks: list[Tensor], dn: DenoisingQueries | None = None) -> QueryHeadOutput:
        """feats / masks: the neck's maps [bs, d, H_l, W_l] and padding masks; ``dn``: denoising queries
        (training). The outputs hold ``dn.pad_size`` denoising queries first, then the matching ones."""
        bs = feats[0].shape[0]
        spatial_shapes = [(f.shape[2], f.shape[3]) for f in feats]
        # [bs, d, h, w] -> [bs, h*w, d] per level, concatenated
        x = torch.cat([f.flatten(2).transpose(1, 2) for f in feats], 1)
        padding_mask = torch.cat([m.flatten(1) for m in masks], 1)
        pos = torch.cat([self.positional_encoding(m).to(x.dtype).flatten(2).transpose(1, 2) + self.level_embeds[lvl]
                         for lvl, m in enumerate(masks)], 1)
        valid_ratios = torch.stack([valid_ratios_of(m) for m in masks], 1)
        memory = self.encoder(x, pos, spatial_shapes, valid_ratios, padding_mask)
        ctx = MemoryContext(memory, padding_mask, spatial_shapes, valid_ratios)

        output_memory, proposals_unact = encoder_proposals(memory, padding_mask, spatial_shapes)
        # product, then bias: as the official projection of its (batch-first viewed) memory
        output_memory = self.enc_output_norm(linear_bias_after_product(self.enc_output, output_memory))
        enc_logits = self.enc_cls_branch(output_memory)                               # [bs, num_keys, C]
        enc_boxes_unact = upcast(self.enc_reg_branch(output_memory)) + proposals_unact
        num_select = min(self.num_queries, enc_logits.shape[1])
        # rank by the best class; invalid positions (padding, out-of-range proposals) never selected
        topk = select_valid_topk(enc_logits.max(-1).values, torch.isinf(proposals_unact[..., 0]), num_select)
        topk_logits = enc_logits.gather(1, topk[..., None].expand(-1, -1, enc_logits.shape[-1]))
        topk_boxes_unact = enc_boxes_unact.gather(1, topk[..., None].expand(-1, -1, 4))
        query = self.query_embedding.weight[:num_select][None].expand(bs, -1, -1)
        reference_unact = topk_boxes_unact.detach()
        attn_mask = None
        if dn is not None:
            query = torch.cat([dn.content.to(query.dtype), query], 1)
            reference_unact = torch.cat([dn.boxes_unact.to(reference_unact.dtype), reference_unact], 1)
            attn_mask = dn.attn_mask
        states, references = self.decoder(query, reference_unact.sigmoid(), ctx, self.reg_branches, attn_mask)
        if dn is not None and dn.pad_size == 0 and self.label_embedding is not None:
            # no box in the batch: keep the label embedding in the graph (distributed training)
            states = states + self.label_embedding.weight[0, 0] * 0.0
        logits, boxes = self._predict(states, references)
        # the encoder memory as maps plus the stride-128 level (the aux heads' input): also in eval mode,
        # where it costs one small convolution (the levels are views of the memory), so that the memory can
        # be inspected and compared stage by stage; the deployable model (no downsample) returns none
        pyramid = None
        if self.downsample is not None:
            pyramid, start = [], 0
            for h, w in spatial_shapes:
                # [bs, h*w, d] -> [bs, d, h, w] (a view)
                pyramid.append(memory[:, start:start + h * w].transpose(1, 2).reshape(bs, self.embed_dims, h, w))
                start += h * w
            pyramid.append(self.downsample(pyramid[-1]))
        if not self.training:
            return QueryHeadOutput(logits, boxes, None, None, pyramid, None)
        return QueryHeadOutput(logits, boxes, topk_logits, topk_boxes_unact.sigmoid(), pyramid, ctx, dn)

    def positive_branch_parameters(self, head_idx: int) -> list[nn.Parameter]:
        modules = [self.aux_pos_trans[head_idx], self.aux_pos_trans_norm[head_idx]]
        if self.with_coord_feat:
            modules += [self.pos_feats_trans[head_idx], self.pos_feats_norm[head_idx]]
        return [p for m in modules for p in m.parameters()]

    def forward_positive(self, ctx: MemoryContext, boxes_cxcywh_norm: Tensor, attended: Tensor, head_idx: int,
                         feats: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Decode one auxiliary head's query slots (see :meth:`QueryHead.forward_positive`)."""
        query = self.aux_pos_trans_norm[head_idx](self.aux_pos_trans[head_idx](
            box_position_embedding(inverse_sigmoid(boxes_cxcywh_norm), self.embed_dims // 2)))
        if self.with_coord_feat and feats is not None:
            query = query + self.pos_feats_norm[head_idx](self.pos_feats_trans[head_idx](feats))
        padding = ~attended & attended.any(1, keepdim=True)
        states, references = self.decoder(query, boxes_cxcywh_norm, ctx, self.reg_branches,
                                          query_padding_mask=padding if padding.any() else None)
        return self._predict(states, references)
