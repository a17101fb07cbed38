"""The built-in synthetic temporal benchmark, written in the exact Something-Something-v2 layout.

    DIR/20bn-something-something-v2/<id>.webm      VP9 videos (yuv420p, 12 fps like SSv2)
    DIR/something-something-v2-labels.json         {"Template without brackets": "index", ...}
    DIR/something-something-v2-train.json          [{"id", "label", "template", "placeholders"}, ...]
    DIR/something-something-v2-validation.json
    DIR/timematters-meta.json                      classes, ceilings, params, per-video true motion

Classes:
- temporal classes come in time-reversed pairs (left->right / right->left, closer / apart, towards /
  away from the camera, covering / uncovering, clockwise / counter-clockwise). The second class of a
  pair is drawn exactly like the first and then played backwards, so the *set* of frames has the same
  distribution in both classes: a model that ignores frame order can find the pair but not the
  direction, and is capped at 50 % on the temporal classes (the "order-blind ceiling").
- static classes are told apart by the object's appearance (shape or texture); their motion is random.
- ``bias=P`` adds a spatial shortcut: in the train split the background is the class's cue colour
  with probability P and a uniformly random one of the K colours otherwise (so it agrees with the
  class with probability P + (1 - P) / K; P = 0 is no shortcut); in validation it is always random.

Objects are shapes given by signed distance functions in their own frame and placed by a similarity
transform (centre, scale, angle) per frame, so the true motion of every pixel is known exactly
(:func:`motion_field`). Image coordinates: x right, y down, pixel (row i, col j) has its centre at
(j + 0.5, i + 0.5); a positive angle turns clockwise on screen.

Every video is drawn from its own generator ``rng_for(seed, index, stream)``, so the output does not
depend on the number of worker processes.
"""
from __future__ import annotations

import argparse
import colorsys
import functools
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from timematters.utils import Progress, atomic_write_bytes, rng_for

VIDEO_DIR = "20bn-something-something-v2"
LABELS_FILE = "something-something-v2-labels.json"
SPLIT_FILES = {"train": "something-something-v2-train.json",
               "validation": "something-something-v2-validation.json"}
META_FILE = "timematters-meta.json"
META_FORMAT = "timematters-synth"
META_VERSION = 1

# rng streams per video (the third key of rng_for)
_STREAM_CONTENT, _STREAM_BACKGROUND = 1, 2


@dataclass(frozen=True)
class SynthClass:
    """One class: its SSv2-style template, group, reversed partner and how it is drawn."""

    template: str            # with [something] placeholders, as in the SSv2 annotation files
    group: str               # "temporal" | "static"
    partner: str | None      # name of the time-reversed class (temporal classes only)
    motion: str              # generator: slide | approach | grow | cover | rotate | wander
    reverse: bool = False    # drawn as the partner's forward clip played backwards
    appearance: str = ""     # static classes: the object that defines the class

    @property
    def name(self) -> str:
        """Template with the brackets removed: the key of the labels file (as the official tools)."""
        return self.template.replace("[", "").replace("]", "")


def _pair(forward: str, backward: str, motion: str) -> list[SynthClass]:
    f, b = forward.replace("[", "").replace("]", ""), backward.replace("[", "").replace("]", "")
    return [SynthClass(forward, "temporal", b, motion), SynthClass(backward, "temporal", f, motion, reverse=True)]


CLASSES: tuple[SynthClass, ...] = tuple(
    _pair("Moving [something] from left to right", "Moving [something] from right to left", "slide")
    + _pair("Moving [something] and [something] closer to each other",
            "Moving [something] and [something] away from each other", "approach")
    + _pair("Approaching [something] with your camera", "Moving away from [something] with your camera", "grow")
    + _pair("Covering [something] with [something]", "Uncovering [something]", "cover")
    + _pair("Turning [something] clockwise", "Turning [something] counterclockwise", "rotate")
    + [SynthClass("Showing [something] shaped like a ring", "static", None, "wander", appearance="ring"),
       SynthClass("Showing [something] shaped like a cross", "static", None, "wander", appearance="cross"),
       SynthClass("Showing [something] with stripes", "static", None, "wander", appearance="stripes"),
       SynthClass("Showing [something] with a checkerboard pattern", "static", None, "wander",
                  appearance="checker")]
)

# Difficulty presets; any knob given explicitly overrides its preset value. "default" is where a tiny
# TimeSformer (4 blocks, dim 128, 16 px patches at 64 px, 8 frames) learns on the CPU in minutes:
# objects about 0.4 of the frame wide (several patches), high contrast, plain backgrounds. Measured on
# 2000 videos, batch 32, AdamW 1e-3: after 200 steps it found the reversed pair of 70 % of the
# temporal validation clips with these objects, against 45 % with objects a third smaller.
DIFFICULTY: dict[str, dict[str, float]] = {
    "easy": {"contrast": 1.0, "object_size": 1.2, "clutter": 0, "texture": 0.0},
    "default": {"contrast": 1.0, "object_size": 1.0, "clutter": 0, "texture": 0.0},
    "hard": {"contrast": 0.5, "object_size": 0.5, "clutter": 3, "texture": 0.6},
}
OBJECT_RADIUS = 0.19  # default object radius as a share of the frame size (object_size = 1)

# ----------------------------------------------------------------------------------------------
# Shapes: signed distance (in the object's own units, negative inside) and bounding radius


def _box(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    # exact inside and along the edges, which is all the anti-aliasing needs
    return np.maximum(np.abs(u) - a, np.abs(v) - b)


_SQRT3_2 = math.sqrt(3.0) / 2.0


def _sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "disc":
        return np.hypot(u, v) - 1.0
    if shape == "square":
        return _box(u, v, 0.85, 0.85)
    if shape == "diamond":
        return (np.abs(u) + np.abs(v) - 1.15) / math.sqrt(2.0)
    if shape == "triangle":  # apex up (y down), inradius 0.55
        return np.maximum.reduce([v, -_SQRT3_2 * u - 0.5 * v, _SQRT3_2 * u - 0.5 * v]) - 0.55
    if shape == "hexagon":
        return np.maximum.reduce([np.abs(u), np.abs(0.5 * u + _SQRT3_2 * v),
                                  np.abs(0.5 * u - _SQRT3_2 * v)]) - 0.9
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.68) - 0.32
    if shape == "cross":
        return np.minimum(_box(u, v, 1.0, 0.32), _box(u, v, 0.32, 1.0))
    if shape == "bar":
        return _box(u, v, 1.0, 0.28)
    if shape == "card":
        return _box(u, v, 1.0, 1.0)
    raise ValueError(f"unknown shape {shape!r}")


_EXTENT = {"disc": 1.0, "square": 1.21, "diamond": 1.15, "triangle": 1.1, "hexagon": 1.04,
           "ring": 1.0, "cross": 1.05, "bar": 1.04, "card": 1.42}
SOLID_SHAPES = ("disc", "square", "triangle", "diamond", "hexagon")

_HUE_NAMES = ["red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue", "violet",
              "purple", "pink"]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _hue_name(h: float) -> str:
    return _HUE_NAMES[int(round((h % 1.0) * len(_HUE_NAMES))) % len(_HUE_NAMES)]


def cue_palette(num_classes: int) -> np.ndarray:
    """Background colours (K, 3) float32 in 0..255: dark, evenly spaced hues; colour c is class c's cue."""
    return np.stack([_hsv(c / num_classes, 0.65, 0.34 + 0.1 * (c % 2)) for c in range(num_classes)])


# ----------------------------------------------------------------------------------------------
# Objects and their per-frame placement


@dataclass
class SynthObject:
    """A shape with a texture, placed per frame by centre (px), scale (px per unit) and angle (rad)."""

    role: str                 # target | second | occluder | distractor
    shape: str
    texture: str              # solid | stripes | checker | twotone
    color: np.ndarray         # (3,) main colour, 0..255
    color2: np.ndarray        # (3,) texture's second colour
    cx: np.ndarray            # (T,)
    cy: np.ndarray            # (T,)
    scale: np.ndarray         # (T,)
    angle: np.ndarray         # (T,) radians, clockwise on screen

    def reversed(self) -> "SynthObject":
        return SynthObject(self.role, self.shape, self.texture, self.color, self.color2,
                           self.cx[::-1].copy(), self.cy[::-1].copy(), self.scale[::-1].copy(),
                           self.angle[::-1].copy())

    def local_coords(self, t: int, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image points -> the object's own units at frame t (inverse similarity transform)."""
        c, s = math.cos(self.angle[t]), math.sin(self.angle[t])
        dx, dy = xs - self.cx[t], ys - self.cy[t]
        return (c * dx + s * dy) / self.scale[t], (-s * dx + c * dy) / self.scale[t]

    def image_coords(self, t: int, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.angle[t]), math.sin(self.angle[t])
        k = self.scale[t]
        return self.cx[t] + k * (c * u - s * v), self.cy[t] + k * (s * u + c * v)

    def layer(self, t: int, size: int) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
        """Anti-aliased coverage (h, w) and colour (h, w, 3) inside the object's pixel window at frame t."""
        r = _EXTENT[self.shape] * self.scale[t] + 1.5
        x0, x1 = max(int(math.floor(self.cx[t] - r)), 0), min(int(math.ceil(self.cx[t] + r)), size)
        y0, y1 = max(int(math.floor(self.cy[t] - r)), 0), min(int(math.ceil(self.cy[t] + r)), size)
        if x0 >= x1 or y0 >= y1:
            return None
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        u, v = self.local_coords(t, xs, ys)
        k = self.scale[t]
        alpha = np.clip(0.5 - _sdf(self.shape, u, v) * k, 0.0, 1.0)  # (h, w), 1 px soft edge
        if self.texture == "solid":
            mix = np.zeros_like(alpha)
        else:
            period = 0.4  # half-period of the pattern in object units
            # sin(pi u / period) * period / pi is the distance to the nearest edge near a crossing
            fu = np.clip(0.5 + np.sin(math.pi * u / period) * (period / math.pi) * k, 0.0, 1.0)
            if self.texture == "stripes":
                mix = fu
            elif self.texture == "checker":
                fv = np.clip(0.5 + np.sin(math.pi * v / period) * (period / math.pi) * k, 0.0, 1.0)
                mix = fu * fv + (1.0 - fu) * (1.0 - fv)
            elif self.texture == "twotone":
                mix = np.clip(0.5 + u * k, 0.0, 1.0)
            else:
                raise ValueError(f"unknown texture {self.texture!r}")
        color = self.color * (1.0 - mix[..., None]) + self.color2 * mix[..., None]
        return (y0, y1, x0, x1), alpha, color


def _progress(frames: int, rng: np.random.Generator) -> np.ndarray:
    """0 -> 1 over the clip, linear, with a short random hold at either end."""
    start, end = rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)
    t = np.linspace(0.0, 1.0, frames)
    return np.clip((t - start) / (end - start), 0.0, 1.0)


def _lerp(a: float, b: float, p: np.ndarray) -> np.ndarray:
    return (a + (b - a) * p).astype(np.float64)


def _const(x: float, frames: int) -> np.ndarray:
    return np.full(frames, x, dtype=np.float64)


def _bright_color(rng: np.random.Generator, contrast: float, bg: np.ndarray,
                  avoid_hue: float | None = None) -> tuple[np.ndarray, float]:
    hue = rng.uniform()
    if avoid_hue is not None:  # keep two objects of one clip apart in hue
        hue = (avoid_hue + rng.uniform(0.2, 0.8)) % 1.0
    col = _hsv(hue, rng.uniform(0.55, 1.0), 1.0)
    return bg + contrast * (col - bg), hue


def _solid_object(role: str, rng: np.random.Generator, frames: int, contrast: float, bg: np.ndarray,
                  avoid_hue: float | None = None) -> tuple[SynthObject, str, float]:
    shape = SOLID_SHAPES[rng.integers(len(SOLID_SHAPES))]
    col, hue = _bright_color(rng, contrast, bg, avoid_hue)
    obj = SynthObject(role, shape, "solid", col, col, _const(0, frames), _const(0, frames),
                      _const(1, frames), _const(rng.uniform(0, 2 * math.pi), frames))
    return obj, f"{_hue_name(hue)} {shape}", hue


def _wander(obj: SynthObject, rng: np.random.Generator, frames: int, size: int, radius: float,
            max_travel: float) -> None:
    """Random motion whose distribution is the same played forwards or backwards."""
    cx0, cy0 = rng.uniform(0.3, 0.7, size=2) * size
    heading, travel = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, max_travel) * size
    p = np.linspace(-0.5, 0.5, frames)
    obj.cx = cx0 + travel * math.cos(heading) * p
    obj.cy = cy0 + travel * math.sin(heading) * p
    obj.scale = _const(radius, frames)
    obj.angle = obj.angle[0] + rng.uniform(-0.6, 0.6) * p


def _draw_clip(cls: SynthClass, rng: np.random.Generator, *, frames: int, size: int, bg: np.ndarray,
               contrast: float, object_size: float) -> tuple[list[SynthObject], list[str]]:
    """The forward (not yet reversed) objects of one clip of ``cls`` and its placeholders."""
    S, T = float(size), frames
    r = OBJECT_RADIUS * S * object_size * rng.uniform(0.85, 1.15)  # object radius in px
    if cls.motion == "slide":
        obj, name, _ = _solid_object("target", rng, T, contrast, bg)
        p = _progress(T, rng)
        cy0 = rng.uniform(0.3, 0.7) * S
        obj.cx = _lerp(rng.uniform(0.12, 0.3) * S, rng.uniform(0.7, 0.88) * S, p)
        obj.cy = _lerp(cy0, cy0 + rng.uniform(-0.08, 0.08) * S, p)
        obj.scale = _const(r, T)
        return [obj], [name]
    if cls.motion == "approach":
        a, name_a, hue = _solid_object("target", rng, T, contrast, bg)
        b, name_b, _ = _solid_object("second", rng, T, contrast, bg, avoid_hue=hue)
        rb = OBJECT_RADIUS * S * object_size * rng.uniform(0.85, 1.15)
        p = _progress(T, rng)
        mx, my = rng.uniform(0.42, 0.58, size=2) * S
        axis = rng.uniform(0, math.pi)
        d = _lerp(rng.uniform(0.62, 0.72) * S, (r + rb) * rng.uniform(0.95, 1.1), p)  # centre distance
        ux, uy = math.cos(axis), math.sin(axis)
        a.cx, a.cy, a.scale = mx - ux * d / 2, my - uy * d / 2, _const(r, T)
        b.cx, b.cy, b.scale = mx + ux * d / 2, my + uy * d / 2, _const(rb, T)
        return [a, b], [name_a, name_b]
    if cls.motion == "grow":
        obj, name, _ = _solid_object("target", rng, T, contrast, bg)
        p = _progress(T, rng)
        cx0, cy0 = rng.uniform(0.38, 0.62, size=2) * S
        obj.cx = _lerp(cx0, cx0 + rng.uniform(-0.05, 0.05) * S, p)
        obj.cy = _lerp(cy0, cy0 + rng.uniform(-0.05, 0.05) * S, p)
        obj.scale = r * np.exp(_lerp(math.log(rng.uniform(0.4, 0.55)), math.log(rng.uniform(1.5, 1.9)), p))
        return [obj], [name]
    if cls.motion == "cover":
        target, name, hue = _solid_object("target", rng, T, contrast, bg)
        tx, ty = rng.uniform(0.35, 0.65, size=2) * S
        target.cx, target.cy, target.scale = _const(tx, T), _const(ty, T), _const(r, T)
        # the occluder: a light, slightly tinted card that slides in from one side and ends over the target
        card_hue = rng.uniform()
        col = _hsv(card_hue, rng.uniform(0.0, 0.25), 0.95)
        col = bg + contrast * (col - bg)
        half = r * rng.uniform(1.55, 1.8) * _EXTENT[target.shape]  # card half-width in px
        side = rng.integers(4)  # 0 left, 1 right, 2 top, 3 bottom
        ex, ey = tx + rng.uniform(-0.1, 0.1) * r, ty + rng.uniform(-0.1, 0.1) * r
        sx = {0: -half - 1.0, 1: S + half + 1.0}.get(int(side), ex)
        sy = {2: -half - 1.0, 3: S + half + 1.0}.get(int(side), ey)
        p = _progress(T, rng)
        card = SynthObject("occluder", "card", "solid", col, col, _lerp(sx, ex, p), _lerp(sy, ey, p),
                           _const(half, T), _const(0.0, T))
        names = [name] if cls.reverse else [name, f"{_hue_name(card_hue)} card"]
        return [target, card], names
    if cls.motion == "rotate":
        col, hue = _bright_color(rng, contrast, bg)
        col2, hue2 = _bright_color(rng, contrast, bg, avoid_hue=hue)
        p = _progress(T, rng)
        a0 = rng.uniform(0, 2 * math.pi)
        obj = SynthObject("target", "bar", "twotone", col, col2, _const(0, T), _const(0, T),
                          _const(r * rng.uniform(1.6, 1.9), T),
                          _lerp(a0, a0 + math.radians(rng.uniform(100.0, 160.0)), p))
        cx, cy = rng.uniform(0.42, 0.58, size=2) * S
        obj.cx, obj.cy = _const(cx, T), _const(cy, T)
        return [obj], [f"{_hue_name(hue)} and {_hue_name(hue2)} stick"]
    if cls.motion == "wander":
        col, hue = _bright_color(rng, contrast, bg)
        shape, texture = {"ring": ("ring", "solid"), "cross": ("cross", "solid"),
                          "stripes": ("square", "stripes"), "checker": ("disc", "checker")}[cls.appearance]
        col2 = col * 0.3 if texture != "solid" else col  # dark second colour for the patterns
        obj = SynthObject("target", shape, texture, col, col2, _const(0, T), _const(0, T), _const(r, T),
                          _const(rng.uniform(0, 2 * math.pi), T))
        _wander(obj, rng, T, size, r, max_travel=0.35)
        return [obj], [f"{_hue_name(hue)} {shape}"]
    raise ValueError(f"unknown motion {cls.motion!r}")


def find_backdrop_videos(backdrop: str) -> tuple[str, ...]:
    """Video files for ``backdrop``: a video file or a folder of videos (your own footage)."""
    path = Path(backdrop)
    suffixes = {".mp4", ".webm", ".avi", ".mkv", ".mov"}
    files = [path] if path.is_file() else sorted(p for p in path.glob("*") if p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"backdrop {backdrop!r}: no video files at {path}")
    return tuple(str(f) for f in files)


@functools.lru_cache(maxsize=4)
def _backdrop_frames(files: tuple[str, ...], size: int) -> tuple[np.ndarray, ...]:
    """Grey frames (H, W) float32 in -1..1 from the backdrop videos, short side 1.5 x ``size``; cached
    per process. Up to 8 frames spread over each video."""
    import av
    import cv2

    out = []
    for f in files:
        try:
            with av.open(f) as c:
                frames = [fr.to_ndarray(format="gray") for fr in c.decode(video=0)]
        except (av.error.FFmpegError, OSError) as e:
            raise ValueError(f"backdrop video {f}: cannot decode ({e})") from None
        for g in frames[:: max(1, len(frames) // 8)][:8]:
            k = 1.5 * size / min(g.shape)
            g = cv2.resize(g, (max(size, round(g.shape[1] * k)), max(size, round(g.shape[0] * k))),
                           interpolation=cv2.INTER_AREA).astype(np.float32)
            out.append((g - g.mean()) / (2.0 * g.std() + 1e-6))
    return tuple(np.clip(g, -1.0, 1.0) for g in out)


def _background(rng: np.random.Generator, size: int, color: np.ndarray, texture: float,
                backdrop: tuple[str, ...] = ()) -> np.ndarray:
    """(S, S, 3) float32: the plain cue colour, plus grey clutter of amplitude ``texture`` when > 0:
    smooth noise, or a random crop of a real video frame when ``backdrop`` names videos. The clutter
    stays still over the clip (a moving backdrop would carry the clip's arrow of time)."""
    bg = np.broadcast_to(color, (size, size, 3)).astype(np.float32)
    if texture > 0:
        import cv2

        if backdrop:
            frames = _backdrop_frames(backdrop, size)
            g = frames[rng.integers(len(frames))]
            y, x = rng.integers(g.shape[0] - size + 1), rng.integers(g.shape[1] - size + 1)
            field = g[y:y + size, x:x + size]
        else:
            grid = rng.uniform(-1.0, 1.0, size=(7, 7)).astype(np.float32)
            field = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        bg = bg + (70.0 * texture) * field[..., None]
    return bg


def _distractors(rng: np.random.Generator, count: int, frames: int, size: int, bg_color: np.ndarray,
                 object_size: float) -> list[SynthObject]:
    out = []
    for _ in range(count):
        shape = SOLID_SHAPES[rng.integers(len(SOLID_SHAPES))]
        col = bg_color + 0.5 * (_hsv(rng.uniform(), rng.uniform(0.3, 0.9), 0.85) - bg_color)
        obj = SynthObject("distractor", shape, "solid", col, col, _const(0, frames), _const(0, frames),
                          _const(1, frames), _const(rng.uniform(0, 2 * math.pi), frames))
        _wander(obj, rng, frames, size, OBJECT_RADIUS * size * object_size * rng.uniform(0.25, 0.4),
                max_travel=0.4)
        out.append(obj)
    return out


def render(objects: list[SynthObject], background: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite the objects (back to front) over the background.

    Returns frames (T, S, S, 3) uint8 and the id of the topmost object per pixel (T, S, S) int16
    (-1 = background; an object counts where its coverage is at least one half)."""
    size = background.shape[0]
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    top = np.full((frames, size, size), -1, dtype=np.int16)
    for t in range(frames):
        img = background.copy()
        for k, obj in enumerate(objects):
            lay = obj.layer(t, size)
            if lay is None:
                continue
            (y0, y1, x0, x1), alpha, color = lay
            a = alpha[..., None]
            img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1.0 - a) + color * a
            top[t, y0:y1, x0:x1][alpha >= 0.5] = k
        video[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return video, top


def _build_clip(class_index: int, seed: int, index: int, background: int, frames: int, size: int,
                contrast: float, object_size: float, clutter: int, texture: float,
                backdrop: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray, list[SynthObject], list[str]]:
    cls = CLASSES[class_index]
    rng = rng_for(seed, index, _STREAM_CONTENT)
    bg_color = cue_palette(len(CLASSES))[background]
    back = _background(rng, size, bg_color, texture, backdrop)
    clutter_objs = _distractors(rng, clutter, frames, size, bg_color, object_size)
    objects, placeholders = _draw_clip(cls, rng, frames=frames, size=size, bg=bg_color, contrast=contrast,
                                       object_size=object_size)
    objects = clutter_objs + objects  # distractors stay behind the actors
    if cls.reverse:  # exactly the partner's clip, played backwards
        objects = [o.reversed() for o in objects]
    video, top = render(objects, back, frames)
    return video, top, objects, placeholders


def sample_clip(class_index: int, seed: int, index: int, *, frames: int = 16, size: int = 64,
                background: int | None = None, contrast: float = 1.0, object_size: float = 1.0,
                clutter: int = 0, texture: float = 0.0,
                backdrop: str | None = None) -> tuple[np.ndarray, list[SynthObject], list[str]]:
    """Draw and render one clip of ``CLASSES[class_index]`` in memory (no encoding).

    The content comes from ``rng_for(seed, index, 1)``; ``background`` is a palette index (None: drawn
    uniformly from ``rng_for(seed, index, 2)``, as :func:`generate` does without bias). Returns frames
    (T, S, S, 3) uint8 RGB, the objects (back to front, per-frame placement as shown) and the SSv2
    placeholders. A reversed class is its partner's clip played backwards."""
    if not 0 <= class_index < len(CLASSES):
        raise ValueError(f"class_index {class_index} out of range 0..{len(CLASSES) - 1}")
    if background is None:
        background = int(rng_for(seed, index, _STREAM_BACKGROUND).integers(len(CLASSES)))
    files = find_backdrop_videos(backdrop) if backdrop else ()
    video, _, objects, placeholders = _build_clip(class_index, seed, index, background, frames, size, contrast,
                                                  object_size, clutter, texture, files)
    return video, objects, placeholders


# ----------------------------------------------------------------------------------------------
# Ground truth motion


def _object_meta(obj: SynthObject, top: np.ndarray, k: int, size: int) -> dict[str, Any]:
    T = len(obj.cx)
    boxes = []
    for t in range(T):
        lay = obj.layer(t, size)
        box = None
        if lay is not None:
            (y0, _, x0, _), alpha, _ = lay
            rows, cols = np.nonzero(alpha >= 0.5)
            if len(rows):
                box = [int(x0 + cols.min()), int(y0 + rows.min()), int(x0 + cols.max() + 1),
                       int(y0 + rows.max() + 1)]
        boxes.append(box)
    r3 = lambda a: [round(float(x), 3) for x in a]  # noqa: E731
    return {
        "role": obj.role, "shape": obj.shape, "texture": obj.texture,
        "color": r3(obj.color), "color2": r3(obj.color2),
        "center": [[round(float(x), 3), round(float(y), 3)] for x, y in zip(obj.cx, obj.cy)],
        "scale": r3(obj.scale), "angle": r3(np.degrees(obj.angle)),
        "motion": [[round(float(dx), 3), round(float(dy), 3)]
                   for dx, dy in zip(np.diff(obj.cx), np.diff(obj.cy))],
        "box": boxes,
        "visible_px": [int(n) for n in (top == k).sum(axis=(1, 2))],
    }


def _objects_from_meta(objs: list[dict[str, Any]]) -> list[SynthObject]:
    out = []
    for o in objs:
        c = np.asarray(o["center"], dtype=np.float64)
        out.append(SynthObject(o["role"], o["shape"], o["texture"], np.asarray(o["color"], np.float32),
                               np.asarray(o["color2"], np.float32), c[:, 0], c[:, 1],
                               np.asarray(o["scale"], np.float64), np.radians(np.asarray(o["angle"]))))
    return out


def motion_field(video_meta: dict[str, Any], t: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """True motion from frame t to t+1 of a video, from its metadata entry.

    Returns flow (S, S, 2) float32 (dx, dy in px; 0 on the background) and the id of the topmost
    object per pixel at frame t (S, S) int16 (-1 = background). Each object's pixels move with its
    similarity transform (centre, scale, angle), so rotation and growth are exact."""
    objects = _objects_from_meta(video_meta["objects"])
    T = len(objects[0].cx) if objects else 0
    if not 0 <= t < T - 1:
        raise ValueError(f"frame {t} has no successor (video has {T} frames)")
    top = np.full((size, size), -1, dtype=np.int16)
    for k, obj in enumerate(objects):
        lay = obj.layer(t, size)
        if lay is not None:
            (y0, y1, x0, x1), alpha, _ = lay
            top[y0:y1, x0:x1][alpha >= 0.5] = k
    flow = np.zeros((size, size, 2), dtype=np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    for k, obj in enumerate(objects):
        m = top == k
        if m.any():
            u, v = obj.local_coords(t, xs[m], ys[m])
            nx, ny = obj.image_coords(t + 1, u, v)
            flow[m, 0], flow[m, 1] = nx - xs[m], ny - ys[m]
    return flow, top


# ----------------------------------------------------------------------------------------------
# Writing the dataset


def _encode_webm(path: Path, video: np.ndarray, fps: int, crf: int) -> None:
    """VP9 in WebM as SSv2 ships it; written to a temporary name and renamed."""
    import av

    T, H, W, _ = video.shape
    tmp = path.with_name(f".{path.name}.tmp")
    # bitexact: no random Matroska UIDs or encoder strings, so a seed gives the same bytes
    with av.open(str(tmp), "w", format="webm", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.thread_count = 1  # one thread per encoder: deterministic bytes, parallel across videos
        stream.options = {"crf": str(crf), "b": "0", "deadline": "realtime", "cpu-used": "8"}
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


@dataclass(frozen=True)
class _Job:
    index: int
    video_id: str
    class_index: int
    background: int     # palette index of the background colour
    seed: int
    frames: int
    size: int
    contrast: float
    object_size: float
    clutter: int
    texture: float
    backdrop: tuple[str, ...]
    fps: int
    crf: int
    video_dir: str


def _make_video(job: _Job) -> dict[str, Any]:
    video, top, objects, placeholders = _build_clip(job.class_index, job.seed, job.index, job.background,
                                                    job.frames, job.size, job.contrast, job.object_size,
                                                    job.clutter, job.texture, job.backdrop)
    _encode_webm(Path(job.video_dir) / f"{job.video_id}.webm", video, job.fps, job.crf)
    return {"placeholders": placeholders,
            "objects": [_object_meta(o, top, k, job.size) for k, o in enumerate(objects)]}


def _fill(template: str, placeholders: list[str]) -> str:
    out = template
    for p in placeholders:
        i, j = out.index("["), out.index("]")
        out = out[:i] + p + out[j + 1:]
    return out


def prepare_video_dir(out: Path, ids: list[str], *, force: bool) -> Path:
    """``out/VIDEO_DIR``, created; refuses to overwrite earlier videos unless ``force``, and then drops
    videos of an earlier, larger run so the folder matches the annotations about to be written."""
    video_dir = out / VIDEO_DIR
    if video_dir.is_dir() and any(video_dir.glob("*.webm")) and not force:
        raise FileExistsError(f"{video_dir} already holds videos; pass force=True (--force) to overwrite")
    video_dir.mkdir(parents=True, exist_ok=True)
    keep = {f"{v}.webm" for v in ids}
    for p in video_dir.glob("*.webm"):
        if p.name not in keep:
            p.unlink()
    return video_dir


def write_annotations(out: Path, labels: dict[str, str], splits: dict[str, list[dict[str, Any]]],
                      meta: dict[str, Any]) -> None:
    """The SSv2 label and split files and ``timematters-meta.json``, each written atomically."""
    dump = lambda obj: json.dumps(obj, indent=1).encode()  # noqa: E731
    atomic_write_bytes(out / LABELS_FILE, dump(labels))
    for split, entries in splits.items():
        atomic_write_bytes(out / SPLIT_FILES[split], dump(entries))
    atomic_write_bytes(out / META_FILE, json.dumps(meta, separators=(",", ":")).encode())


def split_and_classes(videos: int, seed: int, val_fraction: float, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced classes in a seeded random order; the last share of each class goes to validation."""
    classes = rng_for(seed, 0x5EED).permutation(np.arange(videos) % K)
    is_val = np.zeros(videos, dtype=bool)
    for c in range(K):
        idx = np.nonzero(classes == c)[0]
        n_val = int(math.ceil(val_fraction * len(idx))) if val_fraction > 0 else 0
        is_val[idx[len(idx) - n_val:]] = True
    return classes, is_val


def _backgrounds(classes: np.ndarray, is_val: np.ndarray, seed: int, bias: float) -> np.ndarray:
    """Palette index per video: in train the class's cue with probability ``bias``, else uniform."""
    K = len(CLASSES)
    out = np.empty(len(classes), dtype=np.int64)
    for i, (c, val) in enumerate(zip(classes, is_val)):
        rng = rng_for(seed, i, _STREAM_BACKGROUND)
        cue = not val and bias > 0 and rng.uniform() < bias
        out[i] = c if cue else rng.integers(K)
    return out


def _ceilings(classes: np.ndarray, is_val: np.ndarray) -> dict[str, Any]:
    """Best accuracy a model blind to frame order can reach: 50 % within each reversed pair."""
    per_class = {c.name: (0.5 if c.group == "temporal" else 1.0) for c in CLASSES}
    weights = np.array([per_class[c.name] for c in CLASSES])

    def overall(mask: np.ndarray) -> float:
        counts = np.bincount(classes[mask], minlength=len(CLASSES))
        return round(float((counts * weights).sum() / max(counts.sum(), 1)), 4)

    return {"temporal": 0.5, "static": 1.0, "per_class": per_class,
            "all": {"train": overall(~is_val), "validation": overall(is_val)},
            "note": "a model that ignores frame order cannot tell a clip from its time-reversed partner"}


def check_benchmark_args(videos: int, frames: int, size: int, val_fraction: float, *, num_classes: int,
                         min_frames: int = 2, frames_hint: str = "") -> None:
    """The checks of every synthetic video benchmark's ``generate`` (this one's and ``synth_pretrain``'s)."""
    if videos < 2 * num_classes:
        raise ValueError(f"videos={videos}: need at least {2 * num_classes} (two per class for {num_classes} "
                         f"classes)")
    if frames < min_frames:
        raise ValueError(f"frames={frames}: {frames_hint or f'need at least {min_frames}'}")
    if size < 16 or size % 2:
        raise ValueError(f"size={size}: need an even size >= 16 (VP9 yuv420p)")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: must be in (0, 1)")


def _check_args(videos: int, frames: int, size: int, bias: float, val_fraction: float,
                knobs: dict[str, float]) -> None:
    check_benchmark_args(videos, frames, size, val_fraction, num_classes=len(CLASSES))
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias={bias}: must be a probability in [0, 1]")
    if not 0.0 < knobs["contrast"] <= 1.0:
        raise ValueError(f"contrast={knobs['contrast']}: must be in (0, 1]")
    if not 0.2 <= knobs["object_size"] <= 2.0:
        raise ValueError(f"object_size={knobs['object_size']}: must be in [0.2, 2]")
    if knobs["clutter"] < 0 or knobs["texture"] < 0:
        raise ValueError("clutter and texture must be >= 0")


def generate(out: str | Path, *, videos: int = 2000, frames: int = 16, size: int = 64, seed: int = 0,
             bias: float = 0.0, val_fraction: float = 0.2, difficulty: str = "default",
             contrast: float | None = None, object_size: float | None = None, clutter: int | None = None,
             texture: float | None = None, backdrop: str | None = None, fps: int = 12, crf: int = 10,
             workers: int = 2,
             force: bool = False, progress: bool = False) -> Path:
    """Write the benchmark to ``out`` (SSv2 layout) and return ``out``.

    ``bias``: probability that a train video's background is set to its class's cue colour (else it
    is one of the K colours at random: agreement P + (1 - P) / K; 0 = no shortcut). Validation
    backgrounds are always random.
    ``difficulty`` picks a preset of the knobs ``contrast`` (object vs background, 0..1],
    ``object_size`` (x the default radius, 0.19 of the frame), ``clutter`` (moving distractor shapes)
    and ``texture`` (background clutter amplitude); knobs given explicitly win. ``backdrop`` (a video or
    a folder of videos) makes the clutter real video frames instead of smooth noise."""
    bias = 0.0 if bias is None else float(bias)
    if difficulty not in DIFFICULTY:
        raise ValueError(f"difficulty={difficulty!r}: choose one of {sorted(DIFFICULTY)}")
    knobs = dict(DIFFICULTY[difficulty])
    for key, value in (("contrast", contrast), ("object_size", object_size), ("clutter", clutter),
                       ("texture", texture)):
        if value is not None:
            knobs[key] = value
    _check_args(videos, frames, size, bias, val_fraction, knobs)
    files = find_backdrop_videos(backdrop) if backdrop else ()
    if files and knobs["texture"] <= 0:
        raise ValueError("backdrop needs texture > 0 (the clutter amplitude)")
    out = Path(out)
    ids = [str(i + 1) for i in range(videos)]
    video_dir = prepare_video_dir(out, ids, force=force)
    classes, is_val = split_and_classes(videos, seed, val_fraction, len(CLASSES))
    backgrounds = _backgrounds(classes, is_val, seed, bias)
    jobs = [_Job(i, ids[i], int(classes[i]), int(backgrounds[i]), seed, frames, size, float(knobs["contrast"]),
                 float(knobs["object_size"]), int(knobs["clutter"]), float(knobs["texture"]), files, fps, crf,
                 str(video_dir)) for i in range(videos)]

    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    if workers <= 1:
        it = map(_make_video, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        it = pool.map(_make_video, jobs, chunksize=16)
    try:
        for res in Progress(it, total=videos, desc="synth", unit="video", enabled=progress):
            results.append(res)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    seconds = time.perf_counter() - t0

    # annotation files, as the official download
    labels = {c.name: str(k) for k, c in enumerate(CLASSES)}
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
    palette = cue_palette(len(CLASSES))
    meta_videos: dict[str, Any] = {}
    for i, res in enumerate(results):
        cls = CLASSES[classes[i]]
        split = "validation" if is_val[i] else "train"
        splits[split].append({"id": ids[i], "label": _fill(cls.template, res["placeholders"]),
                              "template": cls.template, "placeholders": res["placeholders"]})
        meta_videos[ids[i]] = {"split": split, "class": cls.name, "class_index": int(classes[i]),
                               "reversed": cls.reverse, "background": int(backgrounds[i]),
                               "cue_agrees": bool(backgrounds[i] == classes[i]), "objects": res["objects"]}
    K = len(CLASSES)
    params = {"videos": videos, "frames": frames, "size": size, "seed": seed, "bias": bias,
              "val_fraction": val_fraction, "difficulty": difficulty, **knobs,
              "backdrop": [Path(f).name for f in files], "fps": fps, "crf": crf,
              "codec": "libvpx-vp9", "pix_fmt": "yuv420p"}
    meta = {
        "format": META_FORMAT, "version": META_VERSION, "params": params,
        "classes": [{"index": k, "name": c.name, "template": c.template, "group": c.group,
                     "partner": c.partner, "cue_color": [round(float(x), 2) for x in palette[k]]}
                    for k, c in enumerate(CLASSES)],
        "order_blind_ceiling": _ceilings(classes, is_val),
        "splits": {s: len(v) for s, v in splits.items()},
        "cue_agreement": {"train_expected": round(bias + (1 - bias) / K, 4),
                          "validation_expected": round(1 / K, 4),
                          **{s: round(float(np.mean([v["cue_agrees"] for v in meta_videos.values()
                                                     if v["split"] == s])), 4) for s in splits}},
        "generation_seconds": round(seconds, 2),
        "conventions": "pixel centres at (j+0.5, i+0.5); x right, y down; angle in degrees, clockwise on "
                       "screen; scale = px per object unit; motion[t] = center[t+1] - center[t]; box = "
                       "[x0, y0, x1, y1) of the object's own pixels (coverage >= 0.5), null when out of frame",
        "videos": meta_videos,
    }
    write_annotations(out, labels, splits, meta)
    return out


def load_meta(root: str | Path) -> dict[str, Any]:
    """Read ``timematters-meta.json`` of a generated benchmark (clear error when missing or foreign)."""
    path = Path(root) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no synthetic-benchmark metadata (generate with `timematters synth`)")
    meta = json.loads(path.read_text())
    if meta.get("format") != META_FORMAT:
        raise ValueError(f"{path}: format is {meta.get('format')!r}, expected {META_FORMAT!r}")
    return meta


# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (SSv2 layout)")
    parser.add_argument("--preset", choices=("temporal", "pretrain"), default="temporal",
                        help="temporal: the reversed-pair classes below (default); pretrain: physical events "
                             "with an arrow of time for self-supervised pretraining (data/synth_pretrain.py)")
    parser.add_argument("--videos", type=int, default=None, help="number of videos (default 2000; pretrain 2400)")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default 16; pretrain 64)")
    parser.add_argument("--size", type=int, default=None,
                        help="frame height and width in px (default 64; pretrain 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed: the same seed writes the same videos")
    parser.add_argument("--bias", type=float, default=0.0,
                        help="probability that a train video's background is its class's cue colour "
                             "(else random; default 0 = no shortcut); validation is always random")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of each class in validation")
    parser.add_argument("--difficulty", choices=sorted(DIFFICULTY), default="default",
                        help="preset of the knobs below (explicit knobs override it)")
    parser.add_argument("--contrast", type=float, default=None, help="object vs background contrast in (0, 1]")
    parser.add_argument("--object-size", type=float, default=None,
                        help="object size factor (1 = about 0.4 of the frame wide)")
    parser.add_argument("--clutter", type=int, default=None, help="moving distractor shapes per video")
    parser.add_argument("--texture", type=float, default=None, help="background clutter amplitude (0 = plain)")
    parser.add_argument("--backdrop", default=None,
                        help="real video frames as background clutter: a video or a folder of videos "
                             "(your own footage); amplitude = --texture")
    parser.add_argument("--fps", type=int, default=12, help="frame rate stored in the files (default 12)")
    parser.add_argument("--crf", type=int, default=10, help="VP9 quality (lower = better, 0..63)")
    parser.add_argument("--workers", type=int, default=2, help="encoding processes")
    parser.add_argument("--force", action="store_true", help="overwrite an existing benchmark in --out")


def main(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.preset == "pretrain":
        return _main_pretrain(args, t0)
    args.videos, args.frames, args.size = args.videos or 2000, args.frames or 16, args.size or 64
    out = generate(args.out, videos=args.videos, frames=args.frames, size=args.size, seed=args.seed,
                   bias=args.bias, val_fraction=args.val_fraction, difficulty=args.difficulty,
                   contrast=args.contrast, object_size=args.object_size, clutter=args.clutter,
                   texture=args.texture, backdrop=args.backdrop, fps=args.fps, crf=args.crf, workers=args.workers,
                   force=args.force, progress=True)
    meta = load_meta(out)
    n_t = sum(c["group"] == "temporal" for c in meta["classes"])
    print(f"wrote {args.videos} videos ({meta['splits']['train']} train / {meta['splits']['validation']} "
          f"validation, {len(meta['classes'])} classes: {n_t} temporal in reversed pairs, "
          f"{len(meta['classes']) - n_t} static) to {out} in {time.perf_counter() - t0:.1f} s")
    ceil = meta["order_blind_ceiling"]
    print(f"order-blind ceiling: temporal {ceil['temporal']:.0%}, all classes "
          f"{ceil['all']['validation']:.1%} (validation)")
    return 0


def _main_pretrain(args: argparse.Namespace, t0: float) -> int:
    from . import synth_pretrain
    out = synth_pretrain.generate(args.out, videos=args.videos or 2400, frames=args.frames or 64,
                                  size=args.size or 32, seed=args.seed, val_fraction=args.val_fraction,
                                  crf=args.crf, workers=args.workers, force=args.force, progress=True)
    meta = load_meta(out)
    print(f"wrote {sum(meta['splits'].values())} videos ({meta['splits']['train']} train / "
          f"{meta['splits']['validation']} validation, {len(meta['classes'])} event classes, "
          f"{meta['params']['frames']} frames at {meta['params']['size']} px) to {out} in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0
