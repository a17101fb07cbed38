"""X-ViT: space-time mixing attention (Bulat et al., NeurIPS 2021), as the official code (its
``temporal_shift.py`` and head) used by TIME.

Every frame keeps its own CLS token and attends spatially over ``1 + N`` tokens, but the keys and values
mix channels of neighbouring frames: over all D channels (heads concatenated, so whole head groups move),
the first quarter comes from frame t+1, the second quarter from t-1, the rest from t (TSM's shift with
``n_div`` = 4, zero past the clip ends), in every block. The head, as the official ``VitHead``: a learnable
CLS token (zero init, no position embedding) is prepended to the T per-frame CLS tokens, one transformer
layer runs over them (no qkv bias, LayerNorm eps 1e-5, as there), and its CLS output goes through
LN -> Linear -> GELU -> Dropout(``head_drop_rate``, 0.5 in the official SSv2 config) -> Linear (``head``).

``Features.cls`` is the temporal CLS output after the LN ``(B, D)``; ``Features.head_input`` is that after
Linear -> GELU ``(B, D)`` (what ``head_drop`` and ``head`` read); ``Features.tokens`` are the per-frame patch tokens
``(B, T, N, D)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Features
from .layers import (Attention, BackboneMixin, PatchEmbed, drop_path_rates, init_weights, resample_pos_embed,
                     resample_time_embed)
from .vit import Block


def temporal_shift(t: torch.Tensor, n_div: int = 4) -> torch.Tensor:
    """TSM shift of ``(B, T, ..., D)`` over the last axis: channels [0, D/n_div) from frame t+1,
    [D/n_div, 2D/n_div) from frame t-1 (zero past the ends), the rest unchanged."""
    c = t.shape[-1] // n_div
    pad = (0, 0) * (t.ndim - 2)
    nxt = F.pad(t[:, 1:, ..., :c], pad + (0, 1))                # frame t sees t+1 (zero at T-1)
    prev = F.pad(t[:, :-1, ..., c:2 * c], pad + (1, 0))          # frame t sees t-1 (zero at 0)
    return torch.cat([nxt, prev, t[..., 2 * c:]], dim=-1)


class MixingAttention(Attention):
    """Per-frame attention whose keys/values are temporally shifted; ``(B, T, L, D) -> (B, T, L, D)``
    (the parameters of :class:`Attention`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, L, D = x.shape
        H, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, T, L, 3, D).unbind(3)                        # each (B, T, L, D)
        k, v = temporal_shift(k), temporal_shift(v)                                # across all channels
        q, k, v = (t.reshape(B * T, L, H, d).transpose(1, 2) for t in (q, k, v))   # each (B*T, H, L, d)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        o = o.transpose(1, 2).reshape(B, T, L, D)
        return self.proj_drop(self.proj(o))


class MixingBlock(Block):
    """The ViT block with :class:`MixingAttention` (same parameter names, so ViT weights load)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, eps: float = 1e-6):
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path, eps)
        self.attn = MixingAttention(dim, num_heads, qkv_bias, attn_drop, drop)


class XViT(BackboneMixin, nn.Module):
    arch = "xvit"
    _no_weight_decay = ("pos_embed", "cls_token", "temp_embed", "temporal_cls")

    def __init__(self, *, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 400, num_frames: int = 8, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, layer_norm_eps: float = 1e-6,
                 head_drop_rate: float = 0.0):
        """``head_drop_rate``: the dropout between the head's GELU and its last Linear (official SSv2: 0.5)."""
        super().__init__()
        num_patches = self._set_surface(embed_dim=embed_dim, num_classes=num_classes, patch_size=patch_size,
                                        num_frames=num_frames, img_size=img_size)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, num_frames, 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList([
            MixingBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], layer_norm_eps)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        # the official head: a learnable CLS over the T per-frame CLS tokens, one transformer layer,
        # then LN -> Linear -> GELU -> Dropout -> Linear (head)
        self.temporal_cls = nn.Parameter(torch.zeros(1, 1, embed_dim))                  # zero, as the official
        self.consensus = Block(embed_dim, num_heads, mlp_ratio, False, 0.0, 0.0, 0.0, 1e-5)
        self.consensus_norm = nn.LayerNorm(embed_dim, eps=1e-5)
        self.head_fc = nn.Linear(embed_dim, embed_dim)
        self.head_drop = nn.Dropout(head_drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def forward_features(self, x: torch.Tensor, return_hidden: bool = False) -> Features:
        """x (B, T, C, H, W) -> Features(cls (B, D) consensus output, tokens (B, T, N, D), hidden)."""
        if x.ndim != 5:
            raise ValueError(f"expected a video batch (B, T, C, H, W), got shape {tuple(x.shape)}")
        B, T = x.shape[:2]
        x, hw = self.patch_embed(x)                                           # (B, T, N, D)
        pos = resample_pos_embed(self.pos_embed, hw, self.grid_size)          # (1, 1+N, D)
        time = resample_time_embed(self.temp_embed, T)                       # (1, T, 1, D)
        cls = (self.cls_token + pos[:, :1]).expand(B, T, 1, -1)               # (B, T, 1, D) one per frame
        x = torch.cat([cls, x + pos[:, None, 1:]], dim=2) + time              # (B, T, 1+N, D)
        x = self.pos_drop(x)

        hidden = [] if return_hidden else None
        for blk in self.blocks:
            x = self.run_block(blk, x)
            if hidden is not None:
                hidden.append(x[:, :, 1:])
        x = self.norm(x)
        seq = torch.cat([self.temporal_cls.expand(B, 1, -1), x[:, :, 0]], dim=1)     # (B, 1+T, D)
        cls = self.consensus_norm(self.consensus(seq)[:, 0])                  # (B, D) the temporal CLS, LN
        head_input = F.gelu(self.head_fc(cls))                                # (B, D) -> Linear -> GELU
        return Features(cls=cls, tokens=x[:, :, 1:], hidden=hidden, head_input=head_input)
