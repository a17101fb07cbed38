"""``timematters data check DIR``: decode every video of a dataset and report which fail and why.

For each video: open it, read its frame count, and decode a few frames spread over the video plus the
last one (so truncated files are caught). Exits 1 when any video fails, 2 when the annotations are
malformed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from pathlib import Path

from timematters.data.annotations import FORMATS, AnnotationError, VideoRecord, available_splits, read_annotations
from timematters.data.decode import BACKENDS, DecodeError, open_video
from timematters.data.sampling import tsn_indices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("check", help="decode every video of a dataset; report failures (exit 1 if any)")
    p.add_argument("root", metavar="DIR", help="dataset root")
    p.add_argument("--format", default="ssv2", choices=FORMATS, help="annotation format (default ssv2)")
    p.add_argument("--split", default="all", help="split to check, or 'all' (default) for every split found")
    p.add_argument("--frames", type=int, default=4, help="frames decoded per video besides the last (default 4)")
    p.add_argument("--limit", type=int, default=0, help="check only the first N videos (0 = all)")
    p.add_argument("--backend", default="pyav", choices=BACKENDS, help="decoder (default pyav)")
    p.add_argument("--show", type=int, default=20, help="failures listed one by one (default 20)")


def check_video(path: str | Path, *, frames: int = 4, backend: str = "pyav") -> tuple[int, str]:
    """(frame count, "") when the video decodes, (-1, reason) when it does not."""
    try:
        with open_video(path, backend=backend) as reader:
            n = reader.num_frames
            indices = sorted(set(tsn_indices(n, min(frames, n)).tolist()) | {n - 1})
            reader.get_frames(indices)
        return n, ""
    except DecodeError as e:
        return -1, e.reason or str(e)
    except Exception as e:  # anything a broken file provokes; reported, never fatal
        return -1, f"{type(e).__name__}: {e}"


def collect_records(root: str | Path, format: str, split: str) -> tuple[list[VideoRecord], list[str]]:
    """Records of one split, or of every split found (``all``), without duplicate paths."""
    if not Path(root).exists():
        raise AnnotationError(f"{root}: dataset root does not exist")
    splits = available_splits(root, format) if split == "all" else [split]
    if not splits:
        raise AnnotationError(f"{root}: no splits found for format {format!r}")
    records, seen = [], set()
    for s in splits:
        for r in read_annotations(root, format, s)[0]:
            if r.path not in seen:
                seen.add(r.path)
                records.append(r)
    return records, splits


def main(args: argparse.Namespace) -> int:
    if args.data_command != "check":
        raise SystemExit(f"unknown data command {args.data_command!r}")
    try:
        records, splits = collect_records(args.root, args.format, args.split)
    except AnnotationError as e:
        print(f"error: {e}")
        return 2
    if args.limit > 0:
        records = records[: args.limit]
    print(f"checking {len(records)} videos ({args.format}, splits: {', '.join(splits)}) in {args.root}")
    start = time.perf_counter()
    failures: list[tuple[Path, str]] = []
    total_frames = 0
    for i, record in enumerate(records, 1):
        n, reason = check_video(record.path, frames=args.frames, backend=args.backend)
        if reason:
            failures.append((record.path, reason))
        else:
            total_frames += n
        if i % 500 == 0:
            print(f"  {i}/{len(records)} checked, {len(failures)} failed")
    elapsed = time.perf_counter() - start
    ok = len(records) - len(failures)
    print(f"{ok} of {len(records)} videos decode ({total_frames} frames in all); {len(failures)} fail "
          f"[{elapsed:.1f} s, {len(records) / max(elapsed, 1e-9):.1f} videos/s]")
    if failures:
        kinds = Counter(re.sub(r"\d+", "N", re.split(r"[:(,]", reason)[0]).strip() for _, reason in failures)
        print("failures by reason: " + ", ".join(f"{k}: {c}" for k, c in kinds.most_common()))
        for path, reason in failures[: args.show]:
            print(f"  FAIL {path}: {reason}")
        if len(failures) > args.show:
            print(f"  ... and {len(failures) - args.show} more")
        return 1
    return 0
