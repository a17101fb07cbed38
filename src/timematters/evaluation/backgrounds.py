"""The Backgrounds Challenge protocol (Xiao et al., 2021) as the TIME paper's Table 4 reports it.

``DIR/<variant>/val/<class>/*`` for the variants ``original``, ``only_fg``, ``mixed_same``, ``mixed_rand`` and
``mixed_next`` (the layout of the public challenge and of ``timematters synth-images``). Each variant is
scored by top-1 accuracy; BG-Gap = Mixed-Same - Mixed-Rand (lower is better: how much accuracy is lost
when the background stops matching the class).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from timematters.data.dataset import LoadFailures
from timematters.data.images import build_image_dataset, collate
from timematters.utils import Progress, atomic_write_bytes, resolve_device, sized

VARIANTS = ("original", "only_fg", "mixed_same", "mixed_rand", "mixed_next")
LABELS = {"original": "Original", "only_fg": "Only-FG", "mixed_same": "Mixed-Same",
          "mixed_rand": "Mixed-Rand", "mixed_next": "Mixed-Next"}


@torch.no_grad()
def top1(model: nn.Module, loader: DataLoader, device: torch.device,
         failures: LoadFailures | None = None) -> tuple[float, int]:
    """(accuracy in [0, 1], number of images) of ``model`` on image batches; unreadable images are left out
    and counted in ``failures``."""
    model.eval()
    correct = n = 0
    failures = failures if failures is not None else LoadFailures(what="images")
    for batch in Progress(failures.track(loader), total=sized(loader), desc="backgrounds", unit="batch"):
        logits = model(batch["image"].to(device))                  # (B, K)
        correct += (logits.argmax(-1).cpu() == batch["label"]).sum().item()
        n += len(batch["label"])
    failures.finish()
    return correct / max(1, n), n


def evaluate_backgrounds(model: nn.Module, data_dir: str | Path, *, class_names: list[str], img_size: int,
                         mean: tuple[float, float, float], std: tuple[float, float, float],
                         split: str = "val", variants: tuple[str, ...] = VARIANTS,
                         batch_size: int = 128, num_workers: int = 0,
                         device: str | torch.device = "cpu") -> dict:
    """Top-1 per variant (fractions in [0, 1]), image counts, ``bg_gap`` = mixed_same - mixed_rand, and the
    unreadable images left out (``num_failed`` per variant, ``failed``: variant, path, reason).

    Labels follow ``class_names`` (the model's classes), matched to the class folders by name.
    """
    data_dir = Path(data_dir)
    device = torch.device(device)
    missing = [v for v in variants if not (data_dir / v / split).is_dir()]
    if missing:
        raise FileNotFoundError(f"{data_dir}: missing variant folder(s) "
                                f"{', '.join(f'{v}/{split}' for v in missing)} (Backgrounds Challenge layout)")
    result: dict = {"accuracy": {}, "num_images": {}, "num_failed": {}, "failed": []}
    for v in variants:
        ds, _ = build_image_dataset(data_dir / v, split, train=False, img_size=img_size, mean=mean, std=std,
                                    class_names=class_names)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
        failures = LoadFailures(what="images")
        result["accuracy"][v], result["num_images"][v] = top1(model, loader, device, failures)
        result["num_failed"][v] = len(failures.failed)
        result["failed"] += [{"variant": v, **f} for f in failures.summary()["failed"]]
    acc = result["accuracy"]
    if "mixed_same" in acc and "mixed_rand" in acc:
        result["bg_gap"] = acc["mixed_same"] - acc["mixed_rand"]
    return result


def format_table(result: dict, title: str = "") -> str:
    """Table 4's rows, in percent."""
    rows = [(LABELS[v], 100.0 * a) for v, a in result["accuracy"].items()]
    if "bg_gap" in result:
        rows.append(("BG-Gap", 100.0 * result["bg_gap"]))
    width = max(len(r[0]) for r in rows)
    lines = [title] if title else []
    lines += [f"{name:<{width}}  {value:6.2f}" for name, value in rows]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file of an image model")
    p.add_argument("--data", required=True, help="Backgrounds Challenge folder (DIR/<variant>/val/<class>/...)")
    p.add_argument("--split", default="val", help="split folder inside each variant (default val)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default 128)")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading processes (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", default="", help="JSON file (default: <run dir>/backgrounds.json)")


def main(args: argparse.Namespace) -> int:
    from timematters.engine.checkpoint import load_model, resolve_weights

    device = resolve_device(args.device)
    model, spec = load_model(args.checkpoint, device=device)
    if spec.get("num_frames", 1) != 1:
        raise ValueError(f"eval-backgrounds: {args.checkpoint} is a video model (num_frames="
                         f"{spec['num_frames']}); the Backgrounds Challenge needs an image model")
    result = evaluate_backgrounds(model, args.data, class_names=spec["class_names"], img_size=spec["img_size"],
                                  mean=tuple(spec["mean"]), std=tuple(spec["std"]), split=args.split,
                                  batch_size=args.batch_size, num_workers=args.num_workers, device=device)
    result.update(checkpoint=str(args.checkpoint), data=str(args.data), method=spec.get("method", ""))
    print(format_table(result, title=f"Backgrounds Challenge top-1 (%), {args.checkpoint}"))
    if args.out:
        out = Path(args.out)
    else:
        weights = resolve_weights(args.checkpoint)
        run_dir = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else weights.parent
        out = run_dir / "backgrounds.json"
    atomic_write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())
    print(f"wrote {out}")
    return 0
