"""Top-1/top-5 on original, shuffled and reversed clips, in one batched pass (TIME paper, Table 1 / Fig. 1a).

For every batch the original clips, ``shuffles`` frame-shuffled copies of each clip (a random
non-identity permutation per video, drawn from a generator seeded with ``(seed, k, video)``, so every
temporal view and spatial crop of one video is shuffled the same way and the numbers do not depend on
batch size, worker count or rank) and the time-reversed clips are stacked into one tensor and sent
through the model once. (A permutation per crop would make the summed score an ensemble over
permutations, which inflates shuffled accuracy.)

Multi-view testing follows PySlowFast's ``TestMeter``: the softmax scores of all temporal views x
spatial crops of one video are summed, and the video is scored on the sum. Samples of one video are
found through ``meta["video_index"]`` (falling back to ``meta["video_id"]``, then the sample index).

``evaluate`` only needs ``model(video (B, T, C, H, W)) -> logits``; it puts the model in eval mode and
restores its previous mode, so the training engine can call it between epochs.

A video that fails to load is never replaced: the evaluation dataset excludes it (``on_error="exclude"``),
``LoadFailures`` counts it, the result lists it (``num_failed``, ``failed``: path and reason), one line
says so on screen, and more than ``max_fail_ratio`` failed loads in the pass is an error. A requested frame
the decoder never emits (the last packet of many H.264 files) is the nearest decoded frame before it;
``substituted_frames`` counts them (and the same line says so).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from timematters import temporal
from timematters.data.dataset import LoadFailures
from timematters.utils import Progress, atomic_write_bytes, resolve_device, sized, torch_rng_for

log = logging.getLogger("timematters.evaluate")

#: the clip variants, in the order they are stacked in a batch
ORIGINAL, SHUFFLED, REVERSED = "original", "shuffled", "reversed"


# ----------------------------------------------------------------------------------------- frame orders
def shuffle_orders(shuffle_keys: Sequence[int], num_frames: int, *, seed: int, shuffle: int) -> torch.Tensor:
    """Non-identity frame permutations, one per sample: ``(B, T)`` int64.

    Sample b gets a generator seeded with ``(seed, shuffle, shuffle_keys[b])``: samples with the same key
    (the crops and views of one video, see :func:`shuffle_key`) get the same permutation.
    """
    rows = []
    for index in shuffle_keys:
        gen = torch_rng_for(seed, shuffle, int(index))
        rows.append(temporal.batch_permutations(1, num_frames, gen, per_sample=True, allow_identity=False))
    return torch.cat(rows, dim=0)                                             # (B, T)


def build_variants(video: torch.Tensor, shuffle_keys: Sequence[int], *, shuffles: int, seed: int,
                   reverse: bool) -> tuple[torch.Tensor, list[tuple[str, int]]]:
    """Stack original, shuffled and reversed clips: ``(V*B, T, C, H, W)`` and the ``(variant, k)`` list."""
    if video.ndim != 5:
        raise ValueError(f"evaluate: batch['video'] must be (B, T, C, H, W), got shape {tuple(video.shape)}")
    T = video.shape[1]
    if shuffles > 0 and T < 2:
        raise ValueError(f"evaluate: shuffling needs at least 2 frames per clip, got T={T}")
    parts, variants = [video], [(ORIGINAL, 0)]
    for k in range(shuffles):
        orders = shuffle_orders(shuffle_keys, T, seed=seed, shuffle=k).to(video.device)
        parts.append(temporal.apply_order(video, orders))
        variants.append((SHUFFLED, k))
    if reverse:
        parts.append(temporal.apply_order(video, temporal.reverse(T)))
        variants.append((REVERSED, 0))
    return torch.cat(parts, dim=0), variants


# ------------------------------------------------------------------------------------- accumulation
def _video_keys(batch: Mapping[str, Any]) -> list[Any]:
    """One hashable key per sample naming its video (all views/crops of a video share it)."""
    metas = batch.get("meta")
    indices = batch["index"].tolist() if torch.is_tensor(batch.get("index")) else None
    keys = []
    for i in range(batch["video"].shape[0]):
        meta = metas[i] if metas is not None else {}
        if "video_index" in meta:
            keys.append(("video_index", int(meta["video_index"])))
        elif "video_id" in meta:
            keys.append(("video_id", str(meta["video_id"])))
        elif indices is not None:
            keys.append(("index", int(indices[i])))
        else:
            raise KeyError("evaluate: a sample has neither meta['video_index'], meta['video_id'] nor 'index'")
    return keys


def shuffle_key(video_key: tuple[str, Any]) -> int:
    """An integer seed key for a video key of :func:`_video_keys` (stable across processes and runs)."""
    kind, value = video_key
    return int(value) if kind != "video_id" else zlib.crc32(str(value).encode("utf-8"))


class _VideoScores:
    """Per-video sums of softmax scores for each clip variant (PySlowFast-style multi-view ensembling)."""

    def __init__(self, variants: list[tuple[str, int]]):
        self.variants = variants
        self.row: dict[Any, int] = {}
        self.labels: list[int] = []
        self.views: list[int] = []
        self.sums: list[list[torch.Tensor]] = []   # per video: one (V, C) float64 tensor in a list (mutable)
        self.loss_sum = 0.0
        self.loss_count = 0

    def add(self, keys: list[Any], labels: torch.Tensor, probs: torch.Tensor) -> None:
        """probs: (V, B, C) softmax scores for the variants of B samples."""
        probs = probs.detach().to("cpu", torch.float64)
        for b, key in enumerate(keys):
            label = int(labels[b])
            r = self.row.get(key)
            if r is None:
                self.row[key] = len(self.labels)
                self.labels.append(label)
                self.views.append(1)
                self.sums.append([probs[:, b].clone()])
            else:
                if self.labels[r] != label:
                    raise ValueError(f"evaluate: video {key} appears with labels {self.labels[r]} and {label}")
                self.views[r] += 1
                self.sums[r][0] += probs[:, b]

    def merged(self) -> tuple[list[Any], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gather over ranks when torch.distributed runs; return keys, labels (N,), views (N,), probs (V, N, C)."""
        keys = list(self.row.keys())
        probs = torch.stack([s[0] for s in self.sums], dim=1) if self.sums else torch.zeros(len(self.variants), 0, 0)
        labels, views = list(self.labels), list(self.views)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (keys, labels, views, probs, self.loss_sum, self.loss_count))
            merged: dict[Any, list] = {}
            self.loss_sum = sum(g[4] for g in gathered)
            self.loss_count = sum(g[5] for g in gathered)
            for g_keys, g_labels, g_views, g_probs, _, _ in gathered:
                for j, key in enumerate(g_keys):
                    if key in merged:
                        merged[key][1] += g_views[j]
                        merged[key][2] = merged[key][2] + g_probs[:, j]
                    else:
                        merged[key] = [g_labels[j], g_views[j], g_probs[:, j].clone()]
            keys = sorted(merged.keys(), key=repr)
            labels = [merged[k][0] for k in keys]
            views = [merged[k][1] for k in keys]
            probs = torch.stack([merged[k][2] for k in keys], dim=1) if keys else probs
        return keys, torch.as_tensor(labels, dtype=torch.long), torch.as_tensor(views), probs


# ------------------------------------------------------------------------------------------ metrics
def _topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """scores (N, C), labels (N,) -> bool (N,): label among the k best scores (k clipped to C)."""
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def _summary(correct: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, float | int]:
    """Accuracies (percent) over the samples in ``mask`` for each metric name in ``correct``."""
    n = int(mask.sum())
    out: dict[str, float | int] = {"count": n}
    for name, c in correct.items():
        out[name] = float(c[mask].double().mean() * 100) if n else float("nan")
    if "top1" in out and "shuffled_top1" in out:
        out["gap_top1"] = out["top1"] - out["shuffled_top1"]
        out["gap_top5"] = out["top5"] - out["shuffled_top5"]
    if "top1" in out and "reversed_top1" in out:
        out["reverse_gap_top1"] = out["top1"] - out["reversed_top1"]
        out["reverse_gap_top5"] = out["top5"] - out["reversed_top5"]
    return out


def _resolve_groups(class_groups: Mapping[str, Iterable[int | str]] | None, class_names: Sequence[str] | None,
                    num_classes: int) -> dict[str, list[int]]:
    """Group name -> class indices; names are looked up in ``class_names``."""
    if not class_groups:
        return {}
    lookup = {n: i for i, n in enumerate(class_names)} if class_names is not None else {}
    out: dict[str, list[int]] = {}
    for group, members in class_groups.items():
        idx = []
        for m in members:
            if isinstance(m, str):
                if m not in lookup:
                    raise KeyError(f"evaluate: class group '{group}' names class '{m}', which is not in class_names")
                idx.append(lookup[m])
            else:
                if not 0 <= int(m) < num_classes:
                    raise IndexError(f"evaluate: class group '{group}' has class index {m} outside 0..{num_classes - 1}")
                idx.append(int(m))
        out[group] = sorted(set(idx))
    return out


def _metrics(keys: list[Any], labels: torch.Tensor, views: torch.Tensor, probs: torch.Tensor,
             variants: list[tuple[str, int]], *, class_names: Sequence[str] | None,
             groups: dict[str, list[int]], per_sample: bool) -> dict[str, Any]:
    names = [v for v, _ in variants]
    n_shuffles = names.count(SHUFFLED)
    scores = probs / views.to(probs.dtype)[None, :, None]     # (V, N, C) mean softmax per video
    labelled = labels >= 0
    if not bool(labelled.any()):
        raise ValueError("evaluate: no sample has a label (all labels are -1); accuracy needs a labelled split")
    num_classes = scores.shape[2]
    if int(labels.max()) >= num_classes:
        raise ValueError(f"evaluate: label {int(labels.max())} is outside the model's {num_classes} classes")
    safe = labels.clamp(min=0)
    orig = scores[0]
    correct: dict[str, torch.Tensor] = {
        "top1": _topk_correct(orig, safe, 1), "top5": _topk_correct(orig, safe, 5),
    }
    p_y = orig.gather(1, safe[:, None])[:, 0]                    # (N,) p(y|x)
    shuf_rows = [i for i, v in enumerate(names) if v == SHUFFLED]
    p_y_shuffled = None
    if shuf_rows:
        # accuracy on shuffled clips is averaged over the K shuffles: mean of per-shuffle 0/1 correctness
        correct["shuffled_top1"] = torch.stack([_topk_correct(scores[i], safe, 1).double() for i in shuf_rows]).mean(0)
        correct["shuffled_top5"] = torch.stack([_topk_correct(scores[i], safe, 5).double() for i in shuf_rows]).mean(0)
        p_y_shuffled = torch.stack([scores[i].gather(1, safe[:, None])[:, 0] for i in shuf_rows]).mean(0)
    p_y_reversed = None
    if REVERSED in names:
        r = names.index(REVERSED)
        correct["reversed_top1"] = _topk_correct(scores[r], safe, 1)
        correct["reversed_top5"] = _topk_correct(scores[r], safe, 5)
        p_y_reversed = scores[r].gather(1, safe[:, None])[:, 0]

    result: dict[str, Any] = _summary(correct, labelled)
    result = {"num_videos": result.pop("count"), "num_clips": int(views.sum()), "shuffles": n_shuffles, **result}
    if p_y_shuffled is not None:
        result["confidence_gap_mean"] = float((p_y - p_y_shuffled)[labelled].mean())

    names_out = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names_out) != num_classes:
        raise ValueError(f"evaluate: {len(names_out)} class names for a model with {num_classes} outputs")
    per_class = {}
    for c in range(num_classes):
        mask = labelled & (labels == c)
        if bool(mask.any()):
            per_class[names_out[c]] = _summary(correct, mask)
    result["per_class"] = per_class

    group_out = {}
    for group, members in groups.items():
        mask = labelled & torch.isin(labels, torch.as_tensor(members, dtype=torch.long))
        group_out[group] = {"num_classes": len(members), **_summary(correct, mask)}
        # mean of per-class accuracies too: SSv2 classes are imbalanced, so both views are useful
        present = [names_out[c] for c in members if names_out[c] in per_class]
        if present:
            for metric in ("top1", "shuffled_top1", "reversed_top1"):
                if metric in correct:
                    group_out[group][f"class_mean_{metric}"] = float(np.mean([per_class[n][metric] for n in present]))
    result["groups"] = group_out

    if per_sample:
        keep = labelled.nonzero()[:, 0]
        result["per_sample"] = {
            "video": [keys[i][1] for i in keep.tolist()],
            "label": labels[keep].tolist(),
            "p_y": p_y[keep].tolist(),
            **({"p_y_shuffled": p_y_shuffled[keep].tolist()} if p_y_shuffled is not None else {}),
            **({"p_y_reversed": p_y_reversed[keep].tolist()} if p_y_reversed is not None else {}),
            "pred": orig[keep].argmax(1).tolist(),
        }
    return result


# --------------------------------------------------------------------------------------------- main
@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Mapping[str, Any]], *, device: str | torch.device,
             shuffles: int = 1, seed: int = 0, reverse: bool = True, amp_dtype: torch.dtype | None = None,
             class_groups: Mapping[str, Iterable[int | str]] | None = None,
             class_names: Sequence[str] | None = None, per_sample: bool = False,
             max_batches: int | None = None, max_fail_ratio: float | None = None,
             desc: str = "evaluate") -> dict[str, Any]:
    """Evaluate ``model`` on original, shuffled and reversed clips of every batch in ``loader``.

    Returns accuracies in percent: ``top1``, ``top5``, ``shuffled_top1/5`` (mean over ``shuffles``),
    ``reversed_top1/5``, ``gap_top1/5`` (original - shuffled), ``reverse_gap_top1/5``, ``loss`` (mean
    cross-entropy of the original clips), ``per_class`` and ``groups`` (same keys, by class name / group
    name) and, with ``per_sample=True``, per video ``p_y`` = p(y|x), ``p_y_shuffled`` (mean over shuffles)
    and ``p_y_reversed``; ``num_failed`` and ``failed`` (path, reason) for the videos that could not be
    loaded and were left out (``max_fail_ratio``: default the loader's dataset's); ``substituted_frames``.
    """
    if shuffles < 0:
        raise ValueError(f"evaluate: shuffles must be >= 0, got {shuffles}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    variants = [(ORIGINAL, 0)] + [(SHUFFLED, k) for k in range(shuffles)] + ([(REVERSED, 0)] if reverse else [])
    # created up front: a rank whose shard is empty still joins the gather in merged()
    scores = _VideoScores(variants)
    failures = LoadFailures(max_fail_ratio)
    try:
        for step, batch in enumerate(Progress(failures.track(loader), total=sized(loader), desc=desc, unit="batch")):
            if max_batches is not None and step >= max_batches:
                break
            video = batch["video"]
            B = video.shape[0]
            labels = torch.as_tensor(batch["label"]).view(-1)
            video_keys = _video_keys(batch)                  # all crops / views of one video share a key
            stacked, _ = build_variants(video.to(device, non_blocking=True), [shuffle_key(k) for k in video_keys],
                                        shuffles=shuffles, seed=seed, reverse=reverse)
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                logits = model(stacked)
            if logits.ndim != 2 or logits.shape[0] != stacked.shape[0]:
                raise ValueError(f"evaluate: model returned logits of shape {tuple(logits.shape)} for "
                                 f"{stacked.shape[0]} clips; expected ({stacked.shape[0]}, num_classes)")
            logits = logits.float().view(len(variants), B, -1)     # (V, B, C)
            has_label = labels >= 0
            if bool(has_label.any()):
                lab = labels.to(logits.device)
                scores.loss_sum += float(F.cross_entropy(logits[0][has_label.to(logits.device)],
                                                         lab[has_label.to(logits.device)], reduction="sum"))
                scores.loss_count += int(has_label.sum())
            scores.add(video_keys, labels, logits.softmax(dim=-1))
    finally:
        model.train(was_training)
    excluded = failures.finish(log)      # every rank takes part; raises past max_fail_ratio
    keys, labels, views, probs = scores.merged()
    if not keys:
        raise ValueError("evaluate: the loader yielded no batches")
    groups = _resolve_groups(class_groups, class_names, probs.shape[2])
    result = _metrics(keys, labels, views, probs, scores.variants, class_names=class_names,
                      groups=groups, per_sample=per_sample)
    result["loss"] = scores.loss_sum / max(scores.loss_count, 1)
    result["seed"] = seed
    result.update(excluded)
    return result


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="run directory, checkpoint .safetensors, export folder, or a Hugging Face video "
                             "classifier folder / Hub id")
    parser.add_argument("--data", default=None, help="dataset directory (default: the one the run was trained on)")
    parser.add_argument("--format", default=None, help="dataset format (default: the run's)")
    parser.add_argument("--split", default="validation", help="split to evaluate (default: validation)")
    parser.add_argument("--views", type=int, default=1, help="temporal views per video")
    parser.add_argument("--crops", type=int, default=1, choices=(1, 3), help="spatial crops per view")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per batch (default 8)")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading processes (default 0)")
    parser.add_argument("--shuffles", type=int, default=3, help="shuffled copies per clip (accuracy averaged)")
    parser.add_argument("--no-reverse", action="store_true", help="skip the reversed-clip evaluation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the frame shuffles")
    parser.add_argument("--groups", default="auto",
                        help="class groups: auto | ssv2 | ssv2-subsets | synth | none | PATH.json")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"),
                        help="mixed precision on CUDA (default off)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N videos (0 = all)")
    parser.add_argument("--per-sample", action="store_true",
                        help="also write per video p(y|x), p(y|x shuffled), p(y|x reversed) and the prediction")
    parser.add_argument("--out", default="metrics.json", help="where to write the metrics JSON")


def amp_dtype_from(name: str, device: torch.device) -> torch.dtype | None:
    if name == "off":
        return None
    if device.type == "cpu" and name == "fp16":
        raise ValueError("--amp fp16 needs a CUDA device; use bf16 or off on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_json_safe(obj), indent=2) + "\n").encode())


def main(args: argparse.Namespace) -> int:
    from timematters.models.hf import load_any
    from timematters.evaluation.groups import resolve_groups
    from timematters.audit.audit import build_eval_loader

    device = resolve_device(args.device)
    loaded = load_any(args.checkpoint, device=device)  # a user error becomes one line in cli.main
    data_root = args.data or loaded.data_root
    if not data_root:
        raise ValueError(f"eval: {args.checkpoint} does not name its dataset; pass --data DIR")
    loader, class_names = build_eval_loader(loaded, data_root, args.format, split=args.split,
                                            views=args.views, crops=args.crops, batch_size=args.batch_size,
                                            num_workers=args.num_workers, limit=args.limit)
    model = loaded.model_for(class_names)
    groups = resolve_groups(args.groups, class_names, data_root)
    result = evaluate(model, loader, device=device, shuffles=args.shuffles, seed=args.seed,
                      reverse=not args.no_reverse, amp_dtype=amp_dtype_from(args.amp, device),
                      class_groups=groups, class_names=class_names, per_sample=args.per_sample)
    result["checkpoint"] = str(args.checkpoint)
    result["data"] = str(data_root)
    result["views"], result["crops"] = args.views, args.crops
    write_json(args.out, result)
    print(f"top1 {result['top1']:.2f}  shuffled {result.get('shuffled_top1', float('nan')):.2f}  "
          f"reversed {result.get('reversed_top1', float('nan')):.2f}  gap {result.get('gap_top1', float('nan')):.2f}"
          f"  -> {args.out}")
    return 0
