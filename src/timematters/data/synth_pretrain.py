"""The pretraining benchmark: physical events with an arrow of time, in the SSv2 layout.

    timematters synth --preset pretrain --out DIR [--videos 2400] [--frames 64] [--size 32]

Built so that the premises of temporal pretext tasks (RTT, TaCo, SVT, TIME as a pretext) hold:

- Long sources (64 frames by default): RTT's four speeds (8-frame clips at 8x need 57 frames), real
  warp and periodic clips, SVT's 1/8-of-the-video local windows.
- Every class has an arrow of time: things fall and bounce with energy loss and come to rest, slide in
  and stop by friction, are kicked out of view, break into pieces, fill up, land on each other, bounce
  off a wall and stop. Played backwards, none of them is physically plausible.
- Objects have a canonical upright orientation (triangles apex up, houses, arrows, mushrooms, cups) and
  stand on a floor at the bottom of the frame, so a rotated clip is recognisable.
- No per-video nuisance is shared by all views of a video: the background colour and the objects'
  colours are drawn independently for every frame. Two clips of one video agree in shape and motion
  only, never in colour.

Nuisance factors (``timematters-meta.json``, ``videos[id]["nuisance"]``): ``shape`` (the main object's
shape, drawn independently of the class), ``side`` (0: the main object starts in the left half, 1: the
right half) and ``background`` (the background hue bin, 0..5, of every frame). The evaluation protocols
(``linear`` / ``knn --target shape`` ...) report how well features predict them.

Every video is drawn from its own generator ``rng_for(seed, index, 1)``: the output does not depend on
the number of worker processes. The annotation and metadata files are those of ``data/synth.py``
(``params.preset = "pretrain"``), so every reader of the synthetic benchmark reads this one too.
"""
from __future__ import annotations

import colorsys
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from timematters.utils import rng_for

from .synth import (META_FILE, META_FORMAT, META_VERSION, _encode_webm, _fill, _sdf, check_benchmark_args,
                    prepare_video_dir, split_and_classes, write_annotations)

# (template, generator) per class; the template's brackets are filled with the objects' names
CLASSES: tuple[tuple[str, str], ...] = (
    ("Dropping [something] onto the floor", "drop"),
    ("Throwing [something] up in the air", "throw"),
    ("Sliding [something] in until it stops", "slide_in"),
    ("Pushing [something] out of view", "push_out"),
    ("Breaking [something]", "break"),
    ("Filling [something] with liquid", "fill"),
    ("Putting [something] on top of [something]", "stack"),
    ("Pushing [something] against a wall", "wall"),
)
SHAPES = ("triangle", "house", "arrow", "mushroom", "tee")   # all upright, none rotation-symmetric
BACKGROUND_BINS = 6
FLOOR = 0.12          # floor height as a share of the frame
RADIUS = 0.15         # object radius as a share of the frame
GRAVITY = 16.0        # frame sizes per (video duration)^2
SUBSTEPS = 8          # simulation steps per frame


def _shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance in object units (negative inside), y down; every shape spans v in about [-1, 1]
    with its base at v = 1 (so it stands on the floor when its centre is one radius above it)."""
    box = lambda cu, cv, a, b: np.maximum(np.abs(u - cu) - a, np.abs(v - cv) - b)  # noqa: E731
    if shape == "triangle":
        return _sdf("triangle", u / 1.15, (v - 0.45) / 1.15) * 1.15
    if shape == "house":
        roof = _sdf("triangle", u / 1.0, (v + 0.3) / 0.75) * 0.75
        return np.minimum(box(0.0, 0.45, 0.7, 0.55), roof)
    if shape == "arrow":
        head = _sdf("triangle", u / 0.95, (v + 0.45) / 0.95) * 0.95
        return np.minimum(head, box(0.0, 0.45, 0.3, 0.55))
    if shape == "mushroom":
        cap = np.maximum(np.hypot(u, v + 0.1) - 1.0, v + 0.1)
        return np.minimum(cap, box(0.0, 0.45, 0.3, 0.55))
    if shape == "tee":
        return np.minimum(box(0.0, -0.75, 1.0, 0.25), box(0.0, 0.15, 0.28, 0.85))
    if shape == "piece":
        return _sdf("triangle", u, v)
    if shape == "cup":   # an open container: two walls and a base, 2 units high
        return np.minimum.reduce([box(-0.85, 0.0, 0.15, 1.0), box(0.85, 0.0, 0.15, 1.0), box(0.0, 0.85, 1.0, 0.15)])
    if shape == "rect":  # unit box; stretched by its own (sx, sy)
        return box(0.0, 0.0, 1.0, 1.0)
    raise ValueError(f"unknown shape {shape!r}")


@dataclass
class Item:
    """A shape drawn at per-frame centre (px), size (px per unit, x and y) and angle (rad, clockwise)."""

    shape: str
    cx: np.ndarray
    cy: np.ndarray
    sx: np.ndarray
    sy: np.ndarray
    angle: np.ndarray
    tone: int = 0          # 0: object colour of the frame, 1: second colour (liquid)
    visible: np.ndarray = field(default=None)  # (T,) bool

    def coverage(self, t: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.angle[t]), math.sin(self.angle[t])
        dx, dy = xs - self.cx[t], ys - self.cy[t]
        u = (c * dx + s * dy) / self.sx[t]
        v = (-s * dx + c * dy) / self.sy[t]
        return np.clip(0.5 - _shape_sdf(self.shape, u, v) * min(self.sx[t], self.sy[t]), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Dynamics. Time runs over the video, 0..1; lengths in pixels.


def _ballistic(T: int, S: float, *, x0: float, y0: float, vx: float, vy: float, start: float, floor_y: float,
               restitution: float, friction: float = 0.0, g: float = GRAVITY) -> tuple[np.ndarray, np.ndarray]:
    """A point under gravity from time ``start`` (at rest before), bouncing on ``floor_y`` with the given
    restitution and rolling friction (deceleration, px per duration^2) while on the floor; walls none."""
    n = (T - 1) * SUBSTEPS + 1
    dt = 1.0 / ((T - 1) * SUBSTEPS)
    x, y, u, w = x0, y0, vx, vy
    gx = g * S
    xs, ys = np.empty(n), np.empty(n)
    for i in range(n):
        xs[i], ys[i] = x, y
        if i * dt < start:
            continue
        w += gx * dt
        x += u * dt
        y += w * dt
        if y >= floor_y:
            y = floor_y
            w = -restitution * w if abs(w) * restitution > 0.08 * S else 0.0
            if w == 0.0 and friction > 0:
                u = math.copysign(max(0.0, abs(u) - friction * S * dt), u)
    return xs[::SUBSTEPS], ys[::SUBSTEPS]


def _friction_slide(T: int, x0: float, v0: float, decel: float, start: float) -> np.ndarray:
    """x(t) of a slide from x0 with speed v0 (px per duration) decelerating to rest, starting at ``start``."""
    t = np.clip(np.linspace(0.0, 1.0, T) - start, 0.0, None)
    stop = abs(v0) / decel if decel > 0 else np.inf
    tt = np.minimum(t, stop)
    return x0 + np.sign(v0) * (abs(v0) * tt - 0.5 * decel * tt ** 2)


def _const(x: float, T: int) -> np.ndarray:
    return np.full(T, float(x))


def _upright(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> Item:
    T = len(x)
    return Item(shape, x, y, _const(r, T), _const(r, T), _const(0.0, T))


def _events(kind: str, rng: np.random.Generator, T: int, S: float) -> tuple[list[Item], list[str], float]:
    """Items of one clip of class ``kind`` (back to front), placeholders and the main object's start x."""
    r = RADIUS * S * rng.uniform(0.85, 1.15)
    floor = S * (1 - FLOOR)
    rest_y = floor - r                       # centre of an object standing on the floor
    shape = SHAPES[rng.integers(len(SHAPES))]
    side = int(rng.integers(2))              # 0: from / towards the left, 1: the right
    sign = 1.0 if side == 0 else -1.0        # direction of travel for slides: away from the start side
    if kind in ("drop", "throw"):
        x0 = rng.uniform(0.25, 0.75) * S
        vx = rng.uniform(-0.15, 0.15) * S
        e = rng.uniform(0.45, 0.65)
        if kind == "drop":
            y0, vy, start = rng.uniform(0.15, 0.3) * S, 0.0, rng.uniform(0.0, 0.15)
        else:
            height = rest_y - rng.uniform(0.15, 0.3) * S
            y0, vy, start = rest_y, -math.sqrt(2 * GRAVITY * S * height), rng.uniform(0.05, 0.2)
        x, y = _ballistic(T, S, x0=x0, y0=y0, vx=vx, vy=vy, start=start, floor_y=rest_y, restitution=e,
                          friction=1.5)
        return [_upright(shape, x, y, r)], [shape], x0
    if kind == "slide_in":
        stop_at = rng.uniform(0.35, 0.65) * S
        x_start = -r * 1.6 if side == 0 else S + r * 1.6
        d = abs(stop_at - x_start)
        start, dur = rng.uniform(0.0, 0.15), rng.uniform(0.45, 0.7)
        v0, decel = 2 * d / dur, 2 * d / dur ** 2
        x = _friction_slide(T, x_start, sign * v0, decel, start)
        return [_upright(shape, x, _const(rest_y, T), r)], [shape], x_start
    if kind == "push_out":
        x0 = rng.uniform(0.35, 0.65) * S
        kick, exit_at = rng.uniform(0.15, 0.4), rng.uniform(0.75, 0.92)
        d = (S + 1.6 * r - x0) if side == 0 else (x0 + 1.6 * r)
        D = exit_at - kick
        v0 = 1.3 * d / D
        decel = 2 * (v0 * D - d) / D ** 2
        x = _friction_slide(T, x0, sign * v0, decel, kick)
        return [_upright(shape, x, _const(rest_y, T), r)], [shape], x0
    if kind == "break":
        x0 = rng.uniform(0.3, 0.7) * S
        y0, start = rng.uniform(0.15, 0.35) * S, rng.uniform(0.0, 0.15)
        x, y = _ballistic(T, S, x0=x0, y0=y0, vx=0.0, vy=0.0, start=start, floor_y=rest_y, restitution=0.0)
        hit = int(np.argmax(y >= rest_y - 1e-6))
        whole = _upright(shape, x, y, r)
        whole.visible = np.arange(T) < hit
        items = [whole]
        tau_hit = hit / (T - 1)
        pr = 0.55 * r
        for k in range(4):
            vx = (k - 1.5) * rng.uniform(0.25, 0.45) * S * 2
            vy = -rng.uniform(0.5, 1.2) * S
            px, py = _ballistic(T, S, x0=x0 + (k - 1.5) * 0.4 * r, y0=rest_y, vx=vx, vy=vy, start=tau_hit,
                                floor_y=floor - 0.5 * pr, restitution=0.3, friction=4.0)
            spin = rng.uniform(-8, 8)
            t_since = np.clip(np.linspace(0, 1, T) - tau_hit, 0, None)
            moving = np.concatenate([[True], np.abs(np.diff(px)) + np.abs(np.diff(py)) > 1e-3])
            ang = np.cumsum(np.where(moving, 1.0, 0.0)) * spin / T + k
            piece = Item("piece", px, py, _const(pr, T), _const(pr, T), np.where(t_since > 0, ang, 0.0))
            piece.visible = np.arange(T) >= hit
            items.append(piece)
        return items, [shape], x0
    if kind == "fill":
        x0 = rng.uniform(0.3, 0.7) * S
        w, h = 1.15 * r, 1.2 * r            # cup half-width and half-height (px)
        cy = floor - h
        a, b = rng.uniform(0.05, 0.25), rng.uniform(0.6, 0.85)
        full = rng.uniform(0.65, 0.9)
        t = np.linspace(0, 1, T)
        level = full * np.clip((t - a) / (b - a), 0, 1) ** 0.8     # share of the inner height
        inner = 2 * h * 0.85                                        # inner height above the base (px)
        lh = np.maximum(level * inner / 2, 1e-3)                    # liquid half-height
        liquid = Item("rect", _const(x0, T), floor - 0.3 * h - lh, _const(0.7 * w, T), lh, _const(0, T), tone=1)
        liquid.visible = level > 0.01
        top = floor - 0.3 * h - 2 * lh                              # liquid surface y
        stream_top = 0.0
        sh = np.maximum((top - stream_top) / 2, 1e-3)
        stream = Item("rect", _const(x0, T), stream_top + sh, _const(0.12 * w + 0.6, T), sh, _const(0, T), tone=1)
        stream.visible = (t >= a) & (t <= b)
        cup = Item("cup", _const(x0, T), _const(cy, T), _const(w, T), _const(h, T), _const(0, T))
        return [liquid, stream, cup], ["cup"], x0
    if kind == "stack":
        x0 = rng.uniform(0.3, 0.7) * S
        base = _upright(SHAPES[rng.integers(len(SHAPES))], _const(x0, T), _const(rest_y, T), r)
        base.tone = 1                        # the second colour: the two objects stay apart
        r2 = r * rng.uniform(0.75, 0.95)
        top_y = floor - 2 * r - r2
        y0, start = rng.uniform(0.05, 0.2) * S, rng.uniform(0.0, 0.3)
        x, y = _ballistic(T, S, x0=x0 + rng.uniform(-0.2, 0.2) * r, y0=y0, vx=0.0, vy=0.0, start=start,
                          floor_y=top_y, restitution=rng.uniform(0.25, 0.4))
        return [base, _upright(shape, x, y, r2)], [shape, base.shape], x0
    if kind == "wall":
        wall_w = 0.06 * S
        wall_x = S - wall_w if side == 0 else wall_w          # the wall is on the side we travel to
        x0 = rng.uniform(0.15, 0.35) * S if side == 0 else rng.uniform(0.65, 0.85) * S
        contact = (wall_x - wall_w - r) if side == 0 else (wall_x + wall_w + r)
        d = abs(contact - x0)
        start, t_hit = rng.uniform(0.0, 0.15), rng.uniform(0.3, 0.5)
        v0 = 1.2 * d / (t_hit - start)
        decel = 2 * (v0 * (t_hit - start) - d) / (t_hit - start) ** 2
        v_hit = v0 - decel * (t_hit - start)
        e = rng.uniform(0.4, 0.6)
        t = np.linspace(0, 1, T)
        approach = _friction_slide(T, x0, sign * v0, decel, start)
        back = _friction_slide(T, contact, -sign * e * v_hit, decel * 1.5, t_hit)
        x = np.where(t < t_hit, approach, back)
        wall = Item("rect", _const(wall_x, T), _const(floor / 2, T), _const(wall_w, T), _const(floor / 2, T),
                    _const(0, T), tone=1)
        return [wall, _upright(shape, x, _const(rest_y, T), r)], [shape], x0
    raise ValueError(f"unknown event {kind!r}")


# ----------------------------------------------------------------------------------------------
# Rendering: colours drawn per frame (the nuisance no two clips of a video share)


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def render(items: list[Item], size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Frames (T, S, S, 3) uint8 and the background hue bin of every frame."""
    T = len(items[0].cx)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    floor_rows = ys >= size * (1 - FLOOR)
    floor_col = np.where((xs.astype(int) // 4) % 2 == 0, 120.0, 100.0)[..., None]  # the same in every video
    video = np.empty((T, size, size, 3), dtype=np.uint8)
    bins = []
    for t in range(T):
        hue = rng.uniform()
        bins.append(int(hue * BACKGROUND_BINS) % BACKGROUND_BINS)
        img = np.broadcast_to(_rgb(hue, rng.uniform(0.4, 0.8), rng.uniform(0.25, 0.4)), (size, size, 3)).copy()
        img = np.where(floor_rows[..., None], floor_col, img)
        tones = [_rgb(rng.uniform(), rng.uniform(0.5, 0.9), rng.uniform(0.85, 1.0)),
                 _rgb(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.55, 0.75))]
        for item in items:
            if item.visible is not None and not item.visible[t]:
                continue
            a = item.coverage(t, xs, ys)[..., None]
            img = img * (1.0 - a) + tones[item.tone] * a
        video[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return video, bins


def sample_clip(class_index: int, seed: int, index: int, *, frames: int = 64, size: int = 32
                ) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    """One clip of ``CLASSES[class_index]`` in memory: frames (T, S, S, 3) uint8, nuisance factors,
    placeholders."""
    if not 0 <= class_index < len(CLASSES):
        raise ValueError(f"class_index {class_index} out of range 0..{len(CLASSES) - 1}")
    rng = rng_for(seed, index, 1)
    items, placeholders, x0 = _events(CLASSES[class_index][1], rng, frames, float(size))
    video, bins = render(items, size, rng)
    main = placeholders[0]
    nuisance = {"shape": SHAPES.index(main) if main in SHAPES else len(SHAPES), "side": int(x0 >= size / 2),
                "background": bins}
    return video, nuisance, placeholders


@dataclass(frozen=True)
class _Job:
    index: int
    video_id: str
    class_index: int
    seed: int
    frames: int
    size: int
    fps: int
    crf: int
    video_dir: str


def _make_video(job: _Job) -> dict[str, Any]:
    video, nuisance, placeholders = sample_clip(job.class_index, job.seed, job.index, frames=job.frames,
                                                size=job.size)
    _encode_webm(Path(job.video_dir) / f"{job.video_id}.webm", video, job.fps, job.crf)
    return {"placeholders": placeholders, "nuisance": nuisance}


def class_name(template: str) -> str:
    return template.replace("[", "").replace("]", "")


def generate(out: str | Path, *, videos: int = 2400, frames: int = 64, size: int = 32, seed: int = 0,
             val_fraction: float = 0.2, fps: int = 24, crf: int = 10, workers: int = 2, force: bool = False,
             progress: bool = False) -> Path:
    """Write the pretraining benchmark to ``out`` (SSv2 layout, ``timematters-meta.json``) and return it."""
    K = len(CLASSES)
    check_benchmark_args(videos, frames, size, val_fraction, num_classes=K, min_frames=16,
                         frames_hint="the events need at least 16 frames (64 recommended)")
    out = Path(out)
    ids = [str(i + 1) for i in range(videos)]
    video_dir = prepare_video_dir(out, ids, force=force)
    classes, is_val = split_and_classes(videos, seed, val_fraction, K)
    jobs = [_Job(i, ids[i], int(classes[i]), seed, frames, size, fps, crf, str(video_dir)) for i in range(videos)]
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    it = pool.map(_make_video, jobs, chunksize=16) if pool else map(_make_video, jobs)
    try:
        for n, res in enumerate(it, 1):
            results.append(res)
            if progress and (n % 400 == 0 or n == videos):
                print(f"synth (pretrain): {n}/{videos} videos ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    seconds = time.perf_counter() - t0

    labels = {class_name(t): str(k) for k, (t, _) in enumerate(CLASSES)}
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
    meta_videos: dict[str, Any] = {}
    for i, res in enumerate(results):
        template = CLASSES[classes[i]][0]
        split = "validation" if is_val[i] else "train"
        splits[split].append({"id": ids[i], "label": _fill(template, res["placeholders"]), "template": template,
                              "placeholders": res["placeholders"]})
        meta_videos[ids[i]] = {"split": split, "class": class_name(template), "class_index": int(classes[i]),
                               "reversed": False, "nuisance": res["nuisance"]}
    meta = {
        "format": META_FORMAT, "version": META_VERSION,
        "params": {"preset": "pretrain", "videos": videos, "frames": frames, "size": size, "seed": seed,
                   "val_fraction": val_fraction, "fps": fps, "crf": crf, "codec": "libvpx-vp9",
                   "pix_fmt": "yuv420p"},
        "classes": [{"index": k, "name": class_name(t), "template": t, "group": "temporal", "partner": None,
                     "event": kind} for k, (t, kind) in enumerate(CLASSES)],
        "nuisance": {"shape": list(SHAPES) + ["cup"], "side": ["left", "right"],
                     "background": f"hue bin 0..{BACKGROUND_BINS - 1} of every frame (drawn per frame)"},
        "splits": {s: len(v) for s, v in splits.items()},
        "generation_seconds": round(seconds, 2),
        "videos": meta_videos,
    }
    write_annotations(out, labels, splits, meta)
    return out


def nuisance_labels(root: str | Path, target: str) -> dict[str, int]:
    """video id -> the label of nuisance factor ``target`` (``shape``, ``side``; ``background``: the hue
    bin of the middle frame) from a generated benchmark's metadata."""
    from .synth import load_meta
    meta = load_meta(root)
    videos = meta.get("videos", {})
    out = {}
    for vid, entry in videos.items():
        factors = entry.get("nuisance")
        if factors is None or target not in factors:
            known = sorted(factors) if factors else []
            raise ValueError(f"{Path(root) / META_FILE}: video {vid} has no nuisance factor {target!r} "
                             f"(known: {known}; only the pretrain preset stores them)")
        value = factors[target]
        out[vid] = int(value[len(value) // 2]) if isinstance(value, list) else int(value)
    return out
