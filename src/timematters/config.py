"""Run configuration: a small dataclass tree loaded from YAML with ``key=value`` overrides.

Nothing below the CLI reads this tree: the CLI turns it into typed constructor arguments
(``create_model(...)``, ``VideoDataset(...)``, objectives, ``TrainSettings``). The resolved
config is written next to every run as ``config.yaml``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataConfig:
    root: str = "data/synth"           # dataset directory (SSv2 layout, Kinetics CSV, list file, ...)
    format: str = "ssv2"               # ssv2 | kinetics | list | ucf101 | folder | imagefolder
    train_split: str = "train"         # split names understood by the annotation reader
    val_split: str = "validation"
    num_frames: int = 8                # T frames per clip
    img_size: int = 64                 # crop size (pixels, square)
    sampling: str = "tsn"              # tsn (one frame per segment) | tsn_slowfast (the official SSv2 rule) | dense
    stride: int = 2                    # dense sampling stride
    scale: tuple[int, int] = (64, 80)  # train short-side jitter range before the crop
    scale_sampling: str = "uniform"    # uniform | inverse (1/side uniform: PySlowFast's INV_UNIFORM_SAMPLE)
    randaugment: str = ""              # "" = off, else a timm spec, e.g. "rand-m20-mstd0.5-inc1"
    flip: bool = False                 # off by default: SSv2 has left/right classes
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    num_workers: int = 2
    max_fail_ratio: float = 0.2        # stop with an error when more than this share of video loads fail (per pass)
    allow_outside_root: bool = False   # accept annotation entries that resolve outside data.root
    decode_backend: str = "auto"       # auto (torchcodec when it loads, else PyAV) | pyav | torchcodec
    val_views: int = 1                 # temporal views at eval
    val_crops: int = 1                 # spatial crops at eval (1 = centre, 3 = left/centre/right)
    classes: str | list[str] = ""      # class subset (video data): a name or group, or a list of them (groups:
                                       # temporal, static, temporal_subset, static_subset, the synth benchmark's)


@dataclass
class FlowConfig:
    """Flow-direction labels; computed for train clips whenever the objective has a flow term."""
    threshold: Any = "relative"        # "relative" (reference code) or a float tau in pixels
    scale: float = 1.0                 # flow input scale (1.0 = full resolution)
    estimator: str = "farneback"       # farneback | dis_ultrafast | dis_fast | dis_medium
    fraction: float = 1.0              # share of train clips that get labels (the rest are ignored)


@dataclass
class ModelConfig:
    name: str = "timesformer_tiny"
    pretrained: str = ""               # path to a checkpoint (ViT / TimeSformer .pyth / HF dir)
    depth: int = 0                     # 0 = the registered default
    embed_dim: int = 0
    num_heads: int = 0
    patch_size: int = 0
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False
    extra: dict = field(default_factory=dict)  # any other constructor keyword


@dataclass
class ObjectiveConfig:
    method: str = "supervised"         # supervised | time | rtt | taco | svt | image_time
    label_smoothing: float = 0.0
    weights: dict = field(default_factory=dict)  # per-term lambda, e.g. {order: 1, debias: 1, flow: 1}
    args: dict = field(default_factory=dict)     # method keyword arguments (typed in each objective)


@dataclass
class OptimConfig:
    epochs: int = 10
    batch_size: int = 16               # global batch (all ranks, after accumulation)
    micro_batch: int = 0               # per-rank batch per step; 0 = global / world size
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    no_decay: str = "1d+embeddings"    # params without weight decay: 1d (biases, norms) | 1d+embeddings (+ pos/time/CLS)
    amsgrad: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"           # cosine | step
    milestones: tuple[int, ...] = ()   # step schedule: epochs at which lr *= gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    clip_grad: float = 0.0             # 0 = off
    amp: str = "auto"                  # auto (bf16/fp16 on CUDA, off on CPU) | off | bf16 | fp16


@dataclass
class RunConfig:
    out: str = "runs/default"          # run directory (checkpoints, logs, config.yaml)
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    deterministic: bool = False
    ckpt_every_steps: int = 0          # 0 = only at epoch ends
    log_every: int = 10
    eval_shuffles: int = 1             # shuffled copies per clip at validation
    tensorboard: bool = True
    wandb: str = ""                    # Weights & Biases project ("" = off; pip install 'timematters[wandb]')


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


class ConfigError(ValueError):
    pass


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any or tp is dict:
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        if len(args) > 1 and args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key '{key}': expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        return tuple(_coerce(v, inner, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is str and value is None:
        return ""
    if tp is str and isinstance(value, bool):  # YAML 1.1 reads off/on/no/yes as booleans
        raise ConfigError(f"config key '{key}': expected text, got {value!r} (YAML reads off/on/no/yes as "
                          f"true/false: quote the value, e.g. {key.rsplit('.', 1)[-1]}: \"off\")")
    raise ConfigError(f"config key '{key}': expected {getattr(tp, '__name__', tp)}, got {value!r}")


class _Text(str):
    """An override's value exactly as typed; :func:`_merge` reads it by the key's type."""


def _from_text(value: Any, tp: Any) -> Any:
    """A string-typed key takes the text as given (``optim.amp=off`` stays "off"); others parse it as YAML."""
    if isinstance(value, _Text):
        return str(value) if tp is str else (yaml.safe_load(value) if value != "" else "")
    if isinstance(value, dict) and not dataclasses.is_dataclass(tp):  # free-form mapping, e.g. model.extra.k=v
        return {k: _from_text(v, Any) for k, v in value.items()}
    return value


def _merge(obj: Any, updates: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        value = _from_text(value, hints[key])
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}': expected a mapping, got {value!r}")
            _merge(current, value, full + ".")
        elif isinstance(current, dict) and isinstance(value, dict):
            current.update(value)
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``; the value is read as YAML unless the key is a string."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    value = _Text(raw)
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    cfg = Config()
    if path:
        path = resolve_config_path(path)
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        try:
            _merge(cfg, data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for ov in overrides:
        _merge(cfg, parse_override(ov))
    return cfg


def to_dict(cfg: Any) -> dict:
    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return {k: conv(v) for k, v in dataclasses.asdict(cfg).items()}


# keys a resumed run may change: they alter what is logged or saved, not what is computed
RESUME_FREE_KEYS = {"run.log_every", "run.tensorboard", "run.wandb", "run.ckpt_every_steps", "data.num_workers"}


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (config sections only; dict-valued keys stay whole)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and dataclasses.is_dataclass(getattr(Config(), k, None)):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(old: Config, new: Config, ignore: set[str] = frozenset()) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every key whose value differs, except those in ``ignore``."""
    a, b = flatten(to_dict(old)), flatten(to_dict(new))
    return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
            if k not in ignore and a.get(k) != b.get(k)]


def save_config(cfg: Config, path: str | Path) -> None:
    from .utils import atomic_write_text  # utils imports torch; keep this module light

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # shipped inside the package


def resolve_config_path(path: str | Path) -> Path:
    """A config is a file path, or the name of one shipped in ``timematters/configs/`` (``.yaml`` optional)."""
    p = Path(path)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"config file '{path}' not found (also looked in {CONFIG_DIR})")
