"""Random-init tiny models of every Hugging Face video-classification family the adapters cover.

Each family gets its own frame count, tubelet and crop size, so a test can tell whether a loader fed a
model clips of *its* shape. Hidden size 32, 2 layers (VideoPrism: 2 spatial + 1 temporal).
"""
from __future__ import annotations

from pathlib import Path

import torch
import transformers

from timematters.models.hf import HF_FAMILIES

# family -> (frames, crop size, tubelet, number of blocks)
SHAPES = {
    "timesformer": (4, 32, 1, 2),
    "videomae": (6, 32, 2, 2),
    "vivit": (8, 48, 2, 2),
    "vjepa2": (4, 32, 2, 2),
    "videoprism": (3, 32, 1, 3),
}
FAMILIES = list(SHAPES)


def tiny_config(family: str, names: list[str] | None = None, num_labels: int = 3) -> transformers.PretrainedConfig:
    frames, size, tubelet, _ = SHAPES[family]
    labels = {}
    if names:
        num_labels = len(names)
        labels = dict(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    common = dict(hidden_size=32, num_attention_heads=2, num_labels=num_labels, **labels)
    if family == "timesformer":
        return transformers.TimesformerConfig(image_size=size, patch_size=8, num_frames=frames, num_hidden_layers=2,
                                              intermediate_size=64, **common)
    if family == "videomae":
        return transformers.VideoMAEConfig(image_size=size, patch_size=8, num_frames=frames, tubelet_size=tubelet,
                                           num_hidden_layers=2, intermediate_size=64, **common)
    if family == "vivit":
        return transformers.VivitConfig(image_size=size, tubelet_size=[tubelet, 8, 8], num_frames=frames,
                                        num_hidden_layers=2, intermediate_size=64, **common)
    if family == "vjepa2":
        return transformers.VJEPA2Config(crop_size=size, patch_size=8, frames_per_clip=frames, tubelet_size=tubelet,
                                         num_hidden_layers=2, mlp_ratio=2.0, pred_hidden_size=32,
                                         pred_num_hidden_layers=1, pred_num_attention_heads=2, num_pooler_layers=1,
                                         **common)
    if family == "videoprism":
        return transformers.VideoPrismVisionConfig(image_size=size, tubelet_size=[1, 8, 8], num_frames=frames,
                                                   intermediate_size=64, num_spatial_layers=2, num_temporal_layers=1,
                                                   **common)
    raise KeyError(family)


def tiny_model(family: str, names: list[str] | None = None, seed: int = 0) -> torch.nn.Module:
    config = tiny_config(family, names)
    torch.manual_seed(seed)
    model = getattr(transformers, HF_FAMILIES[config.model_type][1])(config).eval()
    with torch.no_grad():   # HF zero-initialises position / time embeddings: give them values
        for name, p in model.named_parameters():
            if "position_embeddings" in name or "time_embeddings" in name or "cls_token" in name:
                p.normal_(std=0.5)
    return model


def save_tiny(family: str, path: Path, names: list[str] | None = None, seed: int = 0) -> Path:
    tiny_model(family, names, seed).save_pretrained(str(path))
    return path
