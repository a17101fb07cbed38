"""ImageFolder-style image datasets (``root/<split>/<class>/*.png|jpg``) with the video datasets' rules.

A sample::

    {"image": Tensor (C, H, W) float32 normalised, "label": int, "index": int,
     "meta": {"path": str, "geometry": {"scale": float, "crop": [x0, y0, x1, y1], "flip": bool,
                                       "out_size": [H, W]}, "substituted_for": str (only when substituted)}}

``geometry`` is the record of ``timematters.data.transforms`` (the video clips' transforms, reused here).

Bad input follows ``VideoDataset``: an image that cannot be read (missing, zero bytes, truncated, not an
image) is reported once (logging warning) with its path, counted, remembered and, in training
(``on_error="substitute"``), replaced by the next readable image of the split (deterministic); in
evaluation (``on_error="exclude"``) the item becomes an exclusion marker that ``collate`` moves into
``batch["excluded"]`` and ``LoadFailures`` counts and lists. Once at least ``min_attempts`` loads were made and more than
``max_fail_ratio`` of them failed, ``TooManyFailures`` (the video dataset's error) names the files. Counting
is per dataset instance, i.e. per DataLoader worker, as for videos.

Every random draw (scale, crop, flip, RandAugment) comes from ``rng_for(seed, epoch, index)``; call
``set_epoch``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from timematters.data.annotations import CLASSES_FILE, AnnotationError, read_class_file
from timematters.data.dataset import ON_ERROR, TooManyFailures
from timematters.data.transforms import (apply_geometry, apply_randaugment, build_randaugment, eval_geometry,
                                         normalize, train_geometry)
from timematters.utils import rng_for

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ImageDataError(RuntimeError):
    """A split folder that does not have the ImageFolder layout, or classes that do not match."""


def scan_image_folder(split_dir: str | Path) -> tuple[list[tuple[str, int]], list[str]]:
    """``split_dir/<class>/<image>`` -> ([(path, label)], class names sorted by name)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise ImageDataError(f"image folder '{split_dir}' does not exist (expected root/<split>/<class>/*.png)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ImageDataError(f"image folder '{split_dir}' has no class sub-folders")
    records = []
    for label, name in enumerate(classes):
        for p in sorted((split_dir / name).rglob("*")):
            if p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith("."):
                records.append((str(p), label))
    if not records:
        raise ImageDataError(f"image folder '{split_dir}' has no images ({', '.join(IMG_EXTENSIONS)})")
    return records, classes


def dataset_classes(root: Path) -> tuple[list[str] | None, str]:
    """The class list every split of ``root`` maps onto: ``classes.txt``, else ``train/``'s class folders."""
    if (root / CLASSES_FILE).is_file():
        try:
            return read_class_file(root / CLASSES_FILE), str(root / CLASSES_FILE)
        except AnnotationError as e:
            raise ImageDataError(str(e)) from None
    if (root / "train").is_dir():
        return scan_image_folder(root / "train")[1], f"the class folders of {root / 'train'}"
    return None, ""


class ImageFolderDataset(Dataset):
    """Images of one split, resized (train: scale jitter, random crop, flip, RandAugment; eval: centre crop).

    Args:
        root: dataset root; images are read from ``root/split/<class>/``.
        split: sub-folder name (``train``, ``val``, ...).
        train: random augmentation (else deterministic resize + centre crop).
        img_size: output side in pixels (square).
        mean, std: per-channel normalisation of [0, 1] pixels.
        seed: base seed of the per-sample generators.
        randaugment: ``""`` or a timm spec such as ``"rand-m9-mstd0.5-inc1"`` (train only; see ``transforms``).
        scale: train short-side jitter range before the crop (default ``(img_size, 9 * img_size // 8)``);
            eval resizes the short side to ``img_size``.
        flip: random horizontal flips in training.
        max_fail_ratio: stop with ``TooManyFailures`` when more than this share of the loads failed ...
        min_attempts: ... after at least this many loads (or the whole split, when it is smaller).
        on_error: ``substitute`` or ``exclude`` unreadable images (default: substitute when ``train``).
        class_names: fix the class order (labels). Default: ``root/classes.txt`` (one name per line), else
            the class folders of ``root/train/``, else this split's folders; so every split of a dataset
            has the same labels. A class folder not in the list is an error.
    """

    def __init__(self, root: str | Path, split: str, *, train: bool, img_size: int,
                 mean: tuple[float, float, float] = (0.5, 0.5, 0.5), std: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 seed: int = 0, randaugment: str = "", scale: tuple[int, int] | None = None, flip: bool = True,
                 max_fail_ratio: float = 0.2, min_attempts: int = 50, class_names: list[str] | None = None,
                 on_error: str | None = None):
        self.on_error = on_error or ("substitute" if train else "exclude")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.split_dir = Path(root) / split
        records, found = scan_image_folder(self.split_dir)
        source = "the given class list"
        if class_names is None:
            class_names, source = dataset_classes(Path(root))
        if class_names is not None:
            unknown = sorted(set(found) - set(class_names))
            if unknown:
                raise ImageDataError(f"{self.split_dir / unknown[0]}: class folder(s) {unknown} are not among the "
                                     f"{len(class_names)} classes of {source} ({list(class_names)[:10]})")
            remap = [list(class_names).index(name) for name in found]
            records = [(path, remap[label]) for path, label in records]
            found = list(class_names)
        self.records = records
        self.class_names = found
        self.train = train
        self.img_size = int(img_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.randaugment = build_randaugment(randaugment, img_size=self.img_size, mean=mean) if train else None
        self.scale = tuple(scale) if scale else (self.img_size, (9 * self.img_size) // 8)
        self.flip = flip
        self.max_fail_ratio, self.min_attempts = max_fail_ratio, min_attempts
        self.epoch = 0
        self.failed: dict[str, str] = {}   # path -> reason (each reported once), in this process
        self.attempts = self.failures = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # ------------------------------------------------------------------------------------------ load
    @staticmethod
    def read_image(path: str) -> torch.Tensor:
        """RGB uint8 ``(3, H, W)``; raises OSError / ValueError for unreadable files."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"missing image file {path}")
        if p.stat().st_size == 0:
            raise ValueError(f"zero-byte image file {path}")
        with Image.open(p) as im:
            im.load()                                  # decode now: truncated files fail here
            arr = np.asarray(im.convert("RGB"))        # (H, W, 3) uint8
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def _transform(self, img: torch.Tensor, index: int) -> tuple[torch.Tensor, dict]:
        """uint8 (3, H, W) -> float (3, S, S) normalised, plus the geometry record.

        The video transforms on a one-frame clip: one concept (scale jitter, crop, flip, RandAugment), one place.
        """
        if self.randaugment is not None:  # before the geometry, as the video clips
            img = apply_randaugment(img.unsqueeze(0), self.randaugment, (self.seed, self.epoch, index))[0]
        h, w = img.shape[1:]
        if self.train:
            rng = rng_for(self.seed, self.epoch, index)
            geometry = train_geometry(h, w, img_size=self.img_size, scale=self.scale, flip=self.flip, rng=rng)
        else:
            geometry = eval_geometry(h, w, img_size=self.img_size)
        clip = apply_geometry(img.unsqueeze(0), geometry)                        # (1, 3, S, S) uint8
        return normalize(clip, self.mean, self.std)[0], geometry               # (3, S, S)

    def _record_failure(self, path: str, reason: str) -> None:
        self.attempts += 1
        self.failures += 1
        if path not in self.failed:
            self.failed[path] = reason
            level = logging.WARNING if self.on_error == "substitute" else logging.DEBUG  # see VideoDataset
            log.log(level, "skipping image %s (%s); %d of %d loads failed so far, %s", path, reason, self.failures,
                    self.attempts, "the next image is substituted" if self.on_error == "substitute"
                    else "it is excluded")
        floor = min(self.min_attempts, len(self))
        if self.attempts >= floor and self.failures > self.max_fail_ratio * self.attempts:
            raise TooManyFailures(f"{self.failures} of {self.attempts} image loads in {self.split_dir} failed "
                                  f"(more than max_fail_ratio={self.max_fail_ratio}, data.max_fail_ratio); "
                                  f"{self.failure_summary()}")

    def failure_summary(self, limit: int = 5) -> str:
        items = [f"{p}: {r}" for p, r in list(self.failed.items())[:limit]]
        more = f" (+{len(self.failed) - limit} more)" if len(self.failed) > limit else ""
        return f"{len(self.failed)} bad images: " + "; ".join(items) + more

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        lost: list[dict] = []
        for k in range(n):
            path, label = self.records[(index + k) % n]
            if path in self.failed:
                self._record_failure(path, self.failed[path])
            else:
                try:
                    img = self.read_image(path)
                except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
                    self._record_failure(path, f"{type(e).__name__}: {e}")
            if path in self.failed:
                lost.append({"path": path, "reason": self.failed[path]})
                if self.on_error == "exclude":
                    return {"excluded": {**lost[0], "index": index}}
                continue
            self.attempts += 1
            image, geometry = self._transform(img, index)
            meta = {"path": path, "geometry": geometry}
            if k:
                meta["substituted_for"] = self.records[index][0]
                meta["load_failures"] = lost
            return {"image": image, "label": label, "index": index, "meta": meta}
        raise TooManyFailures(f"no readable image in {self.split_dir}; {self.failure_summary()}")


def collate(samples: list[dict]) -> dict:
    """Stack ``image``, ``label``, ``index`` into tensors; keep ``meta`` as a list; exclusion markers go to
    ``batch["excluded"]`` (as for videos; ``LoadFailures.track`` removes them)."""
    excluded = [s["excluded"] for s in samples if "excluded" in s]
    samples = [s for s in samples if "excluded" not in s]
    if not samples:
        return {"excluded": excluded}
    batch = default_collate([{k: v for k, v in s.items() if k != "meta"} for s in samples])
    batch["meta"] = [s["meta"] for s in samples]
    if excluded:
        batch["excluded"] = excluded
    return batch


def build_image_dataset(root: str | Path, split: str, *, train: bool, img_size: int,
                        mean: tuple[float, float, float], std: tuple[float, float, float], seed: int = 0,
                        randaugment: str = "", max_fail_ratio: float = 0.2, min_attempts: int = 50,
                        scale: tuple[int, int] | None = None, flip: bool = True,
                        class_names: list[str] | None = None,
                        on_error: str | None = None) -> tuple[ImageFolderDataset, list[str]]:
    """The engine's entry point for ``data.format == "imagefolder"``: (dataset, class names)."""
    ds = ImageFolderDataset(root, split, train=train, img_size=img_size, mean=mean, std=std, seed=seed,
                            randaugment=randaugment, scale=scale, flip=flip, max_fail_ratio=max_fail_ratio,
                            min_attempts=min_attempts, class_names=class_names, on_error=on_error)
    return ds, ds.class_names
