"""GradCAM for video transformers: token layout -> (B, D, T, h, w), per-frame maps, the strip figure."""
from __future__ import annotations

import numpy as np
import torch

import timematters
from timematters.models.hf import gradcam_target
from timematters.audit.gradcam import plot_gradcam, to_display, video_gradcam


def tiny_model():
    torch.manual_seed(0)
    return timematters.create_model("timesformer_tiny", num_classes=4, num_frames=4, img_size=32, depth=2,
                                    embed_dim=32, num_heads=2, patch_size=8)


def test_reshape_puts_frame_and_patch_tokens_in_place():
    model = tiny_model()
    layer, reshape = gradcam_target(model, 4, 32)
    assert layer is model.blocks[-1].norm1
    B, T, N, D = 2, 4, 16, 3
    t_idx = torch.arange(T).view(1, T, 1, 1).expand(B, T, N + 1, 1).float()
    n_idx = (torch.arange(N + 1) - 1).view(1, 1, N + 1, 1).expand(B, T, N + 1, 1).float()   # CLS gets -1
    tokens = torch.cat([t_idx, n_idx, torch.zeros(B, T, N + 1, 1)], dim=-1)                   # (B, T, 1+N, D)
    vol = reshape(tokens)                                                                    # (B, D, T, h, w)
    assert vol.shape == (B, D, T, 4, 4)
    assert torch.equal(vol[:, 0], torch.arange(T).float().view(1, T, 1, 1).expand(B, T, 4, 4))
    assert torch.equal(vol[:, 1], torch.arange(N).float().view(1, 1, 4, 4).expand(B, T, 4, 4))


def test_video_gradcam_gives_per_frame_maps_and_leaves_model_untouched(tmp_path):
    model = tiny_model()
    for p in model.blocks[0].parameters():
        p.requires_grad_(False)
    video = torch.randn(2, 4, 3, 32, 32)
    heat = video_gradcam(model, video, [1, 3], num_frames=4, img_size=32)
    assert heat.shape == (2, 4, 32, 32)
    assert heat.min() >= 0 and heat.max() <= 1 and heat.std() > 0.01
    assert model.training                                   # the mode it had before (GradCAM runs in eval)
    assert all(not p.requires_grad for p in model.blocks[0].parameters())
    assert all(p.grad is None for p in model.parameters())

    frames = to_display(video, (0.5,) * 3, (0.5,) * 3)
    assert frames.shape == (2, 4, 32, 32, 3) and frames.dtype == np.uint8
    plot_gradcam([("input", frames[0], None), ("model", frames[0], heat[0])], str(tmp_path / "g.png"), title="t")
    assert (tmp_path / "g.png").stat().st_size > 1000
