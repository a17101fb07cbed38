"""SVT: self-distillation between global and local spatiotemporal views (Ranasinghe et al., CVPR 2022).

From one long source clip the objective cuts, on the device, ``len(global_frames)`` global views (large
crops from ~90 % of the time axis) and ``len(local_frames)`` local views (small crops from 1/8 of it),
each with its own frame count and resolution. The student (the backbone being trained plus a DINO head)
sees every view; an EMA teacher (a frozen copy of both) sees the global views. The loss is the
cross-entropy between the teacher's centred, sharpened distribution of one global view and the student's
distribution of every *other* view, averaged over all such pairs (motion correspondences: global ->
global; cross-view correspondences: local -> global).

What the engine calls, besides ``losses, outputs = objective(model, batch)``:

* ``on_step_end(model, step, total_steps)`` after each optimiser step (``step`` = steps taken so far):
  EMA teacher update, momentum and teacher-temperature schedules, the step counter that seeds the views.
* ``before_optimizer_step(optimizer, epoch=, step=, total_steps=)`` after ``backward`` (after unscaling
  and clipping), before ``optimizer.step()``: the head's last layer stays frozen during the first
  ``freeze_last_layer_epochs`` and the weight decay follows a cosine from the group's value to
  ``weight_decay_end`` (``cancel_last_layer_grads`` / ``weight_decay_at`` are the two halves).
* ``clip_grad_(parameters, max_norm)`` when ``optim.clip_grad`` > 0: DINO's per-parameter clipping
  (each parameter's gradient norm on its own), instead of the engine's default global norm.
* ``no_weight_decay()``: the objective's parameter names that must not decay (biases, 1-d tensors).
"""
from __future__ import annotations

import copy
import math
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ..utils import rng_for
from .base import LossDict, Objective, OutDict


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare backbone behind DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


# ---------------------------------------------------------------------------------------------------
# head
# ---------------------------------------------------------------------------------------------------
class DINOHead(nn.Module):
    """MLP to a bottleneck, L2 normalisation, then a weight-normalised linear layer to ``out_dim``.

    With ``norm_last_layer`` the weight-norm gain is fixed to 1 (the last layer is a set of unit-norm
    prototypes), as the DINO / SVT reference default.
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DINOHead: num_layers must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0  # (out_dim, 1), the weight-norm g
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)                              # (B, bottleneck)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)                    # (B, out_dim)


# ---------------------------------------------------------------------------------------------------
# views
# ---------------------------------------------------------------------------------------------------
def window_indices(num_src: int, window: int, start: int, num_frames: int) -> np.ndarray:
    """``num_frames`` indices spread uniformly over ``[start, start + window - 1]`` (repeats when the
    window is shorter than ``num_frames``), as the reference's ``temporal_sampling``."""
    end = min(start + window, num_src) - 1
    return np.rint(np.linspace(start, end, num_frames)).astype(np.int64)


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3)
                            ) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a ``scale`` share of the area with aspect ``ratio``
    (the RandomResizedCrop rule: 10 tries, then the largest centred crop within the ratio range)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class SpatioTemporalViews:
    """Cuts the global and local views of a batch of source clips (on the clips' device).

    Temporal: a global view spreads its frames uniformly over a window of ``global_time_fraction`` of
    the source (``global_window="random"``: a random window per view, as the paper;
    ``"ends"``: the first and the last window, as the public code's fixed 5-frame offsets); a local view
    over a random window of ``local_time_fraction``. Spatial: one RandomResizedCrop, flip, colour jitter,
    grayscale, blur and solarisation draw per view, the same for all of its frames (the paper's
    temporally consistent augmentation). Per-view blur / solarisation probabilities follow DINO:
    (first global, second global, locals).
    """

    def __init__(self, *, global_frames: Sequence[int], local_frames: Sequence[int], global_size: int,
                 local_size: int, global_scale: tuple[float, float], local_scale: tuple[float, float],
                 global_time_fraction: float, local_time_fraction: float, global_window: str,
                 flip_p: float, color_jitter: tuple[float, float, float, float], color_jitter_p: float,
                 grayscale_p: float, blur_p: tuple[float, float, float], solarize_p: tuple[float, float, float],
                 blur_sigma: tuple[float, float], mean: Sequence[float], std: Sequence[float]):
        if len(global_frames) < 1:
            raise ValueError("SVT: global_frames must name at least one global view")
        if any(int(t) < 1 for t in [*global_frames, *local_frames]):
            raise ValueError(f"SVT: frame counts must be >= 1, got global_frames={list(global_frames)}, "
                             f"local_frames={list(local_frames)}")
        for name, frac in (("global_time_fraction", global_time_fraction),
                           ("local_time_fraction", local_time_fraction)):
            if not 0.0 < frac <= 1.0:
                raise ValueError(f"SVT: {name} must be in (0, 1], got {frac}")
        for name, sc in (("global_scale", global_scale), ("local_scale", local_scale)):
            if len(sc) != 2 or not 0.0 < sc[0] <= sc[1] <= 1.0:
                raise ValueError(f"SVT: {name} must be (low, high) with 0 < low <= high <= 1, got {sc}")
        if global_window not in ("random", "ends"):
            raise ValueError(f"SVT: global_window must be 'random' or 'ends', got {global_window!r}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"SVT: mean and std need 3 values each, got mean={mean}, std={std}")
        self.global_frames = [int(t) for t in global_frames]
        self.local_frames = [int(t) for t in local_frames]
        self.global_size, self.local_size = int(global_size), int(local_size)
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.global_time_fraction, self.local_time_fraction = global_time_fraction, local_time_fraction
        self.global_window = global_window
        self.flip_p = flip_p
        self.color_jitter, self.color_jitter_p = tuple(color_jitter), color_jitter_p
        self.grayscale_p = grayscale_p
        self.blur_p, self.solarize_p, self.blur_sigma = tuple(blur_p), tuple(solarize_p), tuple(blur_sigma)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    @property
    def num_global(self) -> int:
        return len(self.global_frames)

    @property
    def specs(self) -> list[tuple[int, int]]:
        """(T, size) of every view, globals first."""
        return ([(t, self.global_size) for t in self.global_frames]
                + [(t, self.local_size) for t in self.local_frames])

    def __call__(self, video: torch.Tensor, rngs: Sequence[np.random.Generator]) -> list[torch.Tensor]:
        """video (B, T_src, C, H, W) normalised; one generator per sample -> list of (B, T_v, C, S_v, S_v)."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"SVT: batch['video'] must be (B, T, 3, H, W), got {tuple(video.shape)}")
        if len(rngs) != video.shape[0]:
            raise ValueError(f"SVT: {len(rngs)} generators for a batch of {video.shape[0]}")
        mean = video.new_tensor(self.mean).view(1, 3, 1, 1)
        std = video.new_tensor(self.std).view(1, 3, 1, 1)
        per_view: list[list[torch.Tensor]] = [[] for _ in self.specs]
        for b, rng in enumerate(rngs):
            clip01 = (video[b].float() * std + mean).clamp_(0.0, 1.0)   # (T_src, C, H, W) in [0, 1]
            for v, (num_frames, size) in enumerate(self.specs):
                view = self._one_view(clip01, v, num_frames, size, rng)  # (T_v, C, S, S)
                per_view[v].append((view - mean) / std)
        return [torch.stack(views).to(video.dtype) for views in per_view]

    # -- one view ------------------------------------------------------------------------------------
    def _one_view(self, clip: torch.Tensor, v: int, num_frames: int, size: int,
                  rng: np.random.Generator) -> torch.Tensor:
        is_global = v < self.num_global
        aug_slot = min(v, 1) if is_global else 2   # DINO's per-view probabilities: g1, g2, locals
        num_src, _, height, width = clip.shape

        frac = self.global_time_fraction if is_global else self.local_time_fraction
        window = max(1, int(round(frac * num_src)))
        if is_global and self.global_window == "ends":
            start = 0 if v % 2 == 0 else num_src - window
        else:
            start = int(rng.integers(0, num_src - window + 1))
        idx = torch.from_numpy(window_indices(num_src, window, start, num_frames)).to(clip.device)
        x = clip.index_select(0, idx)                                  # (T_v, C, H, W)

        top, left, h, w = random_resized_crop_box(rng, height, width,
                                                  self.global_scale if is_global else self.local_scale)
        x = TF.resized_crop(x, top, left, h, w, [size, size], antialias=True)   # (T_v, C, S, S)
        if rng.random() < self.flip_p:
            x = TF.horizontal_flip(x)
        if rng.random() < self.color_jitter_p:
            x = self._color_jitter(x, rng)
        if rng.random() < self.grayscale_p:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if rng.random() < self.blur_p[aug_slot]:
            # DINO's GaussianBlur: sigma in pixels of the view, 0.1-2.0 at every view size
            sigma = rng.uniform(*self.blur_sigma)
            kernel = min(2 * math.ceil(3 * sigma) + 1, size if size % 2 else size - 1)
            x = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
        if rng.random() < self.solarize_p[aug_slot]:
            x = TF.solarize(x, threshold=0.5)
        return x

    def _color_jitter(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return color_jitter(x, rng, self.color_jitter)


def color_jitter(x: torch.Tensor, rng: np.random.Generator, strengths: Sequence[float]) -> torch.Tensor:
    """ColorJitter(brightness, contrast, saturation, hue) in a random order, one draw for the whole clip
    x (T, C, H, W) in [0, 1]."""
    b, c, s, hue = strengths
    ops = [
        (TF.adjust_brightness, rng.uniform(max(0.0, 1 - b), 1 + b)),
        (TF.adjust_contrast, rng.uniform(max(0.0, 1 - c), 1 + c)),
        (TF.adjust_saturation, rng.uniform(max(0.0, 1 - s), 1 + s)),
        (TF.adjust_hue, rng.uniform(-hue, hue)),
    ]
    for i in rng.permutation(len(ops)):
        fn, factor = ops[i]
        x = fn(x, float(factor))
    return x.clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------
# objective
# ---------------------------------------------------------------------------------------------------
class SVT(Objective):
    """Self-distillation across spatiotemporal views with an EMA teacher (label-free).

    ``losses = {"svt": weight * mean CE over (teacher global view, other student view) pairs}``.
    Defaults are the paper's views with the DINO / SVT reference head, temperatures and momentum.
    """

    needs_labels = False

    def __init__(self, model: nn.Module, *, num_classes: int = 0, label_smoothing: float = 0.0,
                 weights: dict | None = None,
                 # head (reference: 768 -> 2048 -> 2048 -> 256 -> 65536, normalised last layer)
                 out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256, head_layers: int = 3,
                 norm_last_layer: bool = True,
                 # distillation (reference: student 0.1, teacher 0.04 without warmup, centre 0.9, EMA 0.996 -> 1)
                 student_temp: float = 0.1, teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_frac: float = 0.0, center_momentum: float = 0.9,
                 momentum_teacher: float = 0.996, weight_decay_end: float = 0.4,
                 freeze_last_layer_epochs: int = 1,
                 # views (paper: globals T = 8, 16 at 224 px; locals T in {2, 4, 8, 16} at 96 px)
                 global_frames: Sequence[int] = (8, 16), local_frames: Sequence[int] = (2, 2, 4, 4, 8, 8, 16, 16),
                 global_size: int = 224, local_size: int = 96,
                 global_scale: Sequence[float] = (0.4, 1.0), local_scale: Sequence[float] = (0.05, 0.4),
                 global_time_fraction: float = 0.9, local_time_fraction: float = 0.125,
                 global_window: str = "random", flip_p: float = 0.5,
                 color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1), color_jitter_p: float = 0.8,
                 grayscale_p: float = 0.2, blur_p: Sequence[float] = (1.0, 0.1, 0.5),
                 solarize_p: Sequence[float] = (0.0, 0.2, 0.0), blur_sigma: Sequence[float] = (0.1, 2.0),
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                 seed: int = 0):
        super().__init__()
        weights = dict(weights or {})
        unknown = set(weights) - {"svt"}
        if unknown:
            raise ValueError(f"SVT: unknown loss weight(s) {sorted(unknown)} (known: svt)")
        self.weight = float(weights.get("svt", 1.0))
        for name, value in (("student_temp", student_temp), ("teacher_temp", teacher_temp),
                            ("warmup_teacher_temp", warmup_teacher_temp)):
            if value <= 0:
                raise ValueError(f"SVT: {name} must be > 0, got {value}")
        for name, value in (("center_momentum", center_momentum), ("momentum_teacher", momentum_teacher),
                            ("warmup_teacher_temp_frac", warmup_teacher_temp_frac)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SVT: {name} must be in [0, 1], got {value}")
        if len(blur_p) != 3 or len(solarize_p) != 3:
            raise ValueError("SVT: blur_p and solarize_p take 3 probabilities (global 1, global 2, locals)")

        self.views = SpatioTemporalViews(
            global_frames=global_frames, local_frames=local_frames, global_size=global_size,
            local_size=local_size, global_scale=tuple(global_scale), local_scale=tuple(local_scale),
            global_time_fraction=global_time_fraction, local_time_fraction=local_time_fraction,
            global_window=global_window, flip_p=flip_p, color_jitter=tuple(color_jitter),
            color_jitter_p=color_jitter_p, grayscale_p=grayscale_p, blur_p=tuple(blur_p),
            solarize_p=tuple(solarize_p), blur_sigma=tuple(blur_sigma), mean=mean, std=std)
        self.student_temp = student_temp
        self.teacher_temp_final = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_frac = warmup_teacher_temp_frac
        self.center_momentum = center_momentum
        self.momentum_base = momentum_teacher
        self.weight_decay_end = weight_decay_end
        self.freeze_last_layer_epochs = int(freeze_last_layer_epochs)
        self.seed = int(seed)

        backbone = _unwrap(model)
        head_kw = dict(hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim, num_layers=head_layers,
                       norm_last_layer=norm_last_layer)
        self.student_head = DINOHead(backbone.embed_dim, out_dim, **head_kw)
        # the EMA teacher: a frozen copy of backbone + head; never seen by the optimiser
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOHead(backbone.embed_dim, out_dim, **head_kw)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        for p in [*self.teacher_backbone.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(False)
        self.teacher_backbone.eval()
        self.teacher_head.eval()

        self.register_buffer("center", torch.zeros(1, out_dim))
        # teacher copies the student at the first forward (after any pretrained init or device move);
        # a resumed checkpoint restores True here and keeps its teacher
        self.register_buffer("teacher_synced", torch.tensor(False))
        self.register_buffer("step", torch.tensor(0, dtype=torch.long))           # seeds the view draws
        self.register_buffer("momentum", torch.tensor(float(momentum_teacher)))
        first_temp = warmup_teacher_temp if warmup_teacher_temp_frac > 0 else teacher_temp
        self.register_buffer("teacher_temp", torch.tensor(float(first_temp)))

    # -- modes ---------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "SVT":
        super().train(mode)
        self.teacher_backbone.eval()   # the teacher never uses dropout / drop-path (DINO builds it without)
        self.teacher_head.eval()
        return self

    # -- forward -------------------------------------------------------------------------------------
    def make_views(self, video: torch.Tensor, index: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The global then local views of a batch, drawn from (seed, step, sample index)."""
        B = video.shape[0]
        keys = index.tolist() if index is not None else list(range(B))
        step = int(self.step)
        rngs = [rng_for(self.seed, step, int(k)) for k in keys]
        return self.views(video, rngs)

    @staticmethod
    def _forward_views(backbone: nn.Module, head: nn.Module, views: list[torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of equal shape go through the backbone together -> head outputs (V, B, K) and CLS (V, B, D)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(tuple(v.shape[1:]), []).append(i)
        B = views[0].shape[0]
        outs: list[torch.Tensor | None] = [None] * len(views)
        feats: list[torch.Tensor | None] = [None] * len(views)
        for ids in groups.values():
            x = torch.cat([views[i] for i in ids])                 # (n*B, T, C, S, S)
            cls = backbone.forward_features(x).cls                 # (n*B, D)
            z = head(cls)                                          # (n*B, K)
            for j, i in enumerate(ids):
                outs[i] = z[j * B:(j + 1) * B]
                feats[i] = cls[j * B:(j + 1) * B]
        return torch.stack(outs), torch.stack(feats)

    def forward(self, model: nn.Module, batch: dict) -> tuple[LossDict, OutDict]:
        if "video" not in batch:
            raise KeyError("SVT: the batch has no 'video' entry")
        if not bool(self.teacher_synced):
            self.sync_teacher(model)
        views = self.make_views(batch["video"], batch.get("index"))
        n_global = self.views.num_global

        student_out, student_cls = self._forward_views(model, self.student_head, views)   # (Vs, B, K), (Vs, B, D)
        with torch.no_grad():
            teacher_out, _ = self._forward_views(self.teacher_backbone, self.teacher_head, views[:n_global])

        temp = float(self.teacher_temp)
        student_logp = F.log_softmax(student_out.float() / self.student_temp, dim=-1)    # (Vs, B, K)
        teacher_p = F.softmax((teacher_out.float() - self.center) / temp, dim=-1)         # (Vt, B, K)
        # cross-entropy of every (teacher view t, student view s) pair, averaged over the batch
        ce = -torch.einsum("tbk,sbk->ts", teacher_p, student_logp) / student_logp.shape[1]   # (Vt, Vs)
        pair = torch.ones_like(ce, dtype=torch.bool)
        pair[:, :n_global].fill_diagonal_(False)    # a view is never matched with itself
        loss = ce[pair].mean()
        self._update_center(teacher_out)

        with torch.no_grad():
            # KL(teacher || student) = CE - H(teacher), per pair; 0 when the student matches the teacher
            teacher_h = -(teacher_p * torch.log(teacher_p.clamp_min(1e-12))).sum(-1).mean(-1)   # (Vt,)
            kl = ce - teacher_h[:, None]
            outputs: OutDict = {
                "svt/loss_gg": ce[:, :n_global][pair[:, :n_global]].mean().detach(),
                "svt/kl": kl[pair].mean().detach(),
                "svt/max_entropy": torch.tensor(math.log(teacher_p.shape[-1])),
                "svt/teacher_temp": self.teacher_temp.detach().clone(),
                "svt/momentum": self.momentum.detach().clone(),
                **self.collapse_stats(teacher_p, student_cls[0]),
            }
            if ce.shape[1] > n_global:
                outputs["svt/loss_lg"] = ce[:, n_global:].mean().detach()
        return {"svt": self.weight * loss}, outputs

    @staticmethod
    def collapse_stats(teacher_p: torch.Tensor, cls: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher entropy per sample and of the batch-mean distribution (nats), and the spread of the
        L2-normalised CLS features: std over the batch, averaged over dims, times sqrt(D)
        (about 1 for features spread like random directions, 0 when collapsed)."""
        p = teacher_p.detach().float()
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()
        mean_p = p.mean(dim=(0, 1))
        batch_entropy = -(mean_p * torch.log(mean_p.clamp_min(1e-12))).sum()
        stats = {"svt/teacher_entropy": entropy, "svt/teacher_batch_entropy": batch_entropy}
        if cls.shape[0] > 1:
            z = F.normalize(cls.detach().float(), dim=-1)
            stats["svt/feature_std"] = z.std(dim=0).mean() * math.sqrt(z.shape[-1])
        return stats

    @torch.no_grad()
    def _update_center(self, teacher_out: torch.Tensor) -> None:
        """EMA of the teacher's mean output (over views, batch and ranks)."""
        total = teacher_out.float().sum(dim=(0, 1)).unsqueeze(0)      # (1, K)
        count = teacher_out.shape[0] * teacher_out.shape[1]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            count *= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)

    # -- teacher -------------------------------------------------------------------------------------
    def _paired_params(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        student = dict(_unwrap(model).named_parameters())
        teacher = dict(self.teacher_backbone.named_parameters())
        if student.keys() != teacher.keys():
            missing = sorted(set(student) ^ set(teacher))[:5]
            raise RuntimeError("SVT: the backbone's parameters no longer match the teacher's copy "
                               f"(differing names: {missing}); build the objective after the model is final")
        names = list(student)
        s = [student[n] for n in names] + list(self.student_head.parameters())
        t = [teacher[n] for n in names] + list(self.teacher_head.parameters())
        return s, t

    @torch.no_grad()
    def sync_teacher(self, model: nn.Module) -> None:
        """Copy the student's weights (backbone + head) into the teacher."""
        self.teacher_backbone.load_state_dict(_unwrap(model).state_dict())
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        self.teacher_synced.fill_(True)

    @staticmethod
    def _cosine_to_one(base: float, it: int, total: int) -> float:
        """DINO's per-iteration momentum: ``base`` at iteration 0, 1 at the last."""
        progress = min(max(it / max(1, total), 0.0), 1.0)
        return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0

    @torch.no_grad()
    def on_step_end(self, model: nn.Module, step: int, total_steps: int) -> None:
        """EMA teacher update, then the schedules for the next step.

        ``step`` counts the optimiser steps taken so far (1 after the first, as the engine passes it);
        the update just made is iteration ``step - 1`` of DINO's per-iteration cosine momentum schedule.
        """
        m = float(self.momentum)
        student, teacher = self._paired_params(model)
        torch._foreach_mul_(teacher, m)
        torch._foreach_add_(teacher, [s.detach().to(t.dtype) for s, t in zip(student, teacher)], alpha=1.0 - m)
        # non-parameter buffers (none in a ViT) follow the student
        for (_, tb), (_, sb) in zip(self.teacher_backbone.named_buffers(), _unwrap(model).named_buffers()):
            tb.copy_(sb)

        self.step.fill_(int(step))
        self.momentum.fill_(self._cosine_to_one(self.momentum_base, step, total_steps))
        warmup = self.warmup_teacher_temp_frac * max(1, total_steps)
        if warmup > 0 and step < warmup:
            temp = self.warmup_teacher_temp + (self.teacher_temp_final - self.warmup_teacher_temp) * step / warmup
        else:
            temp = self.teacher_temp_final
        self.teacher_temp.fill_(temp)

    # -- optimiser hooks -----------------------------------------------------------------------------
    def clip_grad_(self, parameters: list[torch.Tensor], max_norm: float) -> None:
        """DINO / SVT clip every parameter's gradient norm on its own (``utils.clip_gradients``)."""
        clip_grad_per_parameter_(parameters, max_norm)

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer, *, epoch: int, step: int,
                              total_steps: int) -> None:
        """Call after backward (and unscaling / clipping), before ``optimizer.step()``; ``step`` is the
        0-based index of the step about to be taken. Freezes the last layer in the first epoch(s) and
        sets the cosine weight-decay schedule on every group that decays."""
        self.cancel_last_layer_grads(epoch)
        for group in optimizer.param_groups:
            base = group.setdefault("base_weight_decay", group.get("weight_decay", 0.0))
            if base > 0:
                group["weight_decay"] = self.weight_decay_at(step, total_steps, base)

    def cancel_last_layer_grads(self, epoch: int) -> None:
        """Drop the head's last-layer gradients during the first ``freeze_last_layer_epochs`` epochs
        (a None grad is skipped by AdamW entirely, as the reference does)."""
        if epoch < self.freeze_last_layer_epochs:
            for p in self.student_head.last_layer.parameters():
                p.grad = None

    def weight_decay_at(self, step: int, total_steps: int, base: float) -> float:
        """Cosine weight-decay schedule from ``base`` to ``weight_decay_end`` (reference: 0.04 -> 0.4)."""
        progress = min(max(step / max(1, total_steps), 0.0), 1.0)
        return self.weight_decay_end + 0.5 * (base - self.weight_decay_end) * (1 + math.cos(math.pi * progress))

    def no_weight_decay(self) -> set[str]:
        """Trainable objective parameters that must not decay: biases and other 1-d tensors (DINO's rule)."""
        return {n for n, p in self.named_parameters() if p.requires_grad and p.ndim <= 1}


def clip_grad_per_parameter_(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """The reference's clipping: every parameter's gradient norm is clipped to ``max_norm`` on its own
    (not the global norm). Returns the norms before clipping, (P,) (no host sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack([g.detach().norm(2).float() for g in grads])      # (P,)
    scales = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g, s in zip(grads, scales):
        g.mul_(s.to(g.dtype))
    return norms
