"""RTT: the four clips, the two heads, the per-sample draws, and a short pretraining run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timematters import temporal
from timematters.objectives import build_objective
from timematters.objectives.rtt import RTT, TRANSFORMS, rtt_indices
from timematters.utils import rng_for

from pretext_helpers import feature_spread, moving_squares, pretrain_steps, tiny_model


@pytest.fixture(scope="module")
def video():
    return moving_squares(4, frames=32, size=32, seed=0)  # (4, 32, 3, 32, 32)


def batch_of(video, start=0):
    n = len(video)
    return {"video": video, "label": torch.full((n,), -1), "index": torch.arange(start, start + n), "meta": [{}] * n}


@pytest.mark.parametrize("k", [0, 1, 2])
def test_rtt_indices_follow_the_paper(k):
    for seed in range(10):
        idx = rtt_indices(40, 8, k, rng_for(seed), max_skip=7)
        assert idx.shape == (4, 8) and idx.min() >= 0 and idx.max() < 40
        speed, random, periodic, warp = idx
        assert (np.diff(speed) == 2 ** k).all()                                 # every 2^k-th frame
        assert sorted(random) == list(range(random.min(), random.min() + 8))  # consecutive frames...
        assert (np.diff(random) != 1).any()                                    # ...not in order
        d = np.diff(periodic)                                                  # forward, then backward
        switch = int(np.argmax(d < 0))
        assert (d[:switch] == 2 ** k).all() and (d[switch:] < 0).all() and 1 <= switch <= 5
        assert ((np.diff(warp) >= 1) & (np.diff(warp) <= 8)).all()            # skips of 0..7 frames


def test_draws_are_per_sample_and_keyed_by_step_and_index(video):
    model = tiny_model()
    obj = RTT(model, num_speeds=3)
    o1, s1 = obj.draw(batch_of(video), 32)
    o2, s2 = obj.draw({"index": torch.tensor([2, 0])}, 32)   # another batch holding samples 2 and 0
    assert torch.equal(o2[0], o1[2]) and torch.equal(o2[1], o1[0]) and s2.tolist() == [s1[2], s1[0]]
    obj.on_step_end(model, 7, 100)
    o3, _ = obj.draw(batch_of(video), 32)
    assert not torch.equal(o1, o3)
    # a resumed objective (state dict) draws the same clips
    other = RTT(tiny_model(), num_speeds=3)
    other.load_state_dict(obj.state_dict())
    assert torch.equal(other.draw(batch_of(video), 32)[0], o3)


def test_speed_per_batch_and_cap(video):
    model = tiny_model()
    obj = RTT(model, num_speeds=4, speed_per="batch")
    for step in range(5):
        obj.on_step_end(model, step, 5)
        _, speeds = obj.draw({"index": torch.arange(16)}, 64)
        assert len(set(speeds.tolist())) == 1
    # a 16-frame source allows 8-frame clips at speeds 0 and 1 only: the paper caps k per video
    per_sample = RTT(model, num_speeds=4)
    with pytest.warns(UserWarning, match="speeds 0..1"):
        _, speeds = per_sample.draw({"index": torch.arange(64)}, 16)
    assert set(speeds.tolist()) == {0, 1}


def test_losses_are_the_two_cross_entropies(video):
    model = tiny_model()
    obj = RTT(model, num_speeds=3, weights={"speed": 0.5}).eval()
    losses, out = obj(model, batch_of(video))
    orders, speeds = obj.draw(batch_of(video), 32)
    clips = temporal.apply_order(video, orders.reshape(4, -1)).reshape(16, 8, 3, 32, 32)
    with torch.no_grad():
        f = model.forward_features(clips).cls
        t_logits = obj.transform_head(f)
        s_logits = obj.speed_head(f.reshape(4, 4, -1)[:, [0, 2]].reshape(8, -1))
    tau = torch.arange(4).repeat(4)
    torch.testing.assert_close(losses["transform"], F.cross_entropy(t_logits, tau))
    torch.testing.assert_close(losses["speed"], 0.5 * F.cross_entropy(s_logits, speeds.repeat_interleave(2)))
    assert TRANSFORMS == ("speed", "random", "periodic", "warp")
    assert {"acc/transform", "acc/speed"} <= set(out) and not any(v.requires_grad for v in out.values())


def test_backward_reaches_backbone_and_heads(video):
    model = tiny_model()
    obj = build_objective("rtt", model, num_classes=0, num_speeds=3)
    assert isinstance(obj, RTT) and obj.needs_labels is False
    losses, _ = obj(model, batch_of(video))
    sum(losses.values()).backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in obj.parameters())


def test_bad_input_is_named(video):
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown loss weight"):
        RTT(model, weights={"order": 1})
    with pytest.raises(ValueError, match="speed_per"):
        RTT(model, speed_per="epoch")
    with pytest.raises(ValueError, match="data.num_frames"):
        RTT(model, clip_len=8)(model, batch_of(video[:, :6]))


@pytest.mark.slow
def test_pretraining_learns_the_pretext_task_without_collapse():
    """A few dozen steps on moving squares: the speed head (1x vs 2x, chance 50 %) learns, and the clip
    features spread out instead of collapsing. (The transformation head needs frame order, which a
    TimeSformer only starts to see once its zero-initialised time embeddings have grown: ~100+ steps.)"""
    model = tiny_model()
    obj = RTT(model, num_speeds=2)
    data = moving_squares(8, frames=32, size=32, seed=1)
    before = feature_spread(model, data[:, :8])
    history = pretrain_steps(model, obj, data, steps=80, lr=1e-3)
    assert np.mean([h["acc/speed"] for h in history[-20:]]) > 0.65
    assert np.mean([h["acc/speed"] for h in history[:10]]) < 0.65
    assert feature_spread(model, data[:, :8]) > max(0.05, before / 2)
