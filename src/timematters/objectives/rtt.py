"""RTT (Jenni, Meishvili, Favaro, ECCV 2020): learn video representations by recognising temporal
transformations.

From each source clip the objective draws four clips of ``clip_len`` frames (paper Section 3.1, the
transformation index tau is the class of the transformation head):

    tau = 0  speed:    every 2^k-th frame from a random start (the "original" at speed k)
    tau = 1  random:   ``clip_len`` consecutive frames in a random (never identity) order (k = 0)
    tau = 2  periodic: forward then backward at speed k, random switch point
    tau = 3  warp:     ordered frames with independent random skips of 0..7 frames (k = 0)

A 4-way transformation head classifies every clip; a speed head (``num_speeds``-way) classifies k on
the speed clip and, by default, on the periodic clip too (the reference notes' public-code behaviour;
the paper's Eq. 1 puts the speed loss on the speed clip only: ``speed_on_periodic=False``).
Loss = w_transform * CE(transform) + w_speed * CE(speed) (the paper: the plain sum).

Speed per sample or per batch: the paper's Fig. 2 caption draws one speed per mini-batch, while Eq. 1,
the text ("we limit the speed type range to the maximal possible speed type in those examples") and
the public code draw it per video. The default follows the latter (``speed_per="sample"``);
``speed_per="batch"`` gives the Fig. 2 variant. Either way k is capped per sample at the largest
speed whose clip fits the source (``temporal.max_speed``), as the paper does for short videos.

Data: the batch's ``video`` is a long dense source clip ``(B, T_src, C, H, W)`` (e.g. 32 frames at
stride 1: ``data.sampling=dense data.num_frames=32 data.stride=1``); the four clips are gathered from it.

Randomness: every sample's draws come from ``rng_for(seed, step, index)``, where ``step`` is the
optimiser step (a buffer set in ``on_step_end`` and saved with the objective, so a resumed run draws the
same clips) and ``index`` is ``batch["index"]`` (so the draws do not depend on batch composition or the
number of ranks). Per-batch speeds come from ``rng_for(seed, step, BATCH_STREAM)``.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import temporal
from ..utils import rng_for
from .base import LossDict, Objective, OutDict

TRANSFORMS = ("speed", "random", "periodic", "warp")  # class index = the paper's tau
BATCH_STREAM = 0x52545453  # third rng key of the per-batch speed draw (never a sample index)


def rtt_indices(video_len: int, clip_len: int, speed: int, rng: np.random.Generator,
                max_skip: int = 7) -> np.ndarray:
    """The four RTT index sequences of one video, ``(4, clip_len)`` in ``TRANSFORMS`` order."""
    return np.stack([
        temporal.speed_indices(video_len, clip_len, speed, rng),
        temporal.random_indices(video_len, clip_len, rng),
        temporal.periodic_indices(video_len, clip_len, speed, rng),
        temporal.warp_indices(video_len, clip_len, rng, max_skip=max_skip),
    ])


def _head(dim: int, num_classes: int, norm: bool) -> nn.Module:
    """Linear classifier, after a BatchNorm without affine parameters when ``norm`` (see ``head_norm``)."""
    if not norm:
        return nn.Linear(dim, num_classes)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, num_classes))


class RTT(Objective):
    """Recognising temporal transformations (speed, random, periodic, warp) and the playback speed.

    Args:
        model: the backbone; the heads read ``Features.cls`` of size ``model.embed_dim``.
        num_classes: unused (pretext task; accepted for the common objective signature).
        label_smoothing: on both cross-entropies.
        weights: lambdas for ``transform`` and ``speed`` (default 1 each).
        clip_len: frames per transformed clip (default ``model.num_frames``; the paper uses 16).
        num_speeds: speed classes k in 0..num_speeds-1 (the paper: 4, i.e. 1x, 2x, 4x, 8x).
        max_skip: warp's largest skip between neighbouring frames (the paper: 7).
        speed_per: ``"sample"`` (default) or ``"batch"``, see the module docstring.
        speed_on_periodic: also train the speed head on the periodic clip.
        head_norm: a BatchNorm (no affine parameters) before each linear head. RTT's C3D has batch
            normalisation "in all but the last layer"; for a transformer, whose CLS feature barely varies
            between clips at initialisation, it is what lets the heads learn in the first steps.
        seed: base seed of the draws.
    """

    needs_labels = False
    TERMS = ("transform", "speed")

    def __init__(self, model: nn.Module, *, num_classes: int = 0, label_smoothing: float = 0.0,
                 weights: dict | None = None, clip_len: int = 0, num_speeds: int = 4, max_skip: int = 7,
                 speed_per: str = "sample", speed_on_periodic: bool = True, head_norm: bool = True,
                 seed: int = 0):
        super().__init__()
        unknown = set(weights or {}) - set(self.TERMS)
        if unknown:
            raise ValueError(f"RTT: unknown loss weight(s) {sorted(unknown)}; terms are {self.TERMS}")
        if speed_per not in ("sample", "batch"):
            raise ValueError(f"RTT: objective.args.speed_per must be 'sample' or 'batch', got {speed_per!r}")
        if num_speeds < 1:
            raise ValueError(f"RTT: objective.args.num_speeds must be >= 1, got {num_speeds}")
        self.clip_len = int(clip_len) or int(model.num_frames)
        if self.clip_len < 4:
            raise ValueError(f"RTT: clip_len must be >= 4 (the periodic clip needs 2 frames each way), "
                             f"got {self.clip_len}")
        self.weights = {t: float((weights or {}).get(t, 1.0)) for t in self.TERMS}
        self.label_smoothing = label_smoothing
        self.num_speeds = num_speeds
        self.max_skip = max_skip
        self.speed_per = speed_per
        self.speed_on_periodic = speed_on_periodic
        self.seed = seed
        D = model.embed_dim
        self.transform_head = _head(D, len(TRANSFORMS), head_norm)
        self.speed_head = _head(D, num_speeds, head_norm)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # drives the draws
        self._warned_cap = False

    def draw(self, batch: dict, video_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Index sequences ``(B, 4, clip_len)`` into the source clip and speeds ``(B,)``."""
        step = int(self.step)
        k_max = temporal.max_speed(video_len, self.clip_len, self.num_speeds)
        if k_max + 1 < self.num_speeds and not self._warned_cap:
            self._warned_cap = True
            need = (self.clip_len - 1) * 2 ** (self.num_speeds - 1) + 1
            warnings.warn(f"RTT: source clips of {video_len} frames allow speeds 0..{k_max} only; all "
                          f"{self.num_speeds} speeds need {need} frames (data.num_frames) at stride 1",
                          stacklevel=2)
        batch_speed = None
        if self.speed_per == "batch":
            batch_speed = int(rng_for(self.seed, step, BATCH_STREAM).integers(0, self.num_speeds))
        orders, speeds = [], []
        for i in batch["index"]:
            rng = rng_for(self.seed, step, int(i))
            k = batch_speed if batch_speed is not None else int(rng.integers(0, self.num_speeds))
            k = min(k, k_max)
            orders.append(rtt_indices(video_len, self.clip_len, k, rng, self.max_skip))
            speeds.append(k)
        return (torch.as_tensor(np.stack(orders), dtype=torch.long),
                torch.as_tensor(speeds, dtype=torch.long))

    def forward(self, model: nn.Module, batch: dict) -> tuple[LossDict, OutDict]:
        video = batch["video"]                                          # (B, T_src, C, H, W)
        B, T_src = video.shape[:2]
        if T_src < self.clip_len:
            raise ValueError(f"RTT: source clips have {T_src} frames, fewer than clip_len={self.clip_len}; "
                             "use dense sampling with a longer clip (data.sampling=dense, data.num_frames)")
        orders, speeds = self.draw(batch, T_src)                        # (B, 4, t), (B,)
        orders, speeds = orders.to(video.device), speeds.to(video.device)
        t, n = self.clip_len, len(TRANSFORMS)
        clips = temporal.apply_order(video, orders.reshape(B, n * t))  # (B, 4t, C, H, W)
        clips = clips.reshape(B * n, t, *video.shape[2:])              # (4B, t, C, H, W), sample-major

        feats = model.forward_features(clips).cls                      # (4B, D)
        tau = torch.arange(n, device=video.device).repeat(B)           # (4B,)
        t_logits = self.transform_head(feats)                          # (4B, 4)
        loss_t = F.cross_entropy(t_logits.float(), tau, label_smoothing=self.label_smoothing)

        feats = feats.reshape(B, n, -1)                                # (B, 4, D)
        with_speed = [TRANSFORMS.index("speed")]
        if self.speed_on_periodic:
            with_speed.append(TRANSFORMS.index("periodic"))
        s_feats = feats[:, with_speed].reshape(B * len(with_speed), -1)  # (B*S, D)
        s_target = speeds.repeat_interleave(len(with_speed))           # (B*S,)
        s_logits = self.speed_head(s_feats)                            # (B*S, num_speeds)
        loss_s = F.cross_entropy(s_logits.float(), s_target, label_smoothing=self.label_smoothing)

        losses: LossDict = {"transform": self.weights["transform"] * loss_t,
                            "speed": self.weights["speed"] * loss_s}
        t_hit = (t_logits.argmax(-1) == tau).float().reshape(B, n)
        out: OutDict = {"acc/transform": t_hit.mean().detach(),
                        "acc/speed": (s_logits.argmax(-1) == s_target).float().mean().detach()}
        # chance (the majority class): the transformation is uniform over 4; speeds above what the source
        # allows are capped to k_max, which then holds their share
        k_max = temporal.max_speed(T_src, self.clip_len, self.num_speeds)
        out["chance/transform"] = torch.tensor(1.0 / n)
        out["chance/speed"] = torch.tensor((self.num_speeds - k_max) / self.num_speeds)
        for j, name in enumerate(TRANSFORMS):
            out[f"acc/transform_{name}"] = t_hit[:, j].mean().detach()
        return losses, out

    def on_step_end(self, model: nn.Module, step: int, total_steps: int) -> None:
        self.step.fill_(step)  # the optimiser step count: the same on every rank and accumulation layout
