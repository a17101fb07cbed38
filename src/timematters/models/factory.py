"""``create_model``: an explicit table from model name to constructor and its default size."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from .motionformer import Motionformer
from .timesformer import TimeSformer
from .vit import VisionTransformer
from .xvit import XViT

_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}

# name -> (constructor, default keyword arguments). Every entry is written out; nothing registers itself.
MODELS: dict[str, tuple[Callable[..., nn.Module], dict]] = {
    "timesformer_tiny": (TimeSformer, _SIZES["tiny"]),
    "timesformer_small": (TimeSformer, _SIZES["small"]),
    "timesformer_base": (TimeSformer, _SIZES["base"]),
    "motionformer_tiny": (Motionformer, _SIZES["tiny"]),
    "motionformer_small": (Motionformer, _SIZES["small"]),
    "motionformer_base": (Motionformer, _SIZES["base"]),
    "xvit_tiny": (XViT, _SIZES["tiny"]),
    "xvit_small": (XViT, _SIZES["small"]),
    "xvit_base": (XViT, _SIZES["base"]),
    "vit_tiny_patch16": (VisionTransformer, dict(_SIZES["tiny"], patch_size=16)),
    "vit_small_patch16": (VisionTransformer, dict(_SIZES["small"], patch_size=16)),
    "vit_base_patch16": (VisionTransformer, dict(_SIZES["base"], patch_size=16)),
}


_SIZE_KEYS = ("depth", "embed_dim", "num_heads", "patch_size")


def list_models() -> list[str]:
    return sorted(MODELS)


def is_image_model(name: str) -> bool:
    return name.startswith("vit_")


def create_model(name: str, *, num_classes: int, num_frames: int, img_size: int | tuple[int, int],
                 pretrained: str | Path | None = None, **overrides) -> nn.Module:
    """Build a backbone by name; ``overrides`` replace constructor defaults (``depth``, ``embed_dim``, ...).

    ``None`` (and ``0`` for ``depth`` / ``embed_dim`` / ``num_heads`` / ``patch_size``) means "the default".
    Image models (``vit_*``) ignore ``num_frames`` (they are one-frame models). ``pretrained`` is a path
    to weights in any format :func:`timematters.models.convert.load_pretrained` detects.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    ctor, defaults = MODELS[name]
    kwargs = dict(defaults)
    for key, value in overrides.items():
        # None, and 0 for a size (ModelConfig's "registered default"), keep the table's value
        if value is None or (key in _SIZE_KEYS and value == 0):
            continue
        kwargs[key] = value
    kwargs.update(num_classes=num_classes, img_size=img_size)
    if not is_image_model(name):
        kwargs["num_frames"] = num_frames
    try:
        model = ctor(**kwargs)
    except TypeError as e:
        raise TypeError(f"create_model({name!r}): {e}") from None
    if pretrained:
        from .convert import load_pretrained

        load_pretrained(model, pretrained)
    return model
