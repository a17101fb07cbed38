"""Clips/s of our decoder vs the reference loader (whole video through an ffmpeg subprocess per sample).

One 8-frame TSN train clip per sample, four loaders in this process, interleaved trial by trial on the same
clips (same indices) so that machine load affects all alike:

* ``reference``   what the TIME code does per sample (ffmpeg-python, the common SSv2 loader pattern): ffprobe
                  for the frame size, then ``ffmpeg -i VIDEO -f rawvideo -pix_fmt rgb24 pipe:`` decodes the
                  whole video to RGB into a pipe; keep the clip's frames;
* ``whole-pyav``  the whole video decoded with PyAV in process, every frame converted to RGB;
* ``ours-pyav``   ``timematters.data.decode`` (PyAV backend): the frame index (cached per process, as in a
                  DataLoader worker after its first epoch) tells which packets each frame needs; decode only
                  those, convert only the clip's frames. ``ours-pyav-cold`` drops the index before every
                  clip (the first epoch);
* ``ours-torchcodec`` the torchcodec backend with the same index (skipped when torchcodec cannot load).

Videos (written here with PyAV, real encoders): an SSv2-like VP9 WebM (426x240, 12 fps, 4 s, one keyframe)
and a Kinetics-like H.264 MP4 (340x256, 30 fps, 10 s, B-frames, a keyframe every 2 s), both a textured
scene with moving objects (``tests/videos.py``).

    python benchmarks/decode.py [--seconds 1] [--seeds 3] [--frames 8] [--threads 1]

CPU time counts this process and its children (the ffmpeg subprocesses): on a shared machine it measures
the work each loader does and is what bounds a DataLoader's throughput when all cores are busy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from videos import write_scene  # noqa: E402

from timematters.data import decode  # noqa: E402
from timematters.data.decode import open_video, torchcodec_available  # noqa: E402
from timematters.data.sampling import tsn_indices  # noqa: E402


def load_reference(path: Path, indices: list[int], threads: int) -> np.ndarray:
    """The reference loader: probe the size, decode every frame through an ffmpeg pipe, pick the clip."""
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-select_streams", "v:0", str(path)],
        capture_output=True, check=True).stdout)
    w, h = int(probe["streams"][0]["width"]), int(probe["streams"][0]["height"])
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"],
                         capture_output=True, check=True).stdout
    frames = np.frombuffer(out, np.uint8).reshape(-1, h, w, 3)
    return frames[indices]


def load_whole_pyav(path: Path, indices: list[int], threads: int) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if threads:
            stream.thread_count = threads
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack([frames[i] for i in indices])


def load_ours_pyav(path: Path, indices: list[int], threads: int) -> np.ndarray:
    with open_video(path, backend="pyav", threads=threads) as reader:
        return reader.get_frames(indices)


def load_ours_pyav_cold(path: Path, indices: list[int], threads: int) -> np.ndarray:
    decode._INDEX_CACHE.clear()
    return load_ours_pyav(path, indices, threads)


def load_ours_torchcodec(path: Path, indices: list[int], threads: int) -> np.ndarray:
    with open_video(path, backend="torchcodec", threads=threads) as reader:
        return reader.get_frames(indices)


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def bench(path: Path, loaders: dict, *, frames: int, seconds: float, threads: int, seed: int) -> dict:
    """Clips/s by wall clock and per CPU-second (this process and its children) for every loader."""
    with open_video(path, backend="pyav") as reader:
        n = reader.num_frames
    rng = np.random.default_rng(seed)
    clips = [tsn_indices(n, frames, rng).tolist() for _ in range(64)]
    first = {name: fn(path, clips[0], threads) for name, fn in loaders.items()}  # all give the same pixels
    for name, got in first.items():
        assert np.array_equal(got, first["reference"]), f"{name} differs from the reference on {path.name}"
    wall = dict.fromkeys(loaders, 0.0)
    cpu = dict.fromkeys(loaders, 0.0)
    done = dict.fromkeys(loaders, 0)
    k = 0
    while min(wall.values()) < seconds:  # interleaved trials: every loader sees the same machine load
        for name, fn in loaders.items():
            w0, c0 = time.perf_counter(), cpu_seconds()
            fn(path, clips[k % len(clips)], threads)
            wall[name] += time.perf_counter() - w0
            cpu[name] += cpu_seconds() - c0
            done[name] += 1
        k += 1
    return {"frames": n, "wall": {m: done[m] / wall[m] for m in loaders},
            "cpu": {m: done[m] / max(cpu[m], 1e-9) for m in loaders}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="trials go on until the fastest loader has spent this long (default 1)")
    parser.add_argument("--frames", type=int, default=8, help="frames per TSN clip (default 8)")
    parser.add_argument("--threads", type=int, default=1,
                        help="decoder threads (default 1, as in a DataLoader worker; 0 = FFmpeg's choice)")
    parser.add_argument("--seeds", type=int, default=3, help="repeats with different clips (mean ± std)")
    args = parser.parse_args()

    loaders = {"reference": load_reference, "whole-pyav": load_whole_pyav, "ours-pyav": load_ours_pyav,
               "ours-pyav-cold": load_ours_pyav_cold}
    if torchcodec_available():
        loaders["ours-torchcodec"] = load_ours_torchcodec
    with tempfile.TemporaryDirectory() as tmp:
        videos = [write_scene(Path(tmp) / "ssv2_like_vp9_426x240_12fps_4s.webm", 48, width=426, height=240,
                              fps=12, gop=1000),
                  write_scene(Path(tmp) / "kinetics_like_h264_340x256_30fps_10s.mp4", 300, width=340, height=256,
                              fps=30, gop=60)]
        print(f"{args.frames}-frame TSN train clips, decoder threads={args.threads}, trials until the fastest "
              f"loader has spent {args.seconds:.1f} s, per video and seed, {args.seeds} seeds; clips/s by wall clock and per CPU-second "
              f"(process + children), mean ± std over seeds")
        for path in videos:
            runs = [bench(path, loaders, frames=args.frames, seconds=args.seconds, threads=args.threads, seed=s)
                    for s in range(args.seeds)]
            print(f"\n{path.name} ({runs[0]['frames']} frames, {path.stat().st_size // 1024} KiB)")
            print(f"  {'loader':16s} {'clips/s':>15s} {'clips/CPU-s':>15s} {'CPU ms/clip':>12s} "
                  f"{'x ref (CPU)':>13s} {'x whole-pyav (CPU)':>19s}")
            for name in loaders:
                wall = np.array([r["wall"][name] for r in runs])
                cpu = np.array([r["cpu"][name] for r in runs])
                vs_ref = np.array([r["cpu"][name] / r["cpu"]["reference"] for r in runs])
                vs_whole = np.array([r["cpu"][name] / r["cpu"]["whole-pyav"] for r in runs])
                print(f"  {name:16s} {wall.mean():8.1f} ± {wall.std():4.1f} {cpu.mean():8.1f} ± {cpu.std():4.1f} "
                      f"{1000 / cpu.mean():12.1f} {vs_ref.mean():7.2f} ± {vs_ref.std():3.2f} "
                      f"{vs_whole.mean():12.2f} ± {vs_whole.std():3.2f}")


if __name__ == "__main__":
    main()
