"""A trained TimeSformer run through ``export-hf`` and back: how far transformers' logits are from ours.

Exports RUN to a temporary folder, loads it with ``TimesformerForVideoClassification.from_pretrained``
(reporting missing / unexpected weights), then on the validation clips of DATA compares
1. the two models on the same clips (our evaluation pipeline's preprocessing), and
2. transformers end to end (the exported image processor on the decoded frames + the HF model) with ours
   (``predict``'s clip) on the first ``--videos`` files.

    python benchmarks/export_roundtrip.py --run runs/synth_baseline --data runs/demo/synth
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from timematters.audit.audit import build_eval_loader
from timematters.data.decode import read_frames
from timematters.evaluation.predict import load_clip
from timematters.models.export import export
from timematters.models.hf import load_any


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a TimeSformer run directory or checkpoint")
    p.add_argument("--data", default=None, help="dataset root (default: the run's)")
    p.add_argument("--split", default="validation")
    p.add_argument("--videos", type=int, default=20, help="videos for the end-to-end comparison")
    args = p.parse_args()

    import transformers

    ours = load_any(args.run)
    data = args.data or ours.data_root
    with tempfile.TemporaryDirectory() as tmp:
        folder = export(args.run, Path(tmp) / "hf")
        hf, info = transformers.TimesformerForVideoClassification.from_pretrained(str(folder),
                                                                                  output_loading_info=True)
        processor = transformers.AutoImageProcessor.from_pretrained(str(folder))
    hf.eval()
    print("transformers loading info:", {k: len(v) for k, v in info.items()})

    loader, _ = build_eval_loader(ours, data, ours.data_format, split=args.split, batch_size=16)
    diff, scale, agree, n = 0.0, 0.0, 0, 0
    for batch in loader:
        a, h = ours.model(batch["video"]), hf(pixel_values=batch["video"]).logits
        diff, scale = max(diff, (a - h).abs().max().item()), max(scale, a.abs().max().item())
        agree += int((a.argmax(1) == h.argmax(1)).sum())
        n += len(a)
    print(f"same clips ({n}): max |logit diff| {diff:.3e} (max |logit| {scale:.3f}), top-1 agrees {agree}/{n}")

    paths = [r.path for r in loader.dataset.records[: args.videos]]
    pixel, logit = 0.0, 0.0
    for path in paths:
        clip, indices, _ = load_clip(path, ours.model.pretrained_cfg)
        pv = processor(list(read_frames(path, indices)), return_tensors="pt")["pixel_values"]
        pixel = max(pixel, (pv[0] - clip).abs().max().item())
        logit = max(logit, (hf(pixel_values=pv).logits - ours.model(clip[None])).abs().max().item())
    print(f"end to end ({len(paths)} videos): max |pixel diff| processor vs ours {pixel:.3e}, "
          f"max |logit diff| {logit:.3e}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
