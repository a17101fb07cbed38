"""Per-block temporal-order probe (TIME paper, Sec. 3.2, Eq. 6-7, Fig. 1b).

With the model frozen, the patch tokens each block outputs are averaged over space, giving one
``D``-vector per frame (``(B, T', D)``; T' = T / tubelet). A linear classifier per block learns to
predict each frame's index from that vector on the train split; its accuracy on the validation split
measures how much frame-order information the block still carries (chance = 1 / T').
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from timematters.data.dataset import LoadFailures
from timematters.utils import Progress, sized, torch_rng_for


@torch.no_grad()
def block_features(model: nn.Module, loader: Iterable[Mapping[str, Any]], *, device: str | torch.device,
                   amp_dtype: torch.dtype | None = None, max_clips: int | None = None,
                   failures: LoadFailures | None = None) -> list[torch.Tensor]:
    """Spatially averaged tokens of every block: a list (one per block) of ``(n, T', D)`` float32 CPU tensors.
    Videos that fail to load are left out and counted in ``failures``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    per_block: list[list[torch.Tensor]] | None = None
    seen = 0
    failures = failures if failures is not None else LoadFailures()
    try:
        for batch in Progress(failures.track(loader), total=sized(loader), desc="order-probe features", unit="batch"):
            video = batch["video"].to(device, non_blocking=True)
            if max_clips is not None:
                video = video[: max_clips - seen]
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                feats = model.forward_features(video, return_hidden=True)
            if not feats.hidden:
                raise ValueError(f"order probe: {type(model).__name__}.forward_features(return_hidden=True) "
                                 "returned no per-block tokens")
            if per_block is None:
                per_block = [[] for _ in feats.hidden]
            for store, tokens in zip(per_block, feats.hidden):
                if tokens.ndim != 4:
                    raise ValueError(f"order probe: hidden tokens must be (B, T, N, D), got {tuple(tokens.shape)}")
                store.append(tokens.float().mean(dim=2).cpu())             # (B, T', D)
            seen += video.shape[0]
            if max_clips is not None and seen >= max_clips:
                break
    finally:
        model.train(was_training)
    failures.finish()
    if per_block is None:
        raise ValueError("order probe: the loader yielded no batches")
    return [torch.cat(store) for store in per_block]


def fit_order_probe(train: torch.Tensor, test: torch.Tensor, *, seed: int = 0, weight_decay: float = 1e-4,
                    max_iter: int = 100) -> dict[str, float]:
    """Fit ``Linear(D, T')`` on ``train (n, T', D)`` to predict frame indices; accuracy (%) on both splits.

    Features are standardised with train statistics; the classifier is fitted full-batch with L-BFGS on
    cross-entropy plus an L2 penalty (a convex problem, so the result does not depend on a schedule).
    """
    if train.ndim != 3 or test.ndim != 3 or train.shape[1:] != test.shape[1:]:
        raise ValueError(f"order probe: features must be (n, T, D) with equal T, D; got "
                         f"{tuple(train.shape)} and {tuple(test.shape)}")
    n, T, D = train.shape
    x_train = train.reshape(n * T, D).float()
    x_test = test.reshape(-1, D).float()
    y_train = torch.arange(T).repeat(n)                                       # frame j -> label j
    y_test = torch.arange(T).repeat(test.shape[0])
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    gen = torch_rng_for(seed, 0, 0)
    weight = (torch.randn(T, D, generator=gen, dtype=torch.float32) * 0.01).requires_grad_()
    bias = torch.zeros(T, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_change=1e-7)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x_train @ weight.T + bias, y_train) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        train_acc = ((x_train @ weight.T + bias).argmax(1) == y_train).double().mean().item() * 100
        test_acc = ((x_test @ weight.T + bias).argmax(1) == y_test).double().mean().item() * 100
    return {"train_acc": train_acc, "test_acc": test_acc}


def order_probe(model: nn.Module, train_loader: Iterable, test_loader: Iterable, *, device: str | torch.device,
                amp_dtype: torch.dtype | None = None, max_train_clips: int | None = None,
                max_test_clips: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Per-block frame-order accuracy. Returns ``blocks`` (1-based), ``test_acc``, ``train_acc`` (%),
    ``chance`` (%), ``num_frames`` (T'), the clip counts and the videos left out (``num_failed``, ``failed``), ``substituted_frames``."""
    lost = {"train": LoadFailures(), "test": LoadFailures()}
    train = block_features(model, train_loader, device=device, amp_dtype=amp_dtype, max_clips=max_train_clips,
                           failures=lost["train"])
    test = block_features(model, test_loader, device=device, amp_dtype=amp_dtype, max_clips=max_test_clips,
                          failures=lost["test"])
    failed = [{"split": s, **f} for s, fl in lost.items() for f in fl.summary()["failed"]]
    results = [fit_order_probe(a, b, seed=seed) for a, b in zip(train, test)]
    T = train[0].shape[1]
    return {
        "blocks": list(range(1, len(results) + 1)),
        "test_acc": [r["test_acc"] for r in results],
        "train_acc": [r["train_acc"] for r in results],
        "chance": 100.0 / T,
        "num_frames": T,
        "num_train_clips": train[0].shape[0],
        "num_test_clips": test[0].shape[0],
        "num_failed": len(failed),
        "failed": failed,
        "substituted_frames": sum(fl.substituted_frames for fl in lost.values()),
    }


def plot_order_probe(results: Mapping[str, Mapping[str, Any]], path: str, *, title: str | None = None) -> None:
    """Test accuracy per block, one line per model, with the chance level; saves a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    max_blocks = 1
    for name, r in results.items():
        ax.plot(r["blocks"], r["test_acc"], marker="o", linewidth=2, label=f"{name} (T'={r['num_frames']})")
        max_blocks = max(max_blocks, len(r["blocks"]))
    chances = sorted({round(r["chance"], 4) for r in results.values()})
    for c in chances:
        ax.axhline(c, color="0.4", linestyle="--", linewidth=1)
        ax.annotate(f"chance {c:.1f} %", (0.995, c), xycoords=("axes fraction", "data"), ha="right",
                    va="bottom", fontsize=8, color="0.3")
    ax.set_xticks(range(1, max_blocks + 1))
    ax.set_xlim(0.7, max_blocks + 0.3)
    ax.set_ylim(0, 104)
    ax.set_xlabel("transformer block")
    ax.set_ylabel("frame-index accuracy, held-out clips (%)")
    ax.set_title(title or "Temporal-order probe: a linear classifier per block predicts each frame's index")
    ax.legend(loc="best", fontsize=9, framealpha=0.9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
