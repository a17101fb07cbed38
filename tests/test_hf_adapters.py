"""Hugging Face video classifiers through the timematters surface: token layouts, GradCAM volumes,
preprocessing, label mapping, loading (folders and Hub ids, offline)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

import timematters
from hf_tiny import FAMILIES, SHAPES, save_tiny, tiny_model
from timematters.models.hf import (LabelRemap, adapt, gradcam_target, label_index, load_any, normalize_name,
                                   processor_settings)

NAMES = ["Pushing [something] from left to right", "Pushing something from right to left", "Folding something"]


def patch_grid(hf, family: str, x: torch.Tensor) -> torch.Tensor:
    """The patch embedding of ``x`` computed directly from the family's projection: ``(B, T', N, D)``."""
    if family == "timesformer":
        emb = hf.timesformer.embeddings.patch_embeddings(x)[0]                 # (B*T, N, D)
        return emb.reshape(x.shape[0], x.shape[1], -1, emb.shape[-1])
    conv = {"videomae": lambda: hf.videomae.embeddings.patch_embeddings.projection,
            "vivit": lambda: hf.vivit.embeddings.patch_embeddings.projection,
            "vjepa2": lambda: hf.vjepa2.encoder.embeddings.patch_embeddings.proj,
            "videoprism": lambda: hf.vision_model.spatial_embeddings.patch_embeddings.projection}[family]()
    out = conv(x.permute(0, 2, 1, 3, 4))                                        # (B, D, T', h, w)
    return out.flatten(3).permute(0, 2, 3, 1)                                   # (B, T', N, D)


def zero_positions(hf) -> None:
    for name, p in list(hf.named_parameters()) + list(hf.named_buffers()):
        if "position_embeddings" in name or "time_embeddings" in name or "cls_token" in name:
            p.data.zero_()


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_block_tokens_are_laid_out_as_frames_and_patches(family):
    """With position embeddings zeroed, the first block's input seen through the adapter's layout map is the
    patch embedding of each frame (tubelet) at each grid position."""
    frames, size, tubelet, blocks = SHAPES[family]
    hf = tiny_model(family)
    zero_positions(hf)
    model = adapt(hf)
    assert (model.num_frames, model.img_size, model.tubelet) == (frames, size, tubelet)
    x = torch.randn(2, frames, 3, size, size)
    grids = model.block_grids()
    seen = []
    handle = grids[0][0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    feats = model.forward_features(x, return_hidden=True)
    handle.remove()
    expected = patch_grid(hf, family, x)
    if family == "videomae":     # its sinusoidal table is a plain tensor attribute (not zeroed above): add it
        pos = hf.videomae.embeddings.position_embeddings.to(expected)
        expected = expected + pos.reshape(1, frames // tubelet, -1, 32)
    assert torch.allclose(grids[0][1](seen[0]), expected, atol=1e-5)
    N = (size // 8) ** 2
    assert len(feats.hidden) == blocks
    assert all(h.shape == (2, frames // tubelet, N, 32) for h in feats.hidden)
    # cls is what the classifier reads: forward_head(features) == forward
    assert torch.allclose(model.forward_head(feats), model(x), atol=1e-5)
    assert model(x).shape == (2, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcam_layer_gives_channel_first_volumes(family):
    frames, size, tubelet, _ = SHAPES[family]
    model = adapt(tiny_model(family))
    layer, reshape = gradcam_target(model, frames, size)
    captured = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(o))
    model(torch.randn(2, frames, 3, size, size))
    handle.remove()
    assert reshape(captured[0]).shape == (2, 32, frames // tubelet, size // 8, size // 8)


def test_fixed_frame_models_refuse_other_clip_lengths():
    model = adapt(tiny_model("videomae"))
    with pytest.raises(ValueError, match="built for 6 frames"):
        model(torch.randn(1, 4, 3, 32, 32))


def test_processor_normalisation_matches_the_processor(tmp_path):
    """ViViT rescales to [-1, 1] (offset) before normalising: folded into one mean/std it must give what
    the processor gives."""
    proc = transformers.VivitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                            rescale_factor=1 / 127.5, offset=True, image_mean=[0.5, 0.4, 0.3],
                                            image_std=[0.5, 0.6, 0.7])
    proc.save_pretrained(str(tmp_path))
    s = processor_settings(tmp_path, "vivit", 32)
    assert s["short_side"] == 40 and s["preprocessing"] == "preprocessor_config.json"
    frame = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ref = proc([frame], do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"][0, 0]
    ours = (torch.from_numpy(frame).permute(2, 0, 1).float() / 255 - torch.tensor(s["mean"])[:, None, None]) \
        / torch.tensor(s["std"])[:, None, None]
    assert torch.allclose(ref.float(), ours, atol=1e-4)
    # without a processor config: the family's processor defaults; VideoPrism reads frames in [0, 1]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert processor_settings(empty, "vjepa2", 32)["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert processor_settings(empty, "videoprism_vision_model", 32)["std"] == (1.0, 1.0, 1.0)


def test_label_mapping_by_name_and_default_labels():
    data = ["Folding something", "Pushing something from left to right", "Pushing something from right to left"]
    assert normalize_name(NAMES[0]) == normalize_name(data[1])
    assert label_index(NAMES, data, num_outputs=3, source="m") == [2, 0, 1]
    assert label_index([f"LABEL_{i}" for i in range(3)], data, num_outputs=3, source="m") == [0, 1, 2]
    with pytest.raises(ValueError, match="not among the model's labels"):
        label_index(NAMES, data + ["Unknown class"], num_outputs=3, source="m")
    with pytest.raises(ValueError, match="unnamed outputs"):
        label_index(None, data[:2], num_outputs=3, source="m")


@pytest.mark.parametrize("family", FAMILIES)
def test_load_any_reads_save_pretrained_folders(tmp_path, family):
    frames, size, tubelet, _ = SHAPES[family]
    save_tiny(family, tmp_path / family, NAMES)
    loaded = load_any(tmp_path / family)
    assert loaded.kind.startswith("hf-") and loaded.class_names == NAMES
    assert (loaded.num_frames, loaded.img_size, loaded.tubelet) == (frames, size, tubelet)
    data = list(reversed(["Pushing something from left to right", "Pushing something from right to left",
                          "Folding something"]))
    remapped = loaded.model_for(data)
    assert isinstance(remapped, LabelRemap)
    x = torch.randn(1, frames, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(remapped(x), loaded.model(x).flip(1))
    with pytest.raises(FileNotFoundError):
        load_any(tmp_path / "missing")


def test_hub_ids_resolve_through_huggingface_hub_offline(tmp_path, monkeypatch):
    """A Hub id goes through huggingface_hub.snapshot_download; offline, it finds the repo in the cache
    (laid out as the Hub client writes it), so no network is needed."""
    import huggingface_hub.constants as hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--tm-test--tiny-vivit"
    save_tiny("vivit", repo / "snapshots" / commit, NAMES)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    model = timematters.from_pretrained("tm-test/tiny-vivit")
    assert model.pretrained_cfg["kind"] == "hf-vivit" and model.pretrained_cfg["class_names"] == NAMES
    assert model.pretrained_cfg["source"] == "tm-test/tiny-vivit"
    with pytest.raises(FileNotFoundError, match="Hub download failed"):
        timematters.from_pretrained("tm-test/not-in-cache")
    with pytest.raises(FileNotFoundError, match="neither a local path nor a Hub id"):
        timematters.from_pretrained("no/such/path")


def test_unsupported_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' is not a supported video classifier"):
        load_any(tmp_path)
