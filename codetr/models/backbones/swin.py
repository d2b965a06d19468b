"""Swin Transformer backbone (V1) as the official Co-DETR runs it, built from torchvision's blocks.

torchvision's ``SwinTransformerBlock`` (norm1, attention, stochastic depth, norm2, MLP) and
``PatchMerging`` (2x2 neighbours concatenated in the order (0,0), (1,0), (0,1), (1,1), odd sizes
padded, LayerNorm, linear 4C -> 2C) are the official architecture and are used as they are.
Two parts follow the official detection backbone (``SwinTransformerV1``) instead:

* the patch embedding pads the image to a multiple of 4 (right / bottom) before its 4x4 stride-4
  convolution (torchvision's drops the remainder);
* the window attention (:class:`WindowAttention`, torchvision's ``ShiftedWindowAttention`` with the
  same parameters) always shifts in the shifted blocks, also when the padded map fits in one window
  (torchvision then skips the shift and the mask, which changes the output of small maps).

Outputs: the stages in ``out_indices``, each through its own LayerNorm (``out_norms``), as
[B, C_i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2))] maps with C_i = embed_dim x 2^i.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.swin_transformer import PatchMerging, ShiftedWindowAttention, SwinTransformerBlock

from codetr.config.schema import BackboneConfig, SwinArch
from codetr.models.backbones.swin_weights import load_swin_weights, swin_weights_path

PATCH_SIZE = 4
MASK_VALUE = -100.0   # added to the attention logits of token pairs from different regions (official value)


def shift_mask(padded_hw: tuple[int, int], window: tuple[int, int], shift: tuple[int, int],
               device: torch.device, dtype: torch.dtype) -> Tensor:
    """[num_windows, N, N] additive mask (N = window area) of a rolled [Hp, Wp] map: 0 between tokens
    of the same region before the roll, ``MASK_VALUE`` across regions."""
    hp, wp = padded_hw
    region = torch.zeros((hp, wp), device=device, dtype=dtype)
    count = 0
    for h0, h1 in ((0, hp - window[0]), (hp - window[0], hp - shift[0]), (hp - shift[0], hp)):
        for w0, w1 in ((0, wp - window[1]), (wp - window[1], wp - shift[1]), (wp - shift[1], wp)):
            region[h0:h1, w0:w1] = count
            count += 1
    # [Hp, Wp] -> [nh, wh, nw, ww] -> [nh * nw, wh * ww]
    region = region.view(hp // window[0], window[0], wp // window[1], window[1]).permute(0, 2, 1, 3)
    region = region.reshape(-1, window[0] * window[1])
    diff = region[:, None, :] - region[:, :, None]     # [nW, N, N]
    return torch.where(diff != 0, torch.full_like(diff, MASK_VALUE), torch.zeros_like(diff))


class WindowAttention(ShiftedWindowAttention):
    """torchvision's window attention module (``qkv``, ``proj``, ``relative_position_bias_table``)
    with the official detection backbone's forward: pad to window multiples, roll by the shift in
    every shifted block, attend within windows (relative position bias, shift mask), undo.

    ``relative_position_index`` is a function of the window size: kept as a buffer but not saved
    in state dicts (checkpoint converters recompute it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        index = self.relative_position_index
        del self.relative_position_index
        self.register_buffer("relative_position_index", index, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """[B, H, W, C] -> [B, H, W, C]."""
        bs, h, w, c = x.shape
        (wh, ww), (sh, sw) = self.window_size, self.shift_size
        x = F.pad(x, (0, 0, 0, (-w) % ww, 0, (-h) % wh))
        hp, wp = x.shape[1:3]
        shifted = sh > 0 or sw > 0
        if shifted:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        nh, nw, n = hp // wh, wp // ww, wh * ww
        heads = self.num_heads
        # [B, Hp, Wp, C] -> [B, nh, wh, nw, ww, C] -> [B * nW, N, C]
        x = x.view(bs, nh, wh, nw, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(bs * nh * nw, n, c)
        # [B * nW, N, 3C] -> [B * nW, N, 3, heads, C / heads] -> [3, B * nW, heads, N, C / heads]
        q, k, v = self.qkv(x).reshape(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)        # [B * nW, heads, N, N]
        logits = logits + self.get_relative_position_bias()            # + [1, heads, N, N]
        if shifted:
            mask = shift_mask((hp, wp), (wh, ww), (sh, sw), x.device, logits.dtype)   # [nW, N, N]
            # [B * nW, heads, N, N] -> [B, nW, heads, N, N]
            logits = (logits.view(bs, nh * nw, heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
        attn = F.dropout(logits.softmax(dim=-1), p=self.attention_dropout, training=self.training)
        out = (attn @ v).transpose(1, 2).reshape(-1, n, c)              # [B * nW, N, C]
        out = F.dropout(self.proj(out), p=self.dropout, training=self.training)
        # [B * nW, N, C] -> [B, nh, nw, wh, ww, C] -> [B, Hp, Wp, C]
        out = out.view(bs, nh, nw, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(bs, hp, wp, c)
        if shifted:
            out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
        return out[:, :h, :w].contiguous()


class PatchEmbed(nn.Module):
    """4x4 stride-4 convolution + LayerNorm; the image is zero-padded to a multiple of 4 first."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, ceil(H / 4), ceil(W / 4), C] (channels last)."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % PATCH_SIZE, 0, (-h) % PATCH_SIZE))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinStage(nn.Module):
    """``depth`` blocks (even: window attention, odd: shifted by window // 2), then an optional
    patch merging to the next stage's resolution."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, drop_path: list[float],
                 downsample: bool, with_cp: bool) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size=[window_size] * 2,
                                 shift_size=[0 if j % 2 == 0 else window_size // 2] * 2,
                                 stochastic_depth_prob=drop_path[j], norm_layer=nn.LayerNorm,
                                 attn_layer=WindowAttention)
            for j in range(depth))
        self.downsample = PatchMerging(dim, norm_layer=nn.LayerNorm) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        """[B, H, W, C] -> [B, H, W, C] (the merging is applied by the caller)."""
        for block in self.blocks:
            if self.with_cp and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class SwinBackbone(nn.Module):
    """Swin Transformer V1 with per-output LayerNorms: the official ``SwinTransformerV1`` (patch 4,
    MLP ratio 4, qkv bias, no absolute position embedding, patch norm) in numbers.

    ``out_channels`` / ``out_strides`` describe the returned maps. ``frozen_stages`` k >= 1 freezes
    the patch embedding and the first k - 1 stages (with their patch merging), and keeps them in
    eval mode, as the official ``frozen_stages`` k.
    """

    def __init__(self, arch: SwinArch, out_indices: list[int] | tuple[int, ...] = (1, 2, 3), frozen_stages: int = 0,
                 with_cp: bool = False) -> None:
        super().__init__()
        self.arch = arch
        self.out_indices = list(out_indices)
        self.patch_embed = PatchEmbed(arch.embed_dim)
        total = sum(arch.depths)
        rates = [arch.drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]  # linear from 0
        self.stages = nn.ModuleList()
        for i, depth in enumerate(arch.depths):
            first = sum(arch.depths[:i])
            self.stages.append(SwinStage(arch.embed_dim * 2 ** i, depth, arch.num_heads[i], arch.window_size,
                                         rates[first:first + depth], downsample=i < len(arch.depths) - 1,
                                         with_cp=with_cp))
        self.out_norms = nn.ModuleDict({str(i): nn.LayerNorm(arch.embed_dim * 2 ** i) for i in self.out_indices})
        self.out_channels = [arch.embed_dim * 2 ** i for i in self.out_indices]
        self.out_strides = [PATCH_SIZE * 2 ** i for i in self.out_indices]
        self._init_weights()
        self._frozen: list[nn.Module] = []
        if frozen_stages >= 1:
            self._frozen = [self.patch_embed, *self.stages[: frozen_stages - 1]]
        for module in self._frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def _init_weights(self) -> None:
        """The official init: linear layers truncated normal (std 0.02, zero bias), LayerNorms 1 / 0;
        the relative position bias tables truncated normal (std 0.02, as torchvision's), the patch
        convolution PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def train(self, mode: bool = True) -> "SwinBackbone":
        super().train(mode)
        for module in self._frozen:   # frozen parts keep dropout and stochastic depth off
            module.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """[B, 3, H, W] normalised images -> one [B, C_i, H_i, W_i] map per stage in ``out_indices``."""
        x = self.patch_embed(x)                      # [B, H/4, W/4, C]
        outs = []
        for i, stage in enumerate(self.stages[: self.out_indices[-1] + 1]):
            x = stage(x)
            if i in self.out_indices:
                outs.append(self.out_norms[str(i)](x).permute(0, 3, 1, 2).contiguous())   # [B, C_i, H_i, W_i]
            if stage.downsample is not None:
                x = stage.downsample(x)              # [B, ceil(H_i / 2), ceil(W_i / 2), 2 C_i]
        return outs


def build_swin(cfg: BackboneConfig) -> SwinBackbone:
    """The Swin backbone of ``model.backbone`` (``type: swin``), with its ImageNet weights when
    ``pretrained`` (see :mod:`codetr.models.backbones.swin_weights`)."""
    path = swin_weights_path(cfg) if cfg.pretrained else None   # a missing file fails before the build
    backbone = SwinBackbone(cfg.swin_arch(), cfg.out_indices, frozen_stages=cfg.frozen(), with_cp=cfg.with_cp)
    if path is not None:
        load_swin_weights(backbone, path)
    return backbone


__all__ = ["SwinBackbone", "WindowAttention", "build_swin", "shift_mask"]
