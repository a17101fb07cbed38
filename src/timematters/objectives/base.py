"""What an objective is.

An objective is an ``nn.Module`` that owns its heads (and any state: queues, centres, EMA teachers)
and turns one batch into named losses::

    losses, outputs = objective(model, batch)

``model`` is a backbone with the surface in ``timematters.models.base``; ``batch`` is the collated
dict from ``timematters.data`` (``video (B, T, C, H, W)``, ``label (B,)``, optional ``flow
(B, T-1, h, w)``, ``index (B,)``, ``meta``). ``losses`` maps a term name to a scalar tensor that is
already weighted by its lambda; the engine sums them and knows no method by name. ``outputs``
carries what metrics need (``logits`` for the class head, ``acc/<task>`` for pretext accuracies,
and so on); every value there is detached.

Objectives that need an extra view of the clip (shuffled, reversed, sped up) ask
``timematters.temporal`` for the index sequence; they never reorder frames by hand.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

LossDict = dict[str, torch.Tensor]
OutDict = dict[str, Any]


class Objective(nn.Module):
    """Base class: subclasses implement ``forward(model, batch) -> (losses, outputs)``."""

    #: whether the objective needs flow-direction labels in the batch
    needs_flow: bool = False
    #: whether the objective needs class labels (False for label-free pretext tasks)
    needs_labels: bool = True

    def forward(self, model: nn.Module, batch: dict) -> tuple[LossDict, OutDict]:  # pragma: no cover
        raise NotImplementedError

    def clip_grad_(self, parameters: list[torch.Tensor], max_norm: float) -> None:
        """Called by the engine when ``optim.clip_grad`` > 0, after unscaling: clip the gradients of
        ``parameters`` (every trainable tensor). Default: the global norm; an objective whose recipe clips
        otherwise (DINO / SVT: each parameter on its own) overrides this."""
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def before_optimizer_step(self, optimizer, *, epoch: int, step: int, total_steps: int) -> None:
        """Called after gradient clipping, before ``optimizer.step()`` (``step`` is 0-based): weight-decay
        schedules, freezing a layer's gradients."""

    def on_step_end(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Called after each optimiser step with the 1-based step count (EMA teachers, momentum encoders)."""
