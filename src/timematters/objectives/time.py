"""TIME (Yun et al., ICML 2022): temporal self-supervision as a plug-in for any video backbone.

    L = lambda_cls * L_cls + lambda_order * L_order + lambda_debias * L_debias + lambda_flow * L_flow

- ``L_order`` (Eq. 5): a linear head on each frame's spatially averaged final tokens predicts the frame
  index.
- ``L_debias`` (Eq. 8): the classifier's prediction on a frame-shuffled clip is pushed to the uniform
  distribution, as cross-entropy to U = KL(U || p) + log K (what the reference code computes).
- ``L_flow`` (Eq. 11): the attention module h between consecutive frames' tokens and a 9-way classifier
  per token predict the Farneback flow direction (labels from ``timematters.flow``).

The pieces that the image variant (``objectives/image_time.py``) shares live here too:
``UniformDebiasLoss`` and ``PositionHead``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import temporal
from ..flow import IGNORE_INDEX
from ..utils import rng_for
from .base import LossDict, Objective, OutDict


class UniformDebiasLoss(nn.Module):
    """Cross-entropy between the uniform distribution and softmax(logits): -mean_b sum_c (1/K) log p_c.

    Its minimum is log K (uniform predictions); it equals KL(U || p) + log K.
    """

    def forward(self, logits: torch.Tensor) -> torch.Tensor:  # logits (B, K)
        return -F.log_softmax(logits.float(), dim=-1).mean(dim=-1).mean()


class PositionHead(nn.Module):
    """Linear classifier of a position (frame index for video, patch index for images).

    ``forward(x (..., P, D)) -> logits (..., P, P)``; ``loss(x)`` is the cross-entropy against
    the positions 0..P-1 in the order they appear.
    """

    def __init__(self, embed_dim: int, num_positions: int, label_smoothing: float = 0.0):
        super().__init__()
        self.num_positions = num_positions
        self.label_smoothing = label_smoothing
        self.fc = nn.Linear(embed_dim, num_positions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def loss(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, P, D); positions (B, P) (default arange(P)). Returns (loss, accuracy)."""
        B, P, _ = x.shape
        if P != self.num_positions:
            raise ValueError(f"PositionHead: got {P} positions, the head was built for {self.num_positions}")
        if positions is None:
            positions = torch.arange(P, device=x.device).expand(B, P)
        logits = self(x)                                                   # (B, P, P)
        loss = F.cross_entropy(logits.reshape(B * P, P).float(), positions.reshape(-1),
                               label_smoothing=self.label_smoothing)
        acc = (logits.argmax(-1) == positions).float().mean()
        return loss, acc.detach()


class FlowHead(nn.Module):
    """The attention module h of TIME followed by a 9-way classifier per token.

    As in the reference code: queries from frame t+1's tokens, keys/values from frame t's tokens,
    one head, softmax over the N tokens of frame t, then Linear -> LayerNorm(eps 1e-6) -> Linear(D, 9).
    No residual, no MLP.
    """

    def __init__(self, embed_dim: int, num_directions: int = 9):
        super().__init__()
        self.q = nn.Linear(embed_dim, embed_dim)
        self.k = nn.Linear(embed_dim, embed_dim)
        self.v = nn.Linear(embed_dim, embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.cls = nn.Linear(embed_dim, num_directions)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # tokens (B, T, N, D)
        prev, nxt = tokens[:, :-1], tokens[:, 1:]                 # (B, T-1, N, D) each
        q, k, v = self.q(nxt), self.k(prev), self.v(prev)
        out = F.scaled_dot_product_attention(q, k, v)             # (B, T-1, N, D), softmax over prev tokens
        return self.cls(self.norm(self.proj(out)))                # (B, T-1, N, 9)


class TIME(Objective):
    """Classification plus the three TIME terms, for any backbone with the ``forward_features`` surface.

    Args:
        model: the backbone (heads are sized from ``model.embed_dim`` and ``model.num_frames``).
        num_classes: classes of the task head (the backbone owns that head).
        label_smoothing: on the class loss; the reference code also applies it to the order and flow
            losses (``smooth_aux=True`` follows it).
        weights: lambdas for ``cls``, ``order``, ``debias``, ``flow`` (default 1 each, as the paper); a
            term with weight 0 is not computed and its head is not built.
        shuffle: ``"per_sample"`` (a random non-identity permutation per clip, the default) or
            ``"per_batch"`` (the official code: one permutation per step shared by the batch,
            identity not excluded).
        order_on: ``"original"`` (the paper: the order head sees the clip as it is) or ``"shuffled"``
            (the pretext variant, default of ``time_pretrain``: the head sees a frame-shuffled clip and
            predicts each shown frame's original index. On an unshuffled clip the answer is the position,
            which the time embedding alone gives away; on a shuffled one it must come from the content).
        seed: base seed of the shuffles; each clip's permutation is drawn from (seed, step, sample index)
            so resumed and distributed runs draw the same shuffles.
    """

    TERMS = ("cls", "order", "debias", "flow")

    def __init__(self, model: nn.Module, *, num_classes: int, label_smoothing: float = 0.0,
                 weights: dict | None = None, shuffle: str = "per_sample", smooth_aux: bool = True,
                 order_on: str = "original", seed: int = 0):
        super().__init__()
        unknown = set(weights or {}) - set(self.TERMS)
        if unknown:
            raise ValueError(f"TIME: unknown loss weight(s) {sorted(unknown)}; terms are {self.TERMS}")
        if shuffle not in ("per_sample", "per_batch"):
            raise ValueError(f"TIME: shuffle must be 'per_sample' or 'per_batch', got {shuffle!r}")
        if order_on not in ("original", "shuffled"):
            raise ValueError(f"TIME: order_on must be 'original' or 'shuffled', got {order_on!r}")
        self.order_on = order_on
        self.weights = {t: float((weights or {}).get(t, 1.0)) for t in self.TERMS}
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.shuffle = shuffle
        self.seed = seed
        aux_smoothing = label_smoothing if smooth_aux else 0.0
        self.aux_smoothing = aux_smoothing
        if getattr(model, "tubelet_size", 1) != 1:  # order, debias and flow labels are per frame
            raise ValueError(f"TIME needs one token time step per frame; the model has tubelet_size="
                             f"{model.tubelet_size} (the official TIME recipes use 1: model.tubelet_size=1)")
        D = model.embed_dim
        self.order_head = PositionHead(D, model.num_frames, aux_smoothing) if self.weights["order"] else None
        self.flow_head = FlowHead(D) if self.weights["flow"] else None
        self.debias_loss = UniformDebiasLoss()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # drives the shuffles
        self.needs_flow = self.weights["flow"] > 0
        self.needs_labels = self.weights["cls"] > 0

    def shuffle_orders(self, batch: dict, num_frames: int) -> torch.Tensor:
        """(B, T) frame orders for the debias clip, never the identity for ``per_sample``."""
        step = int(self.step)
        if self.shuffle == "per_batch":
            rng = rng_for(self.seed, step, 0x5EED)
            order = temporal.random_permutation(num_frames, rng, allow_identity=True)
            return torch.as_tensor(order).expand(len(batch["index"]), num_frames)
        orders = [temporal.random_permutation(num_frames, rng_for(self.seed, step, int(i)))
                  for i in batch["index"]]
        return torch.as_tensor(np.stack(orders), dtype=torch.long)

    def forward(self, model: nn.Module, batch: dict) -> tuple[LossDict, OutDict]:
        video = batch["video"]                                  # (B, T, C, H, W)
        B, T = video.shape[:2]
        w = self.weights
        # the clip as it is: for the class and flow terms, and the paper's order term
        plain = w["cls"] or self.flow_head is not None or (self.order_head is not None and self.order_on == "original")
        feats = model.forward_features(video) if plain else None
        losses: LossDict = {}
        out: OutDict = {}
        if feats is not None:
            logits = model.forward_head(feats)                  # (B, K)
            out["logits"] = logits.detach()
        if w["cls"]:
            losses["cls"] = w["cls"] * F.cross_entropy(logits.float(), batch["label"],
                                                       label_smoothing=self.label_smoothing)
        if self.order_head is not None:
            if self.order_on == "shuffled":                     # shown frame p is original frame order[p]
                order = self.shuffle_orders(batch, T).to(video.device)           # (B, T)
                shown = model.forward_features(temporal.apply_order(video, order))
                loss, acc = self.order_head.loss(shown.tokens.mean(dim=2), positions=order)
            else:
                frame_feats = feats.tokens.mean(dim=2)          # (B, T, D)
                loss, acc = self.order_head.loss(frame_feats)
            losses["order"] = w["order"] * loss
            out["acc/order"] = acc
            out["chance/order"] = torch.tensor(1.0 / T)
        if self.flow_head is not None:
            if "flow" not in batch:
                raise KeyError("TIME: the flow term needs batch['flow'] (B, T-1, h, w) from "
                               "timematters.flow.FlowLabeler as the dataset's label_fn, or weights.flow=0")
            flow_logits = self.flow_head(feats.tokens)          # (B, T-1, N, 9)
            target = batch["flow"].reshape(B, T - 1, -1)        # (B, T-1, N)
            if target.shape[-1] != flow_logits.shape[2]:
                raise ValueError(f"TIME: flow labels have {target.shape[-1]} patches per frame, "
                                 f"the tokens have {flow_logits.shape[2]}")
            # clips without labels (FlowLabeler(fraction < 1)) carry IGNORE_INDEX
            labelled = target >= 0
            if labelled.any():
                flow = F.cross_entropy(flow_logits.reshape(-1, 9).float(), target.reshape(-1).long(),
                                       ignore_index=IGNORE_INDEX, label_smoothing=self.aux_smoothing)
                out["acc/flow"] = (flow_logits.argmax(-1) == target)[labelled].float().mean().detach()
            else:
                flow = flow_logits.sum() * 0.0  # keeps the graph (DDP) with no contribution
            losses["flow"] = w["flow"] * flow
        if w["debias"]:
            order = self.shuffle_orders(batch, T).to(video.device)
            shuffled = temporal.apply_order(video, order)       # (B, T, C, H, W)
            losses["debias"] = w["debias"] * self.debias_loss(model(shuffled))
        return losses, out

    def on_step_end(self, model: nn.Module, step: int, total_steps: int) -> None:
        self.step.fill_(step)  # the optimiser step count, the same on every rank and accumulation layout
