"""TimeSformer with divided space-time attention (Bertasius et al., ICML 2021).

Parameter names follow the official code (``blocks.i.temporal_attn``, ``temporal_fc``, ``time_embed``), so
official checkpoints map one to one (see ``convert.py``). Tokens are kept as ``(B, T, N, D)`` plus one
video-level CLS ``(B, 1, D)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Features
from .layers import (Attention, BackboneMixin, DropPath, Mlp, PatchEmbed, drop_path_rates, init_weights,
                     resample_pos_embed, resample_time_embed)


class DividedBlock(nn.Module):
    """Temporal attention (per spatial position), then spatial attention (per frame, with the CLS), then MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.temporal_norm1 = nn.LayerNorm(dim, eps=eps)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def temporal_branch(self, h: torch.Tensor) -> torch.Tensor:
        """temporal_fc(proj(attention(h))) on (B, N, T, D).

        With no dropout between them, the two linear maps are applied as one: W = W_fc W_proj,
        b = W_fc b_proj + b_fc (a D x D x D product instead of a full linear layer over all tokens,
        forward and backward). The parameters and their gradients are those of the two-layer form.
        """
        attn = self.temporal_attn
        o = attn.attend(h)
        if self.training and attn.proj_drop.p > 0:
            return self.temporal_fc(attn.proj_drop(attn.proj(o)))
        weight = self.temporal_fc.weight @ attn.proj.weight
        bias = F.linear(attn.proj.bias, self.temporal_fc.weight, self.temporal_fc.bias)
        return F.linear(o, weight, bias)

    def forward(self, cls: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cls (B, 1, D), x (B, N, T, D) -> same shapes.

        Patch tokens are held position-major, ``(B, N, T, D)``, so that the temporal attention runs on
        ``(B*N, T, D)`` without a copy; the spatial step gathers ``(B, T, 1+N, D)`` with the one copy
        it needs anyway (prepending the CLS).
        """
        B, N, T, D = x.shape
        # temporal attention over the T tokens at each spatial position
        rt = self.temporal_branch(self.temporal_norm1(x))                     # (B, N, T, D)
        # The official code applies drop_path before temporal_fc (so a dropped branch still adds its bias)
        # and per (sample, position); we drop the whole residual branch per sample, as stochastic depth does.
        x = x + self.drop_path(rt)

        # spatial attention per frame over [CLS, N patches]; the CLS is repeated per frame, averaged back
        xs = torch.cat([cls.unsqueeze(1).expand(B, T, 1, D), x.transpose(1, 2)], dim=2)   # (B, T, 1+N, D)
        rc, rx = self.attn(self.norm1(xs)).split([1, N], dim=2)              # (B, T, 1, D), (B, T, N, D)
        rc, rx = self.drop_path(rc.mean(dim=1), rx.transpose(1, 2))          # (B, 1, D), (B, N, T, D)
        cls, x = cls + rc, x + rx

        rc, rx = self.drop_path(self.mlp(self.norm2(cls)), self.mlp(self.norm2(x)))
        return cls + rc, x + rx


class TimeSformer(BackboneMixin, nn.Module):
    arch = "timesformer"
    _no_weight_decay = ("pos_embed", "cls_token", "time_embed")

    def __init__(self, *, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 400, num_frames: int = 8, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, layer_norm_eps: float = 1e-6):
        super().__init__()
        num_patches = self._set_surface(embed_dim=embed_dim, num_classes=num_classes, patch_size=patch_size,
                                        num_frames=num_frames, img_size=img_size)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList([
            DividedBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], layer_norm_eps)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)
        # official code: temporal_fc starts at zero in every block but the first
        for blk in list(self.blocks)[1:]:
            nn.init.zeros_(blk.temporal_fc.weight)
            nn.init.zeros_(blk.temporal_fc.bias)

    def forward_features(self, x: torch.Tensor, return_hidden: bool = False) -> Features:
        """x (B, T, C, H, W) -> Features(cls (B, D), tokens (B, T, N, D), hidden)."""
        if x.ndim != 5:
            raise ValueError(f"expected a video batch (B, T, C, H, W), got shape {tuple(x.shape)}")
        B, T = x.shape[:2]
        x, hw = self.patch_embed(x)                                          # (B, T, N, D)
        pos = resample_pos_embed(self.pos_embed, hw, self.grid_size)         # (1, 1+N, D)
        # the official code resizes time_embed by nearest neighbour and pos_embed by 1-D nearest over the
        # flattened grid; we resample linearly in time and bicubically on the 2-D grid
        time = resample_time_embed(self.time_embed, T)                       # (1, T, D)
        cls = self.pos_drop(self.cls_token + pos[:, :1]).expand(B, 1, -1)    # (B, 1, D)
        x = self.pos_drop(x + pos[:, None, 1:] + time[:, :, None])           # (B, T, N, D)
        x = x.transpose(1, 2).contiguous()                                   # (B, N, T, D), see DividedBlock

        hidden = [] if return_hidden else None
        for blk in self.blocks:
            cls, x = self.run_block(blk, cls, x)
            if hidden is not None:
                hidden.append(x.transpose(1, 2))                             # (B, T, N, D) view
        return Features(cls=self.norm(cls[:, 0]), tokens=self.norm(x.transpose(1, 2)), hidden=hidden)
