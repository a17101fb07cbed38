"""Checkpoints: weights as safetensors, training state beside them, a ``latest.json`` pointer.

A run directory holds::

    config.yaml                       the resolved config
    checkpoints/ckpt-000120.safetensors   model.* and objective.* tensors; metadata: the model spec
    checkpoints/ckpt-000120.train.pt      optimiser, scaler, RNG states, epoch/step counters
    checkpoints/latest.json           {"step": 120, "weights": ..., "train_state": ...}

Every file is written to a temporary name and renamed (atomic on POSIX, the folder fsynced after the
rename); ``latest.json`` is replaced last, so a run killed at any moment resumes from the last complete
checkpoint. The previous checkpoint is kept: when the newest is damaged (a truncated or missing file, an
unreadable ``latest.json``), resuming falls back to it with a warning.
"""
from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save as st_save, safe_open
from torch import nn

from ..utils import atomic_write_bytes, fsync_dir

CKPT_DIR = "checkpoints"
log = logging.getLogger("timematters.checkpoint")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, or not written by timematters."""


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
    try:
        previous = latest_checkpoint(run_dir)
    except CheckpointError:
        previous = None
    pointer = {"step": step, "weights": f"{name}.safetensors", "train_state": f"{name}.train.pt"}
    atomic_write_bytes(ckpt_dir / "latest.json", json.dumps(pointer).encode())  # fsyncs checkpoints/
    fsync_dir(run_dir)  # and the run directory that holds it
    # keep the new checkpoint and the one it replaces; anything older goes
    keep = {f"{name}.safetensors"} | ({previous[0].name} if previous else set())
    for old in ckpt_dir.glob("ckpt-*.safetensors"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
            old.with_name(old.name.replace(".safetensors", ".train.pt")).unlink(missing_ok=True)
    return ckpt_dir / f"{name}.safetensors"


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, Path] | None:
    """(weights, train_state) that ``latest.json`` names, or None when the run has no pointer."""
    ckpt_dir = Path(run_dir) / CKPT_DIR
    pointer = ckpt_dir / "latest.json"
    if not pointer.is_file():
        return None
    try:
        info = json.loads(pointer.read_text())
        return ckpt_dir / info["weights"], ckpt_dir / info["train_state"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{pointer}: unreadable ({type(e).__name__}: {e})") from None


def has_checkpoints(run_dir: str | Path) -> bool:
    ckpt_dir = Path(run_dir) / CKPT_DIR
    return (ckpt_dir / "latest.json").exists() or any(ckpt_dir.glob("ckpt-*.safetensors"))


def _step_of(path: Path) -> int:
    m = re.match(r"ckpt-(\d+)\.safetensors$", path.name)
    return int(m.group(1)) if m else -1


def _candidates(run_dir: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Checkpoints to try, newest first (the pointer's, then the others by step), and problems found so far."""
    problems, out = [], []
    try:
        found = latest_checkpoint(run_dir)
        if found is not None:
            out.append(found)
    except CheckpointError as e:
        problems.append(str(e))
    for weights in sorted((run_dir / CKPT_DIR).glob("ckpt-*.safetensors"), key=_step_of, reverse=True):
        if all(weights != w for w, _ in out):
            out.append((weights, weights.with_name(weights.name.replace(".safetensors", ".train.pt"))))
    return out, problems


def _damage(path: Path, exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) or not path.exists():
        return f"{path.name}: missing"
    return f"{path.name}: unreadable, truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0]})"


def load_latest_training_state(run_dir: str | Path, *, model: nn.Module,
                               objective: nn.Module | None) -> tuple[dict[str, Any], Path] | None:
    """Load the newest usable checkpoint of a run into ``model``/``objective``; (train state, weights file).

    A damaged checkpoint is skipped with a warning naming what was wrong; None when the run has none;
    :class:`CheckpointError` when it has checkpoints but none of them loads.
    """
    run_dir = Path(run_dir)
    candidates, problems = _candidates(run_dir)
    for p in problems:
        log.warning("%s; looking for another checkpoint", p)
    for weights, train_state in candidates:
        try:
            tensors = load_file(str(weights))  # reads every tensor: a truncated file fails here
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
            problems.append(_damage(weights, e))
            log.warning("checkpoint %s is unusable (%s); trying the previous one", weights.stem, problems[-1])
            continue
        try:
            state = torch.load(train_state, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - zip/pickle errors of a damaged file
            problems.append(_damage(train_state, e))
            log.warning("checkpoint %s is unusable (%s); trying the previous one", weights.stem, problems[-1])
            continue
        try:
            model.load_state_dict(split_state(tensors, "model"))
            if objective is not None:
                objective.load_state_dict(split_state(tensors, "objective"))
        except RuntimeError as e:
            raise CheckpointError(f"{weights}: the weights do not fit the configured model "
                                  f"({str(e).splitlines()[0]} ...)") from None
        return state, weights
    if problems:
        raise CheckpointError(f"{run_dir}: no usable checkpoint to resume from ({'; '.join(problems)}); "
                              "start a new run (another run.out) or restore the checkpoints")
    return None


def resolve_weights(path: str | Path) -> Path:
    """A run directory or a ``.safetensors`` file written by :func:`save_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no checkpoints/latest.json (not a timematters run directory?)")
        if not found[0].is_file():
            raise CheckpointError(f"{path}: latest.json names {found[0].name}, which is missing")
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    return path


def read_spec(path: str | Path) -> dict:
    weights = resolve_weights(path)
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
        raise CheckpointError(f"{weights}: not a readable safetensors checkpoint ({e})") from None
    if "spec" not in meta:
        raise CheckpointError(f"{weights}: no model spec in the safetensors metadata (not written by timematters?)")
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
    try:
        state = split_state(load_file(str(weights)), "model")
    except Exception as e:  # noqa: BLE001 - a truncated file
        raise CheckpointError(f"{weights}: unreadable, truncated or corrupt ({e})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not fit model '{spec['name']}': "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval(), spec
