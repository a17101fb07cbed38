"""Official TIME-trained checkpoints (github.com/alinlab/temporal-selfsupervision): the backbone loads strictly
into ours, and TIME's heads map onto ``objectives.time.TIME`` and compute what the official forward computes.

The official state dicts are written out here from the official module trees (names and shapes), at tiny size.
One liberty: the official X-ViT and Motionformer build their position embedding for 224 px whatever the crop;
here it has the model's 32 px grid (resampling is tested in test_convert.py).
"""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import timematters
from timematters.models.convert import (OFFICIAL_TIME_HEADS, load_pretrained, official_time_to_ours,
                                        official_xvit_to_ours)
from timematters.objectives.time import TIME

D, T, K = 64, 4, 5
SMALL = dict(depth=2, embed_dim=D, num_heads=2)
ARCHS = ("timesformer", "motionformer", "xvit")


def ours(arch: str, seed: int | None = None) -> nn.Module:
    model = timematters.create_model(f"{arch}_tiny", num_classes=K, num_frames=T, img_size=32, **SMALL)
    if seed is not None:   # every tensor random (zero-initialised ones too), so nothing matches by accident
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def official_backbone(arch: str, src: nn.Module) -> dict[str, torch.Tensor]:
    """``src``'s weights under the names the official TIME models give them.

    TimeSformer (``TimeSformer``) and Motionformer (``MotionFormer``, ``PATCH_SIZE_TEMP: 1``, so no
    ``patch_embed_3d``) use our names. X-ViT (``XVIT``) holds a timm ViT as ``base_model`` and the
    ``VitHead`` as ``consensus``: ``cls_token``, ``temporal_encoder`` (one Block), ``mlp_head`` =
    Sequential(LayerNorm, Linear, GELU, Dropout), ``head``.
    """
    sd = src.state_dict()
    if arch != "xvit":
        return dict(sd)
    out = {f"base_model.{k}": v for k, v in sd.items()
           if k.split(".")[0] in ("patch_embed", "cls_token", "pos_embed", "temp_embed", "blocks", "norm")}
    out["consensus.cls_token"] = sd["temporal_cls"]
    for name in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias",
                 "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
        out[f"consensus.temporal_encoder.0.{name}"] = sd[f"consensus.{name}"]   # qkv has no bias there
    for leaf in ("weight", "bias"):
        out[f"consensus.mlp_head.0.{leaf}"] = sd[f"consensus_norm.{leaf}"]
        out[f"consensus.mlp_head.1.{leaf}"] = sd[f"head_fc.{leaf}"]
        out[f"consensus.head.{leaf}"] = sd[f"head.{leaf}"]
    assert len(out) == len(sd)
    return out


def official_time_heads(seed: int) -> dict[str, torch.Tensor]:
    """TIME's heads as all three official models hold them: ``temp_head`` = Linear(D, T); ``mlp_q``, ``mlp_k``,
    ``mlp_v``, ``mlp_proj`` = Linear(D, D); ``mlp_norm`` = LayerNorm(D, eps=1e-6); ``flow_head`` = Linear(D, 8+1)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"temp_head": (T, D), "mlp_q": (D, D), "mlp_k": (D, D), "mlp_v": (D, D), "mlp_proj": (D, D),
              "mlp_norm": (D,), "flow_head": (9, D)}
    sd = {}
    for name, shape in shapes.items():
        sd[f"{name}.weight"] = torch.randn(shape, generator=g) * 0.2 + (1.0 if name == "mlp_norm" else 0.0)
        sd[f"{name}.bias"] = torch.randn(shape[0], generator=g) * 0.2
    return sd


def official_time_outputs(h: dict[str, torch.Tensor], x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The order and flow logits of the official training forward, from the final tokens ``x_t`` (B, T, N, C),
    computed directly from the official layer definitions."""
    lin = lambda name, x: F.linear(x, h[f"{name}.weight"], h[f"{name}.bias"])   # noqa: E731
    C = x_t.shape[-1]
    x_predict, x_target = x_t[:, :-1], x_t[:, 1:]
    q, k, v = lin("mlp_q", x_target), lin("mlp_k", x_predict), lin("mlp_v", x_predict)
    attn = ((q @ k.transpose(-2, -1)) * C ** -0.5).softmax(dim=-1)                   # (B, T-1, N, N)
    x = F.layer_norm(lin("mlp_proj", attn @ v), (C,), h["mlp_norm.weight"], h["mlp_norm.bias"], eps=1e-6)
    return lin("temp_head", x_t.mean(2)), lin("flow_head", x)                        # (B, T, T), (B, T-1, N, 9)


def save_official(path, state: dict[str, torch.Tensor]):
    """As the official ``save_checkpoint`` writes it (DDP unwrapped; ``cfg`` is the dumped YAML)."""
    torch.save({"epoch": 35, "iter": 0, "model_state": state, "optimizer_state": {}, "cfg": "MODEL: ..."}, path)
    return path


def video(seed: int) -> torch.Tensor:
    return torch.randn(2, T, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_official_time_checkpoint_loads_and_its_heads_compute_the_official_outputs(tmp_path, caplog, arch):
    src = ours(arch, seed=1)
    heads = official_time_heads(seed=2)
    path = save_official(tmp_path / f"{arch}_time.pyth", {**official_backbone(arch, src), **heads})

    # the user's path: create_model(pretrained=...) loads the backbone strictly and names what it left out
    with caplog.at_level(logging.WARNING, logger="timematters.models.convert"):
        dst = timematters.create_model(f"{arch}_tiny", num_classes=K, num_frames=T, img_size=32, pretrained=path,
                                       **SMALL).eval()
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and all(m in warning[0] for m in OFFICIAL_TIME_HEADS), warning
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v, rtol=0, atol=0, msg=k)
    x = video(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))

    # the heads, in TIME's names, load into the objective and give the official order and flow logits
    report = load_pretrained(ours(arch), path)
    assert not report.missing and not report.unexpected and not report.time_unmatched
    objective = TIME(dst, num_classes=K)
    result = objective.load_state_dict(report.time_heads, strict=False)
    assert result.missing_keys == ["step"] and not result.unexpected_keys    # step: the shuffle counter
    with torch.no_grad():
        tokens = dst.forward_features(x).tokens                               # (B, T, N, D)
        order, flow = objective.order_head(tokens.mean(dim=2)), objective.flow_head(tokens)
        ref_order, ref_flow = official_time_outputs(heads, tokens)
    assert flow.shape == (2, T - 1, 4, 9)
    torch.testing.assert_close(order, ref_order)
    torch.testing.assert_close(flow, ref_flow)


@pytest.mark.parametrize("prefix", ["module.", "model."])
def test_pure_converter_strips_prefixes_and_returns_unmatched_head_tensors(prefix):
    src = ours("xvit", seed=4)
    heads = official_time_heads(seed=5)
    extra = {"flow_head.scale": torch.ones(9)}       # a variant's tensor TIME's heads have no place for
    official = {prefix + k: v for k, v in {**official_backbone("xvit", src), **heads, **extra}.items()}
    backbone, mapped, unmatched = official_time_to_ours(official)
    assert backbone.keys() == src.state_dict().keys()
    assert mapped.keys() == {f"{ours_}.{leaf}" for ours_ in OFFICIAL_TIME_HEADS.values() for leaf in ("weight", "bias")}
    torch.testing.assert_close(mapped["order_head.fc.weight"], heads["temp_head.weight"], rtol=0, atol=0)
    torch.testing.assert_close(mapped["flow_head.cls.bias"], heads["flow_head.bias"], rtol=0, atol=0)
    assert list(unmatched) == ["flow_head.scale"]


def test_unmatched_head_tensors_are_reported_not_dropped(tmp_path, caplog):
    src = ours("timesformer", seed=6)
    path = save_official(tmp_path / "variant.pyth", {**src.state_dict(), **official_time_heads(seed=7),
                                                     "mlp_norm.running_mean": torch.zeros(D)})
    with caplog.at_level(logging.WARNING, logger="timematters.models.convert"):
        report = load_pretrained(ours("timesformer"), path)
    assert report.time_unmatched == ["mlp_norm.running_mean"] and len(report.time_heads) == 14
    assert "mlp_norm.running_mean" in caplog.text and "15 TIME head tensors" in str(report)


def test_official_xvit_with_a_deeper_temporal_head_names_the_tensor():
    official = official_backbone("xvit", ours("xvit", seed=8))
    official["consensus.temporal_encoder.1.norm1.weight"] = torch.ones(D)
    with pytest.raises(ValueError, match=r"consensus\.temporal_encoder\.1\.norm1\.weight"):
        official_xvit_to_ours(official)


def test_official_xvit_without_time_heads_loads(tmp_path):
    """An official X-ViT checkpoint with no TIME heads (the baseline) goes through the same key table."""
    src = ours("xvit", seed=9)
    path = save_official(tmp_path / "xvit.pyth", {f"model.{k}": v for k, v in official_backbone("xvit", src).items()})
    dst = ours("xvit")
    report = load_pretrained(dst, path)
    assert report.source_arch == "xvit" and not report.missing and not report.time_heads
    x = video(seed=10)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))
