"""Real video files for the tests and benchmarks, written with PyAV (no ffmpeg CLI), and an independent decode.

``write_video`` writes a clean constant-rate clip. ``awkward_corpus`` writes the kinds of file real datasets
hold and that break a decoder which computes frame numbers from timestamps or trusts header counts:
B-frames in MP4 and AVI (H.264 and MPEG-4 part 2), open GOPs, variable frame rate, gaps in the timestamps,
a non-zero start, a trailing packet that decodes to no frame, an AVI whose header declares frames that hold
no data (null frames), and truncated files. ``decode_all`` is the reference: every frame the decoder emits,
sorted by presentation timestamp.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODECS = {".webm": "libvpx-vp9", ".mp4": "libx264", ".avi": "mpeg4", ".mkv": "libx264"}  # .avi as UCF101/HMDB51


def frame_content(i: int, h: int, w: int) -> np.ndarray:
    """Frame ``i`` of a synthetic clip: a square moving right, a colour ramp, stripes; every frame differs."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (i * 9) % 256
    img[..., 1] = np.linspace(0, 200, w, dtype=np.uint8)[None, :]
    img[:: 6, :, 2] = 180
    side = max(4, h // 4)
    x = (i * 3) % max(1, w - side)
    img[h // 3: h // 3 + side, x: x + side] = 255
    return img


def encode(path: Path, pts: list[int] | np.ndarray, *, codec: str | None = None, time_base: Fraction = Fraction(1, 12),
           width: int = 64, height: int = 48, gop: int = 10, bframes: int = 2, options: dict | None = None,
           container_options: dict | None = None, trailing_empty_frame: bool = False, rate: int | None = None) -> Path:
    """Encode one frame per entry of ``pts`` (presentation timestamps in ``time_base`` units, increasing),
    a keyframe every ``gop`` frames, up to ``bframes`` B-frames (H.264 / MPEG-4). With
    ``trailing_empty_frame`` (H.264) a last packet that yields no frame is muxed after the others: the
    container lists one frame more than the decoder emits (as many real H.264 files do)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or CODECS[path.suffix]
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate or 1 / time_base)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.codec_context.gop_size = gop
        opts = {"deadline": "realtime", "cpu-used": "8"} if codec == "libvpx-vp9" else {"bf": str(bframes)}
        if codec == "libx264":
            opts["sc_threshold"] = "0"
        stream.codec_context.options = {**opts, **(options or {})}
        last = None
        for i, t in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(frame_content(i, height, width), format="rgb24")
            frame.pts, frame.time_base = int(t), time_base
            for packet in stream.encode(frame):
                container.mux(packet)
                last = packet if last is None or packet.pts > last.pts else last
        for packet in stream.encode():
            container.mux(packet)
            last = packet if last is None or packet.pts > last.pts else last
        if trailing_empty_frame:
            # a copy of the last packet whose slice header is zeroed: it demuxes, the decoder rejects it
            data = bytes(last)
            broken = av.Packet(data[:5] + b"\x00\x00\x00\x00" + data[9:])  # AVCC: 4-byte length, NAL header
            broken.stream, broken.time_base = stream, last.time_base
            broken.pts = broken.dts = int(last.pts) + int(last.duration or 1)
            broken.duration = last.duration
            container.mux(broken)
    return path


def write_video(path: Path, num_frames: int, *, width: int = 64, height: int = 48, fps: int = 12,
                gop: int = 10, bframes: bool = True) -> Path:
    """Encode ``num_frames`` frames at a constant rate (VP9 .webm, H.264 .mp4, MPEG-4 part 2 .avi), a keyframe
    every ``gop``; B-frames for .mp4 / .avi when ``bframes``."""
    return encode(path, list(range(num_frames)), time_base=Fraction(1, fps), width=width, height=height, gop=gop,
                  bframes=2 if bframes else 0)


def decode_all(path: Path) -> np.ndarray:
    """Independent reference: every frame the decoder emits, decoded from the start (a packet the decoder
    rejects is passed over, as the ffmpeg CLI does) and sorted by presentation timestamp, (N, H, W, 3) uint8."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            try:
                decoded = stream.codec_context.decode(packet if packet.size else None)
            except av.InvalidDataError:
                continue
            frames += [(f.pts, len(frames) + k, f.to_ndarray(format="rgb24")) for k, f in enumerate(decoded)]
    if all(t is not None for t, _, _ in frames):
        frames.sort(key=lambda x: (x[0], x[1]))
    return np.stack([f for _, _, f in frames])


def make_bad_files(folder: Path, good: Path) -> dict[str, Path]:
    """One file of each bad kind: zero-byte, truncated (from ``good``), garbage bytes, missing."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    bad = {"zero": folder / f"zero{good.suffix}", "truncated": folder / f"truncated{good.suffix}",
           "garbage": folder / f"garbage{good.suffix}", "missing": folder / f"missing{good.suffix}"}
    bad["zero"].write_bytes(b"")
    bad["truncated"].write_bytes(data[: len(data) // 2])
    bad["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    return bad


@dataclass
class Awkward:
    """One file of the corpus: what the decoder must report for it."""
    path: Path
    num_frames: int          # frames in presentation order the decoder must index
    decodable: int           # frames the decoder actually emits (num_frames - 1 for a trailing empty packet)
    note: str


def awkward_corpus(folder: Path, frames: int = 30) -> dict[str, Awkward]:
    """The awkward-but-valid files (each decodes fully with FFmpeg). Small (64x48) and short (``frames``)."""
    folder = Path(folder)
    n = frames
    rng = np.random.default_rng(11)
    vfr = np.cumsum(rng.integers(20, 140, n))             # ms steps between 20 and 140: phone VFR
    gaps = np.arange(n) + np.where(np.arange(n) >= n // 3, 5, 0) + np.where(np.arange(n) >= 2 * n // 3, 9, 0)
    ms = Fraction(1, 1000)
    specs = {
        "h264_bframes.mp4": dict(pts=range(n), gop=7, note="H.264, 2 B-frames, closed GOP every 7"),
        "h264_bframes.mkv": dict(pts=range(n), gop=7, note="H.264 in Matroska (pts-based index)"),
        "mpeg4_bframes.avi": dict(pts=range(n), gop=7, note="MPEG-4 ASP in AVI, B-frames, open GOP (UCF101-like)"),
        "mpeg4_bframes.mp4": dict(pts=range(n), gop=7, codec="mpeg4", note="MPEG-4 ASP in MP4 with B-frames"),
        "h264_open_gop.mp4": dict(pts=range(n), gop=8, bframes=3,
                                  options={"x264-params": "open-gop=1:keyint=8:min-keyint=8"},
                                  note="H.264 open GOP: leading B-frames after each keyframe in decode order"),
        "h264_vfr.mp4": dict(pts=vfr, time_base=ms, gop=6, rate=15,
                             note="variable frame rate (20..140 ms steps)"),
        "h264_gaps.mp4": dict(pts=gaps, gop=6, note="gaps of 5 and 9 frames in the timestamps"),
        "h264_start5s.mp4": dict(pts=np.arange(n) + 60, gop=6, note="first timestamp at 5 s"),
        "mpeg4_gaps.avi": dict(pts=gaps, gop=6, bframes=0,
                               note="AVI with null frames: the header declares more frames than hold data"),
        "h264_trailing_empty.mp4": dict(pts=range(n), gop=7, trailing_empty_frame=True,
                                        note="the last packet decodes to no frame"),
        "h264_trailing_empty.mkv": dict(pts=range(n), gop=7, trailing_empty_frame=True,
                                        note="the last packet decodes to no frame (Matroska)"),
        "vp9.webm": dict(pts=range(n), gop=100, note="VP9 WebM, one keyframe (SSv2-like)"),
    }
    out = {}
    for name, spec in specs.items():
        spec = dict(spec)
        note = spec.pop("note")
        pts = np.asarray(list(spec.pop("pts")))
        path = encode(folder / name, pts, time_base=spec.pop("time_base", Fraction(1, 12)), **spec)
        empty = spec.get("trailing_empty_frame", False)
        out[name] = Awkward(path, n + int(empty), n, note)
    return out


def truncated_files(folder: Path, frames: int = 30) -> dict[str, Path]:
    """Really truncated files: the second half of the data is gone. The MP4 has its index up front
    (faststart), so it opens and lists frames whose data is missing. ``zeroed_tail.mp4`` keeps its size
    and index but its second half is zeros (a download that stopped into a preallocated file): every
    packet is there and the later ones do not decode."""
    folder = Path(folder)
    sources = {
        "faststart.mp4": encode(folder / "src" / "faststart.mp4", range(frames), gop=7,
                                container_options={"movflags": "faststart"}),
        "vp9.webm": encode(folder / "src" / "vp9.webm", range(frames), gop=100),
        "mpeg4.avi": encode(folder / "src" / "mpeg4.avi", range(frames), gop=7),
    }
    out = {}
    for name, src in sources.items():
        data = src.read_bytes()
        out[name] = folder / f"truncated_{name}"
        out[name].write_bytes(data[: len(data) // 2])
    data = sources["faststart.mp4"].read_bytes()
    out["zeroed_tail.mp4"] = folder / "zeroed_tail.mp4"
    out["zeroed_tail.mp4"].write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))
    return out


# ------------------------------------------------------------------------------------------------ scenes
def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 in 0..255: noise summed over octaves (roughly 1/f, like natural images), tinted."""
    import cv2

    field = np.zeros((h, w), np.float32)
    for octave in range(1, 7):
        cells = 2 ** octave
        small = rng.standard_normal((cells * h // max(h, w) + 2, cells * w // max(h, w) + 2)).astype(np.float32)
        field += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) / octave
    field = (field - field.mean()) / (field.std() + 1e-6)
    tint = rng.uniform(0.6, 1.0, 3).astype(np.float32)
    return np.clip(128 + 45 * field[..., None] * tint + rng.uniform(-40, 40, 3), 0, 255).astype(np.float32)


def scene_frames(num_frames: int, *, width: int = 320, height: int = 240, objects: int = 3,
                 seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a still, textured scene in which ``objects`` textured discs move in
    different directions (2-4 px per frame), as a stand-in for real footage: natural-image-like texture
    everywhere, real motion on part of the frame."""
    rng = np.random.default_rng(seed)
    back = _texture(rng, height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    things = []
    for _ in range(objects):
        r = int(rng.integers(height // 10, height // 5))
        speed, angle = rng.uniform(2, 4), rng.uniform(0, 2 * np.pi)
        things.append((r, _texture(rng, height, width), rng.uniform(r, width - r), rng.uniform(r, height - r),
                       speed * np.cos(angle), speed * np.sin(angle)))
    frames = []
    for t in range(num_frames):
        img = back.copy()
        for r, tex, x0, y0, vx, vy in things:
            x, y = x0 + vx * t, y0 + vy * t
            inside = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
            shifted = np.roll(tex, (int(round(vy * t)), int(round(vx * t))), axis=(0, 1))  # texture moves along
            img[inside] = shifted[inside]
        frames.append(img.astype(np.uint8))
    return np.stack(frames)


def write_scene(path: Path, num_frames: int = 32, *, width: int = 320, height: int = 240, fps: int = 12,
                gop: int = 250, seed: int = 0, objects: int = 3) -> Path:
    """``scene_frames`` encoded as a real file (codec by suffix: VP9 .webm, H.264 .mp4, MPEG-4 .avi)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = scene_frames(num_frames, width=width, height=height, objects=objects, seed=seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODECS[path.suffix], rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        if path.suffix == ".webm":
            stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
        elif path.suffix in (".mp4", ".mkv"):
            stream.codec_context.options = {"bf": "2", "crf": "23"}
        else:
            stream.codec_context.options = {"bf": "2", "qscale": "4"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
