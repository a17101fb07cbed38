"""Temporal transformations: the frame-index sequences behind TIME's shuffles, the audit, RTT and TaCo.

Every generator is a pure function of (video length, clip length, random generator) and returns an
int64 array of frame indices into the video; nothing here touches pixels except ``apply_order``
(reorders a batch) and ``rotation_jitter`` (TaCo's spatial op on a clip).

Rule for videos too short for the requested sequence (applies to ``speed_indices``,
``periodic_indices``, ``random_indices`` and ``warp_indices``): the sequence is laid out from frame 0
and indices past the end are clamped to the last frame (the clip freezes at the end). RTT avoids this
as the paper does, by capping the speed with ``max_speed`` per video; ``warp_indices`` caps its skips.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

Rng = np.random.Generator


def _check_lengths(video_len: int, clip_len: int, min_clip: int = 1) -> None:
    if video_len < 1:
        raise ValueError(f"video_len must be >= 1, got {video_len}")
    if clip_len < min_clip:
        raise ValueError(f"clip_len must be >= {min_clip}, got {clip_len}")


def _place(offsets: np.ndarray, video_len: int, rng: Rng) -> np.ndarray:
    """Shift relative offsets (min 0) to a uniformly random start where they fit; clamp otherwise."""
    span = int(offsets.max()) + 1
    start = int(rng.integers(0, video_len - span + 1)) if span <= video_len else 0
    return np.minimum(offsets + start, video_len - 1).astype(np.int64)


# ----------------------------------------------------------------------------- permutations
def random_permutation(n: int, rng: Rng, *, allow_identity: bool = False) -> np.ndarray:
    """A uniformly random permutation of range(n); never the identity unless ``allow_identity``."""
    if n < 1 or (n < 2 and not allow_identity):
        raise ValueError(f"a non-identity permutation needs n >= 2, got n={n}")
    while True:
        perm = rng.permutation(n).astype(np.int64)
        if allow_identity or np.any(perm != np.arange(n)):
            return perm


def batch_permutations(
    batch: int,
    n: int,
    generator: torch.Generator | None = None,
    *,
    per_sample: bool = True,
    allow_identity: bool | None = None,
) -> torch.Tensor:
    """Frame orders for a batch: LongTensor (B, n) on the generator's device.

    ``per_sample=True`` (default): an independent permutation per sample, never the identity.
    ``per_sample=False``: one permutation shared by the batch, as the official TIME code draws it
    (identity not excluded there). ``allow_identity=None`` picks that mode's default.
    """
    if allow_identity is None:
        allow_identity = not per_sample
    if batch < 1 or n < 1 or (n < 2 and not allow_identity):
        raise ValueError(f"cannot draw non-identity permutations of n={n} for batch={batch}")
    device = generator.device if generator is not None else torch.device("cpu")
    identity = torch.arange(n, device=device)
    rows = batch if per_sample else 1
    perms = torch.rand(rows, n, generator=generator, device=device).argsort(dim=1)  # (rows, n)
    while not allow_identity:
        redraw = (perms == identity).all(dim=1)  # (rows,)
        if not bool(redraw.any()):
            break
        fresh = torch.rand(int(redraw.sum()), n, generator=generator, device=device).argsort(dim=1)
        perms[redraw] = fresh
    return perms.expand(batch, n).clone() if not per_sample else perms


def reverse(n: int) -> np.ndarray:
    """Indices n-1, ..., 0."""
    if n < 1:
        raise ValueError(f"reverse needs n >= 1, got {n}")
    return np.arange(n - 1, -1, -1, dtype=np.int64)


def apply_order(video: torch.Tensor, order: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Reorder frames: video (B, T, C, H, W), order (B, T') or (T',) -> (B, T', C, H, W)."""
    if video.ndim != 5:
        raise ValueError(f"video must be (B, T, C, H, W), got shape {tuple(video.shape)}")
    order = torch.as_tensor(order, dtype=torch.long, device=video.device)
    b, t = video.shape[:2]
    if order.ndim == 1:
        order = order.expand(b, -1)
    if order.ndim != 2 or order.shape[0] != b:
        raise ValueError(f"order must be (B, T) or (T,) for a video of shape {tuple(video.shape)}, "
                         f"got {tuple(order.shape)}")
    if order.numel() and (int(order.min()) < 0 or int(order.max()) >= t):
        raise ValueError(f"order holds frame indices outside [0, {t - 1}]")
    rows = torch.arange(b, device=video.device)[:, None]  # (B, 1)
    return video[rows, order]  # (B, T', C, H, W)


# ----------------------------------------------------------------------------- RTT sequences
def max_speed(video_len: int, clip_len: int, num_speeds: int = 4) -> int:
    """Largest speed k < num_speeds whose clip (every 2^k-th frame) fits in the video; 0 if none."""
    _check_lengths(video_len, clip_len)
    k = 0
    while k + 1 < num_speeds and (clip_len - 1) * 2 ** (k + 1) + 1 <= video_len:
        k += 1
    return k


def speed_indices(video_len: int, clip_len: int, k: int, rng: Rng) -> np.ndarray:
    """Every 2^k-th frame from a random start (RTT "speed k": skip 2^k - 1 frames between frames).

    The start is uniform over the positions where the whole clip fits; a video shorter than
    ``(clip_len - 1) * 2^k + 1`` frames starts at 0 and freezes on its last frame (cap k with
    ``max_speed`` first to avoid that).
    """
    _check_lengths(video_len, clip_len)
    if k < 0:
        raise ValueError(f"speed k must be >= 0, got {k}")
    return _place(np.arange(clip_len, dtype=np.int64) * 2**k, video_len, rng)


def periodic_indices(video_len: int, clip_len: int, speed: int, rng: Rng) -> np.ndarray:
    """Forward then backward playback at speed 2^speed (RTT "periodic").

    The forward part has ``a`` frames (uniform in [2, clip_len - 2]) and ends at the switch point;
    the backward part has the remaining ``clip_len - a >= 2`` frames, starting one step below the
    switch point and shifted by a random sub-step offset delta in [0, 2^speed - 1] (the paper's delta:
    at speed > 0 the way back does not revisit the frames of the way forward).
    """
    _check_lengths(video_len, clip_len, min_clip=4)
    if speed < 0:
        raise ValueError(f"speed must be >= 0, got {speed}")
    m = 2**speed
    a = int(rng.integers(2, clip_len - 1))  # forward frames, including the switch point
    delta = int(rng.integers(0, m))
    forward = np.arange(a, dtype=np.int64) * m  # 0, m, ..., (a-1) m
    backward = (a - 1 - np.arange(1, clip_len - a + 1, dtype=np.int64)) * m + delta
    offsets = np.concatenate([forward, backward])
    return _place(offsets - offsets.min(), video_len, rng)


def random_indices(video_len: int, clip_len: int, rng: Rng) -> np.ndarray:
    """``clip_len`` consecutive frames from a random start, randomly permuted (never in order)."""
    _check_lengths(video_len, clip_len, min_clip=2)
    order = random_permutation(clip_len, rng)
    return _place(order, video_len, rng)


def warp_indices(video_len: int, clip_len: int, rng: Rng, max_skip: int = 7) -> np.ndarray:
    """Ordered frames with independent random skips of 0..max_skip frames between neighbours.

    Skipping s frames means consecutive indices differ by s + 1 (strictly increasing; the paper's
    formula with raw cumulative skips would repeat frames at s = 0, its text says "skipped frames").
    The skip range is capped so that the clip always fits the video when it can.
    """
    _check_lengths(video_len, clip_len)
    if max_skip < 0:
        raise ValueError(f"max_skip must be >= 0, got {max_skip}")
    if clip_len > 1:
        fits = (video_len - 1) // (clip_len - 1) - 1  # largest skip with (L-1)(s+1) + 1 <= video_len
        max_skip = max(0, min(max_skip, fits))
    skips = rng.integers(0, max_skip + 1, size=clip_len - 1)
    offsets = np.concatenate([[0], np.cumsum(skips + 1)]).astype(np.int64)
    return _place(offsets, video_len, rng)


# ----------------------------------------------------------------------------- TaCo rotation
def _uniform(n: int, low: float, high: float, rng: Rng | torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    if isinstance(rng, np.random.Generator):
        return torch.as_tensor(rng.uniform(low, high, size=n), dtype=torch.float32, device=device)
    gen_device = rng.device if rng is not None else torch.device("cpu")
    u = torch.rand(n, generator=rng, device=gen_device)
    return (low + (high - low) * u).to(device=device, dtype=torch.float32)


def rotation_jitter(
    clip: torch.Tensor,
    rotation: int | Sequence[int] | torch.Tensor,
    rng: Rng | torch.Generator | None = None,
    noise_deg: float = 3.0,
) -> torch.Tensor:
    """TaCo's rotation jittering: rotate by ``rotation * 90`` degrees plus per-frame noise.

    clip: (T, C, H, W) or (B, T, C, H, W) float; rotation: k in {0, 1, 2, 3} (one per clip in a
    batch, or one for all). Angles are counter-clockwise as displayed. The 90-degree part is exact
    (``torch.rot90``, needs H == W unless k is even); each frame then gets its own uniform noise in
    [-noise_deg, noise_deg] degrees (bilinear resampling, zeros outside the frame).
    """
    batched = clip.ndim == 5
    if clip.ndim not in (4, 5):
        raise ValueError(f"clip must be (T, C, H, W) or (B, T, C, H, W), got {tuple(clip.shape)}")
    x = clip if batched else clip[None]  # (B, T, C, H, W)
    b, t, c, h, w = x.shape
    ks = torch.as_tensor(rotation, dtype=torch.long).flatten().cpu()
    if ks.numel() == 1:
        ks = ks.expand(b)
    if ks.numel() != b or bool(((ks < 0) | (ks > 3)).any()):
        raise ValueError(f"rotation must be one k in {{0,1,2,3}} or one per clip (B={b}), got {rotation!r}")
    if h != w and bool((ks % 2 == 1).any()):
        raise ValueError(f"a 90/270 degree rotation needs square frames, got {h}x{w}")
    x = torch.stack([torch.rot90(x[i], int(ks[i]), dims=(-2, -1)) for i in range(b)])  # (B, T, C, H, W)

    # Per-frame small rotation with an affine grid (one draw per frame, batch-major order).
    alpha = torch.deg2rad(_uniform(b * t, -noise_deg, noise_deg, rng, x.device))  # (B*T,)
    cos, sin = torch.cos(alpha), torch.sin(alpha)
    # Output pixel p samples the input at R(-alpha) p (y down, so this turns the picture
    # counter-clockwise on screen); normalised coordinates carry the aspect ratio h / w.
    theta = torch.zeros(b * t, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * h / w
    theta[:, 1, 0] = sin * w / h
    theta[:, 1, 1] = cos
    flat = x.reshape(b * t, c, h, w)
    grid = F.affine_grid(theta.to(flat.dtype), list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.reshape(b, t, c, h, w)
    return out if batched else out[0]


__all__ = [
    "random_permutation", "batch_permutations", "reverse", "apply_order", "max_speed",
    "speed_indices", "periodic_indices", "random_indices", "warp_indices", "rotation_jitter",
]
