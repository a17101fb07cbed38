"""Pretrained-weight interop: our backbones against Hugging Face and timm, and the checkpoint formats."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import timematters
from timematters.models.convert import (hf_config_to_kwargs, inflate_patch_kernel, jax_vit_to_timm, load_pretrained,
                                        official_motionformer_to_ours,
                                        read_hf_config, resample_time_embed, timm_vit_to_jax)

SMALL = dict(depth=2, embed_dim=64, num_heads=2)


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter (zero-initialised ones too) with random values, so nothing matches by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module.eval()


def clip(B=2, T=4, H=64, W=64, seed=0):
    return torch.randn(B, T, 3, H, W, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ HF


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.TimesformerConfig(image_size=64, patch_size=16, num_frames=4, hidden_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                                         attention_type="divided_space_time")
    hf = randomize_(transformers.TimesformerModel(cfg), seed=1)
    path = tmp_path_factory.mktemp("hf_timesformer")
    hf.save_pretrained(path)
    return path, hf


def test_hf_timesformer_matches(hf_dir):
    path, hf = hf_dir
    kwargs = hf_config_to_kwargs(read_hf_config(path))
    assert kwargs["num_frames"] == 4 and kwargs["embed_dim"] == 64
    ours = timematters.create_model("timesformer_tiny", num_classes=0, pretrained=path, **kwargs).eval()
    x = clip()
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state          # (B, 1 + N*T, D), final layernorm on every token
        f = ours.forward_features(x)
    B, T, N, D = f.tokens.shape
    assert (B, T, N, D) == (2, 4, 16, 64)
    # HF orders patch tokens as (h w t); ours is (t, h*w)
    ref_tokens = ref[:, 1:].reshape(B, N, T, D).transpose(1, 2)
    assert (f.cls - ref[:, 0]).abs().max() <= 1e-4
    assert (f.tokens - ref_tokens).abs().max() <= 1e-4


def test_hf_video_classification_matches(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.TimesformerConfig(image_size=32, patch_size=16, num_frames=4, hidden_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                         num_labels=3)
    hf = randomize_(transformers.TimesformerForVideoClassification(cfg), seed=2)
    hf.save_pretrained(tmp_path)
    ours = timematters.create_model("timesformer_tiny", num_classes=3, num_frames=4, img_size=32, depth=2,
                                    embed_dim=64, num_heads=2, mlp_ratio=2.0).eval()
    report = load_pretrained(ours, tmp_path)
    assert report.source_format == "hf" and not report.missing and not report.unexpected
    x = clip(H=32, W=32, seed=3)
    with torch.no_grad():
        assert (ours(x) - hf(pixel_values=x).logits).abs().max() <= 1e-4


# ------------------------------------------------------------------------------------------------ timm ViT


@pytest.fixture(scope="module")
def timm_vit():
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=5)
    return randomize_(model, seed=4), timm


def ours_vit(**kw):
    return timematters.create_model("vit_tiny_patch16", num_classes=5, num_frames=1, img_size=32, **SMALL, **kw).eval()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_vit_logits_match(timm_vit, tmp_path, suffix):
    ref, _ = timm_vit
    path = tmp_path / f"vit{suffix}"
    if suffix == ".pth":
        torch.save({"model": ref.state_dict(), "epoch": 3}, path)
    else:
        from safetensors.torch import save_file

        save_file(ref.state_dict(), str(path))
    ours = ours_vit()
    report = load_pretrained(ours, path)
    assert report.source_arch == "vit" and not report.missing
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-4
        assert (ours(x[:, None]) - ref(x)).abs().max() <= 1e-4      # (B, 1, C, H, W) works the same


def test_jax_npz_layout_matches_timm_reader(timm_vit, tmp_path):
    """We write the original JAX layout; timm's own npz reader must rebuild the same model from it,
    and our reader must give the same logits."""
    ref, timm = timm_vit
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    path = tmp_path / "vit.npz"
    np.savez(path, **timm_vit_to_jax(ref.state_dict(), num_heads=2))
    rebuilt = VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=5)
    with torch.no_grad():
        _load_weights(rebuilt, str(path))
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[k], v, msg=k)

    ours = ours_vit()
    assert load_pretrained(ours, path).source_format == "jax_npz"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (ours(x) - ref.eval()(x)).abs().max() <= 1e-4
    # and the pure converters are inverse to each other
    back = jax_vit_to_timm(dict(np.load(path)))
    for k, v in back.items():
        torch.testing.assert_close(v, ref.state_dict()[k], msg=k)


# ------------------------------------------------------------------------------------------------ official .pyth


def official_timesformer_state(depth: int, D: int, T: int, N: int, classes: int, seed: int) -> dict:
    """A state dict with the official TimeSformer key names (``model.`` prefix, as in its .pyth files)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)   # noqa: E731
    sd = {
        "model.cls_token": r(1, 1, D), "model.pos_embed": r(1, N + 1, D), "model.time_embed": r(1, T, D),
        "model.patch_embed.proj.weight": r(D, 3, 16, 16), "model.patch_embed.proj.bias": r(D),
        "model.norm.weight": r(D), "model.norm.bias": r(D),
        "model.head.weight": r(classes, D), "model.head.bias": r(classes),
    }
    for i in range(depth):
        b = f"model.blocks.{i}."
        for attn in ("attn", "temporal_attn"):
            sd.update({f"{b}{attn}.qkv.weight": r(3 * D, D), f"{b}{attn}.qkv.bias": r(3 * D),
                       f"{b}{attn}.proj.weight": r(D, D), f"{b}{attn}.proj.bias": r(D)})
        for norm in ("norm1", "temporal_norm1", "norm2"):
            sd.update({f"{b}{norm}.weight": r(D), f"{b}{norm}.bias": r(D)})
        sd.update({f"{b}temporal_fc.weight": r(D, D), f"{b}temporal_fc.bias": r(D),
                   f"{b}mlp.fc1.weight": r(4 * D, D), f"{b}mlp.fc1.bias": r(4 * D),
                   f"{b}mlp.fc2.weight": r(D, 4 * D), f"{b}mlp.fc2.bias": r(D)})
    return sd


def test_official_pyth_round_trip(tmp_path):
    official = official_timesformer_state(depth=2, D=64, T=4, N=4, classes=7, seed=7)
    path = tmp_path / "TimeSformer_divST_8x32_224_K400.pyth"
    torch.save({"epoch": 15, "model_state": official, "optimizer_state": {}, "cfg": "yaml text"}, path)
    ours = timematters.create_model("timesformer_tiny", num_classes=7, num_frames=4, img_size=32, **SMALL)
    report = load_pretrained(ours, path)
    assert report.source_format == "pyth" and not report.missing and not report.unexpected
    back = {"model." + k: v for k, v in ours.state_dict().items()}
    assert back.keys() == official.keys()
    for k, v in official.items():
        torch.testing.assert_close(back[k], v, msg=k)


# ------------------------------------------------------------------------------------------------ inflation


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    vit = randomize_(ours_vit(), seed=8)
    path = tmp_path_factory.mktemp("vit") / "vit.pth"
    torch.save(vit.state_dict(), path)
    return path, vit


def static_clip(T: int, seed: int):
    frame = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return frame, frame[:, None].expand(2, T, 3, 32, 32).contiguous()


def test_vit_inflated_into_timesformer_is_the_image_model_on_static_clips(vit_file):
    path, vit = vit_file
    tsf = timematters.create_model("timesformer_tiny", num_classes=5, num_frames=4, img_size=32, pretrained=path,
                                   **SMALL).eval()
    sd = tsf.state_dict()
    assert all(sd[f"blocks.{i}.temporal_fc.weight"].abs().sum() == 0 for i in range(2))
    assert sd["time_embed"].abs().sum() == 0
    frame, video = static_clip(4, seed=9)
    with torch.no_grad():
        fi, fv = vit.forward_features(frame), tsf.forward_features(video)
    assert (fv.cls - fi.cls).abs().max() <= 1e-4
    assert (fv.tokens - fi.tokens.expand_as(fv.tokens)).abs().max() <= 1e-4


def test_vit_inflated_into_xvit(vit_file):
    path, vit = vit_file
    xv = timematters.create_model("xvit_tiny", num_classes=5, num_frames=4, img_size=32, **SMALL).eval()
    report = load_pretrained(xv, path)
    assert report.missing and all(k.startswith(("consensus", "head", "temporal_cls"))
                                  for k in report.missing)
    assert xv.temp_embed.abs().sum() == 0
    frame, video = static_clip(6, seed=10)
    with torch.no_grad():
        fi, fv = vit.forward_features(frame), xv.forward_features(video)
    # the shift pads with zeros at the clip ends, and each block spreads that one frame further in;
    # frames farther than `depth` from both ends see exactly the image model
    inner = fv.tokens[:, 2:-2]
    assert (inner - fi.tokens.expand_as(inner)).abs().max() <= 1e-4


@pytest.mark.parametrize("tubelet", [1, 2])
def test_vit_inflated_into_motionformer(vit_file, tubelet):
    path, vit = vit_file
    mf = timematters.create_model("motionformer_tiny", num_classes=5, num_frames=4, img_size=32, pretrained=path,
                                  tubelet_size=tubelet, **SMALL).eval()
    w = mf.patch_embed.proj.weight
    assert w.shape == ((64, 3, 16, 16) if tubelet == 1 else (64, 3, 2, 16, 16))
    if tubelet == 2:   # central-frame inflation: only the central time step carries the 2-D kernel
        torch.testing.assert_close(w[:, :, 1], vit.patch_embed.proj.weight)
        assert w[:, :, 0].abs().sum() == 0
    torch.testing.assert_close(mf.blocks[0].attn.proj_q.weight, vit.blocks[0].attn.qkv.weight[:64])
    with torch.no_grad():
        assert torch.isfinite(mf(static_clip(4, seed=11)[1])).all()


@pytest.mark.parametrize("tubelet", [1, 2])
def test_official_motionformer_checkpoint_loads_strictly(tmp_path, tubelet):
    """An official Motionformer .pyth: both patch embeddings (the 3-D one used only for tubelets > 1) and the
    Linear + tanh ``pre_logits`` head, as PySlowFast saves them. It loads with no missing or unexpected tensor
    and gives the model that wrote it."""
    src = randomize_(timematters.create_model("motionformer_tiny", num_classes=5, num_frames=4, img_size=32,
                                              tubelet_size=tubelet, **SMALL), 21).eval()
    g = torch.Generator().manual_seed(22)
    official = dict(src.state_dict())
    kernel = official.pop("patch_embed.proj.weight")
    bias = official.pop("patch_embed.proj.bias")
    D = kernel.shape[0]
    if tubelet == 1:   # the 2-D embedding is used; the 3-D one stays at its zero init
        official.update({"patch_embed.proj.weight": kernel, "patch_embed.proj.bias": bias,
                         "patch_embed_3d.proj.weight": torch.zeros(D, 3, 2, 16, 16),
                         "patch_embed_3d.proj.bias": torch.zeros(D)})
    else:              # the 3-D embedding is used; the 2-D one is an unused ImageNet kernel
        official.update({"patch_embed.proj.weight": torch.randn(D, 3, 16, 16, generator=g),
                         "patch_embed.proj.bias": torch.randn(D, generator=g),
                         "patch_embed_3d.proj.weight": kernel, "patch_embed_3d.proj.bias": bias})
    assert {"pre_logits.fc.weight", "pre_logits.fc.bias"} <= official.keys()
    path = tmp_path / "motionformer.pyth"
    torch.save({"epoch": 35, "model_state": official, "optimizer_state": {}, "cfg": "yaml text"}, path)

    dst = timematters.create_model("motionformer_tiny", num_classes=5, num_frames=4, img_size=32,
                                   tubelet_size=tubelet, **SMALL).eval()
    report = load_pretrained(dst, path)                  # strict
    assert report.source_arch == "motionformer" and not report.missing and not report.unexpected
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v, rtol=0, atol=0, msg=k)
    x = static_clip(4, seed=23)[1] + 0.1 * torch.randn(1, 4, 3, 32, 32, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))
    converted = official_motionformer_to_ours({f"model.{k}": v for k, v in official.items()}, tubelet)
    assert converted.keys() == src.state_dict().keys()   # pure: also from a "model."-prefixed state dict


def test_motionformer_pre_logits_reads_every_token():
    """The official head's Linear + tanh runs after the final norm on the CLS and on every patch token, so
    TIME's order and flow heads read what the classifier reads."""
    mf = randomize_(timematters.create_model("motionformer_tiny", num_classes=5, num_frames=4, img_size=32,
                                             **SMALL), 24).eval()
    with torch.no_grad():
        f = mf.forward_features(static_clip(4, seed=25)[1], return_hidden=True)
        last = f.hidden[-1]                               # (B, T, N, D) before the final norm
        torch.testing.assert_close(f.tokens, torch.tanh(mf.pre_logits.fc(mf.norm(last))))
    assert f.tokens.abs().max() <= 1 and f.cls.abs().max() <= 1


def test_inflate_patch_kernel_equals_central_frame_conv():
    g = torch.Generator().manual_seed(12)
    w2, x = torch.randn(8, 3, 4, 4, generator=g), torch.randn(1, 3, 3, 8, 8, generator=g)
    y3 = torch.nn.functional.conv3d(x, inflate_patch_kernel(w2, 3), stride=(3, 4, 4))
    y2 = torch.nn.functional.conv2d(x[:, :, 1], w2, stride=4)
    torch.testing.assert_close(y3[:, :, 0], y2)


# ------------------------------------------------------------------------------------------------ adapting, errors


def test_resampling_to_other_frames_and_resolution(tmp_path):
    src = randomize_(timematters.create_model("timesformer_tiny", num_classes=7, num_frames=4, img_size=32, **SMALL), 13)
    path = tmp_path / "tsf.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    dst = timematters.create_model("timesformer_tiny", num_classes=7, num_frames=8, img_size=64, **SMALL)
    report = load_pretrained(dst, path)
    assert {r.split()[0] for r in report.resampled} == {"pos_embed", "time_embed"}
    assert dst.pos_embed.shape == (1, 17, 64) and dst.time_embed.shape == (1, 8, 64)
    torch.testing.assert_close(dst.pos_embed[:, 0], src.pos_embed[:, 0])           # CLS position untouched
    torch.testing.assert_close(dst.time_embed, resample_time_embed(src.time_embed, 8))
    # the weights resampled at load time give what the source model computes when it resamples at run time
    x = clip(B=1, T=8, H=64, W=64, seed=14)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x), src.eval()(x), atol=1e-4, rtol=1e-4)


def test_classifier_of_other_size_is_dropped(tmp_path, vit_file):
    path, _ = vit_file
    model = timematters.create_model("vit_tiny_patch16", num_classes=3, num_frames=1, img_size=32, **SMALL)
    before = model.head.weight.clone()
    report = load_pretrained(model, path)
    assert any(d.startswith("head.weight") for d in report.dropped)
    assert torch.equal(model.head.weight, before)


def test_shape_mismatch_names_the_tensor(tmp_path, vit_file):
    path, _ = vit_file
    model = timematters.create_model("vit_tiny_patch16", num_classes=5, num_frames=1, img_size=32, mlp_ratio=2.0,
                                     **SMALL)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.weight"):
        load_pretrained(model, path)


def test_unexpected_and_missing_keys_are_listed(tmp_path):
    src = timematters.create_model("timesformer_tiny", num_classes=5, num_frames=4, img_size=32, **SMALL)
    path = tmp_path / "deep.pth"
    torch.save(src.state_dict(), path)
    shallow = timematters.create_model("timesformer_tiny", num_classes=5, num_frames=4, img_size=32, depth=1,
                                       embed_dim=64, num_heads=2)
    with pytest.raises(ValueError, match=r"unexpected \(\d+\): blocks\.1\."):
        load_pretrained(shallow, path)
    report = load_pretrained(shallow, path, strict=False)
    assert report.unexpected and all(k.startswith("blocks.1.") for k in report.unexpected)


def test_wrong_architecture_and_bad_files(tmp_path):
    mf = timematters.create_model("motionformer_tiny", num_classes=5, num_frames=4, img_size=32, **SMALL)
    tsf_path = tmp_path / "tsf.pth"
    torch.save(timematters.create_model("timesformer_tiny", num_classes=5, num_frames=4, img_size=32,
                                        **SMALL).state_dict(), tsf_path)
    with pytest.raises(ValueError, match="cannot load timesformer weights into a motionformer"):
        load_pretrained(mf, tsf_path)
    with pytest.raises(FileNotFoundError):
        load_pretrained(mf, tmp_path / "nope.pth")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_pretrained(mf, tmp_path / "empty_dir")


def test_training_checkpoint_of_this_library(tmp_path):
    """Fine-tuning from our own pretraining run: the ``model.*`` tensors load, ``objective.*`` are left out."""
    from timematters.engine.checkpoint import save_checkpoint

    src = randomize_(timematters.create_model("xvit_tiny", num_classes=5, num_frames=4, img_size=32, **SMALL), 15)
    path = save_checkpoint(tmp_path, model=src, objective=nn.Linear(64, 3), spec={"name": "xvit_tiny"},
                           train_state={"epoch": 0}, step=7)
    dst = timematters.create_model("xvit_tiny", num_classes=5, num_frames=4, img_size=32, **SMALL)
    report = load_pretrained(dst, path)
    assert report.source_arch == "xvit" and not report.missing and not report.unexpected
    assert any("objective.*" in d for d in report.dropped)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v, msg=k)


class NotATensor:
    pass


def test_pickled_code_is_not_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": NotATensor()}, path)
    model = timematters.create_model("vit_tiny_patch16", num_classes=5, num_frames=1, img_size=32, **SMALL)
    with pytest.raises(ValueError, match="weights-only"):
        load_pretrained(model, path)
