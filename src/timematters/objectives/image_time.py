"""TIME for images (Yun et al., ICML 2022, Section 5.3): spatial order and background debiasing for ViTs.

    L = lambda_cls * L_cls + lambda_order * L_order^I + lambda_debias * L_debias^I      (Eq. 18)

- ``L_order^I`` (Eq. 16): a linear head on each final patch token predicts that patch's position, an
  N-way classification per token (N = patches per image), averaged over the N tokens.
- ``L_debias^I`` (Eq. 17): the class head's prediction on an image whose patches are randomly permuted is
  pushed to the uniform distribution: the shuffled image keeps every local texture (background
  statistics) but none of the object's layout, so a confident prediction there is a shortcut.

The paper gives lambda_order = lambda_debias = 1 (the defaults). The loss pieces are the video TIME's
(``PositionHead``, ``UniformDebiasLoss`` in ``objectives/time.py``) and the permutations come from
``timematters.temporal.random_permutation`` (never the identity); only the patch shuffle is new here.

Where the permutation is applied: to the pixels' patches, before the patch embedding. For a ViT whose patch
embedding is a non-overlapping ``patch_size`` convolution this is the same as permuting the patch
embeddings before the position embedding is added, and it is what "a sequence of randomly shuffled
patches" (Eq. 17) describes. It is not the same as permuting tokens after the position embedding: a
transformer is permutation-equivariant and the CLS token pools over all tokens, so that would give
exactly the same logits as the original image and L_debias would fight L_cls head-on. Permuting pixels also
uses only the public ``model(x)`` surface, so any backbone (timm, converted checkpoints) works unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import temporal
from ..utils import rng_for
from .base import LossDict, Objective, OutDict
from .time import PositionHead, UniformDebiasLoss


def shuffle_patches(images: torch.Tensor, order: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Rearrange the ``patch_size`` x ``patch_size`` patches of each image.

    images (B, C, H, W); order (B, N) with N = (H/p)(W/p), row-major patch indices. Output patch j of
    image b is input patch ``order[b, j]``.
    """
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"shuffle_patches: image size {H}x{W} is not a multiple of the patch size {p}")
    gh, gw = H // p, W // p
    if order.shape != (B, gh * gw):
        raise ValueError(f"shuffle_patches: order has shape {tuple(order.shape)}, expected ({B}, {gh * gw})")
    patches = images.reshape(B, C, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C, p, p)
    index = order.to(images.device).long().view(B, gh * gw, 1, 1, 1).expand_as(patches)
    patches = torch.gather(patches, 1, index)                                   # (B, N, C, p, p)
    return patches.reshape(B, gh, gw, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


class ImageTIME(Objective):
    """Classification plus the image TIME terms for a ViT-style image backbone.

    Args:
        model: the image backbone (``forward_features`` returns tokens ``(B, 1, N, D)``); the order head
            is sized from ``model.embed_dim`` and ``model.grid_size``.
        num_classes: classes of the task head (the backbone owns that head).
        label_smoothing: on the class loss; like the video TIME (reference code) it also applies to the
            order loss unless ``smooth_aux=False``.
        weights: lambdas for ``cls``, ``order``, ``debias`` (default 1 each, the paper's Table 4). A term
            with weight 0 is not computed: no order head is built, no shuffled forward pass is run.
        seed: base seed of the patch shuffles; image ``index`` at optimiser step ``step`` draws its
            permutation from ``rng_for(seed, step, index)`` (resumed and distributed runs agree).
    """

    TERMS = ("cls", "order", "debias")

    def __init__(self, model: nn.Module, *, num_classes: int, label_smoothing: float = 0.0,
                 weights: dict | None = None, smooth_aux: bool = True, seed: int = 0):
        super().__init__()
        unknown = set(weights or {}) - set(self.TERMS)
        if unknown:
            raise ValueError(f"ImageTIME: unknown loss weight(s) {sorted(unknown)}; terms are {self.TERMS}")
        self.weights = {t: float((weights or {}).get(t, 1.0)) for t in self.TERMS}
        grid = getattr(model, "grid_size", None)
        if grid is None or getattr(model, "num_frames", 1) != 1:
            raise ValueError("ImageTIME needs an image backbone (num_frames == 1, with a grid_size), "
                             f"got {type(model).__name__}")
        self.grid_size = tuple(int(g) for g in grid)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.patch_size = int(model.patch_size)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.seed = seed
        aux_smoothing = label_smoothing if smooth_aux else 0.0
        self.order_head = (PositionHead(model.embed_dim, self.num_patches, aux_smoothing)
                           if self.weights["order"] else None)
        self.debias_loss = UniformDebiasLoss()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # drives the shuffles
        self.needs_labels = self.weights["cls"] > 0

    def patch_orders(self, index: torch.Tensor) -> torch.Tensor:
        """(B, N) patch permutations, one per image, never the identity."""
        step = int(self.step)
        orders = [temporal.random_permutation(self.num_patches, rng_for(self.seed, step, int(i)))
                  for i in index.tolist()]
        return torch.as_tensor(np.stack(orders), dtype=torch.long)

    def forward(self, model: nn.Module, batch: dict) -> tuple[LossDict, OutDict]:
        images = batch["image"]
        if images.ndim == 5 and images.shape[1] == 1:          # (B, 1, C, H, W) one-frame clips
            images = images[:, 0]
        if images.ndim != 4:
            raise ValueError(f"ImageTIME: batch['image'] must be (B, C, H, W), got {tuple(images.shape)}")
        w = self.weights
        feats = model.forward_features(images)                  # tokens (B, 1, N, D)
        logits = model.forward_head(feats)                      # (B, K)
        losses: LossDict = {}
        out: OutDict = {"logits": logits.detach()}
        if w["cls"]:
            losses["cls"] = w["cls"] * F.cross_entropy(logits.float(), batch["label"],
                                                       label_smoothing=self.label_smoothing)
        if self.order_head is not None:                         # Eq. 16
            loss, acc = self.order_head.loss(feats.tokens[:, 0])  # (B, N, D) -> N-way per token
            losses["order"] = w["order"] * loss
            out["acc/order"] = acc
        if w["debias"]:                                         # Eq. 17
            order = self.patch_orders(batch["index"])           # (B, N)
            shuffled = shuffle_patches(images, order, self.patch_size)
            losses["debias"] = w["debias"] * self.debias_loss(model(shuffled))
        return losses, out

    def on_step_end(self, model: nn.Module, step: int, total_steps: int) -> None:
        self.step.fill_(step)
