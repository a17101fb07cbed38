"""``timematters audit``: how much does a video model ignore time? (TIME paper, Fig. 1, Table 1, Fig. 4)

For each ``--model`` (a timematters run / checkpoint / export, a Hugging Face video classifier folder or Hub id:
TimeSformer, VideoMAE, ViViT, V-JEPA 2, VideoPrism; each gets clips of its own frame count, size and
normalisation):
1. ``evaluate``: top-1/top-5 on original, shuffled and reversed clips, per class and class group;
2. the per-block temporal-order probe (``probe.py``);
3. the confidence-gap histogram (``confidence.py``);
4. GradCAM strips for a few validation videos (``gradcam.py``);
then ``REPORT_DIR/report.html`` (self-contained), ``metrics.json`` and the PNGs. Several models give one
side-by-side report; every model sees the same videos, shuffles and GradCAM samples.
"""
from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from timematters.models.hf import LoadedModel, load_any
from timematters.audit.confidence import confidence_gaps, gap_histogram, plot_confidence_gap
from timematters.evaluation.evaluate import amp_dtype_from, evaluate, write_json
from timematters.audit.gradcam import plot_gradcam, to_display, video_gradcam
from timematters.evaluation.groups import resolve_groups
from timematters.audit.probe import order_probe, plot_order_probe
from timematters.audit.report import plot_accuracy, write_report
from timematters.utils import Progress, resolve_device


def build_dataset(loaded: LoadedModel, root: str | Path, format: str | None, *, split: str, views: int = 1,
                  crops: int = 1, limit: int = 0):
    """The eval-mode dataset of ``split`` preprocessed for ``loaded`` (its frames, size, mean/std)."""
    from timematters.data.dataset import build_video_dataset

    fmt = format or loaded.data_format or "ssv2"
    data = (loaded.spec or {}).get("data") or {}
    outside = bool(data.get("allow_outside_root", False))
    # a model trained on a class subset (data.classes) is evaluated on that subset
    return build_video_dataset(root, fmt, split, train=False, limit=limit, allow_outside_root=outside,
                               classes=data.get("classes"),
                               num_frames=loaded.num_frames,
                               img_size=loaded.img_size, mean=loaded.mean, std=loaded.std, views=views,
                               crops=crops, short_side=loaded.short_side,
                               backend=(loaded.spec.get("data") or {}).get("decode_backend", "auto"))


def build_eval_loader(loaded: LoadedModel, root: str | Path, format: str | None, *, split: str, views: int = 1,
                      crops: int = 1, batch_size: int = 8, num_workers: int = 0, limit: int = 0
                      ) -> tuple[DataLoader, list[str]]:
    from timematters.data.dataset import collate

    dataset, class_names = build_dataset(loaded, root, format, split=split, views=views, crops=crops, limit=limit)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate, pin_memory=torch.cuda.is_available())
    return loader, class_names


def pick_gradcam_videos(dataset, class_names: list[str], groups: dict[str, list[str]], count: int,
                        skip: set[str] = frozenset()) -> list[int]:
    """Up to ``count`` video indices, one per class, temporal-group classes first, in dataset order; videos
    whose path is in ``skip`` (those that failed to load) are never picked."""
    temporal = {c for g, names in groups.items() if "temporal" in g.lower() for c in names}
    first: dict[int, int] = {}
    for i, rec in enumerate(dataset.records):
        if rec.label >= 0 and rec.label not in first and str(rec.path) not in skip:
            first[rec.label] = i
    order = sorted(first, key=lambda c: (class_names[c] not in temporal, first[c]))
    return sorted(first[c] for c in order[:count])


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def run_audit(model_paths: list[str], data: str | None, out: str | Path, *, names: list[str] | None = None,
              format: str | None = None, split: str = "validation", probe_split: str = "train",
              views: int = 1, crops: int = 1, batch_size: int = 8, num_workers: int = 0, shuffles: int = 3,
              seed: int = 0, groups: str = "auto", device: str = "auto", amp: str = "off", limit: int = 0,
              probe_train_videos: int = 512, probe_test_videos: int = 256, gradcam_videos: int = 4,
              probe: bool = True, log=print) -> dict[str, Any]:
    """Run every measurement for each model and write the report; returns the ``metrics.json`` content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    amp_dtype = amp_dtype_from(amp, dev)
    if names and len(names) != len(model_paths):
        raise ValueError(f"--names: {len(names)} names for {len(model_paths)} models")
    names = names or [Path(p).name or str(p) for p in model_paths]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must differ, got {names}; pass --names")

    models: list[dict[str, Any]] = []
    loaded_all: list[LoadedModel] = []
    data_root = data
    class_groups: dict[str, list[str]] = {}
    class_names_ref: list[str] | None = None
    gradcam_idx: list[int] = []
    for name, path in zip(names, model_paths):
        loaded = load_any(path, device=dev)
        loaded_all.append(loaded)
        data_root = data_root or loaded.data_root
        if not data_root:
            raise ValueError(f"{path} does not name its dataset; pass --data DIR")
        log(f"[{name}] {loaded.kind}, {loaded.num_frames} frames at {loaded.img_size}px")
        loader, class_names = build_eval_loader(loaded, data_root, format, split=split, views=views, crops=crops,
                                                batch_size=batch_size, num_workers=num_workers, limit=limit)
        if class_names_ref is None:
            class_names_ref = class_names
            class_groups = resolve_groups(groups, class_names, data_root)
        classify = loaded.model_for(class_names)
        ev = evaluate(classify, loader, device=dev, shuffles=shuffles, seed=seed, amp_dtype=amp_dtype,
                      class_groups=class_groups, class_names=class_names, per_sample=True)
        if not models:  # the first model picks the GradCAM videos among those that loaded
            failed = {f["path"] for f in ev["failed"]}
            gradcam_idx = pick_gradcam_videos(loader.dataset, class_names, class_groups, gradcam_videos, failed)
        per_sample = ev.pop("per_sample")
        log(f"[{name}] top1 {ev['top1']:.1f}  shuffled {ev.get('shuffled_top1', float('nan')):.1f}  "
            f"reversed {ev.get('reversed_top1', float('nan')):.1f}")
        entry: dict[str, Any] = {"name": name, "source": str(path), "kind": loaded.kind,
                                 "num_frames": loaded.num_frames, "img_size": loaded.img_size, "eval": ev}
        if "p_y_shuffled" in per_sample:
            entry["confidence"] = gap_histogram(confidence_gaps(per_sample["p_y"], per_sample["p_y_shuffled"]))

        if probe:
            train_loader, _ = build_eval_loader(loaded, data_root, format, split=probe_split,
                                                batch_size=batch_size, num_workers=num_workers,
                                                limit=probe_train_videos)
            test_loader, _ = build_eval_loader(loaded, data_root, format, split=split, batch_size=batch_size,
                                               num_workers=num_workers, limit=probe_test_videos)
            entry["probe"] = order_probe(loaded.model, train_loader, test_loader, device=dev,
                                         amp_dtype=amp_dtype, seed=seed)
            log(f"[{name}] order probe per block: " + " ".join(f"{a:.0f}" for a in entry["probe"]["test_acc"]))

        if gradcam_idx:
            ds, _ = build_dataset(loaded, data_root, format, split=split)
            samples = [ds[i] for i in gradcam_idx]
            video = torch.stack([s["video"] for s in samples])                       # (B, T, C, H, W)
            labels = [int(s["label"]) for s in samples]
            index = loaded.label_index(class_names)
            heat = np.concatenate([video_gradcam(loaded.model, video[i:i + 1], [index[labels[i]]],
                                                 num_frames=loaded.num_frames, img_size=loaded.img_size)
                                   for i in Progress(range(len(samples)), desc=f"[{name}] GradCAM", unit="video")])
            entry["_gradcam"] = {"frames": to_display(video, loaded.mean, loaded.std), "heat": heat,
                                 "labels": labels, "ids": [s["meta"]["video_id"] for s in samples]}
        models.append(entry)
        loaded.model.to("cpu")

    # ------------------------------------------------------------------------------- figures + report
    figures: dict[str, Any] = {"accuracy": "accuracy.png"}
    plot_accuracy(models, out / "accuracy.png")
    if probe:
        figures["probe"] = "probe.png"
        plot_order_probe({m["name"]: m["probe"] for m in models}, str(out / "probe.png"))
    if all("confidence" in m for m in models):
        figures["confidence"] = "confidence.png"
        plot_confidence_gap({m["name"]: m["confidence"] for m in models}, str(out / "confidence.png"))
    figures["gradcam"] = []
    for k, vid in enumerate(gradcam_idx):
        first = models[0]["_gradcam"]
        label = first["labels"][k]
        rows = [("input", first["frames"][k], None)]
        rows += [(m["name"], m["_gradcam"]["frames"][k], m["_gradcam"]["heat"][k]) for m in models]
        png = f"gradcam_{k + 1}_{_safe(str(first['ids'][k]))}.png"
        caption = f"video {first['ids'][k]}: “{class_names_ref[label]}”"
        plot_gradcam(rows, str(out / png), title=caption)
        figures["gradcam"].append({"png": png, "caption": caption, "video_id": str(first["ids"][k])})
    for m in models:
        m.pop("_gradcam", None)

    audit = {
        "data": str(data_root), "split": split, "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {"views": views, "crops": crops, "shuffles": shuffles, "seed": seed, "groups": groups,
                     "limit": limit, "probe_split": probe_split, "probe_train_videos": probe_train_videos,
                     "probe_test_videos": probe_test_videos},
        "class_groups": class_groups, "models": models, "figures": figures,
    }
    write_json(out / "metrics.json", audit)
    report = write_report(out, audit)
    log(f"report: {report}")
    return audit


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True,
                        help="run directory, checkpoint .safetensors, export folder, or a Hugging Face video "
                             "classifier folder / Hub id (TimeSformer, VideoMAE, ViViT, V-JEPA 2, VideoPrism); "
                             "repeat for a side-by-side report")
    parser.add_argument("--names", nargs="+", default=None, help="display names, one per --model")
    parser.add_argument("--data", default=None, help="dataset directory (default: the first run's)")
    parser.add_argument("--format", default=None, help="dataset format (default: the run's, else ssv2)")
    parser.add_argument("--split", default="validation", help="split to audit")
    parser.add_argument("--probe-split", default="train", help="split the order probes are trained on")
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument("--views", type=int, default=1, help="temporal views per video")
    parser.add_argument("--crops", type=int, default=1, choices=(1, 3), help="spatial crops per view")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per batch (default 8)")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading processes (default 0)")
    parser.add_argument("--shuffles", type=int, default=3, help="shuffled copies per clip")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffles and the order probes")
    parser.add_argument("--groups", default="auto",
                        help="class groups: auto | ssv2 | ssv2-subsets | synth | none | PATH.json")
    parser.add_argument("--limit", type=int, default=0, help="audit only the first N videos (0 = all)")
    parser.add_argument("--probe-train-videos", type=int, default=512,
                        help="videos the order probes are trained on (default 512)")
    parser.add_argument("--probe-test-videos", type=int, default=256,
                        help="videos the order probes are scored on (default 256)")
    parser.add_argument("--no-probe", action="store_true", help="skip the per-block order probe")
    parser.add_argument("--gradcam-videos", type=int, default=4, help="videos shown with GradCAM (0 = none)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"),
                        help="mixed precision on CUDA (default off)")


def main(args: argparse.Namespace) -> int:
    run_audit(args.model, args.data, args.out, names=args.names, format=args.format, split=args.split,
              probe_split=args.probe_split, views=args.views, crops=args.crops, batch_size=args.batch_size,
              num_workers=args.num_workers, shuffles=args.shuffles, seed=args.seed, groups=args.groups,
              device=args.device, amp=args.amp, limit=args.limit, probe_train_videos=args.probe_train_videos,
              probe_test_videos=args.probe_test_videos, gradcam_videos=args.gradcam_videos,
              probe=not args.no_probe)
    return 0
