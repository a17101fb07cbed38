"""Per-block temporal-order probe: frame positions are found where a model keeps them, not where it does not."""
from __future__ import annotations

import torch
from torch import nn

import timematters
from timematters.audit.probe import block_features, fit_order_probe, order_probe, plot_order_probe
from timematters.models.base import Features


class FrameIndexModel(nn.Module):
    """Hand-built: block 1 adds a large learned-looking frame-index embedding; block 2 averages it away over time."""

    def __init__(self, dim: int = 16, frames: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Linear(3, dim)
        self.register_buffer("frame_embed", torch.randn(frames, dim, generator=g) * 5.0)

    def forward_features(self, x: torch.Tensor, return_hidden: bool = False) -> Features:
        B, T, C, H, W = x.shape
        tokens = self.proj(x.flatten(3).transpose(2, 3))                     # (B, T, N=H*W, D)
        h1 = tokens + self.frame_embed[None, :T, None]                       # keeps frame positions
        h2 = h1.mean(dim=1, keepdim=True).expand_as(h1)                      # order-free: every frame identical
        return Features(cls=h2.mean((1, 2)), tokens=h2, hidden=[h1, h2] if return_hidden else None)


def video_batches(n: int, T: int, size: int, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [{"video": torch.randn(min(batch, n - s), T, 3, size, size, generator=g)} for s in range(0, n, batch)]


def test_probe_finds_explicit_positions_and_loses_averaged_ones():
    model = FrameIndexModel()
    train, test = video_batches(24, 6, 4, 8, seed=0), video_batches(12, 6, 4, 8, seed=1)
    res = order_probe(model, train, test, device="cpu")
    assert res["blocks"] == [1, 2] and res["num_frames"] == 6
    assert res["num_train_clips"] == 24 and res["num_test_clips"] == 12
    assert res["test_acc"][0] > 99.0                        # explicit frame embedding: ~100 %
    assert res["test_acc"][1] < 2 * res["chance"]           # identical frames: chance level (1/6)


def test_probe_on_timesformer_with_time_embedding_reaches_100_at_block_1():
    torch.manual_seed(0)
    model = timematters.create_model("timesformer_tiny", num_classes=3, num_frames=4, img_size=32, depth=2,
                                     embed_dim=64, num_heads=2, patch_size=16)
    with torch.no_grad():                                   # a strong time embedding, as a trained model may learn
        model.time_embed.copy_(torch.randn_like(model.time_embed) * 3.0)
    res = order_probe(model, video_batches(16, 4, 32, 8, seed=2), video_batches(8, 4, 32, 8, seed=3), device="cpu")
    assert res["test_acc"][0] > 95.0
    assert len(res["test_acc"]) == 2


def test_block_features_respects_max_clips_and_shapes():
    model = FrameIndexModel(dim=8)
    feats = block_features(model, video_batches(20, 5, 2, 6, seed=0), device="cpu", max_clips=9)
    assert [f.shape for f in feats] == [(9, 5, 8), (9, 5, 8)]


def test_fit_order_probe_rejects_mismatched_shapes(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="equal T"):
        fit_order_probe(torch.zeros(4, 5, 3), torch.zeros(4, 6, 3))
    plot_order_probe({"a": {"blocks": [1, 2], "test_acc": [90.0, 20.0], "chance": 20.0, "num_frames": 5}},
                     str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
