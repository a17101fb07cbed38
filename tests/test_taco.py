"""TaCo: the transformations and their labels, InfoNCE, the MoCo queue and momentum encoder, the
InstDisc memory bank, the heads, and a short pretraining run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timematters import temporal
from timematters.objectives import build_objective
from timematters.objectives.taco import TASKS, FusionTaskHead, TaCo, info_nce
from timematters.utils import rng_for

from pretext_helpers import feature_spread, moving_squares, pretrain_steps, tiny_model

SMALL = dict(queue_size=32, proj_dim=16, hidden_dim=32, num_speeds=3, tasks=TASKS, augment=False)


@pytest.fixture(scope="module")
def video():
    return moving_squares(4, frames=32, size=32, seed=0)  # (4, 32, 3, 32, 32)


def batch_of(video, index=None):
    n = len(video)
    index = torch.arange(n) if index is None else index
    return {"video": video, "label": torch.full((n,), -1), "index": index, "meta": [{}] * n}


def test_info_nce_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    q, k = F.normalize(torch.randn(5, 8, generator=g), dim=1), F.normalize(torch.randn(5, 8, generator=g), dim=1)
    neg = F.normalize(torch.randn(7, 8, generator=g), dim=1)
    loss, acc = info_nce(q, k, neg, 0.07)
    expected = torch.stack([-torch.log(torch.exp(q[i] @ k[i] / 0.07)
                                       / (torch.exp(q[i] @ k[i] / 0.07) + torch.exp(neg @ q[i] / 0.07).sum()))
                            for i in range(5)]).mean()
    torch.testing.assert_close(loss, expected)
    # a masked negative no longer counts
    mask = torch.zeros(5, 7, dtype=torch.bool)
    mask[:, 0] = True
    loss_masked, _ = info_nce(q, k, neg, 0.07, mask)
    torch.testing.assert_close(loss_masked, info_nce(q, k, neg[1:], 0.07)[0])
    assert info_nce(k, k, -k, 0.07)[1] == 1.0


def test_fusion_head_concatenates_signed_pairwise_differences():
    head = FusionTaskHead(6, 4, 3, num_clips=3)
    x = torch.randn(2, 3, 6)
    a = head.embed(x)
    fused = torch.cat([a[:, 0] - a[:, 1], a[:, 0] - a[:, 2], a[:, 1] - a[:, 2]], dim=1)
    torch.testing.assert_close(head(x), head.fc2(F.relu(head.fc1(fused))))


def test_fusion_head_sees_every_clip():
    """O3N's summed differences cancel the middle of three clips (2 a_0 - 2 a_2); the odd-one-out task
    needs every clip, so changing any one of them must change the output."""
    torch.manual_seed(0)
    head = FusionTaskHead(6, 8, 3, num_clips=3)
    x = torch.randn(2, 3, 6)
    for k in range(3):
        y = x.clone()
        y[:, k] += 1.0
        assert not torch.allclose(head(x), head(y)), f"clip {k} does not reach the output"
    with pytest.raises(ValueError, match="built for 3 clips"):
        head(torch.randn(2, 2, 6))


def test_draws_and_labels_are_consistent():
    model = tiny_model()
    obj = TaCo(model, **SMALL)
    T = 32
    d = obj.draw({"index": torch.arange(12)}, T)
    names = obj.full_clips()
    assert names == ["key", "query", "rotation", "reverse", "speed"]
    assert d["full"].shape == (12, 5, 8) and d["sub"].shape == (12, 3, 4)
    key = d["full"][:, 0]
    assert (key.diff(dim=1) == 1).all()                                      # base speed 2^0
    assert not torch.equal(d["full"][:, 1], key)                              # V': another start
    assert torch.equal(d["full"][:, 2], key)                                  # rotation is spatial
    rev = d["full"][:, 3]
    for b in range(12):
        expect = key[b].flip(0) if d["reverse"][b] else key[b]
        assert torch.equal(rev[b], expect)
        assert (d["full"][b, 4].diff() == 2 ** d["speed"][b]).all()           # speed label = stride
        ordered = [(part.diff() == 1).all().item() for part in d["sub"][b]]
        assert ordered.count(False) == 1 and not ordered[d["shuffle"][b]]    # the odd one is shuffled
    assert set(d["rotation"].tolist()) <= {0, 1, 2, 3} and len(set(d["reverse"].tolist())) == 2
    # keyed by (step, index): the same sample draws the same clips in another batch
    d2 = obj.draw({"index": torch.tensor([5])}, T)
    assert torch.equal(d2["full"][0], d["full"][5]) and torch.equal(d2["sub"][0], d["sub"][5])


def test_rotation_clip_is_the_rotated_key(video):
    model = tiny_model()
    obj = TaCo(model, base_term=False, **{**SMALL, "tasks": ("rotation",)})
    d = obj.draw(batch_of(video), 32)
    key = temporal.apply_order(video, d["full"][:, 0])
    k = d["rotation"]
    # a 90-degree multiple plus <= 3 degrees noise: the rotated clip is closest to rot90(key, k)
    losses, _ = obj(model, batch_of(video))
    assert torch.isfinite(losses["task"])
    for b in range(4):
        rotated = temporal.rotation_jitter(key[b], int(k[b]), rng_for(obj.seed, 0, b, 1))
        errs = [(rotated - torch.rot90(key[b], r, dims=(-2, -1))).abs().mean().item() for r in range(4)]
        assert int(np.argmin(errs)) == int(k[b])


def test_moco_queue_and_momentum_encoder(video):
    model = tiny_model()
    obj = build_objective("taco", model, num_classes=0, momentum=0.9, **{**SMALL, "queue_size": 12})
    assert isinstance(obj, TaCo) and obj.needs_labels is False
    # weights changed after the objective was built (e.g. a checkpoint loaded): the key encoder follows
    with torch.no_grad():
        model.patch_embed.proj.weight.mul_(2)
    queue0 = obj.queue.clone()
    losses, out = obj(model, batch_of(video))
    assert torch.equal(obj.key_encoder.patch_embed.proj.weight, model.patch_embed.proj.weight)
    assert int(obj.queue_ptr) == 4 and not torch.equal(obj.queue[:4], queue0[:4])
    assert torch.equal(obj.queue[4:], queue0[4:])
    torch.testing.assert_close(obj.queue[:4].norm(dim=1), torch.ones(4))
    assert {"contrast", "task"} == set(losses)
    assert {"acc/rotation", "acc/reverse", "acc/shuffle", "acc/speed", "acc/contrast"} <= set(out)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in obj.key_encoder.parameters())
    assert all(p.grad is not None for p in obj.proj.parameters())
    # momentum update: k <- m k + (1 - m) q
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = obj.key_encoder.patch_embed.proj.weight.clone()
    obj.on_step_end(model, 1, 10)
    torch.testing.assert_close(obj.key_encoder.patch_embed.proj.weight,
                               0.9 * before + 0.1 * model.patch_embed.proj.weight)
    assert int(obj.step) == 1
    # the queue wraps around
    for _ in range(3):
        obj(model, batch_of(video))
    assert int(obj.queue_ptr) == (4 + 3 * 4) % 12
    # eval mode leaves the queue alone
    obj.eval()
    q = obj.queue.clone()
    obj(model, batch_of(video))
    assert torch.equal(obj.queue, q)


def test_memory_bank(video):
    model = tiny_model()
    obj = TaCo(model, memory="bank", bank_size=10, num_negatives=16, bank_momentum=0.5, **SMALL)
    assert obj.full_clips() == ["key", "rotation", "reverse", "speed"]
    index = torch.tensor([1, 3, 5, 7])
    bank0 = obj.bank.clone()
    losses, _ = obj(model, batch_of(video, index))
    assert torch.isfinite(sum(losses.values()))
    untouched = [i for i in range(10) if i not in index.tolist()]
    assert torch.equal(obj.bank[untouched], bank0[untouched])
    obj.eval()
    d = obj.draw(batch_of(video, index), 32)
    with torch.no_grad():
        z = obj.proj["original"](model.forward_features(temporal.apply_order(video, d["full"][:, 0])).cls)
    torch.testing.assert_close(obj.bank[index], F.normalize(0.5 * bank0[index] + 0.5 * z, dim=1))
    # a video is never its own negative
    _, neg, mask = obj._memory(model, batch_of(video, index), None, {})
    assert neg.shape == (10, 16)
    assert mask.sum() == 4
    with pytest.raises(ValueError, match="bank_size"):
        obj(model, batch_of(video, torch.tensor([1, 2, 3, 10])))


def test_configuration_errors_name_the_key(video):
    model = tiny_model()
    with pytest.raises(ValueError, match="tasks"):
        TaCo(model, tasks=("rotation", "jigsaw"))
    with pytest.raises(ValueError, match="memory"):
        TaCo(model, memory="queue")
    with pytest.raises(ValueError, match="bank_size"):
        TaCo(model, memory="bank")
    with pytest.raises(ValueError, match="unknown loss weight"):
        TaCo(model, weights={"lambda": 10})
    obj = TaCo(model, **{**SMALL, "num_speeds": 4})  # 8 frames at 8x need 57 source frames
    with pytest.raises(ValueError, match="data.num_frames"):
        obj(model, batch_of(video))


def test_weights_scale_the_terms(video):
    model = tiny_model()
    a = TaCo(model, **SMALL, seed=3).eval()
    b = TaCo(model, **SMALL, seed=3, weights={"contrast": 2.0, "task": 1.0}).eval()
    b.load_state_dict(a.state_dict())
    la, _ = a(model, batch_of(video))
    lb, _ = b(model, batch_of(video))
    torch.testing.assert_close(lb["contrast"], 2 * la["contrast"])
    torch.testing.assert_close(lb["task"], la["task"] / 10)


@pytest.mark.slow
@pytest.mark.parametrize("memory", ["moco", "bank"])
def test_pretraining_learns_without_collapse(memory):
    """A few dozen steps on moving squares: instance discrimination of a clip's transformed views against
    the other videos (chance 1 / (1 + negatives)) learns, and the clip features do not collapse."""
    model = tiny_model()
    extra = dict(queue_size=64) if memory == "moco" else dict(bank_size=8, num_negatives=64)
    # augment=False: the mechanics of the contrastive term, in the few steps a test allows
    obj = TaCo(model, tasks=("reverse", "speed"), memory=memory, momentum=0.9, proj_dim=16, hidden_dim=32,
               num_speeds=3, augment=False, **extra)
    data = moving_squares(8, frames=32, size=32, seed=1)
    before = feature_spread(model, data[:, :8])
    history = pretrain_steps(model, obj, data, steps=40, lr=1e-3)
    early = np.mean([h["acc/contrast"] for h in history[:5]])
    late = np.mean([h["acc/contrast"] for h in history[-10:]])
    assert late > 0.7 and late > early + 0.1
    assert all(np.isfinite(h["acc/speed"]) for h in history)
    assert feature_spread(model, data[:, :8]) > max(0.05, before / 2)
