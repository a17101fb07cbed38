"""AdamW with parameter groups (no decay on biases and norms, optionally embeddings) and the lr schedules."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


NO_DECAY = ("1d", "1d+embeddings")


def param_groups(modules: Iterable[tuple[str, nn.Module]], weight_decay: float,
                 no_decay: str = "1d+embeddings") -> list[dict]:
    """Split trainable parameters into decay / no-decay groups.

    ``no_decay="1d"``: no decay on 1-D parameters (biases, norm scales) only, as the official TIME optimiser.
    ``"1d+embeddings"`` (timm's rule): also none on the names a module lists in ``no_weight_decay()``
    (position/time embeddings, CLS tokens).
    """
    if no_decay not in NO_DECAY:
        raise ValueError(f"optim.no_decay: unknown rule {no_decay!r} ({' | '.join(NO_DECAY)})")
    decay, no_decay_params = [], []
    for prefix, module in modules:
        skip = set()
        if no_decay == "1d+embeddings" and hasattr(module, "no_weight_decay"):
            skip = set(module.no_weight_decay())
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim <= 1 or name in skip or any(name.startswith(s + ".") or name == s for s in skip):
                no_decay_params.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay_params, "weight_decay": 0.0}]


def build_optimizer(groups: list[dict], *, lr: float, betas=(0.9, 0.999), amsgrad: bool = False,
                    fused: bool | None = None) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), amsgrad=amsgrad)


def lr_at(step: int, *, total_steps: int, steps_per_epoch: int, base_lr: float, min_lr: float,
          schedule: str, warmup_epochs: float = 0.0, milestones=(), gamma: float = 0.1) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warmup, then cosine or step decay."""
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "cosine":
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        epoch = step / max(1, steps_per_epoch)
        return base_lr * gamma ** sum(epoch >= m for m in milestones)
    if schedule == "constant":
        return base_lr
    raise ValueError(f"optim.schedule: unknown schedule '{schedule}' (cosine | step | constant)")
