"""A run directory holding a tiny, randomly initialised TimeSformer: what the evaluation commands load."""
from __future__ import annotations

from pathlib import Path

import torch

import timematters
from timematters.engine.checkpoint import save_checkpoint


def save_tiny_run(run: Path, class_names: list[str], data: Path, *, format: str = "ssv2", num_frames: int = 4,
                  embed_dim: int = 32, method: str = "supervised") -> torch.nn.Module:
    """Save a 2-block TimeSformer (32 px, patch 8, ``torch.manual_seed(0)``) in ``run`` with a spec naming
    ``data``; return the model."""
    kw = dict(num_classes=len(class_names), num_frames=num_frames, img_size=32, depth=2, embed_dim=embed_dim,
              num_heads=2, patch_size=8)
    torch.manual_seed(0)
    model = timematters.create_model("timesformer_tiny", **kw)
    spec = {"name": "timesformer_tiny", "create_kwargs": kw, "class_names": list(class_names),
            "num_frames": num_frames, "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
            "data": {"root": str(data), "format": format}, "method": method}
    save_checkpoint(run, model=model, objective=None, spec=spec, train_state={}, step=1)
    return model
