"""Slow-fast inference (SVT, Sec. 3.4): one network sees a *slow* clip (few frames, high resolution) and a
*fast* clip (many frames, low resolution) of the same video; the two CLS features are averaged.

The paper uses (8, 224, 224) and (64, 96, 96). The public SVT code never shipped it; this follows the
paper's description (uniform frame sampling over the whole input, the full frame resized, a
parameter-free combination). The backbone must accept any T and resolution (dynamic positional
embeddings). Gradients flow through when the caller enables them (fine-tuning); wrap the call in
``torch.no_grad()`` for frozen-feature protocols.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: the paper's clip shapes (T, H, W)
PAPER_SLOW = (8, 224, 224)
PAPER_FAST = (64, 96, 96)


def uniform_frame_indices(num_src: int, num_frames: int, device: torch.device | None = None) -> torch.Tensor:
    """``num_frames`` indices spread evenly over ``[0, num_src - 1]`` (frames repeat when
    ``num_frames > num_src``)."""
    if num_src < 1 or num_frames < 1:
        raise ValueError(f"uniform_frame_indices: need num_src >= 1 and num_frames >= 1, "
                         f"got {num_src}, {num_frames}")
    return torch.linspace(0, num_src - 1, num_frames, device=device).round().long()


def resample_clip(video: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """video (B, T, C, H, W) -> (B, t, C, h, w): uniform frames over the clip, full frames resized."""
    t, h, w = (int(s) for s in shape)
    B, T, C, H, W = video.shape
    x = video.index_select(1, uniform_frame_indices(T, t, video.device))   # (B, t, C, H, W)
    if (h, w) != (H, W):
        x = F.interpolate(x.flatten(0, 1), size=(h, w), mode="bilinear", align_corners=False,
                          antialias=(h < H or w < W))
        x = x.view(B, t, C, h, w)
    return x


def default_fast_shape(video: torch.Tensor, patch_size: int = 1) -> tuple[int, int, int]:
    """The paper's ratios applied to the input: all of its frames at 96/224 of its resolution, rounded
    to a multiple of ``patch_size`` (at least one patch)."""
    _, T, _, H, W = video.shape
    p = max(1, int(patch_size))
    side = lambda n: max(p, p * round(n * PAPER_FAST[1] / PAPER_SLOW[1] / p))  # noqa: E731
    return T, side(H), side(W)


def slow_fast_features(model: nn.Module, video: torch.Tensor, *, slow: tuple[int, int, int] | None = None,
                       fast: tuple[int, int, int] | None = None, return_both: bool = False):
    """CLS features of a slow and a fast clip of ``video`` (B, T, C, H, W), averaged -> (B, D).

    ``slow`` / ``fast`` are (T, H, W); by default slow = (8, H, W) and fast = (T, 96/224 H, 96/224 W)
    of the input (sides rounded to the model's ``patch_size``). With ``return_both`` also returns the
    two single-clip features: ``(avg, slow, fast)``.
    """
    if video.ndim != 5:
        raise ValueError(f"slow_fast_features: video must be (B, T, C, H, W), got {tuple(video.shape)}")
    _, T, _, H, W = video.shape
    slow = tuple(slow) if slow is not None else (min(PAPER_SLOW[0], T), H, W)
    fast = tuple(fast) if fast is not None else default_fast_shape(video, getattr(model, "patch_size", 1))
    for name, shape in (("slow", slow), ("fast", fast)):
        if len(shape) != 3 or any(int(s) < 1 for s in shape):
            raise ValueError(f"slow_fast_features: {name} must be (T, H, W) of positive ints, got {shape}")
    f_slow = model.forward_features(resample_clip(video, slow)).cls     # (B, D)
    f_fast = model.forward_features(resample_clip(video, fast)).cls     # (B, D)
    avg = (f_slow + f_fast) / 2
    return (avg, f_slow, f_fast) if return_both else avg
