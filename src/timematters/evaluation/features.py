"""Frozen clip features of a backbone, one vector per video (the input of linear probe, kNN, retrieval).

A loader may give several clips of one video (multi-view evaluation datasets: ``meta["video_index"]``
and ``meta["view"]``); their features are averaged into one vector per video. ``clips_per_video`` > 1
additionally cuts each loaded clip into that many evenly spaced windows of ``clip_len`` frames (a long
dense clip -> several model clips), also averaged.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext

import torch
from torch import nn

from ..data.dataset import LoadFailures
from ..utils import Progress, sized

MODES = ("cls", "slowfast")


def window_starts(num_frames: int, clip_len: int, clips: int) -> list[int]:
    """``clips`` evenly spaced start frames of ``clip_len``-frame windows in a ``num_frames`` clip."""
    if clip_len > num_frames:
        raise ValueError(f"cannot cut {clip_len}-frame windows from a {num_frames}-frame clip")
    if clips == 1:
        return [(num_frames - clip_len) // 2]
    return [round(i * (num_frames - clip_len) / (clips - 1)) for i in range(clips)]


def video_keys(batch: dict) -> list:
    """One key per sample naming its video: ``meta["video_index"]``, else ``meta["video_id"]``, else
    ``batch["index"]`` (one clip per video)."""
    meta = batch.get("meta")
    if meta and isinstance(meta[0], dict):
        for key in ("video_index", "video_id"):
            if key in meta[0]:
                return [m[key] for m in meta]
    return [int(i) for i in batch["index"]]


def clip_features(model: nn.Module, video: torch.Tensor, mode: str = "cls") -> torch.Tensor:
    """video (B, T, C, H, W) -> (B, D): the CLS feature, or SVT's slow-fast average (``mode="slowfast"``)."""
    if mode == "cls":
        return model.forward_features(video).cls
    if mode == "slowfast":
        from .slowfast import slow_fast_features  # the SVT module; imported only when asked for
        return slow_fast_features(model, video)
    raise ValueError(f"unknown feature mode {mode!r}; expected one of {MODES}")


@torch.no_grad()
def extract_features(model: nn.Module, loader: Iterable[dict], *, device: str | torch.device,
                     clips_per_video: int = 1, clip_len: int = 0, mode: str = "cls",
                     autocast: bool = False, failures: LoadFailures | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Average clip features per video. Returns ``feats (V, D)`` float32 and ``labels (V,)`` int64 on the
    CPU, videos in order of first appearance in ``loader``.

    ``clips_per_video`` > 1 cuts every loaded clip into that many windows of ``clip_len`` frames
    (default ``model.num_frames``); with 1 the loaded clip is used as it is. ``autocast`` runs the model
    under bf16 autocast on CUDA. Videos that fail to load are left out and counted in ``failures``
    (``LoadFailures``: pass one to read the count and paths afterwards).
    """
    if clips_per_video < 1:
        raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if autocast and device.type == "cuda" else nullcontext()
    sums: dict = {}
    counts: dict = {}
    labels: dict = {}
    failures = failures if failures is not None else LoadFailures()
    try:
        for batch in Progress(failures.track(loader), total=sized(loader), desc="features", unit="batch"):
            video = batch["video"].to(device, non_blocking=True)           # (B, T, C, H, W)
            B, T = video.shape[:2]
            with amp:
                if clips_per_video == 1:
                    f = clip_features(model, video, mode).float()          # (B, D)
                else:
                    t = clip_len or int(model.num_frames)
                    starts = window_starts(T, t, clips_per_video)
                    windows = torch.stack([video[:, s:s + t] for s in starts], dim=1)  # (B, n, t, C, H, W)
                    f = clip_features(model, windows.flatten(0, 1), mode).float()
                    f = f.reshape(B, len(starts), -1).mean(dim=1)           # (B, D)
            f = f.cpu()
            for key, feat, label in zip(video_keys(batch), f, batch["label"].tolist()):
                if key in sums:
                    sums[key] += feat
                    counts[key] += 1
                    if labels[key] != label:
                        raise ValueError(f"video {key!r}: clips with different labels ({labels[key]}, {label})")
                else:
                    sums[key], counts[key], labels[key] = feat.clone(), 1, label
    finally:
        model.train(was_training)
    failures.finish()
    if not sums:
        raise ValueError("extract_features: the loader gave no clips")
    feats = torch.stack([sums[k] / counts[k] for k in sums])
    return feats, torch.tensor([labels[k] for k in sums], dtype=torch.long)
