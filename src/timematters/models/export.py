"""``timematters export-hf RUN OUT``: a trained model in a folder other tools load.

- TimeSformer -> a ``TimesformerForVideoClassification`` ``save_pretrained`` folder (``config.json`` with
  ``id2label`` from the run's class names, ``model.safetensors``, and an image-processor config with the
  run's crop size, mean and std), loaded by ``transformers`` with no missing or unexpected weights.
- Motionformer, X-ViT (transformers has no class for them) -> ``config.json`` (``"model_type":
  "timematters"`` + the run's model spec) and ``model.safetensors`` in our names, which
  ``timematters.from_pretrained(OUT)`` reads.

Both get a model card (``README.md``) with the run's config, data and last validation metrics. The folder is
written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from torch import nn

from timematters.models.convert import ours_to_hf_timesformer, timesformer_to_hf_config
from timematters.models.hf import EXPORT_TYPE, import_transformers


def run_dir_of(run: Path) -> Path:
    """The run directory of a run directory or of one of its checkpoint files."""
    return run if run.is_dir() else run.resolve().parent.parent


def save_hf_timesformer(model: nn.Module, spec: dict, out: Path) -> None:
    transformers = import_transformers()

    config = transformers.TimesformerConfig(**timesformer_to_hf_config(model, spec["class_names"]))
    hf = transformers.TimesformerForVideoClassification(config)
    hf.load_state_dict(ours_to_hf_timesformer(model.state_dict()), strict=True)
    hf.save_pretrained(str(out))
    size = int(config.image_size)
    # the evaluation pipeline's preprocessing: short side -> crop size, centre crop, (x/255 - mean) / std
    processor = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                     image_mean=list(spec["mean"]), image_std=list(spec["std"]))
    transformers.VideoMAEImageProcessor(**processor).save_pretrained(str(out))


def save_timematters(model: nn.Module, spec: dict, out: Path) -> None:
    from safetensors.torch import save_file

    import timematters

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {"model_type": EXPORT_TYPE, "timematters_version": timematters.__version__, **spec}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def model_card(run: Path, spec: dict, arch: str, num_params: int, hf: bool) -> str:
    """README.md: what the model is, the data it saw, its last validation metrics, its config, how to load it."""
    run_dir = run_dir_of(run)
    names = spec["class_names"]
    data = spec.get("data") or {}
    lines = ["---", f"library_name: {'transformers' if hf else 'timematters'}",
             "pipeline_tag: video-classification", "tags:", "- video-classification", "- timematters",
             f"- {arch}", "---", "", f"# {spec['name']} ({spec.get('method', 'supervised')})", "",
             f"Trained with timematters: `{spec['name']}`, "
             f"{num_params / 1e6:.2f} M parameters, {spec['num_frames']} frames at {spec['img_size']} px, "
             f"objective `{spec.get('method', 'supervised')}`.", "",
             "## Data", "", f"- dataset: `{data.get('root', '?')}` (format `{data.get('format', '?')}`)",
             f"- {len(names)} classes: " + ", ".join(f"`{n}`" for n in names[:20]) +
             (f", ... ({len(names) - 20} more)" if len(names) > 20 else ""),
             f"- preprocessing: short side -> {spec['img_size']} px, centre crop, "
             f"mean {list(spec['mean'])}, std {list(spec['std'])}", ""]
    metrics_file = run_dir / "val_metrics.json"
    lines += ["## Validation metrics (last epoch)", ""]
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in scalars.items()]
        lines += ["", "`shuffled_*` / `reversed_*`: the same clips with frames shuffled / reversed; "
                  "`gap_top1` = top1 - shuffled_top1 (how much the model uses frame order).", ""]
    else:
        lines += [f"No validation metrics in `{run_dir}` (the run had no labelled validation split).", ""]
    lines += ["## Use", "", "```python"]
    if hf:
        lines += ["from transformers import TimesformerForVideoClassification",
                  "model = TimesformerForVideoClassification.from_pretrained(PATH)  # (B, T, C, H, W) pixel_values"]
    else:
        lines += ["import timematters", "model = timematters.from_pretrained(PATH)  # model.pretrained_cfg: frames, size, mean, std"]
    lines += ["```", "", "or `timematters predict VIDEO --model PATH` / `timematters audit --model PATH --data DIR`.", ""]
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        lines += ["## Training config", "", "```yaml", config_file.read_text().rstrip(), "```", ""]
    return "\n".join(lines)


def export(run: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Export the run (or checkpoint) ``run`` to the folder ``out``; returns ``out``."""
    from timematters.engine.checkpoint import load_model

    run, out = Path(run), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    model, spec = load_model(run)
    arch = getattr(model, "arch", "")
    if arch not in ("timesformer", "motionformer", "xvit"):
        raise ValueError(f"{run}: export-hf takes video models (timesformer, motionformer, xvit), not {arch!r}")
    if not spec.get("class_names") or int(model.num_classes) != len(spec["class_names"]):
        raise ValueError(f"{run}: the model has no classifier for its {len(spec.get('class_names') or [])} "
                         "classes (a pretraining run?); fine-tune it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if arch == "timesformer":
            save_hf_timesformer(model, spec, tmp)
        else:
            save_timematters(model, spec, tmp)
        num_params = sum(p.numel() for p in model.parameters())
        (tmp / "README.md").write_text(model_card(run, spec, arch, num_params, hf=arch == "timesformer"))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory or checkpoint .safetensors of a trained video classifier")
    p.add_argument("out", help="output folder (TimeSformer: a transformers TimesformerForVideoClassification "
                               "folder; Motionformer / X-ViT: a folder timematters.from_pretrained reads)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")


def main(args: argparse.Namespace) -> int:
    out = export(args.run, args.out, overwrite=args.overwrite)  # a user error becomes one line in cli.main
    print(f"exported {args.run} -> {out}")
    return 0

