"""The one surface every backbone offers (video and image alike).

``forward_features(x, return_hidden=False) -> Features``
    x: video ``(B, T, C, H, W)`` (image models take ``(B, C, H, W)`` or ``(B, 1, C, H, W)``).
``forward_head(features) -> logits (B, num_classes)``
``forward(x) -> logits``
``no_weight_decay() -> set[str]``, ``set_grad_checkpointing(enable=True)``, ``reset_classifier(num_classes)``

Every backbone also exposes ``embed_dim``, ``num_classes``, ``patch_size`` and ``num_frames`` (the
frame count it was built for; any T works at run time).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Features:
    cls: torch.Tensor                          # (B, D) final-normed CLS (or pooled) feature
    tokens: torch.Tensor                       # (B, T, N, D) final-normed patch tokens (T = 1 for images)
    hidden: list[torch.Tensor] | None = None   # per block, (B, T, N, D) patch tokens (no final norm);
                                               # may be non-contiguous views: use .reshape, not .view
    head_input: torch.Tensor | None = None     # (B, D') what forward_head consumes, when it is not ``cls``

    @property
    def grid(self) -> tuple[int, int]:
        """(T, N) of the token grid."""
        return self.tokens.shape[1], self.tokens.shape[2]
