"""Motionformer: trajectory attention (Patrick et al., NeurIPS 2021).

Each patch query attends over the patches of every frame separately (softmax over space within a frame),
giving one trajectory token per frame; a second, 1-D attention over those T trajectory tokens (queried by
the token of the query's own frame) gives the output. The CLS attends jointly to all tokens. Cost
O(T^2 N^2). Parameter names follow the official code (``attn.qkv``, ``attn.proj_q``, ``attn.proj_kv``,
``temp_embed``, ``pre_logits.fc``); official checkpoints load through ``convert.official_motionformer_to_ours``.
``Features.cls`` / ``Features.tokens`` are read after the final norm and the official ``pre_logits``
(Linear + tanh), on every token as in TIME's official code.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .base import Features
from .layers import (BackboneMixin, DropPath, Mlp, PatchEmbed, drop_path_rates, init_weights, resample_pos_embed,
                     resample_time_embed)


class TrajectoryAttention(nn.Module):
    """Trajectory attention on a CLS ``(B, 1, D)`` and patch tokens ``(B, T, N, D)``.

    ``v_from_x=True`` reproduces the official code's slip: the temporal step uses the trajectory tokens
    themselves as values instead of their ``proj_kv`` value projection.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, v_from_x: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.v_from_x = v_from_x

    def forward(self, cls: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, N, D = x.shape
        H, d, S = self.num_heads, self.head_dim, T * N
        p = self.attn_drop if self.training else 0.0
        qc, kc, vc = self.qkv(cls).view(B, 1, 3, H, d).permute(2, 0, 3, 1, 4)       # each (B, H, 1, d)
        q, k, v = self.qkv(x).view(B, S, 3, H, d).permute(2, 0, 3, 1, 4)           # each (B, H, S, d)

        # CLS: joint attention over itself and all T*N patches
        cls_out = F.scaled_dot_product_attention(
            qc, torch.cat([kc, k], dim=2), torch.cat([vc, v], dim=2), dropout_p=p)  # (B, H, 1, d)

        # spatial step: every query against each frame's N patches -> one trajectory token per frame
        qf = q.unsqueeze(2).expand(B, H, T, S, d).reshape(B, H * T, S, d)
        traj = F.scaled_dot_product_attention(
            qf, k.reshape(B, H * T, N, d), v.reshape(B, H * T, N, d), dropout_p=p)   # (B, H*T, S, d): [h, f] x s
        traj = traj.view(B, H, T, S, d).permute(0, 3, 2, 1, 4).reshape(B, S, T, D)  # (B, S, T_f, D)

        # temporal step: query = the trajectory token at the query's own frame
        diag = traj.view(B, T, N, T, D).diagonal(dim1=1, dim2=3)                   # (B, N, D, T)
        q2 = self.proj_q(diag.permute(0, 3, 1, 2).reshape(B, S, D))                 # (B, S, D)
        k2, v2 = self.proj_kv(traj).chunk(2, dim=-1)                                # (B, S, T, D) each
        vals = traj if self.v_from_x else v2
        q2 = q2.view(B, S, 1, H, d).transpose(2, 3)                                 # (B, S, H, 1, d)
        k2 = k2.view(B, S, T, H, d).transpose(2, 3)                                 # (B, S, H, T, d)
        vals = vals.reshape(B, S, T, H, d).transpose(2, 3)                          # (B, S, H, T, d)
        attn = (q2 * self.scale) @ k2.transpose(-2, -1)                             # (B, S, H, 1, T)
        out = attn.softmax(dim=-1) @ vals                                           # (B, S, H, 1, d)

        cls_out = self.proj_drop(self.proj(cls_out.transpose(1, 2).reshape(B, 1, D)))
        out = self.proj_drop(self.proj(out.reshape(B, T, N, D)))
        return cls_out, out


class TrajectoryBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, eps: float = 1e-6, v_from_x: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = TrajectoryAttention(dim, num_heads, qkv_bias, attn_drop, drop, v_from_x)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, cls: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cls (B, 1, D), x (B, T, N, D) -> same shapes. Each norm runs once on the joint sequence
        ``[CLS, patches]`` (B, 1 + T*N, D), as in the official code (and what a GradCAM hook expects)."""
        B, T, N, D = x.shape
        h = self.norm1(torch.cat([cls, x.reshape(B, T * N, D)], dim=1))              # (B, 1+T*N, D)
        rc, rx = self.drop_path(*self.attn(h[:, :1], h[:, 1:].reshape(B, T, N, D)))  # one draw per sample for both
        cls, x = cls + rc, x + rx
        h = self.mlp(self.norm2(torch.cat([cls, x.reshape(B, T * N, D)], dim=1)))   # (B, 1+T*N, D)
        rc, rx = self.drop_path(h[:, :1], h[:, 1:].reshape(B, T, N, D))
        return cls + rc, x + rx


class Motionformer(BackboneMixin, nn.Module):
    arch = "motionformer"
    _no_weight_decay = ("pos_embed", "cls_token", "temp_embed")

    def __init__(self, *, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 400, num_frames: int = 8, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, layer_norm_eps: float = 1e-6,
                 tubelet_size: int = 1, v_from_x: bool = False, pre_logits: bool = True):
        """``tubelet_size``: frames per patch (the paper uses 2; TIME used 1x16x16 patches, our default).
        ``v_from_x``: reproduce the official code's value slip (see :class:`TrajectoryAttention`); the
        official default is ``True`` (``VIT.USE_ORIGINAL_TRAJ_ATTN_CODE``).
        ``pre_logits``: the official head's Linear + tanh (``VIT.USE_MLP``, ``HEAD_ACT: tanh``) after the final
        norm; as TIME's official code, it runs on every token, so order/flow heads read what the classifier reads."""
        super().__init__()
        if num_frames % tubelet_size:
            raise ValueError(f"num_frames={num_frames} is not a multiple of tubelet_size={tubelet_size}")
        num_patches = self._set_surface(embed_dim=embed_dim, num_classes=num_classes, patch_size=patch_size,
                                        num_frames=num_frames, img_size=img_size)

        self.tubelet_size = tubelet_size                                     # frames per token time step
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, tubelet_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, num_frames // tubelet_size, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList([
            TrajectoryBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i],
                            layer_norm_eps, v_from_x)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.pre_logits = (nn.Sequential(OrderedDict(fc=nn.Linear(embed_dim, embed_dim), act=nn.Tanh()))
                           if pre_logits else nn.Identity())
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def forward_features(self, x: torch.Tensor, return_hidden: bool = False) -> Features:
        """x (B, T, C, H, W) -> Features(cls (B, D), tokens (B, T', N, D), hidden); T' = T / tubelet_size."""
        if x.ndim != 5:
            raise ValueError(f"expected a video batch (B, T, C, H, W), got shape {tuple(x.shape)}")
        B = x.shape[0]
        x, hw = self.patch_embed(x)                                           # (B, T', N, D)
        pos = resample_pos_embed(self.pos_embed, hw, self.grid_size)          # (1, 1+N, D)
        time = resample_time_embed(self.temp_embed, x.shape[1])              # (1, T', D)
        cls = self.pos_drop(self.cls_token + pos[:, :1]).expand(B, 1, -1)     # (B, 1, D)
        x = self.pos_drop(x + pos[:, None, 1:] + time[:, :, None])            # (B, T', N, D)

        hidden = [] if return_hidden else None
        for blk in self.blocks:
            cls, x = self.run_block(blk, cls, x)
            if hidden is not None:
                hidden.append(x)
        B, T, N, D = x.shape
        out = self.pre_logits(self.norm(torch.cat([cls, x.reshape(B, T * N, D)], dim=1)))   # (B, 1+T'*N, D)
        return Features(cls=out[:, 0], tokens=out[:, 1:].reshape(B, T, N, D), hidden=hidden)
