"""``VideoDataset``: records -> normalised clips ``(T, C, H, W)`` with their geometry, robust to bad videos.

Every random draw of sample ``index`` in epoch ``e`` comes from ``rng_for(seed, e, index, attempt)``, so
any worker, rank or resumed run draws the same clip. A video that fails to decode (missing, zero-byte,
truncated, corrupt) is reported once (logging warning), counted, remembered, and replaced by another video
drawn from the same keyed generator (deterministic). Counting is per dataset instance, i.e. per DataLoader
worker: each worker raises ``TooManyFailures`` on its own once, after at least ``min_attempts`` loads, the
share of failed loads exceeds ``max_fail_ratio``; the DataLoader re-raises it in the main process.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from timematters.data.annotations import VideoRecord, read_annotations, AnnotationError
from timematters.data.decode import DecodeError, open_video
from timematters.data.sampling import SAMPLINGS, sample_indices
from timematters.data.transforms import (apply_geometry, apply_randaugment, build_randaugment, eval_geometry,
                                         normalize, train_geometry)
from timematters.utils import rng_for

log = logging.getLogger(__name__)

LabelFn = Callable[[np.ndarray, dict], dict]


class TooManyFailures(RuntimeError):
    """More than the allowed share of videos failed to decode."""


class VideoDataset(Dataset):
    """Clips from a list of ``VideoRecord``.

    Train: one clip per video (random frames, RandAugment (timm spec), scale jitter + crop, optional flip).
    Eval: ``views`` temporal clips x ``crops`` spatial crops per video, so ``len = videos * views * crops``;
    item ``i`` is video ``i // (views * crops)``, view ``i % (views * crops)`` (temporal view major).
    ``decode_threads`` = 1 by default: the parallelism comes from DataLoader workers.
    """

    def __init__(self, records: Sequence[VideoRecord], *, num_frames: int, img_size: int, train: bool,
                 sampling: str = "tsn", stride: int = 2, scale: tuple[int, int] = (64, 80),
                 randaugment: str = "", flip: bool = False, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), views: int = 1, crops: int = 1, seed: int = 0,
                 label_fn: LabelFn | None = None, max_fail_ratio: float = 0.2, min_attempts: int = 50,
                 max_substitutes: int = 20, backend: str = "auto", decode_threads: int = 1,
                 short_side: int = 0):
        if not records:
            raise ValueError("VideoDataset needs at least one record")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if num_frames < 1 or img_size < 1 or stride < 1 or views < 1:
            raise ValueError(f"num_frames, img_size, stride and views must be >= 1, got "
                             f"{num_frames}, {img_size}, {stride}, {views}")
        if crops not in (1, 3):
            raise ValueError(f"crops must be 1 or 3, got {crops}")
        if train and not img_size <= scale[0] <= scale[1]:
            raise ValueError(f"scale must satisfy img_size <= scale[0] <= scale[1], got {scale} (img_size {img_size})")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std must have 3 values (std > 0), got {mean}, {std}")
        if not 0.0 <= max_fail_ratio <= 1.0:
            raise ValueError(f"max_fail_ratio must be in [0, 1], got {max_fail_ratio}")
        self.records = list(records)
        self.num_frames, self.img_size, self.train = num_frames, img_size, train
        self.sampling, self.stride, self.scale = sampling, stride, (int(scale[0]), int(scale[1]))
        self.flip = flip
        self.randaugment = build_randaugment(randaugment, img_size=img_size, mean=mean) if train else None
        self.mean, self.std = tuple(mean), tuple(std)
        self.views, self.crops = (1, 1) if train else (views, crops)
        self.seed, self.label_fn = seed, label_fn
        self.max_fail_ratio, self.min_attempts, self.max_substitutes = max_fail_ratio, min_attempts, max_substitutes
        self.backend, self.decode_threads = backend, decode_threads
        self.short_side = short_side          # eval: resize the short side to this, then crop (0 = img_size)
        self.epoch = 0
        # per instance (= per DataLoader worker) state
        self.attempts = 0
        self.failures = 0
        self.failed: dict[int, str] = {}          # record index -> reason (each reported once)
        self._frame_counts: dict[int, int] = {}  # record index -> frames (saves a packet count for WebM)

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (as with DistributedSampler) so train clips change between epochs.
        DataLoader workers get a fresh copy each epoch; with ``persistent_workers=True`` they keep the old
        epoch, so do not combine the two (or rebuild the loader per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records) * self.views * self.crops

    # ----------------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        per_video = self.views * self.crops
        video, view = divmod(index, per_video)
        for attempt in range(self.max_substitutes + 1):
            if video not in self.failed:
                try:
                    sample = self._load(index, video, view, attempt)
                except DecodeError as e:
                    self._record_failure(video, e.reason or str(e))
                else:
                    self.attempts += 1
                    if attempt:
                        sample["meta"]["substituted_for"] = self.records[index // per_video].video_id
                    return sample
            else:
                self._record_failure(video, self.failed[video])
            # deterministic substitute: keyed by (seed, epoch, index, attempt), not by what failed before
            video = int(rng_for(self.seed, self.epoch, index, attempt, 0x5B).integers(len(self.records)))
        raise TooManyFailures(f"{self.max_substitutes + 1} videos in a row failed for item {index}; "
                              f"{self.failure_summary()}")

    def _record_failure(self, video: int, reason: str) -> None:
        self.attempts += 1
        self.failures += 1
        if video not in self.failed:
            self.failed[video] = reason
            log.warning("skipping video %s (%s); %d of %d loads failed so far, another video is substituted",
                        self.records[video].path, reason, self.failures, self.attempts)
        floor = min(self.min_attempts, len(self.records))
        if self.attempts >= floor and self.failures > self.max_fail_ratio * self.attempts:
            raise TooManyFailures(f"{self.failures} of {self.attempts} video loads failed (more than "
                                  f"max_fail_ratio={self.max_fail_ratio}); {self.failure_summary()}")

    def failure_summary(self, limit: int = 5) -> str:
        items = [f"{self.records[v].path}: {r}" for v, r in list(self.failed.items())[:limit]]
        more = f" (+{len(self.failed) - limit} more)" if len(self.failed) > limit else ""
        return f"{len(self.failed)} bad videos: " + "; ".join(items) + more

    # ----------------------------------------------------------------------------------------------
    def _load(self, index: int, video: int, view: int, attempt: int) -> dict:
        record = self.records[video]
        rng = rng_for(self.seed, self.epoch, index, attempt) if self.train else None
        temporal_view, crop_index = divmod(view, self.crops)
        try:
            with open_video(record.path, backend=self.backend, num_frames=self._frame_counts.get(video),
                            threads=self.decode_threads) as reader:
                num_video_frames = reader.num_frames
                self._frame_counts[video] = num_video_frames
                indices = sample_indices(self.sampling, num_video_frames, self.num_frames, rng,
                                         stride=self.stride, view=temporal_view, views=self.views)
                frames = reader.get_frames(indices)  # (T, H, W, 3) uint8
        except DecodeError:
            raise
        except Exception as e:  # anything else a broken file provokes inside the decoder
            raise DecodeError(record.path, f"{type(e).__name__}: {e}") from e

        clip = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, C, H, W) uint8
        if self.randaugment is not None:  # on the decoded frames, before scale jitter and crop (the reference)
            clip = apply_randaugment(clip, self.randaugment, (self.seed, self.epoch, index, attempt, 0xA6))
        h, w = clip.shape[-2:]
        if self.train:
            geometry = train_geometry(h, w, img_size=self.img_size, scale=self.scale, flip=self.flip, rng=rng)
        else:
            geometry = eval_geometry(h, w, img_size=self.img_size, crop_index=crop_index, num_crops=self.crops,
                                     short_side=self.short_side)
        clip = apply_geometry(clip, geometry)  # (T, C, img, img) uint8
        sample = {
            "video": normalize(clip, self.mean, self.std),  # (T, C, H, W) float32
            "label": record.label,
            "index": index,
            "meta": {"video_id": record.video_id, "path": str(record.path),
                     "frame_indices": [int(i) for i in indices], "num_video_frames": num_video_frames,
                     "geometry": geometry, "view": view, "video_index": video, "epoch": self.epoch},
        }
        if self.label_fn is not None:
            frames_uint8 = clip.permute(0, 2, 3, 1).contiguous().numpy()  # (T, H, W, 3) after crop/augment
            sample.update(self.label_fn(frames_uint8, sample))
        return sample


def collate(samples: list[dict]) -> dict:
    """Stack tensors (``video`` -> (B, T, C, H, W), ``flow`` -> (B, T-1, h, w)) and numbers; ``meta`` stays a list."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    keys = list(samples[0])
    for i, s in enumerate(samples):
        if list(s) != keys:
            raise ValueError(f"collate: sample {i} has keys {sorted(s)}, sample 0 has {sorted(keys)}")
    batch: dict = {}
    for key in keys:
        values = [s[key] for s in samples]
        first = values[0]
        if key == "meta":
            batch[key] = values
        elif isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, np.ndarray):
            batch[key] = torch.from_numpy(np.stack(values))
        elif isinstance(first, (bool, int, float, np.integer, np.floating)):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


def build_video_dataset(root: str | Path, format: str, split: str, *, train: bool, limit: int = 0,
                        **kwargs) -> tuple[VideoDataset, list[str]]:
    """Read the annotations of ``split`` and wrap them in a ``VideoDataset`` (``limit`` > 0 keeps the first N)."""
    records, class_names = read_annotations(root, format, split)
    if limit > 0:
        records = records[:limit]
    if not records:
        raise AnnotationError(f"{root}: split {split!r} ({format}) has no videos")
    return VideoDataset(records, train=train, **kwargs), class_names
