"""Clip transforms: one random draw per clip, applied identically to every frame.

A clip is a uint8 tensor ``(T, C, H, W)``. The spatial part is described by a geometry record, so label
generators (flow directions) can map anything measured on the raw frames into the output:

    {"scale": s, "crop": [x0, y0, x1, y1], "flip": bool, "out_size": [H, W]}

The raw frame is resized by ``s`` (short side -> the drawn size), the box ``crop`` (in scaled pixels,
x1/y1 exclusive) is cut out and resized to ``out_size`` (a no-op when the box already has that size),
then mirrored left-right when ``flip``. A raw point (x, y) lands at ((x * s - x0) * W / (x1 - x0), ...),
mirrored as W - 1 - x'. RandAugment (timm, as the reference) runs on the decoded frames before the geometry,
as in the reference; its affine ops are not part of the geometry: flow labels computed on the frames handed to
``label_fn`` (after RandAugment and the crop, as the reference) include them.
"""
from __future__ import annotations

import math
import random
import re

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from timematters.utils import seed_sequence


def _scaled_size(h: int, w: int, short: int) -> tuple[int, int, float]:
    s = short / min(h, w)
    return max(short, round(h * s)), max(short, round(w * s)), s


SCALE_SAMPLINGS = ("uniform", "inverse")


def train_geometry(h: int, w: int, *, img_size: int, scale: tuple[int, int], flip: bool,
                   rng: np.random.Generator, scale_sampling: str = "uniform") -> dict:
    """Short side jittered in ``scale`` (inclusive), a random ``img_size`` square crop, and a left-right flip
    with probability 0.5 when ``flip``. ``scale_sampling``: ``uniform`` draws the side uniformly; ``inverse``
    draws 1/side uniformly (PySlowFast's ``INV_UNIFORM_SAMPLE``, the TIME recipe), favouring smaller sides."""
    lo, hi = int(scale[0]), int(scale[1])
    if not img_size <= lo <= hi:
        raise ValueError(f"scale range must satisfy img_size <= lo <= hi, got img_size={img_size}, scale={scale}")
    if scale_sampling == "uniform":
        short = int(rng.integers(lo, hi + 1))
    elif scale_sampling == "inverse":
        short = int(round(1.0 / rng.uniform(1.0 / hi, 1.0 / lo))) if hi > lo else lo
    else:
        raise ValueError(f"scale_sampling must be one of {SCALE_SAMPLINGS}, got {scale_sampling!r}")
    sh, sw, s = _scaled_size(h, w, short)
    x0 = int(rng.integers(0, sw - img_size + 1))
    y0 = int(rng.integers(0, sh - img_size + 1))
    do_flip = bool(flip and rng.random() < 0.5)
    return {"scale": s, "crop": [x0, y0, x0 + img_size, y0 + img_size], "flip": do_flip,
            "out_size": [img_size, img_size]}


def eval_geometry(h: int, w: int, *, img_size: int, crop_index: int = 1, num_crops: int = 1,
                  short_side: int = 0) -> dict:
    """Short side -> ``short_side`` (default ``img_size``, PySlowFast's test scale; a Hugging Face processor
    may resize larger first), then the centre crop (``num_crops`` = 1) or crop ``crop_index`` of three along
    the long side: 0 = left/top, 1 = centre, 2 = right/bottom."""
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    if num_crops == 1:
        crop_index = 1
    elif not 0 <= crop_index < 3:
        raise ValueError(f"crop_index must be 0, 1 or 2, got {crop_index}")
    if short_side and short_side < img_size:
        raise ValueError(f"short_side {short_side} is smaller than the crop {img_size}")
    sh, sw, s = _scaled_size(h, w, short_side or img_size)
    def offset(length: int, k: int) -> int:  # start of crop k along one axis; centre rounds up (PySlowFast)
        return [0, math.ceil((length - img_size) / 2), length - img_size][k]

    x0 = offset(sw, crop_index if sw >= sh else 1)
    y0 = offset(sh, crop_index if sh > sw else 1)
    return {"scale": s, "crop": [x0, y0, x0 + img_size, y0 + img_size], "flip": False,
            "out_size": [img_size, img_size]}


def apply_geometry(clip: torch.Tensor, geometry: dict) -> torch.Tensor:
    """Resize, crop (and flip) a uint8 clip ``(T, C, H, W)`` -> ``(T, C, *out_size)``, same op per frame."""
    h, w = clip.shape[-2:]
    s = geometry["scale"]
    sh, sw = max(1, round(h * s)), max(1, round(w * s))
    if (sh, sw) != (h, w):
        clip = TF.resize(clip, [sh, sw], antialias=True)
    x0, y0, x1, y1 = geometry["crop"]
    if x0 < 0 or y0 < 0 or x1 > sw or y1 > sh:
        raise ValueError(f"crop {geometry['crop']} outside the scaled frame {sw}x{sh}")
    clip = clip[..., y0:y1, x0:x1]
    out_h, out_w = geometry["out_size"]
    if (y1 - y0, x1 - x0) != (out_h, out_w):
        clip = TF.resize(clip, [out_h, out_w], antialias=True)
    if geometry["flip"]:
        clip = clip.flip(-1)
    return clip


_RA_SECTION = re.compile(r"(m|n|mmax|inc)\d+|(p|mstd)\d+(\.\d*)?|t\w+")


def build_randaugment(spec: str, *, img_size: int, mean=(0.5, 0.5, 0.5)):
    """timm RandAugment from its spec string, e.g. ``"rand-m20-mstd0.5-inc1"`` (the TIME / PySlowFast recipe:
    magnitude 20 (timm caps it at 10), magnitude noise std 0.5, the "increasing" op set, 2 ops each applied with
    probability 0.5). ``""`` -> None. As the reference: translations up to 0.45 x ``img_size`` (the crop size)
    and the mean colour (grey for mean 0.5) as fill."""
    spec = spec.strip()
    if not spec:
        return None
    sections = spec.split("-")
    if sections[0] != "rand" or not all(_RA_SECTION.fullmatch(s) for s in sections[1:]):
        raise ValueError(f"randaugment: {spec!r} is not a timm RandAugment spec such as 'rand-m20-mstd0.5-inc1' "
                         "(sections m<int>, n<int>, p<float>, mstd<float>, mmax<int>, inc<0|1>, t<name>)")
    from timm.data.auto_augment import rand_augment_transform
    hparams = {"translate_const": int(img_size * 0.45),
               "img_mean": tuple(min(255, round(255 * m)) for m in mean)}
    randaugment = rand_augment_transform(spec, hparams)
    for op in randaugment.ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = _posterize
    return randaugment


def _posterize(img, bits_to_keep: int, **_):
    """timm's posterize for every level: magnitude 10 of the "increasing" set keeps 0 bits, a black image
    (what PIL returned when the reference ran; Pillow >= 10 rejects 0 bits with a ValueError). With m20
    clipped to 10 the recipe draws it on every PosterizeIncreasing."""
    from PIL import Image, ImageOps
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def apply_randaugment(clip: torch.Tensor, randaugment, key: tuple[int, ...]) -> torch.Tensor:
    """RandAugment on a uint8 clip ``(T, C, H, W)``, the same draw for every frame (as the reference, which
    reseeds before each frame). timm draws from Python's ``random`` and NumPy's global generator: both are
    seeded from ``key`` (seed, epoch, index) before each frame and restored afterwards."""
    from PIL import Image
    seed = int(seed_sequence(*key).generate_state(1, dtype=np.uint32)[0])
    py_state, np_state = random.getstate(), np.random.get_state()
    out = []
    try:
        for frame in clip.permute(0, 2, 3, 1).numpy():        # (H, W, C) uint8
            random.seed(seed)
            np.random.seed(seed)
            out.append(np.asarray(randaugment(Image.fromarray(frame))))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()  # (T, C, H, W) uint8


def normalize(clip: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``(T, C, H, W)`` -> float32 ``(clip / 255 - mean) / std``."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (clip.float().div_(255.0) - mean_t) / std_t
