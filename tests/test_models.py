"""Every registered backbone: the common surface, shapes, gradients, checkpointing, run-time T and size,
and a few optimiser steps; plus attention-specific checks for Motionformer and X-ViT."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import timematters
from timematters.models import Features, is_image_model
from timematters.models.motionformer import TrajectoryAttention

SMALL = dict(depth=2, embed_dim=64, num_heads=2)
ALL = timematters.list_models()
# tiny/small/base differ only in default width; at test sizes one name per family covers the code
FAMILIES = ["timesformer_tiny", "motionformer_tiny", "xvit_tiny", "vit_tiny_patch16"]


def build(name: str, num_classes: int = 5, num_frames: int = 4, img_size: int = 32, **kw):
    return timematters.create_model(name, num_classes=num_classes, num_frames=num_frames, img_size=img_size,
                                    **{**SMALL, **kw})


def inputs(name: str, B: int = 2, T: int = 4, H: int = 32, W: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if is_image_model(name):
        return torch.randn(B, 3, H, W, generator=g)
    return torch.randn(B, T, 3, H, W, generator=g)


def test_registry_names():
    for family in ("timesformer", "motionformer", "xvit"):
        for size in ("tiny", "small", "base"):
            assert f"{family}_{size}" in ALL
    for size in ("tiny", "small", "base"):
        assert f"vit_{size}_patch16" in ALL
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        timematters.create_model("nope", num_classes=2, num_frames=4, img_size=32)
    with pytest.raises(TypeError, match="timesformer_tiny"):
        build("timesformer_tiny", not_an_arg=1)
    # ModelConfig writes 0 for "the registered default size"
    with torch.device("meta"):
        model = timematters.create_model("xvit_small", num_classes=2, num_frames=4, img_size=32, depth=0,
                                         embed_dim=0, num_heads=0, patch_size=0, drop_path_rate=0.1)
    assert model.embed_dim == 384 and len(model.blocks) == 12 and model.patch_size == 16


@pytest.mark.parametrize("name", ALL)
def test_default_sizes(name):
    with torch.device("meta"):   # full-size models, built without allocating or initialising weights
        model = timematters.create_model(name, num_classes=3, num_frames=8, img_size=224)
    width = {"tiny": 192, "small": 384, "base": 768}[name.split("_")[1]]
    assert model.embed_dim == width and len(model.blocks) == 12 and model.patch_size == 16
    assert model.blocks[0].attn.num_heads == width // 64
    assert model.num_frames == (1 if is_image_model(name) else 8)


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_surface(name):
    torch.manual_seed(0)
    model = build(name)
    x = inputs(name)
    f = model.forward_features(x, return_hidden=True)
    T = 1 if is_image_model(name) else 4
    assert isinstance(f, Features)
    assert f.cls.shape == (2, 64) and f.tokens.shape == (2, T, 4, 64) and f.grid == (T, 4)
    assert len(f.hidden) == 2 and all(h.shape == (2, T, 4, 64) for h in f.hidden)
    # tokens are the final-normed last hidden state (then Motionformer's official Linear + tanh pre_logits)
    post = getattr(model, "pre_logits", torch.nn.Identity())
    torch.testing.assert_close(f.tokens, post(model.norm(f.hidden[-1])))
    assert model.forward_features(x).hidden is None
    logits = model.forward_head(f)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    torch.testing.assert_close(model(x), logits)
    # the CLS of the last block does not read that block's patch outputs, so the loss also uses the tokens
    (F.cross_entropy(logits, torch.tensor([0, 3])) + f.tokens.square().mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname

    assert model.num_classes == 5 and model.embed_dim == 64 and model.patch_size == 16
    params = dict(model.named_parameters())
    assert model.no_weight_decay() and model.no_weight_decay() <= params.keys()
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, 64)


@pytest.mark.parametrize("name", FAMILIES)
def test_grad_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(1)
    model = build(name, drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2).train()
    x = inputs(name, seed=1)

    def grads():
        model.zero_grad()
        torch.manual_seed(2)   # the same dropout / drop-path draws in both runs
        f = model.forward_features(x)
        loss = model.forward_head(f).square().mean() + f.tokens.square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_a, ga = grads()
    model.set_grad_checkpointing(True)
    loss_b, gb = grads()
    torch.testing.assert_close(loss_a, loss_b)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], msg=n)


@pytest.mark.parametrize("name", FAMILIES)
def test_eval_is_deterministic_with_dropout(name):
    model = build(name, drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.3).eval()
    x = inputs(name, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("T,H,W", [(2, 48, 32), (6, 64, 64)])
def test_other_frame_counts_and_resolutions(name, T, H, W):
    model = build(name).eval()
    x = inputs(name, T=T, H=H, W=W, seed=3)
    with torch.no_grad():
        f = model.forward_features(x)
    expected_T = 1 if is_image_model(name) else T
    assert f.tokens.shape == (2, expected_T, (H // 16) * (W // 16), 64)
    assert torch.isfinite(f.cls).all() and torch.isfinite(f.tokens).all()


def test_image_model_input_forms():
    model = build("vit_tiny_patch16").eval()
    x = inputs("vit_tiny_patch16", seed=4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x[:, None]))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(2, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(2, 3, 40, 32))


@pytest.mark.parametrize("name", FAMILIES)
def test_a_few_steps_reduce_the_loss(name):
    torch.manual_seed(5)
    model = build(name, num_classes=4).train()
    x = inputs(name, B=4, seed=5)
    y = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(24):   # X-ViT's official head (LN -> Linear -> GELU -> Linear) starts slower than one Linear
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------------------------------------ Motionformer


def trajectory_reference(attn: TrajectoryAttention, cls, x, v_from_x: bool):
    """Plain transcription of the trajectory-attention equations (Patrick et al. 2021, Sec. 3), on the
    flat token sequence [CLS, frame 0 patches, frame 1 patches, ...] as the official code holds it."""
    B, T, N, D = x.shape
    H = attn.num_heads
    d, s, S = D // H, (D // H) ** -0.5, T * N
    seq = torch.cat([cls, x.reshape(B, S, D)], dim=1)
    q, k, v = (t.reshape(B, 1 + S, H, d).transpose(1, 2) for t in attn.qkv(seq).split(D, dim=-1))
    cls_out = ((q[:, :, :1] @ k.transpose(-1, -2)) * s).softmax(-1) @ v                 # (B, H, 1, d)
    qp, kp, vp = q[:, :, 1:], k[:, :, 1:].reshape(B, H, T, N, d), v[:, :, 1:].reshape(B, H, T, N, d)
    space = (torch.einsum("bhsd,bhfnd->bhsfn", qp, kp) * s).softmax(-1)                # per frame f
    traj = torch.einsum("bhsfn,bhfnd->bhsfd", space, vp)                                # (B, H, S, T, d)
    traj = traj.permute(0, 2, 3, 1, 4).reshape(B, S, T, D)
    own_frame = torch.arange(S) // N
    q2 = attn.proj_q(traj[:, torch.arange(S), own_frame])                              # (B, S, D)
    k2, v2 = attn.proj_kv(traj).split(D, dim=-1)
    vals = traj if v_from_x else v2
    a = torch.einsum("bshd,bsfhd->bshf", q2.reshape(B, S, H, d) * s, k2.reshape(B, S, T, H, d)).softmax(-1)
    out = torch.einsum("bshf,bsfhd->bshd", a, vals.reshape(B, S, T, H, d)).reshape(B, S, D)
    full = attn.proj(torch.cat([cls_out.transpose(1, 2).reshape(B, 1, D), out], dim=1))
    return full[:, :1], full[:, 1:].reshape(B, T, N, D)


@pytest.mark.parametrize("v_from_x", [False, True])
def test_trajectory_attention_matches_the_equations(v_from_x):
    torch.manual_seed(6)
    attn = TrajectoryAttention(dim=32, num_heads=4, v_from_x=v_from_x).eval()
    cls, x = torch.randn(2, 1, 32), torch.randn(2, 3, 5, 32)
    with torch.no_grad():
        got = attn(cls, x)
        ref = trajectory_reference(attn, cls, x, v_from_x)
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=1e-5)


def test_value_slip_flag_changes_the_output():
    torch.manual_seed(7)
    a = build("motionformer_tiny", v_from_x=False).eval()
    b = build("motionformer_tiny", v_from_x=True).eval()
    b.load_state_dict(a.state_dict())
    x = inputs("motionformer_tiny", seed=7)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_motionformer_tubelets():
    model = build("motionformer_tiny", tubelet_size=2, num_frames=4)
    f = model.forward_features(inputs("motionformer_tiny", T=4))
    assert f.tokens.shape == (2, 2, 4, 64) and model.temp_embed.shape == (1, 2, 64)
    with pytest.raises(ValueError, match="tubelet_size"):
        model(inputs("motionformer_tiny", T=3))


# ------------------------------------------------------------------------------------------------ X-ViT / TimeSformer


def frame_influence(name: str, T: int = 5) -> torch.Tensor:
    """Which frames' patch tokens change when only frame 0 of the input changes (one block)."""
    torch.manual_seed(8)
    model = build(name, depth=1).eval()
    with torch.no_grad():   # non-zero temporal parameters, so nothing is an identity by construction
        for n, p in model.named_parameters():
            if "temporal_fc" in n or "time_embed" in n or "temp_embed" in n:
                p.normal_(0, 0.1)
    x = inputs(name, T=T, seed=8)
    y = x.clone()
    y[:, 0] += 1.0
    with torch.no_grad():
        return (model.forward_features(x).tokens - model.forward_features(y).tokens).abs().amax(dim=(0, 2, 3))


def test_xvit_mixes_only_neighbouring_frames():
    change = frame_influence("xvit_tiny")
    assert change[0] > 1e-3 and change[1] > 1e-3           # frame 1 reads a quarter of frame 0's keys/values
    assert torch.all(change[2:] == 0)                      # one block reaches one frame further


def test_timesformer_and_motionformer_attend_over_all_frames():
    for name in ("timesformer_tiny", "motionformer_tiny"):
        change = frame_influence(name)
        assert torch.all(change > 1e-4), (name, change)


def test_xvit_shift_moves_head_groups_across_all_channels():
    """The official temporal_shift.py: over all D channels of K and V (heads concatenated), the first quarter
    comes from frame t+1, the second from t-1 (zero past the ends): whole heads move, not a slice of each."""
    from timematters.models.xvit import temporal_shift

    B, T, L, H, d = 1, 4, 3, 8, 4
    t = torch.arange(1, T + 1, dtype=torch.float32).view(1, T, 1, 1).expand(B, T, L, H * d)  # value = frame + 1
    out = temporal_shift(t).view(B, T, L, H, d)
    frame = torch.arange(T)
    nxt = torch.where(frame + 1 < T, frame + 2, 0).float()         # t+1's value, 0 past the end
    prev = torch.where(frame > 0, frame, 0).float()                # t-1's value, 0 before the start
    for h in range(H):
        expected = nxt if h < H // 4 else prev if h < H // 2 else (frame + 1).float()
        assert torch.equal(out[0, :, 0, h, :], expected[:, None].expand(T, d)), h


def test_xvit_head_is_the_official_one():
    """A learnable CLS over the per-frame CLS tokens (one transformer layer), then LN -> Linear -> GELU ->
    Dropout -> Linear."""
    model = build("xvit_tiny").eval()
    x = inputs("xvit_tiny", seed=9)
    with torch.no_grad():
        f = model.forward_features(x)
        tokens = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(2, 4, 1, 64),
                            model.patch_embed(x)[0] + model.pos_embed[:, None, 1:]], dim=2) + model.temp_embed
        for blk in model.blocks:
            tokens = blk(tokens)
        frame_cls = model.norm(tokens)[:, :, 0]                                   # (B, T, D)
        seq = torch.cat([model.temporal_cls.expand(2, 1, 64), frame_cls], dim=1)
        cls = model.consensus_norm(model.consensus(seq)[:, 0])
        logits = model.head(model.head_drop(torch.nn.functional.gelu(model.head_fc(cls))))
    torch.testing.assert_close(f.cls, cls)
    torch.testing.assert_close(model.forward_head(f), logits)
    torch.testing.assert_close(model(x), logits)
    assert model.consensus.attn.qkv.bias is None                                     # no qkv bias, as there
    assert model.temporal_cls.abs().sum() == 0                                       # zero init, as there


def test_timesformer_fused_temporal_projection_matches_two_layers():
    """The temporal branch applies proj and temporal_fc as one product; values and gradients must be
    those of the two layers applied one after the other."""
    from timematters.models.timesformer import DividedBlock

    torch.manual_seed(10)
    block = DividedBlock(dim=32, num_heads=4).train()
    h = torch.randn(2, 5, 3, 32)

    def grads(fn):
        block.zero_grad()
        out = fn(h)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}

    fused, g_fused = grads(block.temporal_branch)
    plain, g_plain = grads(lambda t: block.temporal_fc(block.temporal_attn(t)))
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    assert g_fused.keys() == g_plain.keys() and "temporal_fc.weight" in g_fused
    for n in g_fused:
        torch.testing.assert_close(g_fused[n], g_plain[n], atol=1e-4, rtol=1e-4, msg=n)


def test_drop_path_draws_once_per_sample_for_cls_and_tokens():
    from timematters.models.layers import DropPath

    dp = DropPath(0.5).train()
    torch.manual_seed(11)
    cls, tokens = dp(torch.ones(64, 1, 8), torch.ones(64, 3, 5, 8))
    kept_cls, kept_tokens = cls[:, 0, 0] > 0, tokens[:, 0, 0, 0] > 0
    assert torch.equal(kept_cls, kept_tokens) and 0 < kept_cls.sum() < 64
    assert torch.all(cls[kept_cls] == 2.0) and torch.all(tokens[kept_tokens] == 2.0)
    assert torch.all(tokens[~kept_tokens] == 0)
    dp.eval()
    x = torch.randn(4, 3)
    assert dp(x) is x
