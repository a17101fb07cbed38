"""Shared pieces of the pretext-method tests (RTT, TaCo): tiny data, a tiny backbone, a plain training loop.

The data are moving squares: each video is one square bouncing around a plain background at 1-2 px per
frame, so every temporal transformation changes what a clip shows (the built-in benchmark spreads its
motion over the whole video, too little per frame for a backbone to learn in the few steps a test allows).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import timematters


def moving_squares(num_videos: int, *, frames: int, size: int = 32, half: int = 4, seed: int = 0) -> torch.Tensor:
    """(num_videos, frames, 3, size, size) in [-1, 1]: a coloured square bouncing off the borders."""
    rng = np.random.default_rng(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = torch.empty(num_videos, frames, 3, size, size)
    for v in range(num_videos):
        x, y = rng.uniform(half, size - half, 2)
        angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 2.0)
        dx, dy = speed * np.cos(angle), speed * np.sin(angle)
        background = torch.tensor(rng.uniform(-1, 0, 3), dtype=torch.float32)
        colour = torch.tensor(rng.uniform(0, 1, 3), dtype=torch.float32)
        for t in range(frames):
            inside = ((xx - x).abs() < half) & ((yy - y).abs() < half)  # (S, S)
            out[v, t] = torch.where(inside, colour[:, None, None], background[:, None, None])
            x, y = x + dx, y + dy
            if not half <= x <= size - half:
                dx, x = -dx, x - 2 * dx
            if not half <= y <= size - half:
                dy, y = -dy, y - 2 * dy
    return out


def tiny_model(num_frames: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    return timematters.create_model("timesformer_tiny", num_classes=0, num_frames=num_frames, img_size=32,
                                    depth=2, embed_dim=64, num_heads=2, patch_size=8)


@torch.no_grad()
def feature_spread(model, clips: torch.Tensor) -> float:
    """How much the l2-normalised CLS features of ``clips`` differ: sqrt(D) x mean per-dimension std
    (0 when every clip maps to one vector, about 1 for isotropic random features)."""
    was = model.training
    model.eval()
    f = F.normalize(model.forward_features(clips).cls, dim=1)
    model.train(was)
    return float(f.std(dim=0).mean() * f.shape[1] ** 0.5)


def pretrain_steps(model, objective, videos: torch.Tensor, *, steps: int, lr: float, batch_size: int = 0) -> list[dict]:
    """A plain AdamW loop over ``videos`` (each step new draws: the step counter advances); returns the
    pretext accuracies of every step."""
    params = [p for p in list(model.parameters()) + list(objective.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    n = len(videos)
    bs = batch_size or n
    g = torch.Generator().manual_seed(0)
    history = []
    model.train()
    objective.train()
    for step in range(steps):
        idx = torch.randperm(n, generator=g)[:bs]
        batch = {"video": videos[idx], "label": torch.full((bs,), -1), "index": idx, "meta": [{}] * bs}
        losses, out = objective(model, batch)
        loss = sum(losses.values())
        assert torch.isfinite(loss), {k: float(v) for k, v in losses.items()}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        objective.on_step_end(model, step + 1, steps)
        history.append({k: float(v) for k, v in out.items()})
    return history
