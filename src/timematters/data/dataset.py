"""``VideoDataset``: records -> normalised clips ``(T, C, H, W)`` with their geometry, robust to bad videos.

Every random draw of sample ``index`` in epoch ``e`` comes from ``rng_for(seed, e, index, attempt)``, so
any worker, rank or resumed run draws the same clip.

A video that fails to decode (missing, zero-byte, truncated, corrupt) is reported once (logging warning),
counted and remembered. What happens next depends on ``on_error``:

- ``substitute`` (training, the default when ``train=True``): another video drawn from the same keyed
  generator (deterministic) takes its place; the sample's ``meta["load_failures"]`` lists the failed loads.
- ``exclude`` (evaluation, the default when ``train=False``): the item becomes a marker
  ``{"excluded": {"path", "reason", "video_id", "video_index", "index"}}`` that ``collate`` moves into
  ``batch["excluded"]``. An evaluation never scores a video it did not load.

``LoadFailures`` reads both from the batches in the main process: it drops the markers, counts and lists
the failed videos of a pass (summed over DDP ranks), and applies ``max_fail_ratio`` to the whole pass.
It also sums ``meta["substituted_frames"]``: requested frames the decoder never emitted (e.g. the last
packet of many H.264 files), each replaced by the nearest decoded frame before it (``data.decode``).
Each dataset instance (= DataLoader worker) also stops early with ``TooManyFailures`` once, after at least
``min_attempts`` loads, more than ``max_fail_ratio`` of its own loads failed.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from timematters.data.annotations import VideoRecord, read_annotations, AnnotationError
from timematters.data.decode import BACKENDS, DecodeError, open_video
from timematters.data.sampling import SAMPLINGS, sample_indices
from timematters.data.transforms import (SCALE_SAMPLINGS, apply_geometry, apply_randaugment, build_randaugment,
                                         eval_geometry, normalize, train_geometry)
from timematters.utils import rng_for

log = logging.getLogger(__name__)

LabelFn = Callable[[np.ndarray, dict], dict]


class TooManyFailures(RuntimeError):
    """More than the allowed share of videos failed to decode."""


ON_ERROR = ("substitute", "exclude")


class VideoDataset(Dataset):
    """Clips from a list of ``VideoRecord``.

    Train: one clip per video (random frames, RandAugment (timm spec), scale jitter + crop, optional flip).
    Eval: ``views`` temporal clips x ``crops`` spatial crops per video, so ``len = videos * views * crops``;
    item ``i`` is video ``i // (views * crops)``, view ``i % (views * crops)`` (temporal view major).
    ``decode_threads`` = 1 by default: the parallelism comes from DataLoader workers.
    ``on_error``: ``substitute`` or ``exclude`` a video that fails (default: substitute when training,
    exclude otherwise; see the module docstring).
    """

    def __init__(self, records: Sequence[VideoRecord], *, num_frames: int, img_size: int, train: bool,
                 sampling: str = "tsn", stride: int = 2, scale: tuple[int, int] = (64, 80),
                 randaugment: str = "", flip: bool = False, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), views: int = 1, crops: int = 1, seed: int = 0,
                 label_fn: LabelFn | None = None, max_fail_ratio: float = 0.2, min_attempts: int = 50,
                 max_substitutes: int = 20, backend: str = "auto", decode_threads: int = 1,
                 short_side: int = 0, on_error: str | None = None, scale_sampling: str = "uniform"):
        on_error = on_error or ("substitute" if train else "exclude")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
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
        if backend not in BACKENDS:
            raise ValueError(f"data.decode_backend must be one of {BACKENDS}, got {backend!r}")
        if not 0.0 <= max_fail_ratio <= 1.0:
            raise ValueError(f"max_fail_ratio must be in [0, 1], got {max_fail_ratio}")
        self.records = list(records)
        self.num_frames, self.img_size, self.train = num_frames, img_size, train
        self.sampling, self.stride, self.scale = sampling, stride, (int(scale[0]), int(scale[1]))
        if scale_sampling not in SCALE_SAMPLINGS:
            raise ValueError(f"scale_sampling must be one of {SCALE_SAMPLINGS}, got {scale_sampling!r}")
        self.scale_sampling = scale_sampling
        self.flip = flip
        self.randaugment = build_randaugment(randaugment, img_size=img_size, mean=mean) if train else None
        self.mean, self.std = tuple(mean), tuple(std)
        self.views, self.crops = (1, 1) if train else (views, crops)
        self.seed, self.label_fn = seed, label_fn
        self.max_fail_ratio, self.min_attempts, self.max_substitutes = max_fail_ratio, min_attempts, max_substitutes
        self.backend, self.decode_threads = backend, decode_threads
        self.short_side = short_side          # eval: resize the short side to this, then crop (0 = img_size)
        self.on_error = on_error
        self.epoch = 0
        # per instance (= per DataLoader worker) state
        self.attempts = 0
        self.failures = 0
        self.failed: dict[int, str] = {}          # record index -> reason (each reported once)

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
        lost: list[dict] = []                     # the failed loads before this item's sample
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
                        sample["meta"]["load_failures"] = lost
                    return sample
            else:
                self._record_failure(video, self.failed[video])
            record = self.records[video]
            lost.append({"path": str(record.path), "reason": self.failed[video]})
            if self.on_error == "exclude":
                return {"excluded": {**lost[0], "video_id": record.video_id, "video_index": video, "index": index}}
            # deterministic substitute: keyed by (seed, epoch, index, attempt), not by what failed before
            video = int(rng_for(self.seed, self.epoch, index, attempt, 0x5B).integers(len(self.records)))
        raise TooManyFailures(f"{self.max_substitutes + 1} videos in a row failed for item {index}; "
                              f"{self.failure_summary()}")

    def _record_failure(self, video: int, reason: str) -> None:
        self.attempts += 1
        self.failures += 1
        if video not in self.failed:
            self.failed[video] = reason
            # training: a warning per video; evaluation: LoadFailures says it in one line at the end of the pass
            level = logging.WARNING if self.on_error == "substitute" else logging.DEBUG
            log.log(level, "skipping video %s (%s); %d of %d loads failed so far, %s",
                    self.records[video].path, reason, self.failures, self.attempts,
                    "another video is substituted" if self.on_error == "substitute" else "it is excluded")
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
            # the frame index is cached per process: each video is demuxed once, not once per epoch
            with open_video(record.path, backend=self.backend, threads=self.decode_threads) as reader:
                num_video_frames = reader.num_frames
                indices = sample_indices(self.sampling, num_video_frames, self.num_frames, rng,
                                         stride=self.stride, view=temporal_view, views=self.views)
                frames = reader.get_frames(indices)  # (T, H, W, 3) uint8
                substituted = reader.substituted     # frames the decoder never emitted (nearest one used)
        except DecodeError:
            raise
        except Exception as e:  # anything else a broken file provokes inside the decoder
            raise DecodeError(record.path, f"{type(e).__name__}: {e}") from e

        clip = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, C, H, W) uint8
        if self.randaugment is not None:  # on the decoded frames, before scale jitter and crop (the reference)
            clip = apply_randaugment(clip, self.randaugment, (self.seed, self.epoch, index, attempt, 0xA6))
        h, w = clip.shape[-2:]
        if self.train:
            geometry = train_geometry(h, w, img_size=self.img_size, scale=self.scale, flip=self.flip, rng=rng,
                                      scale_sampling=self.scale_sampling)
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
                     "geometry": geometry, "view": view, "video_index": video, "epoch": self.epoch,
                     "substituted_frames": substituted},
        }
        if self.label_fn is not None:
            frames_uint8 = clip.permute(0, 2, 3, 1).contiguous().numpy()  # (T, H, W, 3) after crop/augment
            sample.update(self.label_fn(frames_uint8, sample))
        return sample


def collate(samples: list[dict]) -> dict:
    """Stack tensors (``video`` -> (B, T, C, H, W), ``flow`` -> (B, T-1, h, w)) and numbers; ``meta`` stays a list.

    Exclusion markers (items whose video failed, ``on_error="exclude"``) go to ``batch["excluded"]``; a batch
    of markers only is ``{"excluded": [...]}``. ``LoadFailures.track`` removes them."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    excluded = [s["excluded"] for s in samples if "excluded" in s]
    samples = [s for s in samples if "excluded" not in s]
    if not samples:
        return {"excluded": excluded}
    batch = collate_samples(samples)
    if excluded:
        batch["excluded"] = excluded
    return batch


def collate_samples(samples: list[dict]) -> dict:
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


class LoadFailures:
    """The videos a pass over a DataLoader lost, counted in the main process from the batches.

    ``track(loader)`` yields the batches without exclusion markers and counts every load: items that
    arrived, items excluded (``batch["excluded"]``) and loads a substitute replaced
    (``meta["load_failures"]``), and the frames the decoder never emitted (``meta["substituted_frames"]``).
    ``finish()`` sums the counts over DDP ranks, logs one line naming the failed videos and the substituted
    frames and raises ``TooManyFailures`` when more than ``max_fail_ratio`` of the pass's loads failed;
    ``summary()`` is what metrics files record (``num_failed`` videos and their paths + reasons,
    ``substituted_frames``).
    """

    def __init__(self, max_fail_ratio: float | None = None, *, what: str = "videos", action: str = "excluded"):
        self.max_fail_ratio, self.what, self.action = max_fail_ratio, what, action
        self.loads = 0                      # items loaded or tried, failed ones included
        self.failed_loads = 0
        self.failed: dict[str, str] = {}    # path -> reason, first seen first
        self.substituted_frames = 0         # frames of loaded clips the decoder never emitted (nearest used)

    def add(self, batch: dict) -> dict | None:
        """Count one batch; return it without exclusion markers, or None when every item was excluded."""
        excluded = batch.get("excluded", [])
        for item in excluded:
            self._fail(item["path"], item["reason"])
        lost = [f for m in batch.get("meta", ()) if isinstance(m, dict) for f in m.get("load_failures", ())]
        for item in lost:
            self._fail(item["path"], item["reason"])
        self.substituted_frames += sum(m.get("substituted_frames", 0) for m in batch.get("meta", ())
                                       if isinstance(m, dict))
        kept = {k: v for k, v in batch.items() if k != "excluded"}
        n = _batch_size(kept)
        self.loads += n + len(excluded) + len(lost)
        return kept if n else None

    def _fail(self, path: str, reason: str) -> None:
        self.failed_loads += 1
        self.failed.setdefault(str(path), reason)

    def track(self, loader: Iterable[dict]) -> Iterator[dict]:
        """The batches of ``loader`` without failed items (the limit is taken from ``loader.dataset``)."""
        if self.max_fail_ratio is None:
            self.max_fail_ratio = getattr(getattr(loader, "dataset", None), "max_fail_ratio", 1.0)
        for batch in loader:
            kept = self.add(batch)
            if kept is not None:
                yield kept

    def merge(self) -> None:
        """Sum the counts of every rank (every rank must call it) when torch.distributed runs."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self.loads, self.failed_loads, self.substituted_frames, self.failed))
        self.loads = sum(p[0] for p in parts)
        self.failed_loads = sum(p[1] for p in parts)
        self.substituted_frames = sum(p[2] for p in parts)
        self.failed = {}
        for p in parts:
            for path, reason in p[3].items():
                self.failed.setdefault(path, reason)

    def update(self, other: LoadFailures) -> None:
        """Add another pass's counts (e.g. an epoch's to the run's)."""
        self.loads += other.loads
        self.failed_loads += other.failed_loads
        self.substituted_frames += other.substituted_frames
        for path, reason in other.failed.items():
            self.failed.setdefault(path, reason)

    def summary(self) -> dict:
        return {"num_failed": len(self.failed), "failed_loads": self.failed_loads, "loads": self.loads,
                "substituted_frames": self.substituted_frames,
                "failed": [{"path": p, "reason": r} for p, r in self.failed.items()]}

    def noteworthy(self) -> bool:
        """Whether the pass lost anything: a failed load or a substituted frame."""
        return bool(self.failed or self.substituted_frames)

    def line(self, limit: int = 3) -> str:
        """One line for the screen: how many videos failed and the first few paths; the substituted frames."""
        parts = []
        if self.failed or not self.substituted_frames:
            shown = "; ".join(f"{p} ({r})" for p, r in list(self.failed.items())[:limit])
            more = f"; +{len(self.failed) - limit} more" if len(self.failed) > limit else ""
            one = len(self.failed) == 1
            what, verb = (self.what[:-1], "was") if one else (self.what, "were")  # "1 video was", "2 videos were"
            parts.append(f"{len(self.failed)} {what} failed to load and {verb} {self.action} "
                         f"({self.failed_loads} of {self.loads} loads): {shown}{more}")
        if self.substituted_frames:
            one = self.substituted_frames == 1
            parts.append(f"{self.substituted_frames} requested frame{'' if one else 's'} never came out of the "
                         f"decoder and {'was' if one else 'were'} replaced by the nearest decoded frame before "
                         f"{'it' if one else 'them'}")
        return "; ".join(parts)

    def finish(self, logger: logging.Logger = log) -> dict:
        """End of a pass: merge over ranks, log the line when anything was lost, apply the limit; the summary."""
        self.merge()
        if self.noteworthy():
            logger.warning("%s", self.line())
        ratio = 1.0 if self.max_fail_ratio is None else self.max_fail_ratio
        if self.failed_loads > ratio * self.loads:
            raise TooManyFailures(f"{self.failed_loads} of {self.loads} loads failed in this pass (more than "
                                  f"max_fail_ratio={ratio}, data.max_fail_ratio): {self.line(5)}")
        return self.summary()


def _batch_size(batch: dict) -> int:
    for key in ("video", "image", "label", "index"):
        value = batch.get(key)
        if value is not None:
            return len(value)
    return 0


def build_video_dataset(root: str | Path, format: str, split: str, *, train: bool, limit: int = 0,
                        class_names: Sequence[str] | None = None, allow_outside_root: bool = False,
                        classes: Sequence[str] | Callable[[list[str]], list[str]] | None = None,
                        **kwargs) -> tuple[VideoDataset, list[str]]:
    """Read the annotations of ``split`` and wrap them in a ``VideoDataset`` (``limit`` > 0 keeps the first N).

    ``classes`` keeps a class subset: the names to keep, or a function of the split's class names that
    returns them; labels become indices into that list (unlabelled records stay). ``class_names`` (e.g. the
    training split's) then relabels the records by class name; a class of ``split`` that is not among them is
    an ``AnnotationError``."""
    records, names = read_annotations(root, format, split, allow_outside_root=allow_outside_root)
    if classes is not None:
        keep = list(classes(names) if callable(classes) else classes)
        unknown = [c for c in keep if c not in names]
        if unknown:
            raise AnnotationError(f"{root}: split {split!r} has no class {unknown[0]!r} (data.classes)")
        index = {c: i for i, c in enumerate(keep)}
        records = [r if r.label < 0 else replace(r, label=index[names[r.label]])
                   for r in records if r.label < 0 or names[r.label] in index]
        names = keep
    if class_names is not None and list(class_names) != names:
        index = {c: i for i, c in enumerate(class_names)}
        unknown = sorted({names[r.label] for r in records if r.label >= 0} - set(index))
        if unknown:
            first = next(r for r in records if r.label >= 0 and names[r.label] == unknown[0])
            raise AnnotationError(f"{first.where or first.path}: class {unknown[0]!r} of split {split!r} is not "
                                  f"among the {len(index)} training classes" +
                                  (f" (also {unknown[1:6]})" if len(unknown) > 1 else ""))
        records = [replace(r, label=index[names[r.label]]) if r.label >= 0 else r for r in records]
        names = list(class_names)
    if limit > 0:
        records = records[:limit]
    if not records:
        raise AnnotationError(f"{root}: split {split!r} ({format}) has no videos")
    return VideoDataset(records, train=train, **kwargs), names
