"""Flow-direction labels for TIME's L_flow: dense optical flow -> per-patch direction classes.

Label of a patch between frames j and j+1 (TIME, Eq. 9-10)::

    0            the patch is static
    1 + bin      bin = clip(angle // 45, 0, 7), angle of the patch's mean flow in degrees,
                 image coordinates (x right, y down: motion straight down is 90 deg -> class 3)

``threshold="relative"`` reproduces the public TIME code's recipe exactly, input included:

* frames normalised with mean = std = 0.5 (values in [-1, 1]), gray = 0.299 R + 0.587 G + 0.114 B,
  times 128, float32;
* Farneback with pyr_scale 0.5, levels 3, winsize 15, iterations 3, poly_n 5, poly_sigma 1.2, flags 0;
* per-patch mean of (dx, dy), ``cv2.cartToPolar`` in degrees;
* a patch moves when its magnitude, min-max normalised to [0, 100] within its frame pair, is >= 1.

A float threshold is the paper's absolute tau (Eq. 10): a patch moves when its mean flow is at least
tau pixels long. The relative rule labels near-static patches with near-random directions; the
absolute rule does not.

Cheaper labels: ``scale < 1`` runs the estimator on downscaled gray frames (flow rescaled to full
resolution pixels before the patch mean), ``estimator`` picks OpenCV's DIS instead of Farneback, and
``FlowLabeler(fraction=f)`` gives exact labels to a share f of the clips only (the others are ignored
by the loss). ``benchmarks/flow_labels.py`` measures cost, agreement with the exact labels and, on the
synthetic benchmark, agreement with the true motion. In short (8-frame 224x224 clips, one thread):
the reference costs ~70 ms CPU per clip; Farneback at scale 0.5 is ~4x cheaper and keeps ~81 % of the
moving patches' labels, at 0.25 ~14x and ~65 %, DIS ultrafast at 0.5 ~80x and ~58 %. The exact labels
are no ground truth either: on the synthetic videos they get only ~51 % of the truly moving patches'
directions right (fast motion defeats a 3-level pyramid), the cheaper variants 65-71 %, while keeping
still backgrounds at 0 better (97 % against 62-91 %).
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from timematters.utils import rng_for

# Farneback parameters of the TIME paper and its public code.
FARNEBACK_PARAMS: dict[str, Any] = dict(
    pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0
)
# DIS presets offered as cheaper estimators (OpenCV's names).
DIS_PRESETS: dict[str, int] = {
    "dis_ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "dis_fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "dis_medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
ESTIMATORS = ("farneback", *DIS_PRESETS)
NUM_FLOW_CLASSES = 9
# label of a patch without a label (clips skipped by ``FlowLabeler(fraction < 1)``); F.cross_entropy's default
IGNORE_INDEX = -100

# ITU-R BT.601 luma weights, as the reference (and cv2's RGB2GRAY) uses them.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _check_frames(frames: np.ndarray, patch_size: int) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise TypeError(f"frames must be a uint8 numpy array (T, H, W, 3), got "
                        f"{type(frames).__name__} {getattr(frames, 'dtype', '')}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    if t < 2:
        raise ValueError(f"flow labels need at least 2 frames, got T={t}")
    if patch_size < 1 or h % patch_size or w % patch_size:
        raise ValueError(f"frame size {h}x{w} is not divisible by patch_size={patch_size}")


def reference_gray(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, H, W) float32 gray exactly as the TIME code feeds Farneback."""
    x = frames.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(0.5)) / np.float32(0.5)  # the model's normalisation, values in [-1, 1]
    gray = x[..., 0] * _LUMA[0] + x[..., 1] * _LUMA[1] + x[..., 2] * _LUMA[2]
    return gray * np.float32(128.0)


def _uint8_gray(frames: np.ndarray) -> list[np.ndarray]:
    return [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def dense_flows(frames: np.ndarray, *, scale: float = 1.0, estimator: str = "farneback") -> list[np.ndarray]:
    """Flow of each consecutive pair: T-1 arrays (h', w', 2) float32 in pixels of the *scaled* frames.

    Farneback always gets the reference's float gray (``reference_gray``); DIS needs uint8 gray.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown flow estimator {estimator!r}; choose one of {ESTIMATORS}")
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"flow scale must be in (0, 1], got {scale}")
    if estimator == "farneback":
        gray = list(reference_gray(frames))
    else:
        gray = _uint8_gray(frames)
    if scale != 1.0:
        gray = [_resize(g, scale) for g in gray]
    if estimator == "farneback":
        return [cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK_PARAMS) for a, b in zip(gray[:-1], gray[1:])]
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[estimator])
    return [dis.calc(a, b, None) for a, b in zip(gray[:-1], gray[1:])]


def patch_mean_flow(flows: list[np.ndarray], grid: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """Mean flow per patch, in full-resolution pixels: (T-1, gh, gw, 2) float32.

    At ``scale == 1`` with a divisible frame this is the plain mean over each patch's pixels (the
    reference); otherwise an area resize of the flow field to the grid, divided by ``scale``.
    """
    gh, gw = grid
    out = []
    for f in flows:
        h, w = f.shape[:2]
        if scale == 1.0 and h % gh == 0 and w % gw == 0:
            m = f.reshape(gh, h // gh, gw, w // gw, 2).mean(axis=(1, 3), dtype=np.float32)
        else:
            m = cv2.resize(f, (gw, gh), interpolation=cv2.INTER_AREA) / np.float32(scale)
        out.append(m)
    return np.stack(out).astype(np.float32, copy=False)


def labels_from_patch_flow(patch_flow: np.ndarray, threshold: str | float = "relative") -> np.ndarray:
    """(P, gh, gw, 2) mean flow per patch -> (P, gh, gw) uint8 classes 0..8."""
    dx = np.ascontiguousarray(patch_flow[..., 0], dtype=np.float32)
    dy = np.ascontiguousarray(patch_flow[..., 1], dtype=np.float32)
    p, gh, gw = dx.shape
    # cartToPolar on a 2-D view: its angle (fastAtan2, ~0.3 deg accurate) is what the reference bins.
    mag, ang = cv2.cartToPolar(dx.reshape(p * gh, gw), dy.reshape(p * gh, gw), angleInDegrees=True)
    mag, ang = mag.reshape(p, gh, gw), ang.reshape(p, gh, gw)
    direction = (np.clip(ang // 45, 0, 7) + 1).astype(np.uint8)
    if isinstance(threshold, str):
        if threshold != "relative":
            raise ValueError(f"flow threshold must be 'relative' or a number of pixels, got {threshold!r}")
        # Reference rule: per pair, min-max normalise to [0, 100] (cv2.NORM_MINMAX; a constant field
        # maps to 0, i.e. all static) and call a patch moving from 1 % of the range.
        moving = np.stack([cv2.normalize(m, None, 0, 100, cv2.NORM_MINMAX) >= 1 for m in mag])
    else:
        tau = float(threshold)
        if not tau >= 0:
            raise ValueError(f"absolute flow threshold tau must be >= 0 pixels, got {threshold!r}")
        moving = mag >= tau
    return np.where(moving, direction, np.uint8(0)).astype(np.uint8)


def flow_direction_labels(
    frames: np.ndarray,
    patch_size: int = 16,
    threshold: str | float = "relative",
    *,
    scale: float = 1.0,
    estimator: str = "farneback",
) -> np.ndarray:
    """Direction class of every patch between consecutive frames.

    frames: (T, H, W, 3) uint8 RGB. Returns (T-1, H/p, W/p) uint8 in 0..8 (0 = static).
    The defaults are the TIME reference recipe; see the module docstring for the cheaper options.
    """
    _check_frames(frames, patch_size)
    _, h, w, _ = frames.shape
    flows = dense_flows(frames, scale=scale, estimator=estimator)
    patch_flow = patch_mean_flow(flows, (h // patch_size, w // patch_size), scale)
    return labels_from_patch_flow(patch_flow, threshold)


class FlowLabeler:
    """Dataset hook: ``labeler(frames_uint8, sample) -> {"flow": LongTensor (T-1, H/p, W/p)}``.

    Called on the final augmented uint8 frames of a training clip (as the reference does).

    ``fraction < 1`` labels only that share of the clips (exact labels, ``fraction`` of the cost); the
    others get ``IGNORE_INDEX`` everywhere, which ``F.cross_entropy`` skips. The choice is a pure
    function of (seed, sample index, frame indices, crop, ``meta["epoch"]`` when present), so it is
    the same for any number of workers and changes from epoch to epoch with the random frames and
    crops. ``num_threads`` sets OpenCV's threads (1 inside data-loader workers).
    """

    def __init__(
        self,
        patch_size: int = 16,
        threshold: str | float = "relative",
        scale: float = 1.0,
        estimator: str = "farneback",
        *,
        fraction: float = 1.0,
        seed: int = 0,
        num_threads: int | None = None,
    ) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown flow estimator {estimator!r}; choose one of {ESTIMATORS}")
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"flow scale must be in (0, 1], got {scale}")
        if isinstance(threshold, str) and threshold != "relative":
            raise ValueError(f"flow threshold must be 'relative' or a number of pixels, got {threshold!r}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"flow label fraction must be in (0, 1], got {fraction}")
        self.patch_size = patch_size
        self.threshold = threshold
        self.scale = scale
        self.estimator = estimator
        self.fraction = fraction
        self.seed = seed
        self.num_threads = num_threads

    def selected(self, sample: dict | None) -> bool:
        """Whether this clip gets labels (always when ``fraction == 1``)."""
        if self.fraction >= 1.0:
            return True
        sample = sample or {}
        meta = sample.get("meta", {})
        crop = (meta.get("geometry") or {}).get("crop", [])
        keys = [int(sample.get("index", 0)), int(meta.get("epoch", 0)),
                *[int(i) for i in meta.get("frame_indices", [])], *[round(float(c)) for c in crop]]
        return bool(rng_for(self.seed, *keys).random() < self.fraction)

    def __call__(self, frames: np.ndarray, sample: dict | None = None) -> dict[str, torch.Tensor]:
        _check_frames(frames, self.patch_size)
        if not self.selected(sample):
            t, h, w = frames.shape[0] - 1, frames.shape[1] // self.patch_size, frames.shape[2] // self.patch_size
            return {"flow": torch.full((t, h, w), IGNORE_INDEX, dtype=torch.int64)}
        if self.num_threads is not None:
            cv2.setNumThreads(self.num_threads)
        labels = flow_direction_labels(
            frames, self.patch_size, self.threshold, scale=self.scale, estimator=self.estimator
        )
        return {"flow": torch.from_numpy(labels.astype(np.int64))}  # (T-1, H/p, W/p)

    def __repr__(self) -> str:
        return (f"FlowLabeler(patch_size={self.patch_size}, threshold={self.threshold!r}, "
                f"scale={self.scale}, estimator={self.estimator!r}, fraction={self.fraction})")
