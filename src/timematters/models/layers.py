"""Building blocks shared by every backbone: patch embedding, attention, MLP, stochastic depth,
positional-embedding resampling, and the surface methods every model has in common."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .base import Features


def to_2tuple(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class DropPath(nn.Module):
    """Stochastic depth: zero the whole residual branch of a sample with probability ``p``.

    ``drop_path(a, b)`` applies one draw per sample to both tensors (a branch whose output is held as
    a CLS ``(B, 1, D)`` and patch tokens ``(B, ..., D)``) and returns them as a tuple.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor, *more: torch.Tensor):
        if self.p == 0.0 or not self.training:
            return (x, *more) if more else x
        keep = 1.0 - self.p
        mask = x.new_empty(x.shape[0]).bernoulli_(keep).div_(keep)            # (B,)
        out = tuple(t * mask.view((-1,) + (1,) * (t.ndim - 1)) for t in (x, *more))
        return out if more else out[0]

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention over the second-to-last axis of ``(..., L, D)``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S, L, D) -> q, k, v each (S, H, L, d)."""
        S, L, _ = x.shape
        # unbind on the un-permuted layout: its backward stacks the three gradients straight into the
        # (S, L, 3, H, d) layout of the qkv output (one copy instead of a stack plus a reshape copy)
        q, k, v = self.qkv(x).view(S, L, 3, self.num_heads, self.head_dim).unbind(2)   # (S, L, H, d)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention output before the output projection, ``(..., L, D)``."""
        *lead, L, D = x.shape
        q, k, v = self.split_heads(x.reshape(-1, L, D))
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return o.transpose(1, 2).reshape(*lead, L, D)   # (..., L, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_drop(self.proj(self.attend(x)))


class PatchEmbed(nn.Module):
    """Frames -> patch tokens. ``(B, T, C, H, W) -> (B, T', N, D)`` and the grid ``(h, w)``.

    ``tubelet_size > 1`` uses a 3-D kernel over ``tubelet_size`` frames (T' = T / tubelet_size); the
    weight is then ``(D, C, t, p, p)``.
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768, tubelet_size: int = 1):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.tubelet_size = int(tubelet_size)
        if self.tubelet_size == 1:
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        else:
            k = (self.tubelet_size, *self.patch_size)
            self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        B, T, C, H, W = x.shape
        ph, pw = self.patch_size
        if H % ph or W % pw:
            raise ValueError(f"input size {H}x{W} is not a multiple of the patch size {ph}x{pw}")
        if self.tubelet_size == 1:
            y = self.proj(x.reshape(B * T, C, H, W))                 # (B*T, D, h, w)
            h, w = y.shape[-2:]
            y = y.flatten(2).transpose(1, 2).reshape(B, T, h * w, -1)  # (B, T, N, D)
        else:
            if T % self.tubelet_size:
                raise ValueError(f"T={T} frames is not a multiple of tubelet_size={self.tubelet_size}")
            y = self.proj(x.transpose(1, 2))                          # (B, D, T', h, w)
            h, w = y.shape[-2:]
            y = y.flatten(3).permute(0, 2, 3, 1)                      # (B, T', N, D)
        return y, (h, w)


def resample_pos_embed(pos: torch.Tensor, new_hw: tuple[int, int], old_hw: tuple[int, int],
                       num_prefix: int = 1) -> torch.Tensor:
    """2-D bicubic resampling of ``(1, P + h*w, D)`` position embeddings to a new grid (P prefix tokens kept)."""
    if tuple(new_hw) == tuple(old_hw):
        return pos
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    D = grid.shape[-1]
    if grid.shape[1] != old_hw[0] * old_hw[1]:
        raise ValueError(f"pos_embed has {grid.shape[1]} grid tokens, expected {old_hw[0]}x{old_hw[1]}")
    grid = grid.reshape(1, old_hw[0], old_hw[1], D).permute(0, 3, 1, 2).float()   # (1, D, h, w)
    antialias = new_hw[0] < old_hw[0] or new_hw[1] < old_hw[1]
    grid = F.interpolate(grid, size=tuple(new_hw), mode="bicubic", align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], D).to(pos.dtype)
    return torch.cat([prefix, grid], dim=1)


def resample_time_embed(time: torch.Tensor, num_frames: int, dim: int = 1) -> torch.Tensor:
    """Linear resampling of a time embedding along ``dim`` (its T axis) to ``num_frames`` entries."""
    T = time.shape[dim]
    if T == num_frames:
        return time
    x = time.movedim(dim, -1)                              # (..., T)
    lead = x.shape[:-1]
    x = x.reshape(1, -1, T).float()
    x = F.interpolate(x, size=num_frames, mode="linear", align_corners=False)
    return x.reshape(*lead, num_frames).movedim(-1, dim).to(time.dtype)


def init_weights(module: nn.Module) -> None:
    """timm ViT init: truncated normal (std 0.02) linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
        # like a Linear over the flattened patch (timm's lecun-style default for the stem)
        fan_in = math.prod(module.weight.shape[1:])
        nn.init.trunc_normal_(module.weight, std=math.sqrt(1.0 / fan_in))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Stochastic depth rising linearly from 0 to ``drop_path_rate`` over the blocks."""
    if depth <= 1:
        return [float(drop_path_rate)] * depth
    return [drop_path_rate * i / (depth - 1) for i in range(depth)]


class BackboneMixin:
    """The parts of the common surface that are the same for every backbone.

    A model sets ``embed_dim``, ``num_classes``, ``patch_size``, ``num_frames``, ``head``, ``head_drop``,
    ``blocks`` and ``grad_checkpointing`` and implements ``forward_features``.
    """

    grad_checkpointing: bool = False
    _no_weight_decay: tuple[str, ...] = ()

    def _set_surface(self, *, embed_dim: int, num_classes: int, patch_size: int, num_frames: int,
                     img_size: int | tuple[int, int]) -> int:
        """Set the surface attributes every backbone exposes; returns the patches per frame."""
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.num_frames = num_frames
        self.img_size = to_2tuple(img_size)
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        return self.grid_size[0] * self.grid_size[1]

    def run_block(self, block: nn.Module, *args: torch.Tensor):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = bool(enable)

    def no_weight_decay(self) -> set[str]:
        return set(self._no_weight_decay)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            init_weights(self.head)
        ref = self.cls_token
        self.head.to(device=ref.device, dtype=ref.dtype)

    def forward_head(self, features: Features, pre_logits: bool = False) -> torch.Tensor:
        x = features.head_input if features.head_input is not None else features.cls   # (B, D)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
