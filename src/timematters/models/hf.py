"""Load any model the audit can read, behind one surface.

``load_any(path)`` accepts
- a timematters run directory or checkpoint ``.safetensors`` (via ``timematters.engine.checkpoint``);
- a Hugging Face ``TimesformerForVideoClassification`` or ``VideoMAEForVideoClassification`` directory
  written by ``save_pretrained``.

Hugging Face models are wrapped in :class:`HFVideoClassifier`, which offers the parts of the timematters
backbone surface the audit uses: ``forward(video (B, T, C, H, W)) -> logits`` and
``forward_features(x, return_hidden=True).hidden`` as per-block ``(B, T', N, D)`` tokens (T' = T / tubelet).
:func:`gradcam_target` names, for every supported model, the layer GradCAM hooks and how to turn that
layer's output into a ``(B, D, T', h, w)`` activation volume.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from timematters.models.base import Features

HF_KINDS = {"timesformer": "hf-timesformer", "videomae": "hf-videomae"}


# ------------------------------------------------------------------------------------ Hugging Face
class HFVideoClassifier(nn.Module):
    """A ``transformers`` video classifier seen through the timematters backbone surface.

    Token layouts (read from ``transformers``' modelling code):
    - TimeSformer: ``(B, 1 + N*T, D)``, CLS first, patches ordered (h, w, t); its spatial attention's
      ``layernorm_before`` sees ``(B*T, 1 + N, D)``.
    - VideoMAE: ``(B, T'*N, D)`` ordered (t', h, w), no CLS, T' = T / tubelet_size; each layer's
      ``layernorm_before`` sees the whole ``(B, T'*N, D)`` sequence.
    """

    def __init__(self, hf_model: nn.Module, kind: str):
        super().__init__()
        if kind not in HF_KINDS.values():
            raise ValueError(f"unsupported Hugging Face model kind {kind!r}")
        self.hf = hf_model
        self.kind = kind
        cfg = hf_model.config
        self.embed_dim = cfg.hidden_size
        self.num_classes = cfg.num_labels
        self.patch_size = cfg.patch_size
        self.num_frames = cfg.num_frames
        self.img_size = cfg.image_size
        self.tubelet = getattr(cfg, "tubelet_size", 1) if kind == "hf-videomae" else 1
        self.grid_size = (cfg.image_size // cfg.patch_size, cfg.image_size // cfg.patch_size)

    @property
    def layers(self) -> nn.ModuleList:
        backbone = self.hf.timesformer if self.kind == "hf-timesformer" else self.hf.videomae
        return backbone.encoder.layer

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(f"{self.kind}: expected a video batch (B, T, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_frames:
            raise ValueError(f"{self.kind}: the model was built for {self.num_frames} frames (config.num_frames), "
                             f"got clips of {x.shape[1]} frames")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.hf(pixel_values=x).logits

    def to_grid(self, seq: torch.Tensor) -> torch.Tensor:
        """One hidden state ``(B, L, D)`` -> patch tokens ``(B, T', N, D)``."""
        B, L, D = seq.shape
        T = self.num_frames // self.tubelet
        N = self.grid_size[0] * self.grid_size[1]
        if self.kind == "hf-timesformer":
            return seq[:, 1:].reshape(B, N, T, D).transpose(1, 2)          # (h, w, t) order -> (B, T, N, D)
        return seq.reshape(B, T, N, D)                                       # (t, h, w) order

    def forward_features(self, x: torch.Tensor, return_hidden: bool = False) -> Features:
        self._check(x)
        backbone = self.hf.timesformer if self.kind == "hf-timesformer" else self.hf.videomae
        out = backbone(pixel_values=x, output_hidden_states=True)
        last = out.last_hidden_state
        if self.kind == "hf-timesformer":
            cls = last[:, 0]
        else:
            cls = last.mean(1)
        hidden = [self.to_grid(h) for h in out.hidden_states[1:]] if return_hidden else None
        return Features(cls=cls, tokens=self.to_grid(last), hidden=hidden)

    def gradcam_layer(self) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        """The last layer's ``layernorm_before`` and a reshape of its output to ``(B, D, T', h, w)``."""
        T = self.num_frames // self.tubelet
        h, w = self.grid_size
        if self.kind == "hf-timesformer":
            def reshape(t: torch.Tensor) -> torch.Tensor:                   # (B*T, 1+N, D)
                return t.reshape(-1, T, 1 + h * w, t.shape[-1])[:, :, 1:].reshape(-1, T, h, w, t.shape[-1]) \
                    .permute(0, 4, 1, 2, 3)
        else:
            def reshape(t: torch.Tensor) -> torch.Tensor:                   # (B, T'*N, D)
                return t.reshape(-1, T, h, w, t.shape[-1]).permute(0, 4, 1, 2, 3)
        return self.layers[-1].layernorm_before, reshape


def is_hf_dir(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") in HF_KINDS
    except json.JSONDecodeError:
        return False


def load_hf(path: str | Path) -> tuple[HFVideoClassifier, dict[str, Any]]:
    """Load a ``save_pretrained`` directory; returns the wrapper and a spec-like dict."""
    import transformers

    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / 'config.json'}: cannot read the Hugging Face config ({e})") from None
    model_type = cfg.get("model_type")
    if model_type not in HF_KINDS:
        raise ValueError(f"{path / 'config.json'}: model_type {model_type!r} is not one of {sorted(HF_KINDS)}")
    cls = {"timesformer": transformers.TimesformerForVideoClassification,
           "videomae": transformers.VideoMAEForVideoClassification}[model_type]
    hf_model = cls.from_pretrained(str(path))
    config = hf_model.config
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    names = [id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels)]
    # preprocessor_config.json when saved with the model; otherwise the defaults of the processor both
    # model families use on the Hub (VideoMAEImageProcessor)
    if (path / "preprocessor_config.json").is_file():
        proc = transformers.AutoImageProcessor.from_pretrained(str(path))
    else:
        proc = transformers.VideoMAEImageProcessor()
    spec = {
        "name": f"{model_type} (Hugging Face)",
        "class_names": names,
        "num_frames": config.num_frames,
        "img_size": config.image_size,
        "mean": list(proc.image_mean),
        "std": list(proc.image_std),
        "data": {},
    }
    return HFVideoClassifier(hf_model, HF_KINDS[model_type]).eval(), spec


# ------------------------------------------------------------------------------------ label mapping
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


def normalize_name(name: str) -> str:
    """Compare class names loosely: SSv2 templates carry ``[something]`` brackets, labels do not."""
    name = name.replace("[", "").replace("]", "").lower()
    return " ".join(re.sub(r"[^a-z0-9() ]+", " ", name).split())


def label_index(model_names: Sequence[str] | None, data_names: Sequence[str], *, num_outputs: int,
                source: str) -> list[int]:
    """For every dataset class, the model output that scores it."""
    if model_names is None or all(_DEFAULT_LABEL.match(n) for n in model_names):
        if num_outputs != len(data_names):
            raise ValueError(f"{source}: the model has {num_outputs} unnamed outputs but the dataset has "
                             f"{len(data_names)} classes")
        return list(range(len(data_names)))
    lookup = {normalize_name(n): i for i, n in enumerate(model_names)}
    missing = [n for n in data_names if normalize_name(n) not in lookup]
    if missing:
        raise ValueError(f"{source}: {len(missing)} dataset classes are not among the model's labels, "
                         f"e.g. {missing[:3]}")
    return [lookup[normalize_name(n)] for n in data_names]


class LabelRemap(nn.Module):
    """``model(x)[:, index]``: logits in dataset class order."""

    def __init__(self, model: nn.Module, index: Sequence[int]):
        super().__init__()
        self.model = model
        self.register_buffer("index", torch.as_tensor(list(index), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).index_select(1, self.index.to(x.device))


# ------------------------------------------------------------------------------------------ loading
@dataclass
class LoadedModel:
    """A model ready for the audit, with what the audit needs to know about it."""

    model: nn.Module                       # forward(video) -> logits in the model's own label order
    kind: str                              # "timematters" | "hf-timesformer" | "hf-videomae"
    source: str
    class_names: list[str] | None          # the model's output labels
    num_frames: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data_root: str | None = None
    data_format: str | None = None
    spec: dict = field(default_factory=dict)

    @property
    def tubelet(self) -> int:
        return getattr(self.model, "tubelet", 1)

    def label_index(self, data_names: Sequence[str]) -> list[int]:
        return label_index(self.class_names, data_names, num_outputs=self.num_outputs, source=self.source)

    @property
    def num_outputs(self) -> int:
        return int(self.model.num_classes)

    def model_for(self, data_names: Sequence[str]) -> nn.Module:
        """The model with logits reordered to the dataset's classes (itself when they already agree)."""
        index = self.label_index(data_names)
        if index == list(range(self.num_outputs)):
            return self.model
        return LabelRemap(self.model, index)


def load_any(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A timematters run / checkpoint, or a Hugging Face TimeSformer / VideoMAE directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model '{path}' does not exist")
    if path.is_dir() and is_hf_dir(path):
        model, spec = load_hf(path)
        kind = model.kind
    else:
        from timematters.engine.checkpoint import load_model

        model, spec = load_model(path, device=device)
        kind = "timematters"
    model = model.to(device).eval()
    data = spec.get("data") or {}
    img = spec["img_size"]
    return LoadedModel(
        model=model, kind=kind, source=str(path), class_names=spec.get("class_names"),
        num_frames=int(spec["num_frames"]), img_size=int(img if isinstance(img, int) else img[0]),
        mean=tuple(spec["mean"]), std=tuple(spec["std"]), data_root=data.get("root"),
        data_format=data.get("format"), spec=spec,
    )


# ---------------------------------------------------------------------------------------- GradCAM hook
def gradcam_target(model: nn.Module, num_frames: int, img_size: int) -> tuple[nn.Module, Callable]:
    """(layer, reshape_transform) for GradCAM: the layer's output becomes ``(B, D, T', h, w)``.

    Following the ViT recipe of pytorch-grad-cam (which the TIME paper adapted to video, its Appendix B),
    the hooked layer is the last block's pre-attention LayerNorm: its patch outputs reach the class score
    through the last attention, so their gradients are not zero as they would be after the final norm.
    """
    if isinstance(model, LabelRemap):
        model = model.model
    if isinstance(model, HFVideoClassifier):
        return model.gradcam_layer()
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(blocks[-1], "norm1"):
        raise TypeError(f"GradCAM: no known target layer for {type(model).__name__} "
                        "(expected .blocks[-1].norm1 or a Hugging Face TimeSformer/VideoMAE)")
    p = model.patch_size
    h = w = img_size // p
    tubelet = getattr(getattr(model, "patch_embed", None), "tubelet_size", 1)
    T = num_frames // tubelet                                       # token frames

    def reshape(t: torch.Tensor) -> torch.Tensor:
        # TimeSformer / X-ViT: norm1 sees (B, T, 1+N, D) ([CLS, patches] per frame); ViT: (B, 1+N, D) (T = 1);
        # Motionformer: (B, 1+T*N, D) (one CLS, then the patches frame by frame)
        D = t.shape[-1]
        if t.ndim == 3 and T > 1 and t.shape[1] % T:                # one prefix for the whole clip
            extra = t.shape[1] - T * h * w
            if extra < 0:
                raise ValueError(f"GradCAM: layer output {tuple(t.shape)} has fewer than {T}x{h * w} tokens")
            return t[:, extra:].reshape(-1, T, h, w, D).permute(0, 4, 1, 2, 3)
        t = t.reshape(-1, T, t.shape[-2], D) if t.ndim == 4 else t.reshape(-1, T, t.shape[1] // T, D)
        extra = t.shape[2] - h * w
        if extra < 0:
            raise ValueError(f"GradCAM: layer output {tuple(t.shape)} has fewer than {h * w} tokens per frame")
        return t[:, :, extra:].reshape(-1, T, h, w, D).permute(0, 4, 1, 2, 3)

    return blocks[-1].norm1, reshape
