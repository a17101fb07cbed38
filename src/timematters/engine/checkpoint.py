"""Checkpoints: weights as safetensors, training state beside them, a ``latest.json`` pointer.

A run directory holds::

    config.yaml                       the resolved config
    checkpoints/ckpt-000120.safetensors   model.* and objective.* tensors; metadata: the model spec
    checkpoints/ckpt-000120.train.pt      optimiser, scaler, RNG states, epoch/step counters
    checkpoints/latest.json           {"step": 120, "weights": ..., "train_state": ...}

Every file is written to a temporary name and renamed (atomic on POSIX); ``latest.json`` is replaced
last, so a run killed at any moment resumes from the last complete checkpoint.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save as st_save, safe_open
from torch import nn

from ..utils import atomic_write_bytes

CKPT_DIR = "checkpoints"


def _tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    # clone(): safetensors refuses tensors that share storage (tied or viewed weights)
    return {f"{prefix}.{k}": v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(run_dir: str | Path, *, model: nn.Module, objective: nn.Module | None,
                    spec: dict, train_state: dict, step: int) -> Path:
    """Write weights + training state for optimiser step ``step`` and point ``latest.json`` at them."""
    ckpt_dir = Path(run_dir) / CKPT_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:07d}"
    tensors = _tensors("model", model)
    if objective is not None:
        tensors.update(_tensors("objective", objective))
    meta = {"spec": json.dumps(spec), "step": str(step)}
    atomic_write_bytes(ckpt_dir / f"{name}.safetensors", st_save(tensors, metadata=meta))
    buf = io.BytesIO()
    torch.save(train_state, buf)
    atomic_write_bytes(ckpt_dir / f"{name}.train.pt", buf.getvalue())
    previous = latest_checkpoint(run_dir)
    pointer = {"step": step, "weights": f"{name}.safetensors", "train_state": f"{name}.train.pt"}
    atomic_write_bytes(ckpt_dir / "latest.json", json.dumps(pointer).encode())
    # keep the new checkpoint and the one it replaces; anything older goes
    keep = {f"{name}.safetensors"} | ({previous[0].name} if previous else set())
    for old in ckpt_dir.glob("ckpt-*.safetensors"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
            old.with_name(old.name.replace(".safetensors", ".train.pt")).unlink(missing_ok=True)
    return ckpt_dir / f"{name}.safetensors"


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, Path] | None:
    """(weights, train_state) of the last complete checkpoint of a run, or None."""
    ckpt_dir = Path(run_dir) / CKPT_DIR
    pointer = ckpt_dir / "latest.json"
    if not pointer.is_file():
        return None
    info = json.loads(pointer.read_text())
    return ckpt_dir / info["weights"], ckpt_dir / info["train_state"]


def resolve_weights(path: str | Path) -> Path:
    """A run directory or a ``.safetensors`` file written by :func:`save_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no checkpoints/latest.json (not a timematters run directory?)")
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    return path


def read_spec(path: str | Path) -> dict:
    weights = resolve_weights(path)
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata() or {}
    if "spec" not in meta:
        raise ValueError(f"{weights}: no model spec in the safetensors metadata (not written by timematters?)")
    return json.loads(meta["spec"])


def split_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the backbone of a run (or checkpoint file) and load its weights. Returns (model, spec).

    ``spec`` holds ``name``, ``create_kwargs``, ``class_names``, ``num_frames``, ``img_size``, ``mean``,
    ``std``, ``data`` ({root, format}) and ``method``.
    """
    from ..models import create_model

    weights = resolve_weights(path)
    spec = read_spec(weights)
    model = create_model(spec["name"], **spec["create_kwargs"])
    state = split_state(load_file(str(weights)), "model")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not fit model '{spec['name']}': "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval(), spec


def load_training_state(weights: Path, train_state: Path, *, model: nn.Module,
                        objective: nn.Module | None) -> dict[str, Any]:
    tensors = load_file(str(weights))
    model.load_state_dict(split_state(tensors, "model"))
    if objective is not None:
        objective.load_state_dict(split_state(tensors, "objective"))
    return torch.load(train_state, map_location="cpu", weights_only=True)
