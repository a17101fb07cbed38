"""Hugging Face TimeSformer / VideoMAE through the audit surface: token layout, label mapping, loading."""
from __future__ import annotations

import pytest
import torch
import transformers

from timematters.models.hf import (HFVideoClassifier, LabelRemap, gradcam_target, label_index, load_any,
                                           normalize_name)

NAMES = ["Pushing [something] from left to right", "Pushing something from right to left", "Folding something"]


def tiny_timesformer(num_labels: int = 3, id2label=None) -> transformers.TimesformerForVideoClassification:
    cfg = transformers.TimesformerConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                         num_labels=num_labels, id2label=id2label,
                                         label2id={v: k for k, v in id2label.items()} if id2label else None)
    return transformers.TimesformerForVideoClassification(cfg).eval()


def tiny_videomae(num_labels: int = 3, id2label=None) -> transformers.VideoMAEForVideoClassification:
    cfg = transformers.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                      num_labels=num_labels, id2label=id2label,
                                      label2id={v: k for k, v in id2label.items()} if id2label else None)
    return transformers.VideoMAEForVideoClassification(cfg).eval()


@torch.no_grad()
def test_timesformer_token_layout_matches_patch_embeddings():
    torch.manual_seed(0)
    hf = tiny_timesformer()
    emb = hf.timesformer.embeddings
    emb.position_embeddings.zero_()
    emb.time_embeddings.zero_()
    emb.cls_token.zero_()
    x = torch.randn(2, 4, 3, 32, 32)
    seq0 = hf.timesformer(pixel_values=x, output_hidden_states=True).hidden_states[0]   # (B, 1+N*T, D)
    expected = emb.patch_embeddings(x)[0].reshape(2, 4, 16, 32)                         # (B*T, N, D) -> (B, T, N, D)
    wrapper = HFVideoClassifier(hf, "hf-timesformer")
    assert torch.allclose(wrapper.to_grid(seq0), expected, atol=1e-5)
    feats = wrapper.forward_features(x, return_hidden=True)
    assert len(feats.hidden) == 2 and feats.hidden[0].shape == (2, 4, 16, 32)
    assert torch.allclose(wrapper(x), hf(pixel_values=x).logits)


@torch.no_grad()
def test_videomae_token_layout_matches_tubelet_embeddings():
    torch.manual_seed(0)
    hf = tiny_videomae()
    emb = hf.videomae.embeddings
    emb.position_embeddings = torch.zeros_like(emb.position_embeddings)
    x = torch.randn(2, 4, 3, 32, 32)
    seq0 = hf.videomae(pixel_values=x, output_hidden_states=True).hidden_states[0]      # (B, T'*N, D)
    conv = emb.patch_embeddings.projection(x.permute(0, 2, 1, 3, 4))                     # (B, D, T', h, w)
    expected = conv.flatten(3).permute(0, 2, 3, 1)                                       # (B, T', N, D)
    wrapper = HFVideoClassifier(hf, "hf-videomae")
    assert wrapper.tubelet == 2
    assert torch.allclose(wrapper.to_grid(seq0), expected, atol=1e-5)
    assert wrapper.forward_features(x, return_hidden=True).hidden[0].shape == (2, 2, 16, 32)


def test_gradcam_reshapes_give_channel_first_volumes():
    for hf, kind, T in ((tiny_timesformer(), "hf-timesformer", 4), (tiny_videomae(), "hf-videomae", 2)):
        wrapper = HFVideoClassifier(hf, kind)
        layer, reshape = gradcam_target(wrapper, 4, 32)
        captured = []
        handle = layer.register_forward_hook(lambda m, i, o: captured.append(o))
        wrapper(torch.randn(2, 4, 3, 32, 32))
        handle.remove()
        assert reshape(captured[0]).shape == (2, 32, T, 4, 4)


def test_label_mapping_by_name_and_default_labels():
    data = ["Folding something", "Pushing something from left to right", "Pushing something from right to left"]
    assert normalize_name(NAMES[0]) == normalize_name(data[1])
    assert label_index(NAMES, data, num_outputs=3, source="m") == [2, 0, 1]
    assert label_index([f"LABEL_{i}" for i in range(3)], data, num_outputs=3, source="m") == [0, 1, 2]
    with pytest.raises(ValueError, match="not among the model's labels"):
        label_index(NAMES, data + ["Unknown class"], num_outputs=3, source="m")
    with pytest.raises(ValueError, match="unnamed outputs"):
        label_index(None, data[:2], num_outputs=3, source="m")


def test_load_any_reads_save_pretrained_dirs(tmp_path):
    torch.manual_seed(0)
    id2label = dict(enumerate(NAMES))
    for name, hf in (("tsf", tiny_timesformer(id2label=id2label)), ("vmae", tiny_videomae(id2label=id2label))):
        hf.save_pretrained(tmp_path / name)
        loaded = load_any(tmp_path / name)
        assert loaded.kind == f"hf-{'timesformer' if name == 'tsf' else 'videomae'}"
        assert loaded.class_names == NAMES and loaded.num_frames == 4 and loaded.img_size == 32
        assert len(loaded.mean) == 3 and len(loaded.std) == 3
        data = list(reversed(["Pushing something from left to right", "Pushing something from right to left",
                              "Folding something"]))
        remapped = loaded.model_for(data)
        assert isinstance(remapped, LabelRemap)
        x = torch.randn(1, 4, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(remapped(x), loaded.model(x).flip(1))
    with pytest.raises(FileNotFoundError):
        load_any(tmp_path / "missing")
