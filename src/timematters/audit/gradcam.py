"""GradCAM for video transformers (TIME paper, Fig. 4 and Appendix B), with ``pytorch-grad-cam``.

The library handles 3-D activations ``(B, D, T, h, w)`` (weights = gradients averaged over T, h, w) and
resizes the map to the input's last three sizes. So the model is wrapped to take ``(B, C, T, H, W)``
clips, and a reshape transform turns the hooked layer's token output into that volume (see
``adapters.gradcam_target``). The result is one heat map per frame, normalised jointly over the clip
so frames can be compared.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from timematters.models.hf import gradcam_target


class ChannelsFirstVideo(nn.Module):
    """``(B, C, T, H, W)`` in, logits out: the layout pytorch-grad-cam reads sizes from."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 2, 1, 3, 4))


def video_gradcam(model: nn.Module, video: torch.Tensor, targets: Sequence[int], *, num_frames: int,
                  img_size: int) -> np.ndarray:
    """Heat maps for ``video (B, T, C, H, W)`` and target classes (model output indices): ``(B, T, H, W)`` in [0, 1]."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if video.ndim != 5:
        raise ValueError(f"GradCAM: video must be (B, T, C, H, W), got {tuple(video.shape)}")
    if len(targets) != video.shape[0]:
        raise ValueError(f"GradCAM: {len(targets)} targets for {video.shape[0]} clips")
    layer, reshape = gradcam_target(model, num_frames, img_size)
    was_training = model.training
    requires = [p.requires_grad for p in model.parameters()]
    wrapped = ChannelsFirstVideo(model)
    device = next(model.parameters()).device
    for p in model.parameters():          # a frozen model still needs gradients at the hooked layer
        p.requires_grad_(True)
    try:
        with GradCAM(model=wrapped, target_layers=[layer], reshape_transform=reshape) as cam:
            maps = cam(input_tensor=video.permute(0, 2, 1, 3, 4).to(device),
                       targets=[ClassifierOutputTarget(int(t)) for t in targets])   # (B, T, H, W)
    finally:
        model.zero_grad(set_to_none=True)
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)
    return np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0)


def to_display(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised ``(B, T, C, H, W)`` -> uint8 ``(B, T, H, W, 3)`` for plotting."""
    m = torch.as_tensor(mean, dtype=video.dtype).view(1, 1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=video.dtype).view(1, 1, -1, 1, 1)
    x = (video.cpu() * s + m).clamp(0, 1)
    return (x.permute(0, 1, 3, 4, 2).numpy() * 255).round().astype(np.uint8)


def overlay(frame: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 frame (H, W, 3) + heat map (H, W) in [0, 1] -> uint8 (H, W, 3), jet colours."""
    import matplotlib

    rgb = matplotlib.colormaps["jet"](heat)[..., :3]
    out = (1 - alpha) * frame.astype(np.float32) / 255 + alpha * rgb
    return (out.clip(0, 1) * 255).round().astype(np.uint8)


def plot_gradcam(rows: Sequence[tuple[str, np.ndarray, np.ndarray | None]], path: str, *, title: str) -> None:
    """A strip per row: ``(label, frames (T, H, W, 3) uint8, heat (T, H, W) in [0, 1] or None)``.

    A row without a heat map shows the input frames. Rows may have different T (e.g. other models).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = max(frames.shape[0] for _, frames, _ in rows)
    cell = 1.1
    fig, axes = plt.subplots(len(rows), T, figsize=(cell * T + 1.8, cell * len(rows) + 0.6), dpi=110,
                             squeeze=False)
    for r, (label, frames, heat) in enumerate(rows):
        for t in range(T):
            ax = axes[r, t]
            ax.set_xticks([])
            ax.set_yticks([])
            if t >= frames.shape[0]:
                ax.axis("off")
                continue
            img = frames[t] if heat is None else overlay(frames[t], heat[t])
            ax.imshow(img, interpolation="nearest")
            if r == 0:
                ax.set_title(f"frame {t + 1}", fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center", labelpad=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.93, 0.96))
    if any(heat is not None for _, _, heat in rows):
        cax = fig.add_axes((0.945, 0.1, 0.012, 0.72))
        bar = fig.colorbar(matplotlib.cm.ScalarMappable(cmap="jet", norm=matplotlib.colors.Normalize(0, 1)), cax=cax)
        bar.set_label("GradCAM (per clip, 0-1)", fontsize=7)
        bar.ax.tick_params(labelsize=7)
    fig.savefig(path)
    plt.close(fig)
