"""ImageFolder-style image datasets (``root/<split>/<class>/*.png|jpg``) with the video datasets' rules.

A sample::

    {"image": Tensor (C, H, W) float32 normalised, "label": int, "index": int,
     "meta": {"path": str, "geometry": {"scale": float, "crop": [x0, y0, x1, y1], "flip": bool,
                                       "out_size": [H, W]}, "substitute_for": str | None}}

``geometry`` is the record of ``timematters.data.transforms`` (the video clips' transforms, reused here).

Bad input follows ``VideoDataset``: an image that cannot be read (missing, zero bytes, truncated, not an
image) is counted, reported once with its path and replaced by the next readable image; when more than
``max_fail_ratio`` of the split has failed the dataset raises an error naming the files. Every random
draw (scale, crop, flip, RandAugment) comes from ``rng_for(seed, epoch, index)``; call ``set_epoch``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from timematters.data.transforms import (apply_geometry, apply_randaugment, eval_geometry, normalize,
                                         parse_randaugment, train_geometry)
from timematters.utils import rng_for

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ImageDataError(RuntimeError):
    """Too many unreadable images, or a split folder that does not have the ImageFolder layout."""


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


class ImageFolderDataset(Dataset):
    """Images of one split, resized (train: scale jitter, random crop, flip, RandAugment; eval: centre crop).

    Args:
        root: dataset root; images are read from ``root/split/<class>/``.
        split: sub-folder name (``train``, ``val``, ...).
        train: random augmentation (else deterministic resize + centre crop).
        img_size: output side in pixels (square).
        mean, std: per-channel normalisation of [0, 1] pixels.
        seed: base seed of the per-sample generators.
        randaugment: ``""`` or ``"n=2,m=9"`` (torchvision RandAugment, train only; see ``transforms``).
        scale: train short-side jitter range before the crop (default ``(img_size, 9 * img_size // 8)``);
            eval resizes the short side to ``img_size``.
        flip: random horizontal flips in training.
        max_fail_ratio: stop with an error when more than this share of the split is unreadable.
        class_names: fix the class order (labels) instead of the sorted folder names; folders not in the
            list are an error (an evaluation split must use the training classes).
    """

    def __init__(self, root: str | Path, split: str, *, train: bool, img_size: int,
                 mean: tuple[float, float, float] = (0.5, 0.5, 0.5), std: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 seed: int = 0, randaugment: str = "", scale: tuple[int, int] | None = None, flip: bool = True,
                 max_fail_ratio: float = 0.2, class_names: list[str] | None = None):
        self.split_dir = Path(root) / split
        records, found = scan_image_folder(self.split_dir)
        if class_names is not None:
            unknown = sorted(set(found) - set(class_names))
            if unknown:
                raise ImageDataError(f"{self.split_dir}: class folder(s) {unknown} are not among the model's "
                                     f"classes {list(class_names)}")
            remap = [list(class_names).index(name) for name in found]
            records = [(path, remap[label]) for path, label in records]
            found = list(class_names)
        self.records = records
        self.class_names = found
        self.train = train
        self.img_size = int(img_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.randaugment = parse_randaugment(randaugment) if train else None
        self.scale = tuple(scale) if scale else (self.img_size, (9 * self.img_size) // 8)
        self.flip = flip
        self.max_fail_ratio = max_fail_ratio
        self.epoch = 0
        self.failed: dict[str, str] = {}   # path -> reason, in this process

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
        h, w = img.shape[1:]
        if self.train:
            rng = rng_for(self.seed, self.epoch, index)
            geometry = train_geometry(h, w, img_size=self.img_size, scale=self.scale, flip=self.flip, rng=rng)
        else:
            geometry = eval_geometry(h, w, img_size=self.img_size)
        clip = apply_geometry(img.unsqueeze(0), geometry)                        # (1, 3, S, S) uint8
        if self.randaugment is not None:
            clip = apply_randaugment(clip, self.randaugment, (self.seed, self.epoch, index))
        return normalize(clip, self.mean, self.std)[0], geometry               # (3, S, S)

    def _record_failure(self, path: str, err: Exception) -> None:
        if path not in self.failed:
            self.failed[path] = f"{type(err).__name__}: {err}"
            warnings.warn(f"skipping unreadable image {path} ({self.failed[path]})", stacklevel=3)
        if len(self.failed) > self.max_fail_ratio * len(self):
            listed = "; ".join(f"{p} ({r})" for p, r in list(self.failed.items())[:5])
            raise ImageDataError(
                f"{len(self.failed)} of {len(self)} images in {self.split_dir} are unreadable, more than "
                f"max_fail_ratio={self.max_fail_ratio} (data.max_fail_ratio): {listed}")

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        for k in range(n):
            path, label = self.records[(index + k) % n]
            if path in self.failed:
                continue
            try:
                img = self.read_image(path)
            except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
                self._record_failure(path, e)
                continue
            image, geometry = self._transform(img, index)
            meta = {"path": path, "geometry": geometry,
                    "substitute_for": self.records[index][0] if k else None}
            return {"image": image, "label": label, "index": index, "meta": meta}
        raise ImageDataError(f"no readable image in {self.split_dir}")  # unreachable with max_fail_ratio < 1


def collate(samples: list[dict]) -> dict:
    """Stack ``image``, ``label``, ``index`` into tensors; keep ``meta`` as a list."""
    batch = default_collate([{k: v for k, v in s.items() if k != "meta"} for s in samples])
    batch["meta"] = [s["meta"] for s in samples]
    return batch


def build_image_dataset(root: str | Path, split: str, *, train: bool, img_size: int,
                        mean: tuple[float, float, float], std: tuple[float, float, float], seed: int = 0,
                        randaugment: str = "", max_fail_ratio: float = 0.2, scale: tuple[int, int] | None = None,
                        flip: bool = True, class_names: list[str] | None = None
                        ) -> tuple[ImageFolderDataset, list[str]]:
    """The engine's entry point for ``data.format == "imagefolder"``: (dataset, class names)."""
    ds = ImageFolderDataset(root, split, train=train, img_size=img_size, mean=mean, std=std, seed=seed,
                            randaugment=randaugment, scale=scale, flip=flip, max_fail_ratio=max_fail_ratio,
                            class_names=class_names)
    return ds, ds.class_names
