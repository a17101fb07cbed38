"""``timematters predict VIDEO... --model M``: the top classes for each video file, and for the same clip
with its frames shuffled and reversed (how much the prediction depends on time, per video).

The clip is prepared as the model expects (``model.pretrained_cfg``): its frame count (TSN segment
centres, as in evaluation), its resize short side and centre crop, its mean and std. The shuffled and
reversed clips are the same frames reordered (``evaluate.build_variants``: the shuffles are non-identity
permutations keyed by ``(seed, k, video index)``), all sent through the model in one batch. A video that
cannot be decoded is reported and the exit status is 1; the other videos are still predicted.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from timematters.data.decode import DecodeError, open_video
from timematters.data.sampling import tsn_indices
from timematters.data.transforms import apply_geometry, eval_geometry, normalize
from timematters.evaluation.evaluate import REVERSED, SHUFFLED, build_variants
from timematters.utils import resolve_device


def load_clip(path: str | Path, cfg: dict) -> tuple[torch.Tensor, list[int], int]:
    """The model's clip of one video: ``(T, C, H, W)`` float32, the frame indices, the video's frame count."""
    with open_video(path) as reader:
        n = reader.num_frames
        indices = tsn_indices(n, int(cfg["num_frames"]))
        frames = reader.get_frames(indices)                                   # (T, H, W, 3) uint8
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2)                      # (T, C, H, W) uint8
    geometry = eval_geometry(*clip.shape[-2:], img_size=int(cfg["img_size"]), short_side=int(cfg["short_side"]))
    return normalize(apply_geometry(clip, geometry), cfg["mean"], cfg["std"]), indices.tolist(), n


def top(probs: torch.Tensor, names: Sequence[str], k: int) -> list[dict]:
    p, i = probs.topk(min(k, probs.numel()))
    return [{"label": names[j], "index": j, "prob": float(q)} for q, j in zip(p.tolist(), i.tolist())]


@torch.no_grad()
def predict_video(model: nn.Module, path: str | Path, *, index: int = 0, top_k: int = 5, shuffles: int = 3,
                  seed: int = 0, device: str | torch.device = "cpu") -> dict:
    """Top-k classes of the original, shuffled (probabilities averaged over ``shuffles``) and reversed clip."""
    cfg = model.pretrained_cfg
    names = cfg.get("class_names") or [f"LABEL_{i}" for i in range(model.num_classes)]
    clip, indices, n = load_clip(path, cfg)
    stacked, variants = build_variants(clip[None].to(device), [index], shuffles=shuffles, seed=seed, reverse=True)
    probs = model(stacked).float().softmax(dim=-1).cpu()                     # (V, C)
    original = probs[0]
    shuffled = probs[[i for i, (v, _) in enumerate(variants) if v == SHUFFLED]].mean(0)
    reversed_ = probs[[i for i, (v, _) in enumerate(variants) if v == REVERSED][0]]
    best = int(original.argmax())
    return {
        "video": str(path), "num_video_frames": n, "frame_indices": indices, "shuffles": shuffles, "seed": seed,
        "original": top(original, names, top_k), "shuffled": top(shuffled, names, top_k),
        "reversed": top(reversed_, names, top_k),
        # the original top-1 class: its probability on each clip, and whether it stays the top-1
        "top1": {"label": names[best], "prob": float(original[best]), "prob_shuffled": float(shuffled[best]),
                 "prob_reversed": float(reversed_[best]), "same_top1_shuffled": int(shuffled.argmax()) == best,
                 "same_top1_reversed": int(reversed_.argmax()) == best},
    }


def format_result(r: dict) -> str:
    lines = [f"{r['video']}  ({len(r['frame_indices'])} of {r['num_video_frames']} frames)"]
    rows = [("original", r["original"]), (f"shuffled (mean of {r['shuffles']})", r["shuffled"]),
            ("reversed", r["reversed"])]
    width = max(len(name) for name, _ in rows)
    for name, entries in rows:
        lines.append(f"  {name:<{width}}  " + "  ".join(f"{e['prob']:6.1%} {e['label']}" for e in entries))
    t = r["top1"]
    lines.append(f"  p({t['label']}): original {t['prob']:.3f}, shuffled {t['prob_shuffled']:.3f}, "
                 f"reversed {t['prob_reversed']:.3f}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (any format FFmpeg decodes)")
    p.add_argument("--model", required=True,
                   help="run directory, checkpoint .safetensors, export folder, Hugging Face video classifier "
                        "folder or Hub id")
    p.add_argument("--top", type=int, default=5, help="classes shown per clip")
    p.add_argument("--shuffles", type=int, default=3, help="shuffled copies of each clip (probabilities averaged)")
    p.add_argument("--seed", type=int, default=0, help="seed of the frame shuffles")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def main(args: argparse.Namespace) -> int:
    from timematters.models.hf import from_pretrained

    if args.top < 1 or args.shuffles < 1:
        raise ValueError("--top and --shuffles must be >= 1")
    device = resolve_device(args.device)
    model = from_pretrained(args.model, device=device)  # a user error becomes one line in cli.main
    results, failed = [], []
    for i, video in enumerate(args.videos):
        try:
            r = predict_video(model, video, index=i, top_k=args.top, shuffles=args.shuffles, seed=args.seed,
                              device=device)
        except (DecodeError, OSError, ValueError) as e:
            failed.append({"video": video, "error": str(e)})
            print(f"timematters predict: cannot read {video}: {e}", file=sys.stderr)
            continue
        results.append(r)
        if not args.json:
            print(format_result(r))
    if args.json:
        print(json.dumps({"model": str(args.model), "results": results, "failed": failed}, indent=1))
    return 1 if failed else 0
