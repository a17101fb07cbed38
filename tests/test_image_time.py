"""ImageTIME: patch shuffling, the three losses against a direct computation, switching terms off."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from timematters import create_model
from timematters.objectives import build_objective
from timematters.objectives.image_time import ImageTIME, shuffle_patches
from timematters.temporal import random_permutation
from timematters.utils import rng_for

K = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_vit(patch_size: int = 8, img_size: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    return create_model("vit_tiny_patch16", num_classes=K, num_frames=1, img_size=img_size,
                        patch_size=patch_size, depth=2, embed_dim=64, num_heads=2).eval()


def make_batch(B: int = 3, size: int = 32, seed: int = 0, scale: float = 1.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": scale * torch.randn(B, 3, size, size, generator=g),
            "label": torch.randint(0, K, (B,), generator=g),
            "index": torch.arange(10, 10 + B)}


def patch_id_images(B: int, gh: int, gw: int, p: int) -> torch.Tensor:
    """Images whose every pixel (all channels) holds its patch's row-major index."""
    ids = torch.arange(gh * gw, dtype=torch.float32).view(gh, gw)
    img = ids.repeat_interleave(p, 0).repeat_interleave(p, 1)                # (H, W)
    return img.expand(B, 3, gh * p, gw * p).clone()


def test_shuffle_patches_moves_whole_patches():
    p, gh, gw, B = 4, 3, 5, 2
    images = patch_id_images(B, gh, gw, p)
    order = torch.stack([torch.randperm(gh * gw, generator=torch.Generator().manual_seed(s)) for s in range(B)])
    out = shuffle_patches(images, order, p)
    # each output patch is constant and equals the id of the input patch order[b, j]
    patches = out.reshape(B, 3, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, -1)
    assert torch.all(patches == patches[..., :1])
    assert torch.equal(patches[..., 0].long(), order)
    # nothing lost or duplicated: the multiset of pixels is unchanged, and the inverse order restores the image
    assert torch.equal(out.flatten(1).sort(-1).values, images.flatten(1).sort(-1).values)
    assert torch.equal(shuffle_patches(out, order.argsort(-1), p), images)


def test_shuffle_patches_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        shuffle_patches(torch.zeros(1, 3, 30, 32), torch.arange(16)[None], 8)
    with pytest.raises(ValueError, match="order has shape"):
        shuffle_patches(torch.zeros(2, 3, 32, 32), torch.arange(16)[None], 8)


def test_patch_orders_are_non_identity_permutations_keyed_by_step_and_index():
    model = tiny_vit(patch_size=16)                                           # 2x2 = 4 patches: identity is likely
    obj = ImageTIME(model, num_classes=K, seed=3)
    index = torch.arange(200)
    orders = obj.patch_orders(index)
    assert orders.shape == (200, 4)
    assert torch.equal(orders.sort(-1).values, torch.arange(4).expand(200, 4))
    assert not (orders == torch.arange(4)).all(-1).any()
    assert torch.equal(orders, obj.patch_orders(index))                       # pure function of (seed, step, index)
    obj.on_step_end(model, 7, 100)
    assert not torch.equal(orders, obj.patch_orders(index))


def test_losses_match_a_direct_computation():
    model = tiny_vit()
    batch = make_batch()
    ls = 0.1
    obj = build_objective("image_time", model, num_classes=K, label_smoothing=ls,
                          weights={"order": 0.5, "debias": 2.0}, seed=1)
    assert isinstance(obj, ImageTIME)
    obj.on_step_end(model, 4, 10)
    losses, out = obj(model, batch)
    assert set(losses) == {"cls", "order", "debias"}

    x, y = batch["image"], batch["label"]
    logits = model(x)
    assert torch.allclose(out["logits"], logits, atol=1e-6)
    assert torch.allclose(losses["cls"], F.cross_entropy(logits, y, label_smoothing=ls), atol=1e-5)

    # Eq. 16: every final patch token classified into one of the N = 16 positions, label = its own position
    tokens = model.forward_features(x).tokens[:, 0]                           # (B, N, D)
    B, N, _ = tokens.shape
    assert N == 16
    pos_logits = tokens @ obj.order_head.fc.weight.T + obj.order_head.fc.bias  # (B, N, N)
    logp = pos_logits.log_softmax(-1)
    target = torch.arange(N)
    nll = -logp[:, target, target]                                            # (B, N) log p(position i | token i)
    smooth = -logp.mean(-1)                                                   # cross-entropy to uniform
    expected_order = ((1 - ls) * nll + ls * smooth).mean()
    assert torch.allclose(losses["order"], 0.5 * expected_order, atol=1e-5)

    # Eq. 17: the class head on patch-shuffled images (permutation drawn from (seed, step, index)) vs uniform
    orders = [torch.as_tensor(random_permutation(N, rng_for(1, 4, int(i)))) for i in batch["index"]]
    p = model.patch_size
    shuffled = torch.stack([
        x[b].reshape(3, 4, p, 4, p).permute(1, 3, 0, 2, 4).reshape(N, 3, p, p)[orders[b]]
        .reshape(4, 4, 3, p, p).permute(2, 0, 3, 1, 4).reshape(3, 32, 32) for b in range(B)])
    probs = model(shuffled).softmax(-1)                                       # (B, K)
    kl_uniform = (1.0 / K * (math.log(1.0 / K) - probs.log())).sum(-1).mean()  # KL(U || p), Eq. 17
    assert torch.allclose(losses["debias"], 2.0 * (kl_uniform + math.log(K)), atol=1e-5)


def test_weight_zero_skips_the_term_and_its_forward_pass():
    model = tiny_vit()
    calls = []
    model.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    batch = make_batch()

    obj = build_objective("image_time", model, num_classes=K, weights={"order": 0, "debias": 0})
    losses, out = obj(model, batch)
    assert set(losses) == {"cls"} and obj.order_head is None and "acc/order" not in out
    assert len(calls) == 1

    calls.clear()
    obj = build_objective("image_time", model, num_classes=K, weights={"order": 1, "debias": 1})
    losses, _ = obj(model, batch)
    assert set(losses) == {"cls", "order", "debias"} and len(calls) == 2

    obj = build_objective("image_time", model, num_classes=K, weights={"cls": 0})
    assert obj.needs_labels is False
    losses, _ = obj(model, {k: v for k, v in batch.items() if k != "label"})
    assert set(losses) == {"order", "debias"}


def test_debias_is_minimal_at_uniform_predictions():
    model = tiny_vit()
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    obj = ImageTIME(model, num_classes=K, weights={"cls": 0, "order": 0})
    losses, _ = obj(model, make_batch())
    assert losses["debias"].item() == pytest.approx(math.log(K), abs=1e-6)


def test_rejects_unknown_weights_and_video_models():
    with pytest.raises(ValueError, match="unknown loss weight"):
        ImageTIME(tiny_vit(), num_classes=K, weights={"flow": 1})
    video = create_model("timesformer_tiny", num_classes=K, num_frames=4, img_size=32, patch_size=8,
                         depth=1, embed_dim=64, num_heads=2)
    with pytest.raises(ValueError, match="image backbone"):
        ImageTIME(video, num_classes=K)


def test_a_short_training_loop_learns_the_patch_positions():
    """The order head reads positions off the tokens after a few steps (chance is 1/16); all terms train."""
    model = tiny_vit().train()
    obj = ImageTIME(model, num_classes=K, weights={"cls": 1.0, "order": 1.0, "debias": 0.5}, seed=0)
    opt = torch.optim.AdamW(list(model.parameters()) + list(obj.parameters()), lr=1e-2)
    history = []
    for step in range(30):
        losses, out = obj(model, make_batch(B=4, seed=step, scale=0.1))   # weak content: position rules
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        obj.on_step_end(model, step + 1, 30)
        history.append((losses["order"].item(), out["acc/order"].item()))
    assert all(p.grad is not None for p in obj.order_head.parameters())
    assert model.pos_embed.grad is not None and model.head.weight.grad is not None
    assert history[-1][0] < 0.5 * history[0][0]
    assert history[-1][1] > 8 / 16


def test_why_pixels_are_shuffled_not_tokens_after_the_position_embedding():
    """Permuting tokens after pos_embed leaves the CLS feature unchanged (nothing left to debias);
    permuting pixel patches equals permuting the patch embeddings before pos_embed."""
    model = tiny_vit()
    with torch.no_grad():                  # a trained model's position embedding matters; at init it is ~0.02
        model.pos_embed.copy_(torch.randn(model.pos_embed.shape, generator=torch.Generator().manual_seed(0)))
    x = make_batch(B=2)["image"]
    order = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(b)) for b in range(2)])

    def run(tokens):                                                          # (B, N, D) before the position embedding
        B = tokens.shape[0]
        t = torch.cat([model.cls_token.expand(B, 1, -1), tokens], 1) + model.pos_embed
        return t

    def finish(t):
        for blk in model.blocks:
            t = blk(t)
        return model.norm(t)[:, 0]                                            # the CLS feature (B, D)

    with torch.no_grad():
        emb = model.patch_embed(x[:, None])[0][:, 0]                          # (B, N, D)
        gather = order[..., None].expand_as(emb)
        after = run(emb)
        after = torch.cat([after[:, :1], torch.gather(after[:, 1:], 1, gather)], 1)
        cls = model.forward_features(x).cls
        assert torch.allclose(finish(after), cls, atol=1e-4)                  # invariant: useless for debiasing
        before = finish(run(torch.gather(emb, 1, gather)))
        shuffled = model.forward_features(shuffle_patches(x, order, model.patch_size)).cls
        assert torch.allclose(before, shuffled, atol=1e-4)
