"""Which frames of a video make a clip. Pure functions of (num_video_frames, num_frames, rng, view).

``rng`` is a ``numpy.random.Generator`` at train time and ``None`` at eval time (deterministic).

Videos shorter than the clip: frames are *repeated in order, never looped*. A loop would put a backward
jump in time inside the clip, which is exactly the signal temporal objectives and the order-sensitive
benchmark classes must not see by accident.
- TSN: segment k spans frames [k*L//T, (k+1)*L//T) and holds at least one frame, so with fewer frames
  than segments neighbouring segments share a frame (e.g. 3 frames, T = 6 -> 0 0 1 1 2 2).
- tsn_slowfast: the SSv2 loader of PySlowFast / TimeSformer / Motionformer / the TIME code: T segments of
  (L - 1) / T frames with rounded ends, each end shared with the next segment; train draws a frame in
  [start, end] (inclusive), eval takes (start + end) // 2.
- dense: the stride is kept and indices past the end are clamped to the last frame (as PySlowFast
  does), so the clip ends on a held frame.
All returned indices are non-decreasing and lie in ``0 .. num_video_frames - 1``.
"""
from __future__ import annotations

import numpy as np

SAMPLINGS = ("tsn", "tsn_slowfast", "dense")


def _check(num_video_frames: int, num_frames: int, view: int, views: int) -> None:
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if views < 1 or not 0 <= view < views:
        raise ValueError(f"view must be in 0..views-1, got view={view}, views={views}")


def tsn_indices(num_video_frames: int, num_frames: int, rng: np.random.Generator | None = None, *,
                view: int = 0, views: int = 1) -> np.ndarray:
    """TSN segments: the video is cut into ``num_frames`` equal segments; train (rng given) takes a random
    frame of each segment, eval takes the frame at fraction ``(view + 0.5) / views`` of each segment
    (the middle one when views == 1)."""
    _check(num_video_frames, num_frames, view, views)
    k = np.arange(num_frames, dtype=np.int64)
    start = k * num_video_frames // num_frames                                   # (T,) segment starts
    end = np.maximum((k + 1) * num_video_frames // num_frames, start + 1)       # exclusive, >= 1 frame
    if rng is not None:
        idx = rng.integers(start, end)
    else:
        idx = start + (end - start) * (2 * view + 1) // (2 * views)
    return idx.astype(np.int64)


def tsn_slowfast_indices(num_video_frames: int, num_frames: int, rng: np.random.Generator | None = None, *,
                         view: int = 0, views: int = 1) -> np.ndarray:
    """The official SSv2 rule: ``seg = (L - 1) / T``, segment k = [round(seg k), round(seg (k+1))] (NumPy's
    round, ends inclusive); train a uniform frame of it, eval ``(start + end) // 2`` (views == 1) or the frame
    at fraction ``(view + 0.5) / views``."""
    _check(num_video_frames, num_frames, view, views)
    seg = (num_video_frames - 1) / num_frames
    k = np.arange(num_frames + 1, dtype=np.float64)
    bounds = np.round(seg * k).astype(np.int64)                                  # (T+1,)
    start, end = bounds[:-1], bounds[1:]                                         # inclusive ends
    if rng is not None:
        idx = rng.integers(start, end + 1)
    elif views == 1:
        idx = (start + end) // 2
    else:
        idx = start + (end - start) * (2 * view + 1) // (2 * views)
    return idx.astype(np.int64)


def dense_indices(num_video_frames: int, num_frames: int, rng: np.random.Generator | None = None, *,
                  stride: int = 2, view: int = 0, views: int = 1) -> np.ndarray:
    """``num_frames`` frames ``stride`` apart. Train: random start; eval: centred when views == 1, else
    ``views`` starts evenly spaced from the first to the last possible start."""
    _check(num_video_frames, num_frames, view, views)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    span = (num_frames - 1) * stride + 1
    max_start = max(0, num_video_frames - span)
    if rng is not None:
        start = int(rng.integers(0, max_start + 1))
    elif views == 1:
        start = max_start // 2
    else:
        start = view * max_start // (views - 1)
    idx = start + stride * np.arange(num_frames, dtype=np.int64)
    return np.minimum(idx, num_video_frames - 1)


def sample_indices(sampling: str, num_video_frames: int, num_frames: int, rng: np.random.Generator | None = None,
                   *, stride: int = 2, view: int = 0, views: int = 1) -> np.ndarray:
    """Dispatch on ``sampling`` ("tsn", "tsn_slowfast" or "dense")."""
    if sampling == "tsn":
        return tsn_indices(num_video_frames, num_frames, rng, view=view, views=views)
    if sampling == "tsn_slowfast":
        return tsn_slowfast_indices(num_video_frames, num_frames, rng, view=view, views=views)
    if sampling == "dense":
        return dense_indices(num_video_frames, num_frames, rng, stride=stride, view=view, views=views)
    raise ValueError(f"unknown sampling {sampling!r}; expected one of {SAMPLINGS}")
