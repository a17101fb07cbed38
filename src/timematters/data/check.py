"""``timematters data check DIR``: read a dataset's annotations, decode every video, report what is wrong.

1. The layout: ``--format``, or detected (SSv2 JSON, Kinetics CSV, UCF101 / HMDB51 split files,
   ``path label`` lists, folder per class) and said.
2. The annotations of every split (or ``--split``): a malformed, missing or non-UTF-8 file is named with
   the entry; then ids listed twice in one split, ids shared by a training and a validation split, and a
   missing validation split are reported.
3. Every video is opened and a few frames spread over it plus the last one are decoded (so truncated
   files are caught), in ``--workers`` processes, with a progress bar (plain lines when stderr is not a
   terminal).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

from timematters.data.annotations import (FORMATS, AnnotationError, VideoRecord, available_splits, detect_format,
                                          read_annotations)
from timematters.data.decode import BACKENDS, DecodeError, open_video
from timematters.data.sampling import tsn_indices
from timematters.utils import Progress

EXIT_CODES = """exit status:
  0  all good: every video decodes, no duplicate or shared ids
  1  some videos fail to decode, or ids are listed twice in a split / shared by training and validation
  2  the annotations are unusable (missing, malformed or non-UTF-8 file, unknown layout): nothing was decoded"""

VALIDATION_NAMES = ("validation", "val", "validate", "test")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("check", help="decode every video of a dataset; report failures (exit 1 if any)",
                       description=__doc__.split("\n\n")[0], epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", metavar="DIR", help="dataset root")
    p.add_argument("--format", default=None, choices=FORMATS, help="annotation format (default: detected)")
    p.add_argument("--split", default="all", help="split to check, or 'all' (default) for every split found")
    p.add_argument("--frames", type=int, default=4, help="frames decoded per video besides the last (default 4)")
    p.add_argument("--limit", type=int, default=0, help="check only the first N videos (0 = all)")
    p.add_argument("--backend", default="pyav", choices=BACKENDS, help="decoder (default pyav)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="decoding processes (default: CPU cores, at most 8)")
    p.add_argument("--show", type=int, default=20, help="failures listed one by one (default 20)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept entries that resolve outside DIR (data.allow_outside_root)")


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


def _check_job(job: tuple[str, int, str]) -> tuple[str, int, str]:
    path, frames, backend = job
    return (path, *check_video(path, frames=frames, backend=backend))


def collect_records(root: str | Path, format: str, split: str, *, allow_outside_root: bool = False
                    ) -> tuple[dict[str, list[VideoRecord]], list[str]]:
    """Records per split (one split, or every split found with ``all``) and the splits."""
    if not Path(root).exists():
        raise AnnotationError(f"{root}: dataset root does not exist")
    splits = available_splits(root, format) if split == "all" else [split]
    if not splits:
        raise AnnotationError(f"{root}: no splits found for format {format!r}")
    return {s: read_annotations(root, format, s, allow_outside_root=allow_outside_root)[0] for s in splits}, splits


def _key(record: VideoRecord, root: Path, format: str) -> str:
    """What identifies a video across splits: its id, or for lists / folders its file (folders: below the
    split folder, so train/cat/a.mp4 and val/cat/a.mp4 are the same video)."""
    if format in ("ssv2", "kinetics", "ucf101", "hmdb51"):
        return record.video_id
    try:
        rel = record.path.relative_to(root)
    except ValueError:
        return str(record.path)
    if format == "folder" and len(rel.parts) > 2:
        rel = Path(*rel.parts[1:])
    return str(rel.with_suffix("")) if format == "folder" else str(rel)


def _fold(split: str) -> str:
    return re.sub(r"^\D*", "", split)


def id_problems(by_split: dict[str, list[VideoRecord]], root: Path, format: str) -> list[str]:
    """Ids listed twice within a split, and ids shared by a training split and a validation split."""
    problems = []
    keys = {s: Counter(_key(r, root, format) for r in records) for s, records in by_split.items()}
    for split, counts in keys.items():
        dups = [k for k, c in counts.items() if c > 1]
        if dups:
            problems.append(f"split {split}: {len(dups)} ids listed more than once, e.g. "
                            + ", ".join(f"{k} (x{counts[k]})" for k in dups[:5]))
    trains = [s for s in keys if s.startswith("train")]
    vals = [s for s in keys if s.startswith(VALIDATION_NAMES)]
    for t in trains:
        for v in vals:
            if _fold(t) != _fold(v):
                continue
            shared = sorted(set(keys[t]) & set(keys[v]))
            if shared:
                problems.append(f"splits {t} and {v} share {len(shared)} ids (a video in both training and "
                                f"validation), e.g. {', '.join(shared[:5])}")
    return problems


def _decode_all(records: list[VideoRecord], *, frames: int, backend: str, workers: int
                ) -> tuple[list[tuple[Path, str]], int]:
    """Decode every record (in ``workers`` processes); the failures and the frame total of the good ones."""
    jobs = [(str(r.path), frames, backend) for r in records]
    failures: list[tuple[Path, str]] = []
    total_frames = 0
    pool = Pool(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        results = pool.imap_unordered(_check_job, jobs, chunksize=4) if pool else map(_check_job, jobs)
        bar = Progress(results, total=len(jobs), desc="decoding", unit="video")
        for path, n, reason in bar:
            if reason:
                failures.append((Path(path), reason))
            else:
                total_frames += n
            bar.set_postfix(failed=len(failures))
    finally:
        if pool is not None:
            pool.terminate()
    order = {str(r.path): i for i, r in enumerate(records)}
    failures.sort(key=lambda f: order[str(f[0])])
    return failures, total_frames


def main(args: argparse.Namespace) -> int:
    if args.data_command != "check":
        raise SystemExit(f"unknown data command {args.data_command!r}")
    root = Path(args.root)
    try:
        if args.format:
            fmt = args.format
        else:
            fmt, evidence = detect_format(root)
            print(f"layout: {fmt} (detected: {evidence}; pass --format to choose another)")
        by_split, splits = collect_records(root, fmt, args.split, allow_outside_root=args.allow_outside_root)
    except AnnotationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    list_root = root.parent if root.is_file() else root
    problems = id_problems(by_split, list_root, fmt)
    print("splits: " + ", ".join(f"{s} ({len(r)} videos)" for s, r in by_split.items()))
    if args.split == "all" and not any(s.startswith(VALIDATION_NAMES) for s in splits):
        print(f"warning: no validation split (looked for {', '.join(VALIDATION_NAMES)}); evaluation needs one")
    for p in problems:
        print(f"problem: {p}")

    records, seen = [], set()
    for split_records in by_split.values():
        for r in split_records:
            if r.path not in seen:
                seen.add(r.path)
                records.append(r)
    if args.limit > 0:
        records = records[: args.limit]
    workers = max(1, args.workers)
    print(f"checking {len(records)} videos ({fmt}, splits: {', '.join(splits)}) in {args.root} "
          f"with {workers} worker{'s' * (workers > 1)}")
    start = time.perf_counter()
    failures, total_frames = _decode_all(records, frames=args.frames, backend=args.backend, workers=workers)
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
    return 1 if failures or problems else 0
