"""Image ViT / DeiT (Dosovitskiy et al. 2021; Touvron et al. 2021) with timm's parameter names.

Takes ``(B, C, H, W)`` or ``(B, 1, C, H, W)`` and returns tokens as ``(B, 1, N, D)`` so that it offers the
same surface as the video backbones (the image extension of TIME treats an image as a one-frame clip).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Features
from .layers import (Attention, BackboneMixin, DropPath, Mlp, PatchEmbed, drop_path_rates, init_weights,
                     resample_pos_embed)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(BackboneMixin, nn.Module):
    arch = "vit"
    _no_weight_decay = ("pos_embed", "cls_token")

    def __init__(self, *, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, num_frames: int = 1, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, layer_norm_eps: float = 1e-6):
        super().__init__()
        if num_frames != 1:
            raise ValueError(f"image model: num_frames must be 1, got {num_frames}")
        num_patches = self._set_surface(embed_dim=embed_dim, num_classes=num_classes, patch_size=patch_size,
                                        num_frames=1, img_size=img_size)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], layer_norm_eps)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)   # timm's default for the class token
        self.apply(init_weights)

    def forward_features(self, x: torch.Tensor, return_hidden: bool = False) -> Features:
        """x (B, C, H, W) or (B, 1, C, H, W) -> Features(cls (B, D), tokens (B, 1, N, D), hidden)."""
        if x.ndim == 4:
            x = x.unsqueeze(1)
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"image model expects (B, C, H, W) or (B, 1, C, H, W), got shape {tuple(x.shape)}")
        B = x.shape[0]
        x, hw = self.patch_embed(x)                                          # (B, 1, N, D)
        x = x[:, 0]                                                          # (B, N, D)
        pos = resample_pos_embed(self.pos_embed, hw, self.grid_size)         # (1, 1+N, D)
        x = torch.cat([self.cls_token.expand(B, 1, -1), x], dim=1) + pos     # (B, 1+N, D)
        x = self.pos_drop(x)

        hidden = [] if return_hidden else None
        for blk in self.blocks:
            x = self.run_block(blk, x)
            if hidden is not None:
                hidden.append(x[:, None, 1:])
        x = self.norm(x)
        return Features(cls=x[:, 0], tokens=x[:, None, 1:], hidden=hidden)
