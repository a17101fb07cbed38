"""Load any video classifier behind one surface: timematters runs and exports, Hugging Face folders, Hub ids.

:func:`from_pretrained` (also ``timematters.from_pretrained``) and :func:`load_any` accept
- a timematters run directory or checkpoint ``.safetensors`` (``timematters.engine.checkpoint``);
- a folder written by ``timematters export-hf`` for Motionformer / X-ViT (``config.json`` with
  ``"model_type": "timematters"`` + ``model.safetensors``);
- a Hugging Face ``save_pretrained`` folder of any ``AutoModelForVideoClassification`` family that takes
  frames: TimeSformer, VideoMAE, ViViT, V-JEPA 2 and VideoPrism (:data:`HF_FAMILIES`);
- a Hub id (``org/name``), fetched with ``huggingface_hub`` into its cache and then read as a folder.

Hugging Face models are wrapped in an :class:`HFVideoClassifier` subclass that offers the parts of the
timematters backbone surface the evaluation and the audit use: ``forward(video (B, T, C, H, W)) -> logits``,
``forward_features(x, return_hidden=True)`` with ``cls`` = what the model's classifier reads and ``hidden`` =
every block's patch tokens as ``(B, T', N, D)`` (T' = T / tubelet), and :meth:`gradcam_layer`. Every loaded
model carries ``pretrained_cfg`` (timm's name for it): class names, frame count, crop size, the short side
the frames are resized to, mean and std, so clips are prepared as the model expects.
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

Grid = Callable[[torch.Tensor], torch.Tensor]     # a layer's token output -> (B, T', N, D)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EXPORT_TYPE = "timematters"                       # config.json model_type of our own export folders


# ------------------------------------------------------------------------------------ Hugging Face
class HFVideoClassifier(nn.Module):
    """A ``transformers`` video classifier seen through the timematters backbone surface.

    A family subclass says where its blocks are and how each block's output is laid out
    (:meth:`block_grids`), which layer GradCAM hooks (:meth:`gradcam_grid`) and its sizes (:meth:`sizes`).
    """

    model_type = ""
    input_name = "pixel_values"
    fixed_frames = True            # position embeddings for exactly config frames (False: RoPE)

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model
        self.kind = f"hf-{self.model_type}"
        cfg = hf_model.config
        self.num_frames, self.img_size, self.patch_size, self.tubelet = self.sizes(cfg)
        self.embed_dim = cfg.hidden_size
        self.num_classes = cfg.num_labels
        self.grid_size = (self.img_size // self.patch_size, self.img_size // self.patch_size)

    # -------------------------------------------------------------------------- family specifics
    @staticmethod
    def sizes(cfg) -> tuple[int, int, int, int]:
        """(frames, crop size, spatial patch, temporal tubelet) from the config."""
        return cfg.num_frames, _side(cfg.image_size), cfg.patch_size, 1

    def block_grids(self) -> list[tuple[nn.Module, Grid]]:
        """Every block in order, with the map of its output to ``(B, T', N, D)``."""
        raise NotImplementedError

    def gradcam_grid(self) -> tuple[nn.Module, Grid]:
        """The last block's pre-attention LayerNorm and the map of its output to ``(B, T', N, D)``."""
        raise NotImplementedError

    @property
    def classifier(self) -> nn.Module:
        return self.hf.classifier

    # ------------------------------------------------------------------------------ token layouts
    @property
    def frames_out(self) -> int:
        return self.num_frames // self.tubelet

    def thw(self, seq: torch.Tensor, skip: int = 0) -> torch.Tensor:
        """``(B, skip + T'*N, D)`` ordered (t, h, w) -> ``(B, T', N, D)``."""
        B, _, D = seq.shape
        return seq[:, skip:].reshape(B, self.frames_out, -1, D)

    # -------------------------------------------------------------------------------- the surface
    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(f"{self.kind}: expected a video batch (B, T, C, H, W), got shape {tuple(x.shape)}")
        if self.fixed_frames and x.shape[1] != self.num_frames:
            raise ValueError(f"{self.kind}: the model was built for {self.num_frames} frames, "
                             f"got clips of {x.shape[1]} frames")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.hf(**{self.input_name: x}).logits

    def forward_features(self, x: torch.Tensor, return_hidden: bool = False) -> Features:
        """One pass of the whole model with hooks: ``cls`` = the classifier's input ``(B, D)``, ``tokens`` =
        the last block's tokens, ``hidden`` = every block's ``(B, T', N, D)`` tokens."""
        self._check(x)
        grids = self.block_grids()
        outputs: list[torch.Tensor | None] = [None] * len(grids)
        captured: dict[str, torch.Tensor] = {}

        def keep(i: int):
            def hook(module, inputs, out):
                outputs[i] = out[0] if isinstance(out, tuple) else out
            return hook

        handles = [block.register_forward_hook(keep(i)) for i, (block, _) in enumerate(grids)]
        handles.append(self.classifier.register_forward_pre_hook(lambda m, inputs: captured.update(cls=inputs[0])))
        try:
            self.hf(**{self.input_name: x})
        finally:
            for h in handles:
                h.remove()
        hidden = [grid(out) for (_, grid), out in zip(grids, outputs)]
        return Features(cls=captured["cls"], tokens=hidden[-1], hidden=hidden if return_hidden else None)

    def forward_head(self, features: Features) -> torch.Tensor:
        return self.classifier(features.cls)

    def gradcam_layer(self) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        """(layer, reshape): the layer's output becomes ``(B, D, T', h, w)``."""
        layer, grid = self.gradcam_grid()
        h, w = self.grid_size

        def reshape(t: torch.Tensor) -> torch.Tensor:
            g = grid(t)                                                      # (B, T', N, D)
            return g.reshape(g.shape[0], g.shape[1], h, w, g.shape[-1]).permute(0, 4, 1, 2, 3)
        return layer, reshape

    def reset_classifier(self, num_classes: int) -> None:
        self.hf.classifier = nn.Linear(self.embed_dim, num_classes)
        self.num_classes = num_classes

    def no_weight_decay(self) -> set[str]:
        return set()


def _side(size) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"only square inputs are supported, got image size {tuple(size)}")
        return int(size[0])
    return int(size)


class HFTimesformer(HFVideoClassifier):
    """``(B, 1 + N*T, D)``: CLS first, patches ordered (h, w, t); the spatial attention's
    ``layernorm_before`` sees ``(B*T, 1 + N, D)``."""

    model_type = "timesformer"

    def _hwt(self, seq: torch.Tensor) -> torch.Tensor:
        B, _, D = seq.shape
        return seq[:, 1:].reshape(B, -1, self.num_frames, D).transpose(1, 2)    # (B, T, N, D)

    def block_grids(self):
        return [(layer, self._hwt) for layer in self.hf.timesformer.encoder.layer]

    def gradcam_grid(self):
        T = self.num_frames
        return (self.hf.timesformer.encoder.layer[-1].layernorm_before,
                lambda t: t.reshape(-1, T, t.shape[1], t.shape[2])[:, :, 1:])


class HFVideoMAE(HFVideoClassifier):
    """``(B, T'*N, D)`` ordered (t', h, w), no CLS; the classifier reads ``fc_norm(mean)`` (or the CLS-free
    mean of the normed tokens)."""

    model_type = "videomae"

    @staticmethod
    def sizes(cfg):
        return cfg.num_frames, _side(cfg.image_size), cfg.patch_size, cfg.tubelet_size

    def block_grids(self):
        return [(layer, self.thw) for layer in self.hf.videomae.encoder.layer]

    def gradcam_grid(self):
        return self.hf.videomae.encoder.layer[-1].layernorm_before, self.thw


class HFVivit(HFVideoClassifier):
    """``(B, 1 + T'*N, D)``: CLS first, then tubelets ordered (t', h, w)."""

    model_type = "vivit"

    @staticmethod
    def sizes(cfg):
        t, ph, pw = cfg.tubelet_size
        if ph != pw:
            raise ValueError(f"vivit: only square tubelets are supported, got {tuple(cfg.tubelet_size)}")
        return cfg.num_frames, _side(cfg.image_size), ph, t

    def block_grids(self):
        return [(layer, lambda s: self.thw(s, skip=1)) for layer in self.hf.vivit.layers]

    def gradcam_grid(self):
        return self.hf.vivit.layers[-1].layernorm_before, lambda s: self.thw(s, skip=1)


class HFVJEPA2(HFVideoClassifier):
    """``(B, T'*N, D)`` ordered (t', h, w) with 3-D RoPE (any multiple of the tubelet works; the frame count
    used is ``frames_per_clip``); the classifier reads the attentive pooler's output."""

    model_type = "vjepa2"
    input_name = "pixel_values_videos"
    fixed_frames = False

    @staticmethod
    def sizes(cfg):
        return cfg.frames_per_clip, _side(cfg.crop_size), _side(cfg.patch_size), cfg.tubelet_size

    def _thw(self, seq: torch.Tensor) -> torch.Tensor:                 # T' follows the input length
        B, L, D = seq.shape
        return seq.reshape(B, L // (self.grid_size[0] * self.grid_size[1]), -1, D)

    def block_grids(self):
        return [(layer, self._thw) for layer in self.hf.vjepa2.encoder.layer]

    def gradcam_grid(self):
        return self.hf.vjepa2.encoder.layer[-1].norm1, self._thw


class HFVideoPrism(HFVideoClassifier):
    """Factorised encoder (ViViT model 2): spatial blocks on ``(B*T, N, D)``, then temporal blocks on
    ``(B*N, T, D)``; the classifier reads the attention-pooling head's output."""

    model_type = "videoprism_vision_model"
    input_name = "pixel_values_videos"

    @staticmethod
    def sizes(cfg):
        t, ph, pw = cfg.tubelet_size
        if t != 1 or ph != pw:
            raise ValueError(f"videoprism: expected tubelets (1, p, p), got {tuple(cfg.tubelet_size)}")
        return cfg.num_frames, _side(cfg.image_size), ph, 1

    def _spatial(self, t: torch.Tensor) -> torch.Tensor:                # (B*T, N, D)
        return t.reshape(-1, self.num_frames, t.shape[1], t.shape[2])

    def _temporal(self, t: torch.Tensor) -> torch.Tensor:               # (B*N, T, D)
        N = self.grid_size[0] * self.grid_size[1]
        return t.reshape(-1, N, t.shape[1], t.shape[2]).transpose(1, 2)

    def block_grids(self):
        vm = self.hf.vision_model
        return [(b, self._spatial) for b in vm.spatial_layers] + [(b, self._temporal) for b in vm.temporal_layers]

    def gradcam_grid(self):
        return self.hf.vision_model.temporal_layers[-1].layernorm_before, self._temporal

    # the pooling head keeps its single query: logits come as (B, 1, C), its output as (B, 1, D)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[:, 0]

    def forward_features(self, x: torch.Tensor, return_hidden: bool = False) -> Features:
        features = super().forward_features(x, return_hidden)
        features.cls = features.cls[:, 0]
        return features


#: config.json ``model_type`` -> (adapter, transformers class name)
HF_FAMILIES: dict[str, tuple[type[HFVideoClassifier], str]] = {
    "timesformer": (HFTimesformer, "TimesformerForVideoClassification"),
    "videomae": (HFVideoMAE, "VideoMAEForVideoClassification"),
    "vivit": (HFVivit, "VivitForVideoClassification"),
    "vjepa2": (HFVJEPA2, "VJEPA2ForVideoClassification"),
    "videoprism_vision_model": (HFVideoPrism, "VideoPrismForVideoClassification"),
}


def adapt(hf_model: nn.Module) -> HFVideoClassifier:
    """Wrap a ``transformers`` video classifier of a family in :data:`HF_FAMILIES`."""
    model_type = hf_model.config.model_type
    if model_type not in HF_FAMILIES:
        raise ValueError(f"unsupported Hugging Face model_type {model_type!r}; supported: {sorted(HF_FAMILIES)}")
    return HF_FAMILIES[model_type][0](hf_model)


# --------------------------------------------------------------------------------- preprocessing
def processor_settings(folder: Path, model_type: str, crop: int) -> dict[str, Any]:
    """Mean, std and resize short side as the model's processor would apply them to ``uint8 / 255`` frames.

    Reads ``preprocessor_config.json`` or ``video_preprocessor_config.json``; without either, the defaults of
    the family's video processor class (VideoPrism has none: frames in [0, 1]). A processor that rescales
    by ``r`` with an ``offset`` (ViViT: ``x / 127.5 - 1``) before normalising is folded into one mean/std:
    ``(r*x + o - m) / s == (x/255 - (m - o)/(255 r)) / (s / (255 r))``.
    """
    proc, origin = None, "processor config"
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        if (folder / name).is_file():
            try:
                proc = json.loads((folder / name).read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{folder / name}: not valid JSON ({e})") from None
            origin = name
            break
    if proc is None:
        proc, origin = _default_processor(model_type)
    r = float(proc.get("rescale_factor", 1 / 255)) if proc.get("do_rescale", True) else 1.0
    o = -1.0 if proc.get("offset", False) else 0.0
    if proc.get("do_normalize", True):
        m, s = _triple(proc.get("image_mean", IMAGENET_MEAN)), _triple(proc.get("image_std", IMAGENET_STD))
    else:
        m, s = (0.0,) * 3, (1.0,) * 3
    mean = tuple((mi - o) / (255 * r) for mi in m)
    std = tuple(si / (255 * r) for si in s)
    size = proc.get("size") or {}
    short = size.get("shortest_edge") if isinstance(size, dict) else None
    return {"mean": mean, "std": std, "short_side": int(short or crop), "preprocessing": origin}


def _triple(v) -> tuple[float, float, float]:
    v = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    return tuple(v * 3) if len(v) == 1 else tuple(v)


def _default_processor(model_type: str) -> tuple[dict, str]:
    transformers = import_transformers()
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING_NAMES

    names = VIDEO_PROCESSOR_MAPPING_NAMES.get(model_type)
    name = names.get("torchvision") if isinstance(names, dict) else names
    cls = getattr(transformers, name, None) if name else None
    if cls is None:   # VideoPrism: the model reads frames scaled to [0, 1]
        return {"do_normalize": False}, "no processor config: frames in [0, 1]"
    keys = ("image_mean", "image_std", "rescale_factor", "do_rescale", "do_normalize", "size")
    return ({k: getattr(cls, k) for k in keys if getattr(cls, k, None) is not None},
            f"no processor config: {name} defaults")


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
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_source(source: str | Path) -> Path:
    """A local path as it is; a Hub id (``org/name``) downloaded (or found in the cache) with huggingface_hub."""
    path = Path(source)
    if path.exists():
        return path
    if not _HUB_ID.match(str(source)):
        raise FileNotFoundError(f"model '{source}' does not exist (neither a local path nor a Hub id org/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"model '{source}' is not a local path, and huggingface_hub (needed for Hub "
                                "ids) is not installed: pip install 'timematters[hub]'") from None
    try:
        # configs and safetensors weights; repos that only hold pytorch_model.bin get those instead
        folder = snapshot_download(str(source), allow_patterns=["*.json", "*.md", "*.safetensors"])
        if not any(Path(folder).glob("*.safetensors")):
            folder = snapshot_download(str(source), allow_patterns=["*.json", "*.md", "*.bin"])
    except Exception as e:  # network, missing repo, gated repo, offline without a cached copy
        raise FileNotFoundError(f"model '{source}': not a local path, and the Hub download failed "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return Path(folder)


def _read_config(folder: Path) -> dict | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg}: not valid JSON ({e})") from None


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise ValueError("Hugging Face models need transformers: pip install 'timematters[hub]'") from None
    return transformers


def load_hf(folder: Path, *, random_init: bool = False, seed: int = 0) -> tuple[HFVideoClassifier, dict]:
    """A ``save_pretrained`` folder of a family in :data:`HF_FAMILIES`; returns the adapter and its cfg."""
    transformers = import_transformers()
    model_type = (_read_config(folder) or {}).get("model_type")
    if model_type not in HF_FAMILIES:
        raise ValueError(f"{folder / 'config.json'}: model_type {model_type!r} is not a supported video "
                         f"classifier; supported: {sorted(HF_FAMILIES)}")
    adapter, cls_name = HF_FAMILIES[model_type]
    cls = getattr(transformers, cls_name)
    if random_init:
        torch.manual_seed(seed)
        hf_model = cls._from_config(transformers.AutoConfig.from_pretrained(str(folder)))
    else:
        hf_model = cls.from_pretrained(str(folder))
    model = adapter(hf_model)
    config = hf_model.config
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    cfg = {"name": f"{model_type} (Hugging Face)", "class_names": [id2label.get(i, f"LABEL_{i}")
                                                                  for i in range(config.num_labels)],
           "num_frames": model.num_frames, "img_size": model.img_size, "data": {},
           **processor_settings(folder, model_type, model.img_size)}
    return model, cfg


def load_export(folder: Path, config: dict, *, random_init: bool = False, seed: int = 0) -> tuple[nn.Module, dict]:
    """A folder written by ``timematters export-hf`` for a model transformers has no class for."""
    from safetensors.torch import load_file

    from timematters.models import create_model

    try:
        spec = {k: v for k, v in config.items() if k != "model_type"}
        if random_init:
            torch.manual_seed(seed)
        model = create_model(spec["name"], **spec["create_kwargs"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{folder / 'config.json'}: not a timematters export config ({e})") from None
    if not random_init:
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{folder}: no model.safetensors beside config.json")
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights}: weights do not fit '{spec['name']}': missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    return model, spec


def from_pretrained(source: str | Path, *, device: str | torch.device = "cpu", random_init: bool = False,
                    seed: int = 0) -> nn.Module:
    """Any model this library reads (see the module docstring), in eval mode, with ``model.pretrained_cfg``
    (``class_names``, ``num_frames``, ``img_size``, ``short_side``, ``mean``, ``std``, ``source``, ...).

    ``random_init`` builds the same architecture with fresh weights (seeded with ``seed``): the baseline of
    the frozen-feature protocols.
    """
    path = resolve_source(source)
    config = _read_config(path) if path.is_dir() else None
    if config is not None and config.get("model_type") == EXPORT_TYPE:
        model, cfg = load_export(path, config, random_init=random_init, seed=seed)
        kind = "timematters"
    elif config is not None:
        model, cfg = load_hf(path, random_init=random_init, seed=seed)
        kind = model.kind
    else:
        from timematters.engine.checkpoint import load_model, read_spec

        if random_init:
            from timematters.models import create_model

            cfg = read_spec(path)
            torch.manual_seed(seed)
            model = create_model(cfg["name"], **cfg["create_kwargs"])
        else:
            model, cfg = load_model(path)
        kind = "timematters"
    img = cfg["img_size"]
    img = int(img if isinstance(img, int) else img[0])
    cfg = {**cfg, "img_size": img, "short_side": int(cfg.get("short_side") or img), "mean": list(cfg["mean"]),
           "std": list(cfg["std"]), "kind": kind, "source": str(source)}
    model.pretrained_cfg = cfg
    return model.to(device).eval()


@dataclass
class LoadedModel:
    """A model ready for evaluation and the audit, with what they need to know about it."""

    model: nn.Module                       # forward(video) -> logits in the model's own label order
    kind: str                              # "timematters" | "hf-<model_type>"
    source: str
    class_names: list[str] | None          # the model's output labels
    num_frames: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    short_side: int = 0                    # frames are resized to this short side, then centre-cropped
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


def load_any(source: str | Path, device: str | torch.device = "cpu", *, random_init: bool = False,
             seed: int = 0) -> LoadedModel:
    """:func:`from_pretrained`, with its ``pretrained_cfg`` spelled out."""
    model = from_pretrained(source, device=device, random_init=random_init, seed=seed)
    cfg = model.pretrained_cfg
    data = cfg.get("data") or {}
    return LoadedModel(
        model=model, kind=cfg["kind"], source=str(source), class_names=cfg.get("class_names"),
        num_frames=int(cfg["num_frames"]), img_size=cfg["img_size"], mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]), short_side=cfg["short_side"], data_root=data.get("root"),
        data_format=data.get("format"), spec=cfg,
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
                        "(expected .blocks[-1].norm1 or a Hugging Face video classifier)")
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
