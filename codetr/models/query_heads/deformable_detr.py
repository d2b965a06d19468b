"""The query head: deformable encoder, two-stage proposals, mixed selection, decoder with refinement.

Also the customized positive-query branch of Co-DETR (positives of the auxiliary heads decoded
as extra queries, one decoder pass per auxiliary head), which only runs in training.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codetr.box_ops import inverse_sigmoid
from codetr.config.schema import ModelConfig
from codetr.models.position_encoding import SinePositionalEncoding, box_position_embedding
from codetr.models.deformable_attention import MultiScaleDeformableAttention, linear_bias_after_product
from codetr.models.precision import upcast
from codetr.models.transformer import DeformableDecoder, DeformableEncoder, MemoryContext

if TYPE_CHECKING:
    from codetr.models.query_heads.denoising import DenoisingQueries


@dataclass
class QueryHeadOutput:
    logits: Tensor                # [num_layers, bs, num_queries, num_classes]
    boxes_cxcywh_norm: Tensor     # [num_layers, bs, num_queries, 4], normalised to each image's unpadded size
    enc_logits: Tensor | None     # [bs, num_keys, num_classes] two-stage scores, channel 0 ranks (train only)
    enc_boxes_cxcywh_norm: Tensor | None  # [bs, num_keys, 4] two-stage proposals (train only)
    pyramid: list[Tensor] | None  # 5 maps [bs, embed_dims, H_l, W_l], strides 8..128 (aux heads' input; train only, DINO: eval too)
    ctx: MemoryContext | None     # encoder memory, for the positive-query decoder passes (train only)
    dn: "DenoisingQueries | None" = None  # DINO: the denoising queries at the front of logits / boxes (train only)


class MLP(nn.Module):
    def __init__(self, in_dims: int, hidden_dims: int, out_dims: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dims] + [hidden_dims] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dims]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def select_valid_topk(scores: Tensor, invalid: Tensor, k: int) -> Tensor:
    """[bs, N] scores, [bs, N] bool -> [bs, k] indices of the top-k scores among the valid positions.

    The one deliberate deviation from the official two-stage selection, which can pick invalid
    positions (padding, out-of-range proposals). Where the plain top-k picks none, it is returned as
    it is, so that ties break exactly as in the official code; only otherwise are the invalid
    positions masked and the top-k taken again.
    """
    topk = scores.topk(k, dim=1).indices
    if bool(invalid.gather(1, topk).any()):
        topk = scores.masked_fill(invalid, float("-inf")).topk(k, dim=1).indices
    return topk


def valid_ratios_of(mask: Tensor) -> Tensor:
    """mask [bs, h, w] (True = padding) -> [bs, 2] valid (w, h) fractions."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float() / h
    valid_w = (~mask[:, 0, :]).sum(1).float() / w
    return torch.stack([valid_w, valid_h], -1)


def encoder_proposals(memory: Tensor, padding_mask: Tensor, spatial_shapes: list[tuple[int, int]]
                      ) -> tuple[Tensor, Tensor]:
    """One proposal per encoder position: its pixel centre with a size of 0.05 * 2^level.

    Returns the memory with padding / invalid positions zeroed [bs, num_keys, embed_dims], and the
    proposals as un-sigmoided cxcywh [bs, num_keys, 4], +inf where invalid (padding, or a centre or
    size outside (0.01, 0.99)).
    """
    bs = memory.shape[0]
    proposals = []
    start = 0
    for level, (h, w) in enumerate(spatial_shapes):
        mask_l = padding_mask[:, start:start + h * w].view(bs, h, w)
        valid_h = (~mask_l[:, :, 0]).sum(1)
        valid_w = (~mask_l[:, 0, :]).sum(1)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device),
            torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device), indexing="ij")
        grid = torch.stack([grid_x, grid_y], -1)  # [h, w, 2]
        scale = torch.stack([valid_w, valid_h], -1).view(bs, 1, 1, 2).float()
        grid = (grid[None] + 0.5) / scale  # [bs, h, w, 2]
        wh = torch.full_like(grid, 0.05 * (2.0 ** level))
        proposals.append(torch.cat([grid, wh], -1).view(bs, -1, 4))
        start += h * w
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals_unact = torch.log(proposals / (1 - proposals))
    invalid = padding_mask[..., None] | ~valid
    proposals_unact = proposals_unact.masked_fill(invalid, float("inf"))
    memory = memory.masked_fill(invalid, 0.0)
    return memory, proposals_unact


class QueryHead(nn.Module):
    """Deformable-DETR transformer + per-layer class / box branches (two-stage, refinement, mixed selection).

    Args:
        cfg: the model config.
        num_classes: foreground classes (sigmoid classification, no background logit).
        num_aux_heads: K, the number of positive-query encoders to build (0 at inference).
    """

    def __init__(self, cfg: ModelConfig, num_classes: int, num_aux_heads: int = 0) -> None:
        super().__init__()
        d = cfg.embed_dims
        self.embed_dims = d
        self.num_classes = num_classes
        self.num_queries = cfg.num_queries
        self.num_levels = cfg.num_levels
        self.mixed_selection = cfg.mixed_selection
        layer_kwargs = dict(embed_dims=d, num_heads=cfg.num_heads, num_levels=cfg.num_levels,
                            num_points=cfg.num_points, ffn_dims=cfg.ffn_dims, dropout=cfg.dropout,
                            msda_impl=cfg.msda_impl)
        self.positional_encoding = SinePositionalEncoding(d // 2)
        self.level_embeds = nn.Parameter(torch.empty(cfg.num_levels, d))
        self.encoder = DeformableEncoder(cfg.num_encoder_layers, checkpoint_layers=cfg.encoder_checkpoint_layers,
                                         **layer_kwargs)
        self.decoder = DeformableDecoder(cfg.num_decoder_layers, **layer_kwargs)
        # two-stage: memory -> proposal scores and box deltas. The scorer has num_classes outputs as the
        # official one (its extra class branch); channel 0 ranks the proposals, all channels are trained
        # with class-agnostic targets.
        self.enc_output = nn.Linear(d, d)
        self.enc_output_norm = nn.LayerNorm(d)
        # query positions (and content, without mixed selection) from the proposals' sine embedding
        self.pos_trans = nn.Linear(2 * d, 2 * d)
        self.pos_trans_norm = nn.LayerNorm(2 * d)
        if self.mixed_selection:
            self.query_embedding = nn.Embedding(cfg.num_queries, d)
        # one class / box branch per decoder layer (box refinement: not shared), and the two-stage pair:
        # all start as copies of one initialisation, as the reference's cloned branches
        cls_branch = nn.Linear(d, num_classes)
        reg_branch = MLP(d, d, 4, 3)
        self.cls_branches = nn.ModuleList(copy.deepcopy(cls_branch) for _ in range(cfg.num_decoder_layers))
        self.reg_branches = nn.ModuleList(copy.deepcopy(reg_branch) for _ in range(cfg.num_decoder_layers))
        self.enc_cls_branch = copy.deepcopy(cls_branch)
        self.enc_reg_branch = copy.deepcopy(reg_branch)
        # the encoder memory's stride-64 map downsampled once more: the stride-128 level of the aux pyramid
        # (training only, so built only when there are auxiliary heads to feed)
        self.downsample = nn.Sequential(nn.Conv2d(d, d, kernel_size=3, stride=2, padding=1),
                                        nn.GroupNorm(min(32, d), d)) if num_aux_heads > 0 else None
        # customized positive queries: one box -> (position, content) encoder per auxiliary head
        self.aux_pos_trans = nn.ModuleList(nn.Linear(2 * d, 2 * d) for _ in range(num_aux_heads))
        self.aux_pos_trans_norm = nn.ModuleList(nn.LayerNorm(2 * d) for _ in range(num_aux_heads))
        self.with_coord_feat = cfg.with_coord_feat and num_aux_heads > 0
        if self.with_coord_feat:
            self.pos_feats_trans = nn.ModuleList(nn.Linear(d, d) for _ in range(num_aux_heads))
            self.pos_feats_norm = nn.ModuleList(nn.LayerNorm(d) for _ in range(num_aux_heads))
            # one learned scalar per auxiliary head, broadcast over the embedding (the official
            # embedding of width 1)
            self.head_pos_embed = nn.Embedding(num_aux_heads, 1)
        self.reset_parameters()

    def _transformer_modules(self) -> list[nn.Module]:
        """The modules the official transformer holds (its init_weights covers them)."""
        mods = [self.encoder, self.decoder, self.enc_output, self.pos_trans, self.aux_pos_trans]
        if self.with_coord_feat:
            mods += [self.pos_feats_trans, self.head_pos_embed]
        return mods

    def reset_parameters(self) -> None:
        """The official initialisation: Xavier-uniform on every matrix of the transformer (encoder,
        decoder, two-stage and positive-query encoders, the per-head embedding), then the deformable
        attention's own scheme, level embeddings normal; class biases at prior 0.01, last box layers 0."""
        for module in self._transformer_modules():
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        nn.init.normal_(self.level_embeds)
        prior_bias = -math.log((1 - 0.01) / 0.01)
        for branch in list(self.cls_branches) + [self.enc_cls_branch]:
            nn.init.constant_(branch.bias, prior_bias)
        for branch in list(self.reg_branches) + [self.enc_reg_branch]:
            nn.init.zeros_(branch.layers[-1].weight)
            nn.init.zeros_(branch.layers[-1].bias)

    def drop_aux_branch(self) -> None:
        """Remove the positive-query encoders and the pyramid's extra level (inference needs none of them)."""
        self.downsample = None
        self.aux_pos_trans = nn.ModuleList()
        self.aux_pos_trans_norm = nn.ModuleList()
        if self.with_coord_feat:
            del self.pos_feats_trans, self.pos_feats_norm, self.head_pos_embed
            self.with_coord_feat = False

    def forward(self, feats: list[Tensor], masks: list[Tensor]) -> QueryHeadOutput:
        """
        Args:
            feats: 4 neck maps [bs, embed_dims, H_l, W_l] (strides 8..64).
            masks: 4 masks [bs, H_l, W_l], True = padding.
        """
        bs = feats[0].shape[0]
        spatial_shapes = [(f.shape[2], f.shape[3]) for f in feats]
        # [bs, d, h, w] -> [bs, h*w, d] per level, concatenated
        x = torch.cat([f.flatten(2).transpose(1, 2) for f in feats], 1)
        padding_mask = torch.cat([m.flatten(1) for m in masks], 1)
        pos = torch.cat([self.positional_encoding(m).to(x.dtype).flatten(2).transpose(1, 2) + self.level_embeds[lvl]
                         for lvl, m in enumerate(masks)], 1)
        valid_ratios = torch.stack([valid_ratios_of(m) for m in masks], 1)  # [bs, num_levels, 2]
        memory = self.encoder(x, pos, spatial_shapes, valid_ratios, padding_mask)
        ctx = MemoryContext(memory, padding_mask, spatial_shapes, valid_ratios)

        # two-stage: score every encoder position as a class-agnostic proposal, keep the top num_queries
        output_memory, proposals_unact = encoder_proposals(memory, padding_mask, spatial_shapes)
        # product, then bias: as the official projection of its (batch-first viewed) memory
        output_memory = self.enc_output_norm(linear_bias_after_product(self.enc_output, output_memory))
        enc_logits = self.enc_cls_branch(output_memory)  # [bs, num_keys, num_classes]
        enc_boxes_unact = upcast(self.enc_reg_branch(output_memory)) + proposals_unact
        num_select = min(self.num_queries, enc_logits.shape[1])
        topk = select_valid_topk(enc_logits[..., 0], torch.isinf(proposals_unact[..., 0]), num_select)  # [bs, num_select]
        topk_boxes_unact = enc_boxes_unact.gather(1, topk[..., None].expand(-1, -1, 4)).detach()
        pos_trans = self.pos_trans_norm(self.pos_trans(box_position_embedding(topk_boxes_unact, self.embed_dims // 2)))
        query_pos, query = pos_trans.split(self.embed_dims, dim=-1)
        if self.mixed_selection:  # positions from the proposals, content learned
            query = self.query_embedding.weight[:num_select][None].expand(bs, -1, -1)
        logits, boxes = self.decoder(query, query_pos, topk_boxes_unact.sigmoid(), ctx,
                                     self.cls_branches, self.reg_branches)
        if not self.training:
            return QueryHeadOutput(logits, boxes, None, None, None, None)
        if self.downsample is None:  # no auxiliary heads
            return QueryHeadOutput(logits, boxes, enc_logits, enc_boxes_unact.sigmoid(), None, ctx)
        # the encoder memory back into maps, plus one stride-128 map: the auxiliary heads' pyramid
        pyramid = []
        start = 0
        for h, w in spatial_shapes:
            # [bs, h*w, d] -> [bs, d, h, w]
            pyramid.append(memory[:, start:start + h * w].transpose(1, 2).reshape(bs, self.embed_dims, h, w))
            start += h * w
        pyramid.append(self.downsample(pyramid[-1]))
        return QueryHeadOutput(logits, boxes, enc_logits, enc_boxes_unact.sigmoid(), pyramid, ctx)

    def positive_branch_parameters(self, head_idx: int) -> list[nn.Parameter]:
        """The parameters only auxiliary head ``head_idx``'s positive queries use."""
        modules = [self.aux_pos_trans[head_idx], self.aux_pos_trans_norm[head_idx]]
        if self.with_coord_feat:
            modules += [self.pos_feats_trans[head_idx], self.pos_feats_norm[head_idx]]
        params = [p for m in modules for p in m.parameters()]
        return params + ([self.head_pos_embed.weight] if self.with_coord_feat else [])

    def forward_positive(self, ctx: MemoryContext, boxes_cxcywh_norm: Tensor, attended: Tensor, head_idx: int,
                         feats: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Decode one auxiliary head's query slots as customized positive queries.

        Args:
            ctx: the encoder memory of the same forward pass.
            boxes_cxcywh_norm: [bs, P, 4] the slots' anchors / proposals (no gradient).
            attended: [bs, P] False = masked padding no other query attends to (all True with the
                official negative padding).
            head_idx: which auxiliary head (selects its query encoder).
            feats: optional [bs, P, embed_dims] features (coordinate-feature branch).
        Returns:
            logits [num_layers, bs, P, num_classes] and boxes_cxcywh_norm [num_layers, bs, P, 4].
        """
        boxes_unact = inverse_sigmoid(boxes_cxcywh_norm)
        pos_trans = self.aux_pos_trans_norm[head_idx](
            self.aux_pos_trans[head_idx](box_position_embedding(boxes_unact, self.embed_dims // 2)))
        query_pos, query = pos_trans.split(self.embed_dims, dim=-1)
        if self.with_coord_feat and feats is not None:
            query = query + self.pos_feats_norm[head_idx](self.pos_feats_trans[head_idx](feats))
            query_pos = query_pos + self.head_pos_embed.weight[head_idx]
        # a row of only padding would make attention softmax over nothing: let such rows see themselves
        padding = ~attended & attended.any(1, keepdim=True)
        return self.decoder(query, query_pos, boxes_cxcywh_norm, ctx, self.cls_branches, self.reg_branches,
                            query_padding_mask=padding if padding.any() else None)
