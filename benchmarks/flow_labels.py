"""Cost and agreement of cheaper flow-direction labels against the TIME reference recipe.

    python benchmarks/flow_labels.py [--clips-per-video 6] [--threads 1] [--synth DIR]

Real videos: four H.264 files written here (``tests/videos.py``: a still, natural-image-like textured scene
with three textured objects moving in different directions, 320x240, 48 frames), decoded with PyAV; 8-frame clips (every ``--stride``-th
frame), short side scaled to 256, a random 224x224 crop (seeded). For every variant (estimator @
scale) it prints the label cost per clip, the speed-up over the reference recipe and the agreement
with the exact labels:

* ``all``     share of all patch labels equal to the exact (relative-rule) labels;
* ``moving``  the same on patches whose exact mean flow is >= ``--moving-px`` pixels (clearly moving);
* ``tau``     both label sets with the absolute threshold ``--tau`` instead of the relative rule.

With ``--synth DIR`` (a benchmark written by ``timematters synth``) it also compares each variant's
labels with the true per-patch motion of the synthetic videos (decoded from the webm files).
Timings use ``cv2.setNumThreads(--threads)``: 1 is what a data-loader worker gets.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from timematters.flow import FlowLabeler, dense_flows, labels_from_patch_flow, patch_mean_flow
from timematters.utils import rng_for

# (estimator, scale): the reference first, then the cheaper candidates
VARIANTS: list[tuple[str, float]] = [
    ("farneback", 1.0),
    ("farneback", 0.5),
    ("farneback", 0.25),
    ("dis_medium", 0.5),
    ("dis_fast", 0.5),
    ("dis_ultrafast", 1.0),
    ("dis_ultrafast", 0.5),
]


def sample_videos(folder: str | None = None) -> list[str]:
    """Four textured-scene H.264 videos written by ``tests/videos.py`` (into ``folder``, default a
    temporary one that lives as long as the process)."""
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from videos import write_scene

    folder = folder or tempfile.mkdtemp(prefix="flow_labels_")
    return [str(write_scene(Path(folder) / f"scene{seed}.mp4", 48, seed=seed)) for seed in range(4)]


def decode(path: str) -> np.ndarray:
    import av

    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])  # (N, H, W, 3)


def real_clips(per_video: int, frames: int, stride: int, size: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Clips spread evenly over each sample video, short side 256, random crop ``size``."""
    clips = []
    for v, path in enumerate(sample_videos()):
        video = decode(path)
        n, h, w, _ = video.shape
        s = 256 / min(h, w)
        span = (frames - 1) * stride + 1
        rng = rng_for(seed, v)
        for start in np.linspace(0, n - span, per_video).astype(int):
            clip = video[start:start + span:stride]
            interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
            clip = np.stack([cv2.resize(f, (round(w * s), round(h * s)), interpolation=interp) for f in clip])
            y0 = int(rng.integers(0, clip.shape[1] - size + 1))
            x0 = int(rng.integers(0, clip.shape[2] - size + 1))
            clips.append((os.path.basename(path), np.ascontiguousarray(clip[:, y0:y0 + size, x0:x0 + size])))
    return clips


def patch_flow(clip: np.ndarray, estimator: str, scale: float, patch_size: int) -> np.ndarray:
    """(T-1, H/p, W/p, 2) mean flow per patch of one variant (the labels' only input)."""
    flows = dense_flows(clip, scale=scale, estimator=estimator)
    return patch_mean_flow(flows, (clip.shape[1] // patch_size, clip.shape[2] // patch_size), scale)


def time_variant(clips: list[np.ndarray], estimator: str, scale: float, patch_size: int, repeat: int) -> float:
    """CPU seconds per clip for the whole label computation (gray, flow, patch means, bins).

    Process CPU time, best of ``repeat`` runs per clip: on a shared machine wall time mostly measures
    the neighbours; with one cv2 thread CPU time is the cost a data-loader worker pays."""
    total = 0.0
    for clip in clips:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.process_time()
            labels_from_patch_flow(patch_flow(clip, estimator, scale, patch_size), "relative")
            best = min(best, time.process_time() - t0)
        total += best
    return total / len(clips)


def real_video_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    named = real_clips(args.clips_per_video, args.frames, args.stride, args.size, args.seed)
    clips = [c for _, c in named]
    print(f"{len(clips)} clips of {args.frames} frames at {args.size}x{args.size} from "
          f"{len({n for n, _ in named})} videos; patch {args.patch}; cv2 threads {args.threads}")
    exact = [patch_flow(c, "farneback", 1.0, args.patch) for c in clips]
    exact_mag = [np.hypot(f[..., 0], f[..., 1]) for f in exact]
    exact_rel = [labels_from_patch_flow(f, "relative") for f in exact]
    exact_tau = [labels_from_patch_flow(f, args.tau) for f in exact]
    timed = clips[:: max(1, len(clips) // args.timing_clips)]
    ref_s = time_variant(timed, "farneback", 1.0, args.patch, args.repeat)
    rows = []
    for estimator, scale in VARIANTS:
        sec = ref_s if (estimator, scale) == ("farneback", 1.0) else time_variant(
            timed, estimator, scale, args.patch, args.repeat)
        hits = dict(all=0, moving=0, tau_all=0, tau_moving=0)
        n_all = n_moving = 0
        for clip, mag, rel, tau in zip(clips, exact_mag, exact_rel, exact_tau):
            f = patch_flow(clip, estimator, scale, args.patch)
            lab_rel, lab_tau = labels_from_patch_flow(f, "relative"), labels_from_patch_flow(f, args.tau)
            moving = mag >= args.moving_px
            hits["all"] += int((lab_rel == rel).sum())
            hits["moving"] += int((lab_rel == rel)[moving].sum())
            hits["tau_all"] += int((lab_tau == tau).sum())
            hits["tau_moving"] += int((lab_tau == tau)[moving].sum())
            n_all += rel.size
            n_moving += int(moving.sum())
        rows.append({"variant": f"{estimator}@{scale:g}", "ms_per_clip": 1000 * sec, "speedup": ref_s / sec,
                     "agree_all": hits["all"] / n_all, "agree_moving": hits["moving"] / max(n_moving, 1),
                     "tau_agree_all": hits["tau_all"] / n_all,
                     "tau_agree_moving": hits["tau_moving"] / max(n_moving, 1), "moving_patches": n_moving,
                     "patches": n_all})
    print(f"\nagreement with the exact labels (relative rule; 'tau' = both with tau = {args.tau} px); "
          f"moving = exact mean flow >= {args.moving_px} px ({rows[0]['moving_patches']} of {rows[0]['patches']} "
          f"patches)")
    print(f"{'variant':22s} {'cpu ms':>8s} {'speed-up':>8s} {'all':>7s} {'moving':>7s} {'tau all':>8s} "
          f"{'tau mov':>8s}")
    for r in rows:
        print(f"{r['variant']:22s} {r['ms_per_clip']:8.1f} {r['speedup']:7.1f}x {r['agree_all']:7.3f} "
              f"{r['agree_moving']:7.3f} {r['tau_agree_all']:8.3f} {r['tau_agree_moving']:8.3f}")
    sparse = sparse_rows(clips, args.fractions, args.patch, args.seed, ref_s)
    print(f"\nexact labels on a share of the clips (FlowLabeler(fraction=f); the rest ignored by the loss), "
          f"over {SPARSE_EPOCHS} epochs of these clips")
    print(f"{'variant':22s} {'cpu ms':>8s} {'speed-up':>8s} {'labelled':>9s}  agreement on labelled clips")
    for r in sparse:
        print(f"{r['variant']:22s} {r['ms_per_clip']:8.1f} {r['speedup']:7.1f}x {r['coverage']:9.3f}  1.000 (exact)")
    return rows + sparse


SPARSE_EPOCHS = 10


def sparse_rows(clips: list[np.ndarray], fractions: list[float], patch_size: int, seed: int,
                ref_s: float) -> list[dict[str, Any]]:
    """Average CPU cost per clip of the exact recipe applied to ``fraction`` of the clips."""
    rows = []
    for fraction in fractions:
        labeler = FlowLabeler(patch_size=patch_size, fraction=fraction, seed=seed)
        spent, labelled, calls = 0.0, 0, 0
        for epoch in range(SPARSE_EPOCHS):
            for i, clip in enumerate(clips):
                sample = {"index": i, "meta": {"epoch": epoch}}
                t0 = time.process_time()
                labeler(clip, sample)
                spent += time.process_time() - t0
                labelled += labeler.selected(sample)
                calls += 1
        sec = spent / calls
        rows.append({"variant": f"farneback@1 x{fraction:g}", "ms_per_clip": 1000 * sec,
                     "speedup": ref_s / max(sec, 1e-9), "coverage": labelled / calls})
    return rows


# ----------------------------------------------------------------------------- synthetic truth
def synth_truth_agreement(root: str | Path, estimators: list[tuple[str, float]], patch_size: int = 16,
                          tau: float = 1.0, max_videos: int | None = None) -> dict[str, dict[str, float]]:
    """Labels of each variant against the true motion of a synthetic benchmark.

    True label of a patch = the bin of its mean true motion (the background counts as still) when
    that mean is >= ``tau`` px. Reports, per variant: the direction agreement on truly moving
    patches (``direction_on_moving``; the variant's own label must be that bin, with the same
    absolute ``tau``), the share labelled moving within one bin (45 degrees) of the true one
    (``within_one_bin``) and the share of truly still patches labelled 0 (``static_zero``).
    """
    from timematters.data.synth import VIDEO_DIR, load_meta, motion_field

    meta = load_meta(root)
    size = int(meta["params"]["size"])
    if size % patch_size:
        raise ValueError(f"synthetic frames of {size} px are not divisible by patch_size={patch_size}")
    grid = (size // patch_size, size // patch_size)
    ids = sorted(meta["videos"], key=int)[:max_videos]
    stats = {f"{e}@{s:g}": dict(moving=0, hit=0, near=0, still=0, zero=0) for e, s in estimators}
    for vid in ids:
        video = decode(str(Path(root) / VIDEO_DIR / f"{vid}.webm"))
        truth = []
        for t in range(len(video) - 1):
            field, _ = motion_field(meta["videos"][vid], t, size)
            truth.append(field)
        true_labels = labels_from_patch_flow(patch_mean_flow(truth, grid), tau)
        true_mag = np.hypot(*np.moveaxis(patch_mean_flow(truth, grid), -1, 0))
        for e, s in estimators:
            labels = labels_from_patch_flow(patch_flow(video, e, s, patch_size), tau)
            st = stats[f"{e}@{s:g}"]
            moving, still = true_labels > 0, true_mag == 0
            st["moving"] += int(moving.sum())
            st["hit"] += int((labels == true_labels)[moving].sum())
            turn = (labels.astype(int) - true_labels.astype(int)) % 8  # bins apart (for moving labels)
            near = (labels > 0) & (np.minimum(turn, 8 - turn) <= 1)
            st["near"] += int(near[moving].sum())
            st["still"] += int(still.sum())
            st["zero"] += int((labels == 0)[still].sum())
    return {k: {"moving_patches": v["moving"], "direction_on_moving": v["hit"] / max(v["moving"], 1),
                "within_one_bin": v["near"] / max(v["moving"], 1),
                "still_patches": v["still"], "static_zero": v["zero"] / max(v["still"], 1)}
            for k, v in stats.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips-per-video", type=int, default=6)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--stride", type=int, default=2, help="take every n-th decoded frame")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--tau", type=float, default=0.5, help="absolute threshold (px) for the 'tau' columns")
    p.add_argument("--moving-px", type=float, default=1.0, help="exact mean flow that counts as clearly moving")
    p.add_argument("--threads", type=int, default=1, help="cv2.setNumThreads for the timings")
    p.add_argument("--repeat", type=int, default=5, help="timing runs per clip (best is kept)")
    p.add_argument("--timing-clips", type=int, default=8, help="clips used for the timings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", type=float, nargs="*", default=[0.1], help="shares of clips given exact labels")
    p.add_argument("--synth", type=str, default=None, help="a `timematters synth` folder: compare with true motion")
    p.add_argument("--synth-patch", type=int, default=16)
    p.add_argument("--synth-videos", type=int, default=100)
    p.add_argument("--json", type=str, default=None, help="also write the results here")
    args = p.parse_args()
    cv2.setNumThreads(args.threads)

    results: dict[str, Any] = {"real": real_video_table(args)}
    if args.synth:
        truth = synth_truth_agreement(args.synth, VARIANTS, args.synth_patch, tau=1.0, max_videos=args.synth_videos)
        print(f"\nagainst the true motion of {args.synth} (patch {args.synth_patch}, tau = 1 px)")
        print(f"{'variant':22s} {'moving n':>9s} {'direction':>9s} {'+-1 bin':>8s} {'still n':>8s} {'still->0':>9s}")
        for k, v in truth.items():
            print(f"{k:22s} {v['moving_patches']:9d} {v['direction_on_moving']:9.3f} {v['within_one_bin']:8.3f} "
                  f"{v['still_patches']:8d} {v['static_zero']:9.3f}")
        results["synth_truth"] = truth
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
