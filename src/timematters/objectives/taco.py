"""TaCo (Bai et al., "Can Temporal Information Help with Contrastive Self-Supervised Learning?").

No public code exists; this module follows the paper (Sections 3 and 4.2) and says where it has to
choose. For each temporal transformation n of a video V (``tasks``, any subset of rotation, reverse,
shuffle, speed) the encoder embeds the transformed clip V^n; a projection head per transformation maps it
into the contrastive space and a task head per transformation predicts the transformation's parameter:

    L = w_contrast * sum_n InfoNCE(z(V^n), z(V))  +  lambda * sum_n CE(task_n)        (Eqs. 1-4)

with tau = 0.07, lambda = 10 (``weights={"task": 10}``) and the negatives from a MoCo queue of momentum
keys (``memory="moco"``, 16384 by default) or an InstDisc memory bank (``memory="bank"``). The default
tasks are the paper's best pair, speed + shuffle (Table 2); rotation and reverse are optional.

Negatives never include the query's own video: the queue remembers which video each key came from, and
keys of the query's video are masked out (a queue longer than an epoch's keys would otherwise hold stale
keys of the same video as negatives). Every clip gets its own spatial augmentation (random resized crop,
flip, colour jitter, grayscale, ``augment=True``), so query and key differ in more than their start frame.

Transformations and task heads (Section 4.2.2); every clip is ``clip_len`` frames at the base speed
2^``base_speed`` unless stated:
- rotation: the clip V rotated by k * 90 degrees (k uniform in 0..3) plus per-frame noise in [-3, 3]
  degrees (``temporal.rotation_jitter``); 4-way task.
- reverse: V played backwards with probability 1/2; 2-way task (forward / backward).
- shuffle: ``shuffle_clips`` (3) sub-clips of ``clip_len // 2`` frames from random positions of the
  source, one of them frame-shuffled; the task is which one (odd-one-out, following O3N). The text
  reads "3t/2-frame clips"; we read it as three clips of t/2 frames. The shuffle view's contrastive
  embedding is the mean of its sub-clip embeddings (the paper does not say).
- speed: a clip at speed s (every 2^(base_speed + s)-th frame, s in 0..num_speeds-1) from a random
  start; the task is s. Its head is the shuffle-style fusion head on [V, speed clip] ("a similar one as
  temporal shuffle task, to better learn the relatively subtle motion difference").

Heads (our reading of Section 4.2.2 for a transformer's CLS vector, where the 3D-ResNet "reshaping"
has nothing to do):
- projection head: Linear -> l2-normalise -> Linear -> l2-normalise (the last normalisation makes the
  dot product the cosine of Eq. 1).
- rotation / reverse task head: Linear -> l2-normalise -> Linear classifier.
- shuffle / speed task head (O3N's pairwise-difference fusion): a shared Linear per clip, the signed
  pairwise differences a_i - a_j (i < j) concatenated, then Linear -> ReLU -> Linear. O3N sums the
  differences; summed over three clips they cancel the middle one (sum_{i<j} a_i - a_j = 2 a_0 - 2 a_2),
  so the odd-one-out would be invisible whenever it is the middle clip. Concatenated, nothing cancels;
  with two clips (speed) both readings are the same head.

The original clip V has its own projection head. With MoCo its key comes from momentum copies of the
encoder and that head; the online copy of the head is trained by the base CSL term: a second clip V'
of the same video (another random start) as the query against V's key (``base_term=True``; this is
MoCo's own loss, the "vanilla CSL" the paper adds TaCo to). With the memory bank, the positives are the
bank entries of the videos; the base term is the online embedding of V against the bank (InstDisc's own
loss), and that embedding updates the bank with momentum ``bank_momentum`` (0.5, as InstDisc).

Randomness: every sample's draws come from ``rng_for(seed, step, index)``, ``step`` being the optimiser
step (a buffer set in ``on_step_end``, saved with the objective) and ``index`` the sample's
``batch["index"]``; the bank's negatives from ``torch_rng_for(seed, step, NEG_STREAM)``.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import temporal
from ..utils import rng_for, torch_rng_for
from .base import LossDict, Objective, OutDict

TASKS = ("rotation", "reverse", "shuffle", "speed")
DEFAULT_TASKS = ("speed", "shuffle")  # the paper's best pair (Table 2)
NEG_STREAM = 0x4E454753  # third rng key of the bank's negative draw (never a sample index)


class ProjectionHead(nn.Module):
    """Linear -> l2-normalise -> Linear -> l2-normalise: (..., D) -> (..., out_dim) unit vectors."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc2(F.normalize(self.fc1(x), dim=-1)), dim=-1)


class ClipTaskHead(nn.Module):
    """Task head on one clip embedding: Linear -> l2-normalise -> Linear classifier."""

    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, D) -> (B, K)
        return self.fc2(F.normalize(self.fc1(x), dim=-1))


class FusionTaskHead(nn.Module):
    """O3N-style head on ``num_clips`` clip embeddings: a shared Linear per clip, the signed pairwise
    differences a_i - a_j (i < j) concatenated (not summed: see the module docstring), then
    Linear -> ReLU -> Linear classifier."""

    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int, num_clips: int):
        super().__init__()
        self.num_clips = num_clips
        num_pairs = num_clips * (num_clips - 1) // 2
        self.embed = nn.Linear(in_dim, hidden_dim)
        self.fc1 = nn.Linear(num_pairs * hidden_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, n, D) -> (B, K)
        if x.shape[1] != self.num_clips:
            raise ValueError(f"FusionTaskHead: built for {self.num_clips} clips, got {x.shape[1]}")
        a = self.embed(x)                                             # (B, n, d)
        i, j = torch.triu_indices(self.num_clips, self.num_clips, offset=1, device=a.device)
        fused = (a[:, i] - a[:, j]).flatten(1)                        # (B, n(n-1)/2 * d)
        return self.fc2(F.relu(self.fc1(fused)))


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float,
             neg_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE with one positive per query. query, positive (B, d) and negatives (K, d), all unit vectors;
    ``neg_mask`` (B, K) True where a negative must be left out. Returns (loss, top-1 accuracy)."""
    pos = (query * positive).sum(dim=-1, keepdim=True)                # (B, 1)
    neg = query @ negatives.t()                                        # (B, K)
    if neg_mask is not None:
        neg = neg.masked_fill(neg_mask, float("-inf"))
    logits = torch.cat([pos, neg], dim=1).float() / temperature        # (B, 1+K)
    target = torch.zeros(len(query), dtype=torch.long, device=query.device)
    loss = F.cross_entropy(logits, target)
    acc = (logits.argmax(dim=1) == 0).float().mean()
    return loss, acc.detach()


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over the ranks of a distributed run (no gradient); itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class TaCo(Objective):
    """Temporal-aware contrastive learning: InfoNCE between a clip and its temporal transformations plus
    one classification task per transformation.

    Args:
        model: the backbone; heads read ``Features.cls`` of size ``model.embed_dim``.
        num_classes: unused (pretext task; accepted for the common objective signature).
        label_smoothing: on the task cross-entropies.
        weights: ``contrast`` (1) and ``task`` (lambda, 10 as the paper).
        tasks: the transformations used (default the paper's best pair: speed, shuffle).
        clip_len: frames per clip (default ``model.num_frames``; the paper: 8).
        base_speed: clips take every 2^base_speed-th frame of the source (the paper: stride 8 -> 3).
        num_speeds: speed classes of the speed task (1x, 2x, 4x, ... relative to the base speed).
        shuffle_clips: sub-clips of the shuffle task (3).
        memory: ``"moco"`` (momentum encoder + queue) or ``"bank"`` (InstDisc memory bank).
        queue_size: MoCo queue length (16384 as the paper).
        momentum: MoCo key-encoder momentum (0.999).
        bank_size: memory-bank entries, at least the number of training videos (``memory="bank"``).
        num_negatives: negatives drawn from the bank per step (16384 as the paper; all when larger).
        bank_momentum: memory-bank update momentum (0.5 as InstDisc).
        temperature: of InfoNCE (0.07).
        proj_dim, hidden_dim: projection output size and hidden width of every head.
        base_term: include the plain CSL loss of the original clip (see the module docstring).
        augment: an independent spatial augmentation per clip (crop ``crop_scale`` of the area, flip
            ``flip_p``, colour jitter ``color_jitter`` with probability ``color_jitter_p``, grayscale
            ``grayscale_p``); ``mean`` / ``std`` must equal the data's normalisation.
        seed: base seed of the draws.
    """

    needs_labels = False
    TERMS = ("contrast", "task")

    def __init__(self, model: nn.Module, *, num_classes: int = 0, label_smoothing: float = 0.0,
                 weights: dict | None = None, tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS, clip_len: int = 0,
                 base_speed: int = 0, num_speeds: int = 3, shuffle_clips: int = 3, memory: str = "moco",
                 queue_size: int = 16384, momentum: float = 0.999, bank_size: int = 0,
                 num_negatives: int = 16384, bank_momentum: float = 0.5, temperature: float = 0.07,
                 proj_dim: int = 128, hidden_dim: int = 512, base_term: bool = True, augment: bool = True,
                 crop_scale: tuple[float, float] = (0.5, 1.0), flip_p: float = 0.5,
                 color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
                 color_jitter_p: float = 0.8, grayscale_p: float = 0.2,
                 mean: tuple[float, float, float] = (0.5, 0.5, 0.5), std: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 seed: int = 0):
        super().__init__()
        unknown = set(weights or {}) - set(self.TERMS)
        if unknown:
            raise ValueError(f"TaCo: unknown loss weight(s) {sorted(unknown)}; terms are {self.TERMS}")
        tasks = tuple(tasks)
        bad = [t for t in tasks if t not in TASKS]
        if bad or not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"TaCo: objective.args.tasks must be distinct names from {TASKS}, got {list(tasks)}")
        if memory not in ("moco", "bank"):
            raise ValueError(f"TaCo: objective.args.memory must be 'moco' or 'bank', got {memory!r}")
        if memory == "moco" and queue_size < 1:
            raise ValueError(f"TaCo: objective.args.queue_size must be >= 1, got {queue_size}")
        if memory == "bank" and bank_size < 2:
            raise ValueError("TaCo: memory='bank' needs objective.args.bank_size >= the number of training "
                             f"videos (got {bank_size})")
        if num_speeds < 2 and "speed" in tasks:
            raise ValueError(f"TaCo: objective.args.num_speeds must be >= 2, got {num_speeds}")
        if shuffle_clips < 2 and "shuffle" in tasks:
            raise ValueError(f"TaCo: objective.args.shuffle_clips must be >= 2, got {shuffle_clips}")
        self.tasks = tasks
        self.clip_len = int(clip_len) or int(model.num_frames)
        self.sub_len = self.clip_len // 2
        if "shuffle" in tasks and self.sub_len < 2:
            raise ValueError(f"TaCo: the shuffle task needs clip_len >= 4, got {self.clip_len}")
        self.weights = {"contrast": float((weights or {}).get("contrast", 1.0)),
                        "task": float((weights or {}).get("task", 10.0))}
        self.label_smoothing = label_smoothing
        self.base_speed = base_speed
        self.num_speeds = num_speeds
        self.shuffle_clips = shuffle_clips
        self.memory = memory
        self.momentum = momentum
        self.num_negatives = num_negatives
        self.bank_momentum = bank_momentum
        self.temperature = temperature
        self.base_term = base_term
        self.augment = augment
        self.crop_scale, self.flip_p = tuple(crop_scale), flip_p
        self.color_jitter, self.color_jitter_p, self.grayscale_p = tuple(color_jitter), color_jitter_p, grayscale_p
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(v) for v in std)
        self.seed = seed

        D = model.embed_dim
        classes = {"rotation": 4, "reverse": 2, "shuffle": shuffle_clips, "speed": num_speeds}
        self.proj = nn.ModuleDict({name: ProjectionHead(D, hidden_dim, proj_dim)
                                   for name in ("original",) + tasks})
        fused_clips = {"shuffle": shuffle_clips, "speed": 2}   # speed: [V, the clip at speed s]
        self.task_heads = nn.ModuleDict({
            name: FusionTaskHead(D, hidden_dim, classes[name], fused_clips[name]) if name in fused_clips
            else ClipTaskHead(D, hidden_dim, classes[name])
            for name in tasks})
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # drives the draws
        g = torch_rng_for(seed, 0x4D454D)  # memory initialisation
        if memory == "moco":
            # momentum copies of the encoder and the original clip's projection head; the encoder is
            # copied again from the online model at the first forward (weights may be loaded after __init__)
            self.key_encoder = copy.deepcopy(model)
            self.key_proj = copy.deepcopy(self.proj["original"])
            for p in list(self.key_encoder.parameters()) + list(self.key_proj.parameters()):
                p.requires_grad_(False)
            self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim, generator=g), dim=1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
            # the video (sample index) each key came from; -1 = the random initial keys
            self.register_buffer("queue_index", torch.full((queue_size,), -1, dtype=torch.long))
            self.register_buffer("key_ready", torch.zeros((), dtype=torch.bool))
        else:
            self.register_buffer("bank", F.normalize(torch.randn(bank_size, proj_dim, generator=g), dim=1))

    # ------------------------------------------------------------------ clip draws
    def _base(self, video_len: int, rng: np.random.Generator) -> np.ndarray:
        return temporal.speed_indices(video_len, self.clip_len, self.base_speed, rng)

    def draw(self, batch: dict, video_len: int) -> dict[str, torch.Tensor]:
        """Per-sample index sequences into the source clip and task labels (all LongTensors, CPU).

        ``full`` (B, F, clip_len) clips in the order of ``self.full_clips()``, ``sub`` (B, shuffle_clips,
        sub_len) and one label (B,) per task.
        """
        step = int(self.step)
        t = self.clip_len
        full, sub = [], []
        labels: dict[str, list[int]] = {name: [] for name in self.tasks}
        for i in batch["index"]:
            rng = rng_for(self.seed, step, int(i))
            key = self._base(video_len, rng)                            # V
            clips = [key]
            if self.memory == "moco" and self.base_term:
                clips.append(self._base(video_len, rng))                # V': another start
            if "rotation" in self.tasks:
                labels["rotation"].append(int(rng.integers(0, 4)))
                clips.append(key)                                       # rotated below (spatial op)
            if "reverse" in self.tasks:
                backwards = int(rng.integers(0, 2))
                labels["reverse"].append(backwards)
                clips.append(key[temporal.reverse(t)] if backwards else key)
            if "speed" in self.tasks:
                s = int(rng.integers(0, self.num_speeds))
                labels["speed"].append(s)
                clips.append(temporal.speed_indices(video_len, t, self.base_speed + s, rng))
            full.append(np.stack(clips))
            if "shuffle" in self.tasks:
                odd = int(rng.integers(0, self.shuffle_clips))
                labels["shuffle"].append(odd)
                parts = [temporal.speed_indices(video_len, self.sub_len, self.base_speed, rng)
                         for _ in range(self.shuffle_clips)]
                parts[odd] = parts[odd][temporal.random_permutation(self.sub_len, rng)]
                sub.append(np.stack(parts))
        out = {"full": torch.as_tensor(np.stack(full), dtype=torch.long)}
        if sub:
            out["sub"] = torch.as_tensor(np.stack(sub), dtype=torch.long)
        for name, values in labels.items():
            out[name] = torch.as_tensor(values, dtype=torch.long)
        return out

    def full_clips(self) -> list[str]:
        """Names of the full-length clips gathered per sample, in order."""
        names = ["key"]
        if self.memory == "moco" and self.base_term:
            names.append("query")
        names += [n for n in ("rotation", "reverse", "speed") if n in self.tasks]
        return names

    # ------------------------------------------------------------------ forward
    def forward(self, model: nn.Module, batch: dict) -> tuple[LossDict, OutDict]:
        video = batch["video"]                                          # (B, T_src, C, H, W)
        B, T_src = video.shape[:2]
        self._check_length(T_src)
        draws = {k: v.to(video.device) for k, v in self.draw(batch, T_src).items()}
        names = self.full_clips()
        t, nf = self.clip_len, len(names)
        clips = temporal.apply_order(video, draws["full"].reshape(B, nf * t))
        clips = clips.reshape(B, nf, t, *video.shape[2:])               # (B, F, t, C, H, W)
        if self.augment:
            clips = self._augment(clips, batch["index"], stream=2)
        if "rotation" in self.tasks:
            j = names.index("rotation")
            rotated = [temporal.rotation_jitter(clips[b, j], int(draws["rotation"][b]),
                                                rng_for(self.seed, int(self.step), int(batch["index"][b]), 1))
                       for b in range(B)]
            clips = torch.cat([clips[:, :j], torch.stack(rotated)[:, None], clips[:, j + 1:]], dim=1)

        # online embeddings of the clips; with MoCo the key clip V is seen by the momentum encoder only,
        # unless the speed head needs an online base-speed reference and there is no V' to serve as one
        first = 1 if self.memory == "moco" and (self.base_term or "speed" not in self.tasks) else 0
        online = names[first:]
        h: dict[str, torch.Tensor] = {}
        if online:
            hf = model.forward_features(clips[:, first:].reshape(B * len(online), t, *video.shape[2:])).cls
            h = dict(zip(online, hf.reshape(B, len(online), -1).unbind(dim=1)))  # name -> (B, D)
        if "shuffle" in self.tasks:
            n, s = self.shuffle_clips, self.sub_len
            sub = temporal.apply_order(video, draws["sub"].reshape(B, n * s))
            if self.augment:   # one augmentation for the three sub-clips: only their order may differ
                sub = self._augment(sub[:, None], batch["index"], stream=3)[:, 0]
            hs = model.forward_features(sub.reshape(B * n, s, *video.shape[2:])).cls
            h["shuffle_parts"] = hs.reshape(B, n, -1)                   # (B, n, D)
            h["shuffle"] = h["shuffle_parts"].mean(dim=1)

        losses: LossDict = {}
        out: OutDict = {}
        positive, negatives, neg_mask = self._memory(model, batch, clips[:, 0], h)
        base = None
        if self.base_term:
            base = "query" if self.memory == "moco" else "key"
        contrast, accs = [], []
        for name in ([base] if base else []) + list(self.tasks):
            head = self.proj["original" if name == base else name]
            loss, acc = info_nce(head(h[name]), positive, negatives, self.temperature, neg_mask)
            contrast.append(loss)
            accs.append(acc)
            out[f"taco/contrast_{'base' if name == base else name}"] = loss.detach()
        losses["contrast"] = self.weights["contrast"] * torch.stack(contrast).sum()
        out["acc/contrast"] = torch.stack(accs).mean()

        task_losses = []
        for name in self.tasks:
            head = self.task_heads[name]
            if name == "shuffle":
                logits = head(h["shuffle_parts"])
            elif name == "speed":
                reference = h["query"] if "query" in h else h["key"]  # an online clip at the base speed
                logits = head(torch.stack([reference, h["speed"]], dim=1))
            else:
                logits = head(h[name])
            target = draws[name]
            task_losses.append(F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing))
            out[f"acc/{name}"] = (logits.argmax(-1) == target).float().mean().detach()
            out[f"chance/{name}"] = torch.tensor(1.0 / logits.shape[-1])
        losses["task"] = self.weights["task"] * torch.stack(task_losses).sum()

        if self.training:
            self._update_memory(batch, positive, h)
        return losses, out

    def _augment(self, clips: torch.Tensor, index: torch.Tensor, stream: int) -> torch.Tensor:
        """An independent spatial augmentation per clip: clips (B, F, t, C, H, W) normalised -> same shape.
        Draws from rng_for(seed, step, sample index, stream)."""
        from .svt import color_jitter, random_resized_crop_box
        import torchvision.transforms.v2.functional as TF
        B, F_, t, C, H, W = clips.shape
        mean = clips.new_tensor(self.mean).view(1, 3, 1, 1)
        std = clips.new_tensor(self.std).view(1, 3, 1, 1)
        out = torch.empty_like(clips)
        for b in range(B):
            rng = rng_for(self.seed, int(self.step), int(index[b]), stream)
            for f in range(F_):
                x = (clips[b, f].float() * std + mean).clamp(0.0, 1.0)        # (t, C, H, W) in [0, 1]
                top, left, h, w = random_resized_crop_box(rng, H, W, self.crop_scale)
                x = TF.resized_crop(x, top, left, h, w, [H, W], antialias=True)
                if rng.random() < self.flip_p:
                    x = TF.horizontal_flip(x)
                if rng.random() < self.color_jitter_p:
                    x = color_jitter(x, rng, self.color_jitter)
                if rng.random() < self.grayscale_p:
                    x = TF.rgb_to_grayscale(x, num_output_channels=3)
                out[b, f] = ((x - mean) / std).to(clips.dtype)
        return out

    def _check_length(self, T_src: int) -> None:
        fastest = self.base_speed + (self.num_speeds - 1 if "speed" in self.tasks else 0)
        need = (self.clip_len - 1) * 2 ** fastest + 1
        if T_src < need:
            raise ValueError(f"TaCo: clips of {self.clip_len} frames at speeds up to 2^{fastest} need source "
                             f"clips of >= {need} frames, got {T_src}; set data.num_frames (dense sampling, "
                             "stride 1) or lower objective.args.num_speeds / base_speed / clip_len")

    def _memory(self, model: nn.Module, batch: dict, key_clip: torch.Tensor,
                h: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(positives (B, d), negatives (K, d), mask (B, K) or None) for the InfoNCE terms."""
        if self.memory == "moco":
            if not bool(self.key_ready):
                self._copy_to_key(model)
            with torch.no_grad():
                k = self.key_proj(self.key_encoder.forward_features(key_clip).cls)  # (B, d)
            h["moco_key"] = k
            index = batch["index"].to(self.queue_index.device).long()
            own = self.queue_index[None, :] == index[:, None]              # (B, K): keys of the query's video
            return k, self.queue.clone().detach(), own
        index = batch["index"].to(self.bank.device).long()
        if int(index.max()) >= len(self.bank) or int(index.min()) < 0:
            raise ValueError(f"TaCo: batch index {int(index.max())} does not fit the memory bank of "
                             f"{len(self.bank)} entries; set objective.args.bank_size >= the number of videos")
        K = min(self.num_negatives, len(self.bank))
        g = torch_rng_for(self.seed, int(self.step), NEG_STREAM)
        neg_idx = torch.randperm(len(self.bank), generator=g)[:K].to(self.bank.device)
        mask = neg_idx[None, :] == index[:, None]                       # (B, K): a video is no negative of itself
        return self.bank[index].clone().detach(), self.bank[neg_idx].clone().detach(), mask

    @torch.no_grad()
    def _update_memory(self, batch: dict, positive: torch.Tensor, h: dict[str, torch.Tensor]) -> None:
        if self.memory == "moco":
            keys = _gather(h["moco_key"].to(self.queue.dtype))
            index = _gather(batch["index"].to(self.queue.device).long())
            n, size = len(keys), len(self.queue)
            ptr = int(self.queue_ptr)
            slots = (ptr + torch.arange(n, device=keys.device)) % size
            if n > size:  # more keys than slots: keep the last ones
                keys, slots, index = keys[-size:], slots[-size:], index[-size:]
            self.queue[slots] = keys
            self.queue_index[slots] = index
            self.queue_ptr.fill_((ptr + n) % size)
            return
        z = self.proj["original"](h["key"]).detach().to(self.bank.dtype)  # (B, d)
        index = _gather(batch["index"].to(self.bank.device).long())
        z = _gather(z)
        m = self.bank_momentum
        self.bank[index] = F.normalize(m * self.bank[index] + (1 - m) * z, dim=1)

    # ------------------------------------------------------------------ momentum encoder
    @torch.no_grad()
    def _copy_to_key(self, model: nn.Module) -> None:
        model = getattr(model, "module", model)
        self.key_encoder.load_state_dict(model.state_dict())
        self.key_proj.load_state_dict(self.proj["original"].state_dict())
        self.key_ready.fill_(True)

    @torch.no_grad()
    def on_step_end(self, model: nn.Module, step: int, total_steps: int) -> None:
        self.step.fill_(step)  # the optimiser step count: the same on every rank and accumulation layout
        if self.memory != "moco":
            return
        model = getattr(model, "module", model)
        if not bool(self.key_ready):
            self._copy_to_key(model)
            return
        m = self.momentum
        pairs = [(self.key_encoder, model), (self.key_proj, self.proj["original"])]
        for key, online in pairs:
            for pk, pq in zip(key.parameters(), online.parameters()):
                pk.mul_(m).add_(pq.detach(), alpha=1 - m)
            for bk, bq in zip(key.buffers(), online.buffers()):
                bk.copy_(bq)
