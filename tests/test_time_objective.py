"""TIME's losses against direct computations on small tensors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timematters import create_model, temporal
from timematters.objectives import build_objective
from timematters.objectives.time import TIME, FlowHead, PositionHead, UniformDebiasLoss
from timematters.utils import rng_for

B, T, IMG, P, K = 3, 4, 32, 16, 5


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("timesformer_tiny", num_classes=K, num_frames=T, img_size=IMG, depth=2,
                        embed_dim=64, num_heads=2).eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return {"video": torch.randn(B, T, 3, IMG, IMG, generator=g),
            "label": torch.tensor([0, 3, 4]),
            "index": torch.tensor([7, 11, 2]),
            "flow": torch.randint(0, 9, (B, T - 1, IMG // P, IMG // P), generator=g)}


def test_uniform_debias_is_kl_plus_log_k():
    logits = torch.randn(6, 10)
    p = logits.softmax(-1)
    kl = (1 / 10 * (torch.log(torch.tensor(1 / 10)) - p.log())).sum(-1).mean()
    assert torch.allclose(UniformDebiasLoss()(logits), kl + math.log(10), atol=1e-6)
    # uniform predictions reach the minimum log K
    assert torch.allclose(UniformDebiasLoss()(torch.zeros(2, 10)), torch.tensor(math.log(10)))


def test_position_head_loss_is_cross_entropy_over_positions():
    head = PositionHead(8, 4)
    x = torch.randn(2, 4, 8)
    loss, acc = head.loss(x)
    direct = F.cross_entropy(head(x).reshape(8, 4), torch.arange(4).repeat(2))
    assert torch.allclose(loss, direct)
    with pytest.raises(ValueError, match="positions"):
        head.loss(torch.randn(2, 5, 8))


def test_flow_head_matches_single_head_attention():
    torch.manual_seed(0)
    head = FlowHead(16)
    tok = torch.randn(2, 3, 5, 16)                                   # (B, T, N, D)
    prev, nxt = tok[:, :-1], tok[:, 1:]
    q, k, v = head.q(nxt), head.k(prev), head.v(prev)
    attn = (q @ k.transpose(-1, -2) / math.sqrt(16)).softmax(-1)     # (B, T-1, N, N)
    direct = head.cls(head.norm(head.proj(attn @ v)))
    assert torch.allclose(head(tok), direct, atol=1e-5)
    assert head(tok).shape == (2, 2, 5, 9)


def test_time_losses_match_direct_computation(model, batch):
    obj = TIME(model, num_classes=K, label_smoothing=0.1, smooth_aux=False, seed=3).eval()
    losses, out = obj(model, batch)
    assert set(losses) == {"cls", "order", "debias", "flow"}

    feats = model.forward_features(batch["video"])
    logits = model.forward_head(feats)
    assert torch.allclose(losses["cls"], F.cross_entropy(logits, batch["label"], label_smoothing=0.1), atol=1e-5)

    frame = feats.tokens.mean(2)                                     # (B, T, D)
    order_logits = obj.order_head(frame)
    assert torch.allclose(losses["order"], F.cross_entropy(order_logits.reshape(-1, T), torch.arange(T).repeat(B)),
                          atol=1e-5)

    flow_logits = obj.flow_head(feats.tokens)
    assert torch.allclose(losses["flow"], F.cross_entropy(flow_logits.reshape(-1, 9), batch["flow"].reshape(-1)),
                          atol=1e-5)

    orders = [temporal.random_permutation(T, rng_for(3, 0, int(i))) for i in batch["index"]]
    shuffled = torch.stack([batch["video"][b, torch.as_tensor(o)] for b, o in enumerate(orders)])
    debias = -F.log_softmax(model(shuffled), -1).mean()
    assert torch.allclose(losses["debias"], debias, atol=1e-5)


def test_time_weights_scale_terms_and_zero_removes_head(model, batch):
    full = TIME(model, num_classes=K, seed=0).eval()
    half = TIME(model, num_classes=K, weights={"order": 0.5, "flow": 0}, seed=0).eval()
    half.order_head.load_state_dict(full.order_head.state_dict())
    lf, _ = full(model, batch)
    lh, _ = half(model, batch)
    assert half.flow_head is None and "flow" not in lh and not half.needs_flow
    assert torch.allclose(lh["order"], 0.5 * lf["order"])
    with pytest.raises(ValueError, match="unknown loss weight"):
        TIME(model, num_classes=K, weights={"oder": 1})


def test_shuffles_are_per_sample_non_identity_and_keyed_by_index(model, batch):
    obj = TIME(model, num_classes=K, seed=5)
    orders = obj.shuffle_orders(batch, T)
    assert orders.shape == (B, T)
    for o in orders:
        assert sorted(o.tolist()) == list(range(T)) and o.tolist() != list(range(T))
    # the same sample index draws the same permutation whatever else is in the batch
    sub = {"index": batch["index"][1:]}
    assert torch.equal(obj.shuffle_orders(sub, T), orders[1:])
    # the optimiser step changes the draw
    obj.on_step_end(model, 1, 10)
    assert not torch.equal(obj.shuffle_orders(batch, T), orders)
    per_batch = TIME(model, num_classes=K, shuffle="per_batch").shuffle_orders(batch, T)
    assert (per_batch == per_batch[0]).all()


def test_build_objective_variants(model, batch):
    sup = build_objective("supervised", model, num_classes=K)
    losses, _ = sup(model, batch)
    assert set(losses) == {"cls"}
    pre = build_objective("time_pretrain", model, num_classes=K)
    losses, _ = pre(model, {k: v for k, v in batch.items() if k != "label"})
    assert set(losses) == {"order", "flow"} and not pre.needs_labels
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective("nope", model, num_classes=K)


def test_time_backward_reaches_backbone_and_heads(model, batch):
    model.train()
    obj = TIME(model, num_classes=K)
    losses, _ = obj(model, batch)
    sum(losses.values()).backward()
    for name, module in [("order", obj.order_head), ("flow", obj.flow_head), ("patch", model)]:
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    assert np.isfinite(float(sum(losses.values()).detach()))


VIDEO_BACKBONES = ["timesformer_tiny", "motionformer_tiny", "xvit_tiny"]


@pytest.mark.parametrize("name", VIDEO_BACKBONES)
def test_time_trains_a_few_steps_on_every_backbone(name, batch):
    torch.manual_seed(0)
    m = create_model(name, num_classes=K, num_frames=T, img_size=IMG, depth=2, embed_dim=64, num_heads=2)
    obj = TIME(m, num_classes=K, seed=0)
    params = [p for p in list(m.parameters()) + list(obj.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    totals = []
    for step in range(6):
        losses, _ = obj(m, batch)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.on_step_end(m, step + 1, 6)
        totals.append(float(loss.detach()))
    assert all(np.isfinite(totals))
    # cls, order and flow are fit on a fixed batch; debias changes shuffles each step but is bounded below
    assert totals[-1] < totals[0]


def test_time_refuses_tubelets_with_a_readable_error():
    """Order, debias and flow are per frame: a Motionformer with 2-frame tubelets has T/2 token time steps."""
    m = create_model("motionformer_tiny", num_classes=K, num_frames=T, img_size=IMG, depth=1, embed_dim=64,
                     num_heads=2, tubelet_size=2)
    with pytest.raises(ValueError, match="tubelet_size=2"):
        TIME(m, num_classes=K)


def test_flow_loss_ignores_unlabelled_clips(model, batch):
    obj = TIME(model, num_classes=K, weights={"cls": 0, "order": 0, "debias": 0}, smooth_aux=False).eval()
    partial = dict(batch, flow=batch["flow"].clone())
    partial["flow"][1:] = -100                                   # only clip 0 has labels
    losses, out = obj(model, partial)
    feats = model.forward_features(batch["video"])
    direct = F.cross_entropy(obj.flow_head(feats.tokens)[:1].reshape(-1, 9), batch["flow"][:1].reshape(-1))
    assert torch.allclose(losses["flow"], direct, atol=1e-5)
    none = dict(batch, flow=torch.full_like(batch["flow"], -100))
    losses, _ = obj(model, none)
    assert float(losses["flow"].detach()) == 0.0
