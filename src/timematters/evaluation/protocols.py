"""Evaluation protocols of self-supervised video backbones.

    timematters linear    --checkpoint RUN --data DIR   linear probe on frozen features
                          [--task sync|before-after|arrow]  (or a time-related probe, see below)
    timematters finetune  --checkpoint RUN --data DIR   full fine-tuning through the training engine
    timematters knn       --checkpoint RUN --data DIR   weighted kNN vote on frozen features
    timematters retrieval --checkpoint RUN --data DIR   top-k hit rate, test queries vs the train set

Every command writes a metrics JSON (``--out``); ``--random-init`` evaluates the checkpoint's
architecture with fresh random weights (the baseline every pretraining method is compared with).
Videos that fail to load are left out, never replaced: the JSON gives ``num_failed`` and ``failed``
(split, path, reason) and one line on screen names them; ``substituted_frames`` counts the frames the
decoder never emitted (the nearest decoded frame before each was used).

- Which network: when the run's objective keeps an EMA teacher (SVT, as DINO), the teacher is evaluated
  (``--student`` for the student); otherwise the trained backbone.
- Pretext report: every record of a pretrained checkpoint carries ``pretext`` (the pretext accuracies of
  its last logged training steps, ``acc/*`` next to their chance level ``chance/*``, SVT's teacher
  entropy and KL) and ``pretrained``: false, with a warning, when every pretext task stayed at chance
  (or the SVT teacher collapsed), i.e. the weights are drifted random weights.
- ``--target``: ``class`` (default) or a nuisance factor of the pretraining benchmark (``shape``,
  ``side``, ``background``; ``timematters synth --preset pretrain``): how well the features predict it.

- Linear probe: features of the frozen backbone (``Features.cls``, averaged over ``--views`` clips per
  video), standardised with train statistics, then a linear classifier. ``--solver sgd`` (default): SGD
  with momentum 0.9 and a cosine schedule, as SVT's linear evaluation; ``--solver lbfgs``: multinomial
  logistic regression with an L2 penalty fitted full-batch with L-BFGS.
- kNN (as DINO/SVT): l2-normalised features, the k = 20 most cosine-similar train videos vote with
  weight exp(sim / T), T = 0.07.
- Retrieval (RTT Table 4): features averaged over 10 clips per video, normalised with the train-set
  statistics (RTT: "we first normalize the features using the training set statistics"), cosine
  similarity; a test query is a hit at k when a train video of its class is among its k nearest.
- Synchronisation (RTT Table 3, ``linear --task sync``): two overlapping clips of a video, the second
  delayed by d in -6..+6 frames; a classifier of three fully connected layers on psi(x1) - psi(x2)
  predicts d (13 classes): accuracy and mean absolute error in frames.
- Fine-tuning (``finetune``): the training engine (``engine/train.py``: checkpoints, resume, AMP, DDP)
  with the supervised objective, started from the evaluated backbone; the run directory is
  ``--run-dir`` (default: beside ``--out``), and a killed fine-tuning resumes there.
- Before-after (``linear --task before-after``): two non-overlapping sub-clips of ``clip_len / 2``
  frames, concatenated in time order (class 0) or swapped (class 1) into one clip; the same
  three-layer classifier on its feature predicts the order.
- Arrow of time (``linear --task arrow``): every video's clip (as ``classify`` samples it) played forwards
  and backwards. A linear probe on the frozen features predicts the direction (``accuracy``, chance 50 %),
  and linear and kNN probes predict class x direction (``class_direction_top1``, ``knn_class_direction_top1``,
  2K classes). Features that ignore frame order score exactly chance on the direction and at most half
  their class accuracy on class x direction (a randomly initialised TimeSformer, whose time embedding
  starts at zero, is such a model).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data.dataset import LoadFailures
from ..utils import Progress, atomic_write_text, resolve_device, rng_for, sized, torch_rng_for
from .features import clip_features, extract_features, video_keys

RETRIEVAL_KS = (1, 5, 10, 20, 50)
FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # video (B, T, C, H, W) -> (B, D)


# ============================================================================ classifiers on features
def standardize(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6) -> list[torch.Tensor]:
    """Subtract the train mean and divide by the train standard deviation (per dimension)."""
    mean, std = train.mean(dim=0), train.std(dim=0, unbiased=False).clamp_min(eps)
    return [(x - mean) / std for x in (train, *others)]


def make_classifier(in_dim: int, num_classes: int, hidden: tuple[int, ...] = ()) -> nn.Module:
    """A linear classifier, or an MLP with ReLU between ``hidden`` layers (hidden=(h, h): 3 FC layers)."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers) if len(layers) > 1 else layers[0]


def fit_classifier_sgd(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, hidden: tuple[int, ...] = (),
                       epochs: int = 100, lr: float = 0.1, batch_size: int = 256, weight_decay: float = 0.0,
                       seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
    """Minibatch SGD (momentum 0.9, cosine schedule per step) on features x (N, D), labels y (N,)."""
    device = torch.device(device)
    torch.manual_seed(seed)
    clf = make_classifier(x.shape[1], num_classes, hidden).to(device)
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    x, y = x.to(device), y.to(device)
    n = len(x)
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, epochs * steps_per_epoch)
    g = torch_rng_for(seed, 0x11AE)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(device)
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return clf.eval()


def fit_classifier_lbfgs(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, l2: float = 1e-4,
                         max_iter: int = 500, device: str | torch.device = "cpu") -> nn.Module:
    """Multinomial logistic regression: mean cross-entropy + l2 * ||W||^2, full batch, L-BFGS."""
    device = torch.device(device)
    clf = nn.Linear(x.shape[1], num_classes).to(device)
    nn.init.zeros_(clf.weight)
    nn.init.zeros_(clf.bias)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(clf(x), y) + l2 * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return clf.eval()


@torch.no_grad()
def predict(clf: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits (N, K) on the classifier's device, returned on the CPU."""
    device = next(clf.parameters()).device
    return torch.cat([clf(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def topk_accuracy(scores: torch.Tensor, y: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent for k in ``ks`` (k capped at the number of classes)."""
    out = {}
    for k in ks:
        kk = min(k, scores.shape[1])
        hit = (scores.topk(kk, dim=1).indices == y[:, None]).any(dim=1).float().mean().item()
        out[f"top{k}"] = 100.0 * hit
    return out


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                 num_classes: int, solver: str = "sgd", epochs: int = 100, lr: float = 0.1,
                 batch_size: int = 256, weight_decay: float = 0.0, l2: float = 1e-4, seed: int = 0,
                 device: str | torch.device = "cpu") -> dict[str, float]:
    """Standardise with train statistics, fit a linear classifier, report train and test accuracy (%)."""
    train_x, test_x = standardize(train_x.float(), test_x.float())
    if solver == "sgd":
        clf = fit_classifier_sgd(train_x, train_y, num_classes, epochs=epochs, lr=lr, batch_size=batch_size,
                                 weight_decay=weight_decay, seed=seed, device=device)
    elif solver == "lbfgs":
        clf = fit_classifier_lbfgs(train_x, train_y, num_classes, l2=l2, device=device)
    else:
        raise ValueError(f"linear probe: solver must be 'sgd' or 'lbfgs', got {solver!r}")
    test = topk_accuracy(predict(clf, test_x), test_y)
    train = topk_accuracy(predict(clf, train_x), train_y, ks=(1,))
    return {"top1": test["top1"], "top5": test["top5"], "train_top1": train["top1"]}


def knn_scores(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, *, num_classes: int,
               k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN votes (N_test, K): the k most cosine-similar train features vote for their class with
    weight exp(sim / temperature)."""
    if k < 1:
        raise ValueError(f"kNN: k must be >= 1, got {k}")
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    k = min(k, len(train_x))
    out = []
    for i in range(0, len(test_x), chunk):
        sim = test_x[i:i + chunk] @ train_x.t()                          # (n, N_train)
        top, idx = sim.topk(k, dim=1)                                    # (n, k)
        weights = (top / temperature).exp()
        votes = torch.zeros(len(sim), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_y[idx], weights)
        out.append(votes)
    return torch.cat(out)


def knn_classify(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                 num_classes: int, k: int = 20, temperature: float = 0.07) -> dict[str, float]:
    scores = knn_scores(train_x, train_y, test_x, num_classes=num_classes, k=k, temperature=temperature)
    return topk_accuracy(scores, test_y)


def retrieval_hit_rates(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                        ks: Iterable[int] = RETRIEVAL_KS, normalize: bool = True) -> dict[str, float]:
    """Share (%) of test queries with a train video of their class among their k nearest (cosine), per k.

    ``normalize`` first standardises both sets with the train statistics (as RTT)."""
    if normalize:
        train_x, test_x = standardize(train_x.float(), test_x.float())
    sim = F.normalize(test_x.float(), dim=1) @ F.normalize(train_x.float(), dim=1).t()  # (N_test, N_train)
    ks = list(ks)
    kmax = min(max(ks), len(train_x))
    nearest = train_y[sim.topk(kmax, dim=1).indices]                     # (N_test, kmax) labels
    match = nearest == test_y[:, None]
    return {f"top{k}": 100.0 * match[:, :min(k, kmax)].any(dim=1).float().mean().item() for k in ks}


# ============================================================================ RTT time-related probes
def sync_pairs(max_offset: int, rng: np.random.Generator) -> np.ndarray:
    """One pair per offset d in -max_offset..max_offset: rows (a, b, d) with b - a = d, where a and b index
    the 2*max_offset + 1 clips of a video shifted by 0, 1, ... frames (a uniformly random where it fits)."""
    rows = []
    for d in range(-max_offset, max_offset + 1):
        a = int(rng.integers(max(0, -d), 2 * max_offset - max(0, d) + 1))
        rows.append((a, a + d, d))
    return np.asarray(rows, dtype=np.int64)


def before_after_pairs(num_frames: int, sub_len: int, pairs: int, rng: np.random.Generator) -> np.ndarray:
    """``pairs`` rows (a, b): starts of two non-overlapping ``sub_len``-frame sub-clips, a + sub_len <= b."""
    if 2 * sub_len > num_frames:
        raise ValueError(f"before-after: two {sub_len}-frame sub-clips do not fit a {num_frames}-frame clip")
    rows = []
    for _ in range(pairs):
        a = int(rng.integers(0, num_frames - 2 * sub_len + 1))
        b = int(rng.integers(a + sub_len, num_frames - sub_len + 1))
        rows.append((a, b))
    return np.asarray(rows, dtype=np.int64)


@torch.no_grad()
def sync_features(feature_fn: FeatureFn, loader: Iterable[dict], *, clip_len: int, max_offset: int = 6,
                  seed: int = 0, device: str | torch.device = "cpu",
                  failures: LoadFailures | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of overlapping clips per video -> (psi(x1) - psi(x2) (P, D), offset class d + max_offset (P,)).

    Each loaded clip (dense, stride 1) must hold at least ``clip_len + 2 * max_offset`` frames; clip j
    starts at frame j. The pair draw of a video is keyed by (seed, its key)."""
    device = torch.device(device)
    n_pos = 2 * max_offset + 1
    xs, ys = [], []
    failures = failures if failures is not None else LoadFailures()
    for batch in Progress(failures.track(loader), total=sized(loader), desc="sync features", unit="batch"):
        video = batch["video"].to(device)                                 # (B, L, C, H, W)
        B, L = video.shape[:2]
        if L < clip_len + n_pos - 1:
            raise ValueError(f"sync: clips of {clip_len} frames with offsets up to {max_offset} need "
                             f"{clip_len + n_pos - 1} source frames, the loader gives {L}")
        _warn_short(batch, clip_len + n_pos - 1, "sync")
        shifted = torch.stack([video[:, j:j + clip_len] for j in range(n_pos)], dim=1)  # (B, n_pos, t, ...)
        f = feature_fn(shifted.flatten(0, 1)).float().reshape(B, n_pos, -1).cpu()     # (B, n_pos, D)
        for b, key in enumerate(video_keys(batch)):
            pairs = sync_pairs(max_offset, rng_for(seed, _key_int(key), 0x5C))
            xs.append(f[b, pairs[:, 0]] - f[b, pairs[:, 1]])
            ys.append(torch.as_tensor(pairs[:, 2] + max_offset))
    failures.finish()
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def before_after_features(feature_fn: FeatureFn, loader: Iterable[dict], *, clip_len: int, pairs: int = 4,
                          seed: int = 0, device: str | torch.device = "cpu",
                          failures: LoadFailures | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per video ``pairs`` pairs of non-overlapping sub-clips of clip_len // 2 frames, each concatenated in
    order (label 0, "before") and swapped (label 1, "after") -> (features (2P, D), labels (2P,))."""
    device = torch.device(device)
    half = clip_len // 2
    xs, ys = [], []
    failures = failures if failures is not None else LoadFailures()
    for batch in Progress(failures.track(loader), total=sized(loader), desc="before-after features", unit="batch"):
        video = batch["video"].to(device)                                 # (B, L, C, H, W)
        B, L = video.shape[:2]
        _warn_short(batch, L, "before-after")
        clips, labels = [], []
        for b, key in enumerate(video_keys(batch)):
            for a, c in before_after_pairs(L, half, pairs, rng_for(seed, _key_int(key), 0xBA)):
                first, second = video[b, a:a + half], video[b, c:c + half]
                clips += [torch.cat([first, second]), torch.cat([second, first])]
                labels += [0, 1]
        xs.append(feature_fn(torch.stack(clips)).float().cpu())
        ys.append(torch.as_tensor(labels))
    failures.finish()
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def arrow_features(feature_fn: FeatureFn, loader: Iterable[dict], *, device: str | torch.device = "cpu",
                   failures: LoadFailures | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every loaded clip forwards and backwards -> (features (2V, D), direction (2V,): 0 forwards,
    1 backwards, class label (2V,)); rows alternate forwards / backwards per video."""
    device = torch.device(device)
    xs, directions, labels = [], [], []
    failures = failures if failures is not None else LoadFailures()
    for batch in Progress(failures.track(loader), total=sized(loader), desc="arrow features", unit="batch"):
        video = batch["video"].to(device)                                 # (B, T, C, H, W)
        both = torch.stack([video, video.flip(1)], dim=1)                 # (B, 2, T, C, H, W)
        xs.append(feature_fn(both.flatten(0, 1)).float().cpu())           # (2B, D)
        directions.append(torch.tensor([0, 1]).repeat(len(video)))
        labels.append(torch.as_tensor(batch["label"]).repeat_interleave(2))
    failures.finish()
    return torch.cat(xs), torch.cat(directions), torch.cat(labels)


def arrow_probe(train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                test: tuple[torch.Tensor, torch.Tensor, torch.Tensor], *, num_classes: int, epochs: int = 100,
                lr: float = 0.1, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, float]:
    """Linear probes of direction (2-way) and class x direction (2K-way, plus kNN) on ``arrow_features``."""
    (tr_x, tr_d, tr_y), (te_x, te_d, te_y) = train, test
    direction = linear_probe(tr_x, tr_d, te_x, te_d, num_classes=2, epochs=epochs, lr=lr, seed=seed, device=device)
    tr_c, te_c = 2 * tr_y + tr_d, 2 * te_y + te_d
    joint = linear_probe(tr_x, tr_c, te_x, te_c, num_classes=2 * num_classes, epochs=epochs, lr=lr, seed=seed,
                         device=device)
    knn = knn_classify(tr_x, tr_c, te_x, te_c, num_classes=2 * num_classes)
    return {"accuracy": direction["top1"], "train_accuracy": direction["train_top1"],
            "chance": 50.0, "class_direction_top1": joint["top1"], "knn_class_direction_top1": knn["top1"],
            "class_direction_chance": 100.0 / (2 * num_classes), "clips_train": len(tr_x), "clips_test": len(te_x)}


def _warn_short(batch: dict, needed: int, task: str) -> None:
    """Warn when videos are shorter than the source clip (their last frame is held: offsets are wrong)."""
    meta = batch.get("meta") or []
    short = [m.get("num_video_frames", needed) for m in meta if isinstance(m, dict)
             and m.get("num_video_frames", needed) < needed]
    if short:
        warnings.warn(f"{task}: {len(short)} video(s) have fewer than the {needed} frames the probe needs "
                      f"(e.g. {short[0]}); their clips end on a held frame", stacklevel=3)


def _key_int(key) -> int:
    """A stable integer for a video key (int index or string id)."""
    if isinstance(key, (int, np.integer)):
        return int(key)
    return int.from_bytes(str(key).encode()[-8:].rjust(8, b"\0"), "little")


def time_task_probe(task: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                    test_y: torch.Tensor, *, max_offset: int = 6, hidden: int = 512, epochs: int = 100,
                    lr: float = 0.1, batch_size: int = 256, seed: int = 0,
                    device: str | torch.device = "cpu") -> dict[str, float]:
    """Three fully connected layers (as RTT) on standardised pair features: accuracy (%) and, for sync, the
    mean absolute offset error in frames."""
    num_classes = 2 * max_offset + 1 if task == "sync" else 2
    train_x, test_x = standardize(train_x, test_x)
    clf = fit_classifier_sgd(train_x, train_y, num_classes, hidden=(hidden, hidden), epochs=epochs, lr=lr,
                             batch_size=batch_size, seed=seed, device=device)
    pred = predict(clf, test_x).argmax(dim=1)
    out = {"accuracy": 100.0 * (pred == test_y).float().mean().item(),
           "train_accuracy": 100.0 * (predict(clf, train_x).argmax(1) == train_y).float().mean().item(),
           "chance": 100.0 / num_classes, "pairs_train": len(train_y), "pairs_test": len(test_y)}
    if task == "sync":
        out["mae"] = (pred - test_y).abs().float().mean().item()
    return out


# ============================================================================ loading
TEACHER_PREFIX = "objective.teacher_backbone"  # an objective's EMA teacher backbone (SVT), if it keeps one


def load_backbone(checkpoint: str, device: torch.device, *, random_init: bool = False,
                  seed: int = 0, student: bool = False) -> tuple[nn.Module, dict]:
    """The backbone and its ``pretrained_cfg`` (frames, size, mean/std, data) from a run, an export folder, a
    Hugging Face folder or a Hub id; with ``random_init`` the same architecture with fresh weights.

    When a run's checkpoint holds an EMA teacher backbone (``objective.teacher_backbone.*``, SVT / DINO),
    the teacher's weights are loaded, as those methods evaluate it, unless ``student``;
    ``pretrained_cfg["evaluated"]`` says which network is evaluated."""
    from ..models.hf import from_pretrained
    model = from_pretrained(checkpoint, device=device, random_init=random_init, seed=seed)
    cfg = model.pretrained_cfg
    cfg["evaluated"] = "random init" if random_init else "backbone"
    teacher = {} if random_init else _teacher_state(checkpoint)
    if teacher:
        cfg["evaluated"] = "student"
        if not student:
            model.load_state_dict(teacher)
            cfg["evaluated"] = "teacher"
    return model, cfg


def _teacher_state(checkpoint: str) -> dict[str, torch.Tensor]:
    """The EMA teacher backbone's tensors of a timematters run, or {} (none, or not a run)."""
    from ..engine.checkpoint import resolve_weights, split_state
    try:
        weights = resolve_weights(checkpoint)
    except (FileNotFoundError, ValueError, OSError):
        return {}
    if weights.suffix != ".safetensors":
        return {}
    from safetensors import safe_open
    with safe_open(str(weights), framework="pt") as f:
        names = [k for k in f.keys() if k.startswith(TEACHER_PREFIX + ".")]
        return split_state({k: f.get_tensor(k) for k in names}, TEACHER_PREFIX)


def build_loader(args: argparse.Namespace, spec: dict, split: str, *, train: bool, num_frames: int,
                 sampling: str, stride: int, views: int = 1, batch_size: int | None = None) -> tuple[DataLoader, list[str]]:
    from ..data.dataset import build_video_dataset, collate
    root = args.data or spec.get("data", {}).get("root")
    fmt = args.format or spec.get("data", {}).get("format", "ssv2")
    if not root:
        raise ValueError("no dataset: pass --data DIR (the checkpoint's spec names none)")
    size = int(spec["img_size"])
    dataset, class_names = build_video_dataset(
        root, fmt, split, train=train, limit=args.limit, num_frames=num_frames, img_size=size,
        allow_outside_root=bool(spec.get("data", {}).get("allow_outside_root", False)),
        sampling=sampling, stride=stride, scale=(size, max(size, round(size * 1.25))), mean=spec["mean"],
        std=spec["std"], views=views, seed=args.seed, short_side=spec.get("short_side", 0),
        backend=(spec.get("data") or {}).get("decode_backend", "auto"))
    target = getattr(args, "target", "class")
    if target != "class":  # a nuisance factor of the pretraining benchmark instead of the class
        from ..data.synth_pretrain import nuisance_labels
        labels = nuisance_labels(root, target)
        missing = [r.video_id for r in dataset.records if r.video_id not in labels]
        if missing:
            raise ValueError(f"--target {target}: {len(missing)} videos have no such factor (e.g. {missing[0]})")
        dataset.records = [dataclasses.replace(r, label=labels[r.video_id]) for r in dataset.records]
        class_names = [str(v) for v in range(max(labels.values()) + 1)]
    loader = DataLoader(dataset, batch_size=batch_size or args.batch_size, shuffle=train,
                        num_workers=args.num_workers, collate_fn=collate,
                        generator=torch.Generator().manual_seed(args.seed) if train else None)
    return loader, class_names


def _clip_len(args: argparse.Namespace, spec: dict) -> int:
    return int(args.num_frames or spec["num_frames"])


def frozen_features(args: argparse.Namespace, model: nn.Module, spec: dict, device: torch.device,
                    views: int, failures: dict[str, LoadFailures] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """(train feats, train labels, test feats, test labels, class names), averaged over ``views`` clips.
    ``failures`` receives one ``LoadFailures`` per split (the videos left out)."""
    t = _clip_len(args, spec)
    if args.mode == "slowfast":  # SVT: a slow clip of t frames and a fast clip of all source frames
        t = args.fast_frames or 8 * t
    out = []
    class_names: list[str] = []
    failures = failures if failures is not None else {}
    for split in (args.train_split, args.val_split):
        loader, class_names = build_loader(args, spec, split, train=False, num_frames=t, sampling=args.sampling,
                                           stride=args.stride, views=views)
        failures[split] = LoadFailures()
        out += list(extract_features(model, loader, device=device, mode=args.mode,
                                     autocast=device.type == "cuda", failures=failures[split]))
    return out[0], out[1], out[2], out[3], class_names


def failure_metrics(failures: dict[str, LoadFailures]) -> dict:
    """``num_failed`` videos left out over all splits and ``failed``: split, path and reason of each;
    ``substituted_frames``: frames the decoder never emitted, over all splits (nearest decoded one used)."""
    listed = [{"split": split, **f} for split, fl in failures.items() for f in fl.summary()["failed"]]
    return {"num_failed": len(listed), "failed": listed,
            "substituted_frames": sum(fl.substituted_frames for fl in failures.values())}


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory of a checkpoint (a run directory, or a file in its ``checkpoints/``)."""
    path = Path(checkpoint)
    if path.is_file():
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path


def pretext_report(checkpoint: str | Path, last: int = 5, margin: float = 0.1) -> dict:
    """What the pretraining run learned, from its ``metrics.jsonl``: the mean of the last ``last`` logged
    train rows of every pretext metric (``acc/*``, ``chance/*``, ``svt/*``, ``taco/*``).

    A task is at chance when its accuracy is below chance + margin x (1 - chance) (10 % of the way to
    perfect); an SVT teacher has collapsed when its entropy is above 95 % of the maximum (uniform) or its
    batch-mean entropy below 0.5 nats (one prototype). ``pretrained`` is False when every task with a
    chance level is at chance, or the teacher collapsed; None when the run logged no pretext metric."""
    path = run_dir_of(checkpoint) / "metrics.jsonl"
    if not path.is_file():
        return {"pretrained": None, "reason": f"no {path.name} beside the checkpoint"}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("type") == "train"][-last:]
    keys = sorted({k for r in rows for k in r if k.startswith(("acc/", "chance/", "svt/", "taco/"))})
    if not keys:
        return {"pretrained": None, "reason": "the run logged no pretext metric"}
    mean = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    at_chance = [k[len("chance/"):] for k in keys if k.startswith("chance/") and f"acc/{k[7:]}" in mean
                 and mean[f"acc/{k[7:]}"] < mean[k] + margin * (1 - mean[k])]
    tasks = [k for k in keys if k.startswith("chance/") and f"acc/{k[7:]}" in mean]
    collapsed = None
    if "svt/teacher_entropy" in mean:
        high = "svt/max_entropy" in mean and mean["svt/teacher_entropy"] > 0.95 * mean["svt/max_entropy"]
        low = mean.get("svt/teacher_batch_entropy", 1.0) < 0.5
        collapsed = "uniform" if high else ("one prototype" if low else None)
    pretrained = not ((tasks and len(at_chance) == len(tasks)) or collapsed)
    report = {"pretrained": pretrained, "metrics": mean, "at_chance": at_chance, "steps": [r["step"] for r in rows]}
    if collapsed:
        report["collapsed"] = collapsed
    if not pretrained:
        logging.getLogger("timematters.protocols").warning(
            "%s: NOT PRETRAINED: %s; these are drifted random weights", checkpoint,
            f"the SVT teacher collapsed ({collapsed})" if collapsed else
            "every pretext task is at chance (" + ", ".join(
                f"{t} {mean['acc/' + t]:.3f} vs chance {mean['chance/' + t]:.3f}" for t in at_chance) + ")")
    return report


def write_metrics(args: argparse.Namespace, protocol: str, metrics: dict) -> dict:
    record = {"protocol": protocol, "checkpoint": str(args.checkpoint), "random_init": bool(args.random_init),
              **metrics,
              "settings": {k: v for k, v in vars(args).items() if k != "func" and not callable(v)}}
    record["evaluated"] = getattr(args, "evaluated", None)
    if not args.random_init:  # the pretext accuracies next to every probe result
        record["pretext"] = pretext_report(args.checkpoint)
        record["pretrained"] = record["pretext"]["pretrained"]
    text = json.dumps(record, indent=1, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text)
    shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in metrics.items()
             if isinstance(v, (int, float))}
    print(f"{protocol}: {shown}")
    return record


# ============================================================================ CLI
def _common(p: argparse.ArgumentParser, *, views: int, batch_size: int, epochs: int | None = None,
            lr: float | None = None, features: bool = True) -> None:
    """Options every protocol shares; ``epochs``/``lr`` only where something is trained, ``--mode`` only
    where frozen features are read."""
    p.add_argument("--checkpoint", required=True,
                   help="run directory, .safetensors file, export folder, or a Hugging Face video classifier "
                        "folder / Hub id")
    p.add_argument("--data", default="", help="dataset root (default: the checkpoint's training data)")
    p.add_argument("--format", default="", help="annotation format (default: the checkpoint's)")
    p.add_argument("--train-split", default="train", help="split the probe / kNN bank is built from")
    p.add_argument("--val-split", default="validation", help="split that is scored")
    p.add_argument("--views", type=int, default=views, help=f"temporal clips per video, averaged (default {views})")
    p.add_argument("--num-frames", type=int, default=0, help="frames per clip (default: the model's)")
    p.add_argument("--sampling", default="tsn", choices=("tsn", "dense"),
                   help="frame sampling: tsn = one frame per segment, dense = fixed stride (default tsn)")
    p.add_argument("--stride", type=int, default=2, help="frame stride of dense sampling")
    if features:
        p.add_argument("--mode", default="cls", choices=("cls", "slowfast"),
                       help="clip feature: the CLS token, or SVT's slow-fast average: a clip of --num-frames "
                            "and a fast one of --fast-frames at lower resolution (default cls)")
        p.add_argument("--fast-frames", type=int, default=0,
                       help="slowfast: frames of the fast clip, spread over the video (default 8 x the clip)")
        p.add_argument("--target", default="class",
                       help="class (default), or a nuisance factor of the pretraining benchmark "
                            "(shape, side, background): how well the features predict it")
    if epochs is not None:
        p.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})")
    if lr is not None:
        p.add_argument("--lr", type=float, default=lr, help=f"learning rate (default {lr:g})")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"clips per batch (default {batch_size})")
    p.add_argument("--student", action="store_true",
                   help="evaluate the student when the run keeps an EMA teacher (default: the teacher, as SVT)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N videos of each split")
    p.add_argument("--random-init", action="store_true", help="the checkpoint's architecture, random weights")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--num-workers", type=int, default=2, help="data-loading processes (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling, augmentation and probe init")
    p.add_argument("--out", default="", help="write the metrics here (JSON)")


def add_linear_arguments(p: argparse.ArgumentParser) -> None:
    _common(p, views=1, epochs=100, lr=0.1, batch_size=16)
    p.add_argument("--task", default="classify", choices=("classify", "sync", "before-after", "arrow"),
                   help="classify: linear probe on the labels; sync / before-after: RTT's time-related probes; "
                        "arrow: direction (forwards / backwards) and class x direction probes")
    p.add_argument("--solver", default="sgd", choices=("sgd", "lbfgs"),
                   help="classify: SGD (as the papers) or L-BFGS on the frozen features (default sgd)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="SGD weight decay")
    p.add_argument("--l2", type=float, default=1e-4, help="L-BFGS L2 penalty")
    p.add_argument("--max-offset", type=int, default=6, help="sync: offsets -N..N frames")
    p.add_argument("--pairs", type=int, default=4, help="before-after: pairs per video")
    p.add_argument("--hidden", type=int, default=512, help="sync / before-after: width of the 3-layer probe")
    p.add_argument("--source-frames", type=int, default=0,
                   help="before-after: frames (stride 1) the two sub-clips are drawn from (default 2 x clip)")


def main_linear(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, spec = _load(args, device)
    if args.task == "classify":
        metrics = frozen_metrics(args, model, spec, device, lambda tr_x, tr_y, te_x, te_y, names: linear_probe(
            tr_x, tr_y, te_x, te_y, num_classes=len(names), solver=args.solver, epochs=args.epochs, lr=args.lr,
            weight_decay=args.weight_decay, l2=args.l2, seed=args.seed, device=device))
        write_metrics(args, "linear", metrics)
        return 0
    metrics = time_task(args, model, spec, device)
    write_metrics(args, args.task, metrics)
    return 0


def frozen_metrics(args: argparse.Namespace, model: nn.Module, spec: dict, device: torch.device,
                   score: Callable[..., dict]) -> dict:
    """``score(train feats, train labels, test feats, test labels, class names)`` on the frozen features of
    both splits, with the video counts and the videos left out (``failure_metrics``)."""
    failures: dict[str, LoadFailures] = {}
    tr_x, tr_y, te_x, te_y, names = frozen_features(args, model, spec, device, args.views, failures)
    metrics = score(tr_x, tr_y, te_x, te_y, names)
    metrics.update(videos_train=len(tr_y), videos_test=len(te_y), **failure_metrics(failures))
    return metrics


def time_task(args: argparse.Namespace, model: nn.Module, spec: dict, device: torch.device) -> dict:
    """RTT's synchronisation or before-after probe on frozen features (dense clips at stride 1), or the
    arrow-of-time probe (the classify clips, forwards and backwards)."""
    t = _clip_len(args, spec)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def feature_fn(video: torch.Tensor) -> torch.Tensor:
        with autocast:
            return clip_features(model, video, args.mode)

    if args.task == "arrow":  # the clips the loader gives, the features of a loader
        clips = dict(num_frames=t, sampling=args.sampling, stride=args.stride)
        features = functools.partial(arrow_features, feature_fn, device=device)
    elif args.task == "sync":
        clips = dict(num_frames=t + 2 * args.max_offset, sampling="dense", stride=1,
                     batch_size=max(1, args.batch_size // (2 * args.max_offset + 1)))
        features = functools.partial(sync_features, feature_fn, clip_len=t, max_offset=args.max_offset,
                                     seed=args.seed, device=device)
    else:
        clips = dict(num_frames=args.source_frames or 2 * t, sampling="dense", stride=1,
                     batch_size=max(1, args.batch_size // (2 * args.pairs)))
        features = functools.partial(before_after_features, feature_fn, clip_len=t, pairs=args.pairs,
                                     seed=args.seed, device=device)
    data = []
    failures: dict[str, LoadFailures] = {}
    for split in (args.train_split, args.val_split):
        failures[split] = LoadFailures()
        loader, class_names = build_loader(args, spec, split, train=False, **clips)
        data.append(features(loader, failures=failures[split]))
    model.eval()
    if args.task == "arrow":
        return arrow_probe(data[0], data[1], num_classes=len(class_names), epochs=args.epochs, lr=args.lr,
                           seed=args.seed, device=device) | failure_metrics(failures)
    return time_task_probe(args.task, data[0][0], data[0][1], data[1][0], data[1][1],
                           max_offset=args.max_offset, hidden=args.hidden, epochs=args.epochs, lr=args.lr,
                           seed=args.seed, device=device) | failure_metrics(failures)


def add_knn_arguments(p: argparse.ArgumentParser) -> None:
    _common(p, views=1, batch_size=16)
    p.add_argument("--k", type=int, default=20, help="neighbours that vote (default 20)")
    p.add_argument("--temperature", type=float, default=0.07,
                   help="vote weight exp(similarity / temperature) (default 0.07)")


def main_knn(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, spec = _load(args, device)
    metrics = frozen_metrics(args, model, spec, device, lambda tr_x, tr_y, te_x, te_y, names: knn_classify(
        tr_x, tr_y, te_x, te_y, num_classes=len(names), k=args.k, temperature=args.temperature))
    write_metrics(args, "knn", metrics)
    return 0


def add_retrieval_arguments(p: argparse.ArgumentParser) -> None:
    _common(p, views=10, batch_size=16)
    p.add_argument("--ks", type=int, nargs="+", default=list(RETRIEVAL_KS), metavar="K",
                   help=f"report the hit rate at each top-K (default {' '.join(map(str, RETRIEVAL_KS))})")


def main_retrieval(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, spec = _load(args, device)
    metrics = frozen_metrics(args, model, spec, device, lambda tr_x, tr_y, te_x, te_y, _: retrieval_hit_rates(
        tr_x, tr_y, te_x, te_y, ks=args.ks))
    write_metrics(args, "retrieval", metrics)
    return 0


# ---------------------------------------------------------------------------- fine-tuning
def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    _common(p, views=1, epochs=10, lr=1e-4, batch_size=16, features=False)
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing (default 0)")
    p.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear warm-up before the cosine decay (default 1)")
    p.add_argument("--amp", default="auto", help="auto | off | bf16 | fp16: the engine's optim.amp (default auto)")
    p.add_argument("--run-dir", default="",
                   help="the fine-tuning run's directory (checkpoints, metrics; default: --out without .json); "
                        "a killed fine-tuning resumes there")


def finetune_config(args: argparse.Namespace, spec: dict, init: str, run_dir: Path):
    """The engine config of a fine-tuning: the checkpoint's data and architecture, the supervised
    objective, AdamW with linear warm-up and cosine decay, starting from the weights in ``init``."""
    from ..config import Config
    cfg = Config()
    d, size = cfg.data, int(spec["img_size"])
    d.root = args.data or spec.get("data", {}).get("root", "")
    d.format = args.format or spec.get("data", {}).get("format", "ssv2")
    if not d.root:
        raise ValueError("no dataset: pass --data DIR (the checkpoint's spec names none)")
    d.train_split, d.val_split = args.train_split, args.val_split
    d.num_frames, d.img_size, d.sampling, d.stride = _clip_len(args, spec), size, args.sampling, args.stride
    d.scale = (size, max(size, round(size * 1.25)))
    d.mean, d.std = tuple(spec["mean"]), tuple(spec["std"])
    d.num_workers, d.val_views = args.num_workers, args.views
    src = spec.get("data") or {}
    d.decode_backend = src.get("decode_backend", d.decode_backend)
    d.allow_outside_root = bool(src.get("allow_outside_root", False))
    cfg.model.name, cfg.model.pretrained = spec["name"], init
    cfg.model.extra = {k: v for k, v in spec["create_kwargs"].items() if k not in ("num_classes", "img_size")}
    cfg.objective.method, cfg.objective.label_smoothing = "supervised", args.label_smoothing
    o = cfg.optim
    o.epochs, o.batch_size, o.lr, o.weight_decay = args.epochs, args.batch_size, args.lr, args.weight_decay
    o.warmup_epochs, o.schedule, o.amp = args.warmup_epochs, "cosine", args.amp
    cfg.run.out, cfg.run.seed, cfg.run.device = str(run_dir), args.seed, args.device
    cfg.run.eval_shuffles, cfg.run.tensorboard = 0, False
    return cfg


def main_finetune(args: argparse.Namespace) -> int:
    """Fine-tune through the training engine; a killed fine-tuning resumes from its run directory."""
    from safetensors.torch import save_file
    from ..engine.checkpoint import latest_checkpoint
    from ..engine.train import train
    model, spec = _load(args, torch.device("cpu"))
    if "create_kwargs" not in spec:
        raise ValueError(f"finetune: {args.checkpoint} is a {spec.get('kind')} model; fine-tuning runs through the "
                         "training engine, which builds timematters architectures (train --config with "
                         "model.pretrained=... for converted weights)")
    run_dir = Path(args.run_dir or (Path(args.out).with_suffix("") if args.out else "runs/finetune"))
    run_dir.mkdir(parents=True, exist_ok=True)
    init = run_dir / "init.safetensors"   # the evaluated backbone (teacher, trained or random weights)
    if not init.is_file():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(init))
    cfg = finetune_config(args, spec, str(init), run_dir)
    last = train(cfg, resume=latest_checkpoint(run_dir) is not None)
    if not last:  # a finished run resumed: its last validation is on disk
        last = json.loads((run_dir / "val_metrics.json").read_text())
    metrics = {k: v for k, v in last.items() if isinstance(v, (int, float))}
    metrics.update(run_dir=str(run_dir), videos_test=last.get("num_videos"))
    write_metrics(args, "finetune", metrics)
    return 0


def _load(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, dict]:
    model, spec = load_backbone(args.checkpoint, device, random_init=args.random_init, seed=args.seed,
                                student=getattr(args, "student", False))
    args.evaluated = "random init" if args.random_init else spec.get("evaluated", "backbone")
    return model, spec
