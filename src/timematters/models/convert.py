"""Pretrained weights: pure ``state_dict -> state_dict`` converters and :func:`load_pretrained`.

Formats read (detected from the path and the key names):

* timm ImageNet ViT / DeiT: ``.pth`` / ``.bin`` / ``.safetensors`` (timm key names) and the original
  Google JAX ``.npz`` (``Transformer/encoderblock_{i}/...``).
* official TimeSformer ``.pyth`` (``{"model_state": {"model.blocks.0.temporal_attn.qkv.weight": ...}}``).
* official Motionformer ``.pyth`` (``patch_embed_3d.*``, ``pre_logits.fc.*``; see ``official_motionformer_to_ours``).
* official X-ViT ``.pyth`` of the TIME code (``base_model.*`` + ``consensus.*``; see ``official_xvit_to_ours``).
* official TIME-trained ``.pyth`` of any of the three (the backbone plus ``temp_head``, ``mlp_q/k/v/proj/norm``,
  ``flow_head``; see ``official_time_to_ours``): the backbone loads, the heads are reported and returned in
  ``LoadReport.time_heads`` under the names of ``objectives.time.TIME``.
* a Hugging Face ``TimesformerModel`` / ``TimesformerForVideoClassification`` directory written by
  ``save_pretrained`` (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``).
* our own state dicts (also wrapped in ``{"model": ...}`` / ``{"state_dict": ...}``, ``module.`` prefixes), and
  our training checkpoints (``model.*`` + ``objective.*`` safetensors: the ``model.*`` part is loaded).

An image ViT is inflated into a video backbone following each paper's recipe (``inflate_vit_to_*``).
Nothing here executes pickled code: ``torch.load(weights_only=True)``, safetensors, ``np.load(allow_pickle=False)``.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .layers import resample_pos_embed, resample_time_embed

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

# --------------------------------------------------------------------------------------------------
# reading files


def _unwrap(obj, path: Path) -> StateDict:
    """Find the state dict inside a checkpoint object (``model_state`` / ``state_dict`` / ``model`` ...)."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in ("model_state", "state_dict", "model", "module", "model_ema"):
            if key in obj and isinstance(obj[key], Mapping):
                return _unwrap(obj[key], path)
    raise ValueError(f"{path}: no state dict found (looked for a mapping of tensors, or one under "
                     f"'model_state' / 'state_dict' / 'model' / 'module')")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def read_state_dict(path: str | Path) -> tuple[StateDict, str]:
    """Read weights from ``path`` and return ``(state_dict, source_format)``.

    ``source_format`` is one of ``"hf"``, ``"jax_npz"``, ``"pyth"`` or ``"torch"``; the state dict is
    returned in the file's own key names (convert it with :func:`to_canonical`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path}: a directory must be a Hugging Face save_pretrained folder with config.json")
        attention = read_hf_config(path).get("attention_type", "divided_space_time")
        if attention != "divided_space_time":
            raise ValueError(f"{path}/config.json: attention_type={attention!r}; only 'divided_space_time' "
                             "TimeSformer weights map onto timesformer_*")
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return _read_file(path / name), "hf"
        raise ValueError(f"{path}: no model.safetensors or pytorch_model.bin next to config.json")
    if path.suffix == ".npz":
        return jax_vit_to_timm(read_npz(path)), "jax_npz"
    return _read_file(path), "pyth" if path.suffix == ".pyth" else "torch"


def _read_file(path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # pickle with arbitrary objects, truncated file, ...
        raise ValueError(f"{path}: cannot read as a weights-only torch checkpoint ({e})") from None
    return _unwrap(obj, path)


# --------------------------------------------------------------------------------------------------
# key conversions (pure functions)


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def official_timesformer_to_ours(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Official TimeSformer (``model.`` prefix, same names as ours otherwise) -> ours."""
    return strip_prefix(sd, "model.")


def official_motionformer_to_ours(sd: Mapping[str, torch.Tensor], tubelet_size: int = 1) -> StateDict:
    """Official Motionformer (PySlowFast ``VisionTransformer`` with trajectory attention) -> ours.

    The official model holds a 2-D ``patch_embed`` and a 3-D ``patch_embed_3d`` (zero-initialised) and uses
    the 3-D one only when ``VIT.PATCH_SIZE_TEMP`` > 1: for ``tubelet_size`` > 1 ``patch_embed_3d`` becomes our
    ``patch_embed``, otherwise it is dropped (unused). Every other name (``pre_logits.fc``, ``temp_embed``,
    ``blocks.*.attn.proj_q`` ...) is ours already; a ``model.`` prefix is stripped.
    """
    sd = strip_prefix(sd, "model.")
    used = "patch_embed_3d." if tubelet_size > 1 else "patch_embed."
    out = {k: v for k, v in sd.items() if not k.startswith(("patch_embed.", "patch_embed_3d."))}
    out.update({"patch_embed." + k[len(used):]: v for k, v in sd.items() if k.startswith(used)})
    return out


# The official X-ViT (TIME's code): a timm ViT under ``base_model.`` (its temporal-shift wrappers hold no
# tensors) and the ``VitHead`` under ``consensus.``; one temporal encoder layer (TEMPORAL_HEAD.NUM_HIDDEN_LAYERS=1)
# and MLP_DIM = HIDDEN_DIM = embed_dim, as in its defaults.
_OFFICIAL_XVIT_NAMES = [
    ("base_model.", ""),                                      # patch_embed, cls/pos/temp_embed, blocks, norm
    ("consensus.cls_token", "temporal_cls"),
    ("consensus.temporal_encoder.0.", "consensus."),         # Block: norm1, attn.qkv (no bias), attn.proj, ...
    ("consensus.mlp_head.0.", "consensus_norm."),            # LayerNorm
    ("consensus.mlp_head.1.", "head_fc."),                   # Linear(D, MLP_DIM); then GELU, Dropout
    ("consensus.head.", "head."),                            # Linear(MLP_DIM, classes)
]


def official_xvit_to_ours(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Official X-ViT of the TIME code (``XVIT``: ``base_model.*`` + ``consensus.*``) -> ours.

    A tensor outside the table (a second temporal encoder layer, a ``base_model.pre_logits``) has no
    counterpart in our X-ViT and raises, naming it. A ``model.`` prefix is stripped.
    """
    return _rename(strip_prefix(sd, "model."), _OFFICIAL_XVIT_RULES, "official X-ViT weights")


# TIME's heads in the official code, one set on the top-level module of all three backbones (TimeSformer,
# MotionFormer, XVIT), and their counterparts in ``objectives.time.TIME``. Both compute the same functions:
#   order:  temp_head(tokens.mean(N))                               Linear(D, T)   == order_head.fc
#   flow:   q = mlp_q(tokens[:, 1:]), k = mlp_k(tokens[:, :-1]), v = mlp_v(tokens[:, :-1]) (Linear(D, D) each),
#           one head, softmax(q k^T / sqrt(D)) over the previous frame's N tokens, then
#           flow_head(mlp_norm(mlp_proj(attn @ v)))  (LayerNorm eps 1e-6, Linear(D, 9))
#                                                   == flow_head.{q, k, v, proj, norm, cls}
# (``tokens``: the final-normed patch tokens (B, T, N, D), after Motionformer's Linear + tanh pre_logits.)
OFFICIAL_TIME_HEADS = {
    "temp_head": "order_head.fc",
    "mlp_q": "flow_head.q",
    "mlp_k": "flow_head.k",
    "mlp_v": "flow_head.v",
    "mlp_proj": "flow_head.proj",
    "mlp_norm": "flow_head.norm",
    "flow_head": "flow_head.cls",
}


def has_official_time_heads(sd: Mapping[str, torch.Tensor]) -> bool:
    """True when ``sd`` holds TIME's heads under the official names (any ``module.`` / ``model.`` prefix)."""
    names = strip_prefix(strip_prefix(sd, "module."), "model.")
    return any(f"{m}.weight" in names for m in OFFICIAL_TIME_HEADS)


def split_official_time_heads(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict, StateDict]:
    """Split TIME's heads off an official state dict: ``(rest, heads, unmatched)``.

    ``heads`` are renamed to ``objectives.time.TIME``'s parameters (``OFFICIAL_TIME_HEADS``: ``temp_head.weight``
    -> ``order_head.fc.weight`` ...). ``unmatched`` keeps, under their official names, the tensors of those
    modules that ours has no counterpart for (anything but ``weight`` / ``bias``): the released code has none,
    a variant may. The shapes are left to whoever loads the heads (the order head's T is the clip length).
    """
    rest, heads, unmatched = {}, {}, {}
    for k, v in sd.items():
        module, _, leaf = k.partition(".")
        if module not in OFFICIAL_TIME_HEADS:
            rest[k] = v
        elif leaf in ("weight", "bias"):
            heads[f"{OFFICIAL_TIME_HEADS[module]}.{leaf}"] = v
        else:
            unmatched[k] = v
    return rest, heads, unmatched


def official_to_ours(sd: Mapping[str, torch.Tensor], tubelet_size: int = 1) -> StateDict:
    """An official backbone (TimeSformer, Motionformer, X-ViT of the TIME code) -> ours, by its key names."""
    sd = strip_prefix(strip_prefix(sd, "module."), "model.")
    if any(k.startswith("base_model.") for k in sd):
        return official_xvit_to_ours(sd)
    if any(k.startswith("patch_embed_3d.") for k in sd):
        return official_motionformer_to_ours(sd, tubelet_size)
    return official_timesformer_to_ours(sd)   # and a Motionformer without patch_embed_3d: our names already


def official_time_to_ours(sd: Mapping[str, torch.Tensor], tubelet_size: int = 1
                          ) -> tuple[StateDict, StateDict, StateDict]:
    """An official TIME-trained state dict -> ``(backbone, heads, unmatched)``.

    ``backbone``: our names, through the per-backbone converter (``official_timesformer_to_ours``,
    ``official_motionformer_to_ours`` with ``tubelet_size``, ``official_xvit_to_ours``). ``heads``: TIME's heads
    in the names of ``objectives.time.TIME`` (``OFFICIAL_TIME_HEADS``; the layers and their inputs are the
    same, so ``TIME.load_state_dict(heads, strict=False)`` gives the official order and flow outputs).
    ``unmatched``: head tensors without a counterpart (see :func:`split_official_time_heads`), for the caller
    to report. The ``model_state`` wrapping is undone by :func:`read_state_dict`; ``module.`` (DDP) and
    ``model.`` prefixes are stripped here. The debias term has no parameters.

    Not mapped by name (checked when the heads are loaded): the official order head has one output per
    *token* time step, so a Motionformer with tubelets (``PATCH_SIZE_TEMP`` > 1) has ``T / tubelet`` of them
    where ``TIME.order_head`` has ``model.num_frames``.
    """
    sd = strip_prefix(strip_prefix(sd, "module."), "model.")
    rest, heads, unmatched = split_official_time_heads(sd)
    return official_to_ours(rest, tubelet_size), heads, unmatched


# Hugging Face TimeSformer name <-> ours, both directions from one table. ``{i}`` is a block index; a name
# ending in "." is a prefix (``weight`` / ``bias`` follow), any other name is a whole tensor name.
_HF_TIMESFORMER_NAMES = [
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.time_embeddings", "time_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("encoder.layer.{i}.attention.attention.qkv.", "blocks.{i}.attn.qkv."),
    ("encoder.layer.{i}.attention.output.dense.", "blocks.{i}.attn.proj."),
    ("encoder.layer.{i}.temporal_attention.attention.qkv.", "blocks.{i}.temporal_attn.qkv."),
    ("encoder.layer.{i}.temporal_attention.output.dense.", "blocks.{i}.temporal_attn.proj."),
    ("encoder.layer.{i}.temporal_dense.", "blocks.{i}.temporal_fc."),
    ("encoder.layer.{i}.temporal_layernorm.", "blocks.{i}.temporal_norm1."),
    ("encoder.layer.{i}.layernorm_before.", "blocks.{i}.norm1."),
    ("encoder.layer.{i}.layernorm_after.", "blocks.{i}.norm2."),
    ("encoder.layer.{i}.intermediate.dense.", "blocks.{i}.mlp.fc1."),
    ("encoder.layer.{i}.output.dense.", "blocks.{i}.mlp.fc2."),
    ("layernorm.", "norm."),
    ("classifier.", "head."),
]


def _rules(pairs: list[tuple[str, str]], reverse: bool = False) -> list[tuple[re.Pattern, str]]:
    """(pattern, replacement) regex rules from a name table, HF -> ours or (``reverse``) ours -> HF."""
    out = []
    for a, b in pairs:
        src, dst = (b, a) if reverse else (a, b)
        pattern = "^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)") + ("" if src.endswith(".") else "$")
        out.append((re.compile(pattern), dst.replace("{i}", r"\1")))
    return out


_HF_TO_OURS = _rules(_HF_TIMESFORMER_NAMES)
_OURS_TO_HF = _rules(_HF_TIMESFORMER_NAMES, reverse=True)
_OFFICIAL_XVIT_RULES = _rules(_OFFICIAL_XVIT_NAMES)


def _rename(sd: Mapping[str, torch.Tensor], rules: list[tuple[re.Pattern, str]], what: str) -> StateDict:
    out = {}
    for k, v in sd.items():
        for pattern, repl in rules:
            new, n = pattern.subn(repl, k)
            if n:
                out[new] = v
                break
        else:
            raise ValueError(f"{what}: unknown tensor {k!r}")
    return out


def hf_timesformer_to_ours(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Hugging Face ``TimesformerModel`` / ``TimesformerForVideoClassification`` -> ours."""
    return _rename(strip_prefix(sd, "timesformer."), _HF_TO_OURS, "Hugging Face TimeSformer weights")


def ours_to_hf_timesformer(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Ours -> Hugging Face ``TimesformerForVideoClassification`` (the inverse of :func:`hf_timesformer_to_ours`):
    the backbone under ``timesformer.``, the head as ``classifier``."""
    out = _rename(sd, _OURS_TO_HF, "timematters TimeSformer weights")
    return {k if k.startswith("classifier.") else f"timesformer.{k}": v for k, v in out.items()}


def timesformer_to_hf_config(model: nn.Module, class_names: list[str]) -> dict:
    """``TimesformerConfig`` arguments describing a timematters TimeSformer (the inverse of
    :func:`hf_config_to_kwargs`), read from the built model."""
    h, w = model.img_size
    if h != w:
        raise ValueError(f"transformers' TimeSformer takes square inputs; this model takes {h}x{w}")
    block = model.blocks[0]
    return dict(
        image_size=h, patch_size=model.patch_size, num_channels=model.patch_embed.proj.in_channels,
        num_frames=model.num_frames, hidden_size=model.embed_dim, num_hidden_layers=len(model.blocks),
        num_attention_heads=block.attn.num_heads, intermediate_size=block.mlp.fc1.out_features,
        hidden_act="gelu", qkv_bias=block.attn.qkv.bias is not None, layer_norm_eps=model.norm.eps,
        attention_type="divided_space_time", num_labels=len(class_names),
        id2label=dict(enumerate(class_names)), label2id={n: i for i, n in enumerate(class_names)},
    )


def jax_vit_to_timm(w: Mapping[str, np.ndarray]) -> StateDict:
    """Original Google JAX ViT ``.npz`` (``Transformer/encoderblock_{i}/...``) -> timm ViT names."""
    prefix = next((p for p in ("", "opt/target/") if f"{p}embedding/kernel" in w), None)
    if prefix is None:
        raise ValueError("npz: not an original JAX ViT checkpoint (no 'embedding/kernel'); "
                         "big_vision layouts are not supported")
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()   # noqa: E731
    get = lambda k: w[prefix + k]                                      # noqa: E731
    sd = {
        "patch_embed.proj.weight": t(get("embedding/kernel").transpose(3, 2, 0, 1)),   # HWIO -> OIHW
        "patch_embed.proj.bias": t(get("embedding/bias")),
        "cls_token": t(get("cls")),
        "pos_embed": t(get("Transformer/posembed_input/pos_embedding")),
        "norm.weight": t(get("Transformer/encoder_norm/scale")),
        "norm.bias": t(get("Transformer/encoder_norm/bias")),
    }
    if prefix + "head/kernel" in w:
        sd["head.weight"] = t(get("head/kernel").T)
        sd["head.bias"] = t(get("head/bias"))
    i = 0
    while f"{prefix}Transformer/encoderblock_{i}/LayerNorm_0/scale" in w:
        b, o = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        mha = b + "MultiHeadDotProductAttention_1/"
        sd[o + "norm1.weight"] = t(get(b + "LayerNorm_0/scale"))
        sd[o + "norm1.bias"] = t(get(b + "LayerNorm_0/bias"))
        # query/key/value kernels are (D, H, d) -> rows of qkv (H*d, D); out kernel is (H, d, D)
        sd[o + "attn.qkv.weight"] = torch.cat(
            [t(get(f"{mha}{n}/kernel")).flatten(1).T for n in ("query", "key", "value")])
        sd[o + "attn.qkv.bias"] = torch.cat([t(get(f"{mha}{n}/bias")).reshape(-1) for n in ("query", "key", "value")])
        sd[o + "attn.proj.weight"] = t(get(mha + "out/kernel")).flatten(0, 1).T
        sd[o + "attn.proj.bias"] = t(get(mha + "out/bias"))
        sd[o + "norm2.weight"] = t(get(b + "LayerNorm_2/scale"))
        sd[o + "norm2.bias"] = t(get(b + "LayerNorm_2/bias"))
        for r in range(2):
            sd[o + f"mlp.fc{r + 1}.weight"] = t(get(f"{b}MlpBlock_3/Dense_{r}/kernel").T)
            sd[o + f"mlp.fc{r + 1}.bias"] = t(get(f"{b}MlpBlock_3/Dense_{r}/bias"))
        i += 1
    if i == 0:
        raise ValueError("npz: no 'Transformer/encoderblock_0' found")
    return sd


def timm_vit_to_jax(sd: Mapping[str, torch.Tensor], num_heads: int) -> dict[str, np.ndarray]:
    """timm ViT names -> original JAX ``.npz`` layout (the inverse of :func:`jax_vit_to_timm`)."""
    n = lambda x: x.detach().float().cpu().numpy()   # noqa: E731
    D = sd["cls_token"].shape[-1]
    d = D // num_heads
    w = {
        "embedding/kernel": n(sd["patch_embed.proj.weight"]).transpose(2, 3, 1, 0),
        "embedding/bias": n(sd["patch_embed.proj.bias"]),
        "cls": n(sd["cls_token"]),
        "Transformer/posembed_input/pos_embedding": n(sd["pos_embed"]),
        "Transformer/encoder_norm/scale": n(sd["norm.weight"]),
        "Transformer/encoder_norm/bias": n(sd["norm.bias"]),
    }
    if "head.weight" in sd:
        w["head/kernel"] = n(sd["head.weight"]).T
        w["head/bias"] = n(sd["head.bias"])
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b, o = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        mha = b + "MultiHeadDotProductAttention_1/"
        w[b + "LayerNorm_0/scale"], w[b + "LayerNorm_0/bias"] = n(sd[o + "norm1.weight"]), n(sd[o + "norm1.bias"])
        qkv_w, qkv_b = n(sd[o + "attn.qkv.weight"]), n(sd[o + "attn.qkv.bias"])
        for j, name in enumerate(("query", "key", "value")):
            w[f"{mha}{name}/kernel"] = qkv_w[j * D:(j + 1) * D].T.reshape(D, num_heads, d)
            w[f"{mha}{name}/bias"] = qkv_b[j * D:(j + 1) * D].reshape(num_heads, d)
        w[mha + "out/kernel"] = n(sd[o + "attn.proj.weight"]).T.reshape(num_heads, d, D)
        w[mha + "out/bias"] = n(sd[o + "attn.proj.bias"])
        w[b + "LayerNorm_2/scale"], w[b + "LayerNorm_2/bias"] = n(sd[o + "norm2.weight"]), n(sd[o + "norm2.bias"])
        for r in range(2):
            w[f"{b}MlpBlock_3/Dense_{r}/kernel"] = n(sd[o + f"mlp.fc{r + 1}.weight"]).T
            w[f"{b}MlpBlock_3/Dense_{r}/bias"] = n(sd[o + f"mlp.fc{r + 1}.bias"])
        i += 1
    return {k: np.ascontiguousarray(v) for k, v in w.items()}


# --------------------------------------------------------------------------------------------------
# which architecture a state dict holds


def detect_arch(sd: Mapping[str, torch.Tensor]) -> str:
    """``"vit"``, ``"timesformer"``, ``"motionformer"`` or ``"xvit"`` from canonical (our) key names."""
    keys = set(sd)
    if "blocks.0.temporal_attn.qkv.weight" in keys:
        return "timesformer"
    if "blocks.0.attn.proj_q.weight" in keys:
        return "motionformer"
    if any(k.startswith("consensus.") for k in keys) or "temp_embed" in keys and sd["temp_embed"].ndim == 4:
        return "xvit"
    if "blocks.0.attn.qkv.weight" in keys:
        return "vit"
    raise ValueError("unrecognised weights: no 'blocks.0.attn.qkv.weight' (first keys: "
                     f"{sorted(keys)[:8]})")


def split_model_tensors(sd: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """Keep the backbone when tensors are stored under ``model.`` next to others (our training
    checkpoints hold ``model.*`` and ``objective.*``); returns (state_dict, names left out)."""
    if not any(k.startswith("model.") for k in sd):
        return dict(sd), []
    kept = {k: v for k, v in sd.items() if k.startswith("model.")}
    return kept, [k for k in sd if k not in kept]


def to_canonical(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Any supported key layout -> our names (HF, official / our checkpoints' ``model.``, DDP ``module.``)."""
    sd = strip_prefix(sd, "module.")
    if any(k.startswith(("embeddings.patch_embeddings", "timesformer.embeddings")) for k in sd):
        return hf_timesformer_to_ours(sd)
    if any(k.startswith(("base_model.blocks.", "model.base_model.blocks.")) for k in sd):
        return official_xvit_to_ours(sd)
    if any(k.startswith("model.blocks.") for k in sd):
        return official_timesformer_to_ours(sd)
    return dict(sd)


# --------------------------------------------------------------------------------------------------
# inflation of an image ViT into video backbones


def _drop_head(sd: Mapping[str, torch.Tensor]) -> StateDict:
    return {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm.", "pre_logits."))}


def _num_blocks(sd: Mapping[str, torch.Tensor]) -> int:
    return len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})


def inflate_vit_to_timesformer(sd: Mapping[str, torch.Tensor], num_frames: int) -> StateDict:
    """TimeSformer's ImageNet init: temporal attention/norm copied from the spatial ones, ``temporal_fc``
    and ``time_embed`` zero (so the network starts as the image model), classifier dropped.

    The official code leaves block 0's ``temporal_fc`` at its random init; a pure function has no random
    init to give, so we zero it in every block.
    """
    out = _drop_head(sd)
    D = out["cls_token"].shape[-1]
    for i in range(_num_blocks(out)):
        p = f"blocks.{i}."
        for name in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias"):
            if p + "attn." + name in out:
                out[p + "temporal_attn." + name] = out[p + "attn." + name].clone()
        out[p + "temporal_norm1.weight"] = out[p + "norm1.weight"].clone()
        out[p + "temporal_norm1.bias"] = out[p + "norm1.bias"].clone()
        out[p + "temporal_fc.weight"] = torch.zeros(D, D)
        out[p + "temporal_fc.bias"] = torch.zeros(D)
    out["time_embed"] = torch.zeros(1, num_frames, D)
    return out


def inflate_patch_kernel(w: torch.Tensor, tubelet_size: int) -> torch.Tensor:
    """Central-frame inflation: a 2-D patch kernel (D, C, p, p) placed at the central time step of a
    (D, C, t, p, p) kernel, zeros elsewhere (so a static clip gives the image features)."""
    out = w.new_zeros(w.shape[0], w.shape[1], tubelet_size, *w.shape[2:])
    out[:, :, tubelet_size // 2] = w
    return out


def inflate_vit_to_motionformer(sd: Mapping[str, torch.Tensor], num_frames: int, tubelet_size: int = 1) -> StateDict:
    """Motionformer's ImageNet init: central-frame inflation of the patch kernel, zero ``temp_embed``.

    The official code leaves the temporal projections ``proj_q`` / ``proj_kv`` at random init; we start
    them from the pretrained query and key/value projections of the same block.
    """
    out = _drop_head(sd)
    D = out["cls_token"].shape[-1]
    if tubelet_size > 1:
        out["patch_embed.proj.weight"] = inflate_patch_kernel(out["patch_embed.proj.weight"], tubelet_size)
    for i in range(_num_blocks(out)):
        p = f"blocks.{i}.attn."
        out[p + "proj_q.weight"] = out[p + "qkv.weight"][:D].clone()
        out[p + "proj_kv.weight"] = out[p + "qkv.weight"][D:].clone()
        if p + "qkv.bias" in out:
            out[p + "proj_q.bias"] = out[p + "qkv.bias"][:D].clone()
            out[p + "proj_kv.bias"] = out[p + "qkv.bias"][D:].clone()
    out["temp_embed"] = torch.zeros(1, num_frames // tubelet_size, D)
    return out


# parts of a video backbone an image ViT has no counterpart for: they keep the model's own init
NEW_IN_VIDEO = {
    "xvit": ("temporal_cls", "consensus.", "consensus_norm.", "head_fc."),   # the official head
    "motionformer": ("pre_logits.",),                                                      # Linear + tanh
}


def inflate_vit_to_xvit(sd: Mapping[str, torch.Tensor], num_frames: int) -> StateDict:
    """X-ViT's ImageNet init: the ViT unchanged, zero temporal embedding; the head over the per-frame CLS
    tokens is new (not in the image checkpoint), so it stays at the model's own init (``NEW_IN_VIDEO``)."""
    out = _drop_head(sd)
    D = out["cls_token"].shape[-1]
    out["temp_embed"] = torch.zeros(1, num_frames, 1, D)
    return out


# --------------------------------------------------------------------------------------------------
# adapting to one model and loading


@dataclass
class LoadReport:
    path: str
    source_format: str
    source_arch: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    time_heads: StateDict = field(default_factory=dict)   # official TIME heads, in objectives.time.TIME's names
    time_unmatched: list[str] = field(default_factory=list)   # official TIME head tensors with no counterpart

    def __str__(self) -> str:
        lines = [f"loaded {self.source_arch} weights ({self.source_format}) from {self.path}"]
        for name in ("resampled", "dropped", "missing", "unexpected"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"  {name} ({len(keys)}): {', '.join(keys)}")
        return "\n".join(lines)


def model_arch(model: nn.Module) -> str:
    arch = getattr(model, "arch", None)
    if arch is None:
        raise TypeError(f"{type(model).__name__} is not a timematters backbone (no 'arch' attribute)")
    return arch


def convert_for_model(sd: Mapping[str, torch.Tensor], model: nn.Module) -> tuple[StateDict, str]:
    """Canonical names, then inflate an image ViT when ``model`` is a video backbone."""
    sd = to_canonical(sd)
    if any(k.startswith(("patch_embed_3d.", "model.patch_embed_3d.")) for k in sd):   # official Motionformer
        sd = official_motionformer_to_ours(sd, getattr(model.patch_embed, "tubelet_size", 1))
    src, dst = detect_arch(sd), model_arch(model)
    if src == dst:
        return sd, src
    if src == "vit" and dst == "timesformer":
        return inflate_vit_to_timesformer(sd, model.num_frames), src
    if src == "vit" and dst == "motionformer":
        return inflate_vit_to_motionformer(sd, model.num_frames, model.patch_embed.tubelet_size), src
    if src == "vit" and dst == "xvit":
        return inflate_vit_to_xvit(sd, model.num_frames), src
    raise ValueError(f"cannot load {src} weights into a {dst} model")


def adapt_to_model(sd: Mapping[str, torch.Tensor], model: nn.Module, report: LoadReport) -> StateDict:
    """Resample position/time embeddings to the model's sizes, drop a classifier of another size, and
    raise on any other shape mismatch, naming the tensor."""
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k not in own or own[k].shape == v.shape:
            out[k] = v
            continue
        target = own[k].shape
        if k == "pos_embed":
            n_old = v.shape[1] - 1
            side = int(round(n_old ** 0.5))
            if side * side != n_old:
                raise ValueError(f"pos_embed: cannot infer the grid of {n_old} patches (not square)")
            out[k] = resample_pos_embed(v, model.grid_size, (side, side))
        elif k in ("time_embed", "temp_embed"):
            out[k] = resample_time_embed(v, target[1], dim=1)
        elif k.startswith("head."):
            report.dropped.append(f"{k} {tuple(v.shape)} (model has {tuple(target)})")
            continue
        elif k == "patch_embed.proj.weight" and v.ndim == 4 and len(target) == 5:
            out[k] = inflate_patch_kernel(v, target[2])
        else:
            raise ValueError(f"shape mismatch for tensor {k!r}: checkpoint {tuple(v.shape)}, model {tuple(target)}")
        report.resampled.append(f"{k} {tuple(v.shape)} -> {tuple(target)}")
    return out


def load_pretrained(model: nn.Module, path: str | Path, *, strict: bool = True) -> LoadReport:
    """Load weights of any supported format into ``model`` (see the module docstring).

    A missing classifier is always allowed (a new task). With ``strict``, any other missing or unexpected
    tensor raises ``ValueError`` listing them; otherwise they are only reported.
    """
    sd, fmt = read_state_dict(path)
    sd, left_out = split_model_tensors(strip_prefix(sd, "module."))
    heads, unmatched = {}, {}
    if has_official_time_heads(sd):                      # an official TIME-trained checkpoint
        sd, heads, unmatched = official_time_to_ours(sd, getattr(model.patch_embed, "tubelet_size", 1))
    sd, src = convert_for_model(sd, model)
    report = LoadReport(path=str(path), source_format=fmt, source_arch=src, time_heads=heads,
                        time_unmatched=sorted(unmatched))
    if left_out:
        prefixes = sorted({k.split(".")[0] + ".*" for k in left_out})
        report.dropped.append(f"{len(left_out)} tensors outside model.* ({', '.join(prefixes)})")
    if heads or unmatched:
        official = sorted({k.split(".")[0] for k in unmatched} | {m for m, ours in OFFICIAL_TIME_HEADS.items()
                                                                  if f"{ours}.weight" in heads})
        report.dropped.append(f"{len(heads) + len(unmatched)} TIME head tensors ({', '.join(official)})")
        log.warning("%s: not loaded into the backbone: the official TIME heads %s (%d tensors; in "
                    "LoadReport.time_heads as objectives.time.TIME's order_head / flow_head)%s", path,
                    ", ".join(official), len(heads),
                    f"; with no counterpart in TIME: {', '.join(sorted(unmatched))}" if unmatched else "")
    sd = adapt_to_model(sd, model, report)
    result = model.load_state_dict(sd, strict=False)
    report.missing = list(result.missing_keys)
    report.unexpected = list(result.unexpected_keys)
    new_parts = NEW_IN_VIDEO.get(model_arch(model), ()) if src == "vit" else ()
    allowed = {k for k in report.missing if k.startswith(("head.", *new_parts))}
    bad_missing = [k for k in report.missing if k not in allowed]
    if strict and (bad_missing or report.unexpected):
        raise ValueError(f"{path}: weights do not fit {type(model).__name__}:\n"
                         f"  missing ({len(bad_missing)}): {', '.join(bad_missing) or '-'}\n"
                         f"  unexpected ({len(report.unexpected)}): {', '.join(report.unexpected) or '-'}")
    log.info("%s", report)
    return report


def read_hf_config(path: str | Path) -> dict:
    """The ``config.json`` of a Hugging Face directory, as a dict (for building a matching model)."""
    with open(Path(path) / "config.json") as f:
        return json.load(f)


def hf_config_to_kwargs(cfg: Mapping) -> dict:
    """``create_model`` keyword arguments that match a Hugging Face ``TimesformerConfig``."""
    if cfg.get("attention_type", "divided_space_time") != "divided_space_time":
        raise ValueError(f"only attention_type='divided_space_time' maps to timesformer, got {cfg['attention_type']!r}")
    return dict(
        img_size=cfg["image_size"], patch_size=cfg["patch_size"], num_frames=cfg["num_frames"],
        embed_dim=cfg["hidden_size"], depth=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
        mlp_ratio=cfg["intermediate_size"] / cfg["hidden_size"], qkv_bias=cfg.get("qkv_bias", True),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-6), in_chans=cfg.get("num_channels", 3),
    )
