"""GradCAM for video transformers: token layout -> (B, D, T, h, w), per-frame maps, the strip figure."""
from __future__ import annotations

import json

import numpy as np
import pytest
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


BACKBONES = {  # name -> extra constructor keywords
    "timesformer_tiny": {},
    "motionformer_tiny": {},
    "motionformer_tiny/tubelet2": {"tubelet_size": 2},
    "xvit_tiny": {},
}


def _backbone(key: str, num_classes: int = 4):
    torch.manual_seed(0)
    kw = dict(num_classes=num_classes, num_frames=4, img_size=32, depth=2, embed_dim=32, num_heads=2, patch_size=8,
              **BACKBONES[key])
    return timematters.create_model(key.split("/")[0], **kw), kw


@pytest.mark.parametrize("key", list(BACKBONES))
def test_video_gradcam_on_every_backbone(key):
    """The hooked layer sees the patch tokens of every frame in one call on each backbone (Motionformer's
    norm also sees the clip's single CLS), and the map depends on where the evidence is."""
    model, _ = _backbone(key)
    model.eval()
    video = torch.randn(2, 4, 3, 32, 32)
    heat = video_gradcam(model, video, [0, 2], num_frames=4, img_size=32)
    assert heat.shape == (2, 4, 32, 32)
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1 and heat.std() > 0.01


@pytest.fixture(scope="module")
def audit_runs(tmp_path_factory):
    """A tiny synthetic benchmark and one saved run per backbone."""
    from timematters.data.synth import LABELS_FILE, generate
    from timematters.engine.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("audit_backbones")
    data = generate(root / "synth", videos=28, frames=8, size=32, seed=0, workers=1)
    names = list(json.loads((data / LABELS_FILE).read_text()))
    runs = []
    for key in BACKBONES:
        model, kw = _backbone(key, len(names))
        spec = {"name": key.split("/")[0], "create_kwargs": kw, "class_names": names, "num_frames": 4,
                "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "data": {"root": str(data), "format": "ssv2"},
                "method": "supervised"}
        run = root / key.replace("/", "_")
        save_checkpoint(run, model=model, objective=None, spec=spec, train_state={}, step=1)
        runs.append(run)
    return data, runs


def test_audit_runs_on_every_backbone(audit_runs, tmp_path):
    """`timematters audit` with one run of each backbone: eval, order probe, confidence gap and GradCAM."""
    from timematters.cli import main as cli_main

    data, runs = audit_runs
    out = tmp_path / "report"
    argv = ["audit", "--data", str(data), "--out", str(out), "--shuffles", "1", "--probe-train-videos", "8",
            "--probe-test-videos", "6", "--gradcam-videos", "2", "--batch-size", "8", "--device", "cpu"]
    for run in runs:
        argv += ["--model", str(run)]
    assert cli_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["models"]) == len(BACKBONES)
    for m in metrics["models"]:
        assert m["eval"]["num_videos"] > 0 and len(m["probe"]["test_acc"]) == 2
    assert len(metrics["figures"]["gradcam"]) == 2
    for g in metrics["figures"]["gradcam"]:
        assert (out / g["png"]).stat().st_size > 1000
