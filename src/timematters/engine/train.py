"""The training engine: one script for 1 process and ``torchrun``.

    timematters train --config configs/synth_time.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node 2 -m timematters.cli train --config ... (gloo on CPU, NCCL on CUDA)

The engine sums the weighted losses an objective returns; it knows no method by name. Everything
random is keyed by (seed, epoch, sample index) or by the optimiser step, so a resumed run, and a run
on any number of processes with the same global batch, sees the same samples, augmentations and
shuffles.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import shlex
import sys
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from ..config import RESUME_FREE_KEYS, Config, ConfigError, config_diff, load_config, save_config, to_dict
from ..data.dataset import LoadFailures
from ..objectives import Objective, build_objective
from ..utils import Progress, atomic_write_text, environment_info, rng_for, sized
from . import checkpoint as ckpt
from .distributed import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed
from .optim import build_optimizer, lr_at, param_groups

log = logging.getLogger("timematters.train")


# ----------------------------------------------------------------------------------------------- data
class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches so that optimiser step g always sees the same global batch.

    The epoch's permutation comes from (seed, epoch). Global batch g is ``perm[g*G:(g+1)*G]``, cut into
    ``accum * world`` micro-batches; rank r at accumulation step a takes chunk ``a * world + r``. The
    composition of every optimiser step is thus independent of the number of processes, and resuming at
    step s simply starts at ``s``. The last incomplete global batch is dropped.
    """

    def __init__(self, num_samples: int, *, global_batch: int, micro_batch: int, rank: int, world: int,
                 seed: int, shuffle: bool = True):
        if global_batch % (micro_batch * world):
            raise ValueError(f"optim.batch_size={global_batch} is not a multiple of micro_batch ({micro_batch})"
                             f" x processes ({world})")
        if num_samples < global_batch:
            raise ValueError(f"the training set has {num_samples} samples, fewer than one global batch "
                             f"(optim.batch_size={global_batch})")
        self.n, self.G, self.m = num_samples, global_batch, micro_batch
        self.rank, self.world, self.seed, self.shuffle = rank, world, seed, shuffle
        self.accum = global_batch // (micro_batch * world)
        self.steps_per_epoch = num_samples // global_batch
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self):
        perm = (rng_for(self.seed, self.epoch, 0xDA7A).permutation(self.n) if self.shuffle
                else torch.arange(self.n).numpy())
        for g in range(self.start_step, self.steps_per_epoch):
            chunk = perm[g * self.G:(g + 1) * self.G]
            for a in range(self.accum):
                j = (a * self.world + self.rank) * self.m
                yield chunk[j:j + self.m].tolist()

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum


def build_dataset(cfg: Config, split: str, *, train: bool, label_fn=None, class_names=None):
    """Dataset and class names for a split, from the data section of the config. ``class_names`` (the
    training split's) labels another split by class name. Training substitutes unreadable videos, evaluation
    excludes them (the datasets' ``on_error`` defaults)."""
    d = cfg.data
    if d.classes and d.format == "imagefolder":
        raise ValueError("data.classes selects classes of a video dataset; imagefolder data has no class subsets")
    if d.format == "imagefolder":
        from ..data.images import build_image_dataset
        return build_image_dataset(d.root, split, train=train, img_size=d.img_size, mean=d.mean, std=d.std,
                                   seed=cfg.run.seed, randaugment=d.randaugment if train else "",
                                   max_fail_ratio=d.max_fail_ratio, class_names=class_names)
    from ..data.dataset import build_video_dataset
    return build_video_dataset(
        d.root, d.format, split, train=train, num_frames=d.num_frames, img_size=d.img_size,
        sampling=d.sampling, stride=d.stride, scale=d.scale, scale_sampling=d.scale_sampling,
        randaugment=d.randaugment if train else "",
        flip=d.flip and train, mean=d.mean, std=d.std, views=1 if train else d.val_views,
        crops=1 if train else d.val_crops, seed=cfg.run.seed, label_fn=label_fn,
        max_fail_ratio=d.max_fail_ratio, class_names=class_names, allow_outside_root=d.allow_outside_root,
        classes=_class_subset(cfg, class_names), backend=d.decode_backend)


def _class_subset(cfg: Config, class_names=None):
    """``data.classes`` for ``build_video_dataset``: resolved on the training split's names (groups or names),
    then the training subset for every other split. None = all classes."""
    if not cfg.data.classes:
        return None
    if class_names is not None:
        return list(class_names)
    from ..evaluation.groups import resolve_classes
    return lambda names: resolve_classes(cfg.data.classes, names, cfg.data.root)


def collate_fn(cfg: Config):
    if cfg.data.format == "imagefolder":
        from ..data.images import collate
    else:
        from ..data.dataset import collate
    return collate


def flow_labeler(cfg: Config, patch_size: int):
    from ..flow import FlowLabeler
    f = cfg.flow
    return FlowLabeler(patch_size=patch_size, threshold=f.threshold, scale=f.scale, estimator=f.estimator,
                       fraction=f.fraction, seed=cfg.run.seed, num_threads=1)


# ---------------------------------------------------------------------------------------------- model
def model_spec(cfg: Config, class_names: list[str]) -> dict:
    m, d = cfg.model, cfg.data
    kwargs = dict(num_classes=len(class_names), num_frames=1 if d.format == "imagefolder" else d.num_frames,
                  img_size=d.img_size)
    for key in ("depth", "embed_dim", "num_heads", "patch_size"):
        if getattr(m, key):
            kwargs[key] = getattr(m, key)
    for key in ("drop_rate", "drop_path_rate"):
        if getattr(m, key):
            kwargs[key] = getattr(m, key)
    kwargs.update(m.extra)
    return {"name": m.name, "create_kwargs": kwargs, "class_names": list(class_names),
            "num_frames": kwargs["num_frames"], "img_size": d.img_size, "mean": list(d.mean),
            "std": list(d.std), "data": {"root": d.root, "format": d.format, "allow_outside_root": d.allow_outside_root,
                                         "decode_backend": d.decode_backend,
                                         **({"classes": list(class_names)} if d.classes else {})},
            "method": cfg.objective.method}


def build_model(spec: dict, pretrained: str = "") -> nn.Module:
    from ..models import create_model
    return create_model(spec["name"], pretrained=pretrained or None, **spec["create_kwargs"])


def make_objective(cfg: Config, model: nn.Module, num_classes: int) -> Objective:
    """The objective of ``cfg.objective`` (every objective takes ``seed``: its draws are keyed by it)."""
    o = cfg.objective
    return build_objective(o.method, model, num_classes=num_classes, label_smoothing=o.label_smoothing,
                           weights=o.weights, **{"seed": cfg.run.seed, **o.args})


class Trainee(nn.Module):
    """Backbone + objective as one module, so DDP sees every trainable parameter."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict):
        return self.objective(self.model, batch)


def amp_context(mode: str, device: torch.device):
    """(autocast context factory, GradScaler or None)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return nullcontext, None
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
    if dtype is None:
        raise ValueError(f"optim.amp: unknown mode '{mode}' (auto | off | bf16 | fp16)")
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# ------------------------------------------------------------------------------------------- logging
class MetricLog:
    """JSON lines (always), TensorBoard and Weights & Biases (optional), rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, wandb_project: str = "",
                 config: dict | None = None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = self.wandb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is a dependency; keep training if an install lacks it
                log.warning("tensorboard not importable; logging to metrics.jsonl only")
        if enabled and wandb_project:
            import wandb
            id_file = run_dir / "wandb-run-id.txt"  # a resumed run continues the same W&B run
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
            atomic_write_text(id_file, run_id + "\n")
            self.wandb = wandb.init(project=wandb_project, id=run_id, resume="allow", dir=str(run_dir),
                                    name=run_dir.name, config=config)
            self.wandb.define_metric("step")
            self.wandb.define_metric("*", step_metric="step")  # re-logged steps after a resume are kept

    def write(self, kind: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        row = {"type": kind, "step": step, **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {f"{kind}/{k}": v for k, v in values.items()
                   if isinstance(v, (int, float)) and k not in ("epoch", "step")}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({"step": step, **scalars})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# --------------------------------------------------------------------------------------------- loop
def train_one_epoch(trainee: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
                    objective: Objective, model: nn.Module, epoch: int, global_step: int, total_steps: int,
                    steps_per_epoch: int, accum: int, lr_fn, autocast, scaler, clip_grad: float,
                    device: torch.device, info: DistInfo, metrics: MetricLog, log_every: int,
                    on_step=None, failures: LoadFailures | None = None) -> tuple[int, dict]:
    """One pass over this rank's micro-batches.

    Returns the optimiser step count at the end and ``{"data_time_s", "clips"}``: seconds spent waiting
    for the loader on this rank, clips trained on by all ranks. ``failures`` counts the loads the dataset
    replaced by substitutes (unreadable videos) and the frames the decoder never emitted.
    """
    trainee.train()
    progress = Progress(total=len(loader) // accum, desc=f"epoch {epoch}", unit="step", enabled=info.is_main)
    running: dict[str, float] = {}
    micro = clips = 0
    timing = {"data_time_s": 0.0}
    failures = failures if failures is not None else LoadFailures(action="substituted")
    # unreadable videos were replaced in the dataset; counted here
    for batch in _timed(failures.track(loader), timing):
        clips += len(batch["label"]) * info.world_size
        batch = to_device(batch, device)
        last_micro = (micro + 1) % accum == 0
        sync = trainee.no_sync if (info.enabled and not last_micro) else nullcontext
        with sync():
            with autocast():
                losses, outputs = trainee(batch)
            loss = sum(losses.values())
            if not math.isfinite(loss.item()):
                terms = {k: float(v.detach()) for k, v in losses.items()}
                raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {global_step}: {terms}; "
                                         "lower optim.lr, enable optim.clip_grad, or check the input data")
            scaled = loss / accum
            (scaler.scale(scaled) if scaler else scaled).backward()
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach()) / accum
        for k, v in outputs.items():
            if k.startswith(("acc/", "chance/", "svt/", "taco/", "rtt/")) and torch.is_tensor(v) and v.numel() == 1:
                running[k] = running.get(k, 0.0) + float(v) / accum
        micro += 1
        if not last_micro:
            continue
        lr = lr_fn(global_step)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        if scaler:
            scaler.unscale_(optimizer)
        if clip_grad > 0:
            objective.clip_grad_([p for g in optimizer.param_groups for p in g["params"]], clip_grad)
        objective.before_optimizer_step(optimizer, epoch=epoch, step=global_step, total_steps=total_steps)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        global_step += 1
        objective.on_step_end(model, global_step, total_steps)
        if global_step % log_every == 0 or global_step % steps_per_epoch == 0:
            if info.enabled:  # the mean over ranks is the global batch's value
                keys = sorted(running)
                values = all_reduce_mean(torch.tensor([running[k] for k in keys], dtype=torch.float64), info)
                running = dict(zip(keys, values.tolist()))
            total = sum(v for k, v in running.items() if "/" not in k)
            metrics.write("train", global_step, {"epoch": epoch, "lr": lr, "loss": total, **running})
        progress.set_postfix(loss=f"{sum(v for k, v in running.items() if '/' not in k):.3f}", lr=f"{lr:.2e}")
        progress.update(1)
        running = {}
        if on_step is not None:
            on_step(global_step)
    progress.close()
    return global_step, {**timing, "clips": clips}


def _timed(loader, timing: dict):
    """Yield the loader's batches, adding the seconds spent waiting for each to ``timing["data_time_s"]``."""
    it = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        timing["data_time_s"] += time.perf_counter() - t
        yield batch


def validate(model: nn.Module, cfg: Config, loader: DataLoader, class_names: list[str], device, autocast) -> dict:
    """Top-1/top-5 on original and shuffled clips and the gap (videos); top-1 for images."""
    model.eval()
    if cfg.data.format == "imagefolder":
        correct = n = 0
        failures = LoadFailures(what="images")     # unreadable images are excluded, counted and listed
        with torch.no_grad(), autocast():
            for batch in Progress(failures.track(loader), total=sized(loader), desc="validation", unit="batch"):
                logits = model(batch["image"].to(device))
                correct += (logits.argmax(-1).cpu() == batch["label"]).sum().item()
                n += len(batch["label"])
        excluded = failures.finish(log)
        return {"top1": 100.0 * correct / max(1, n), "num_samples": n, "num_failed": excluded["num_failed"],
                "failed": excluded["failed"]}
    from ..evaluation.evaluate import evaluate
    from ..evaluation.groups import resolve_groups
    groups = resolve_groups("auto", class_names, cfg.data.root)
    return evaluate(model, loader, device=device, shuffles=cfg.run.eval_shuffles, seed=cfg.run.seed,
                    class_groups=groups, class_names=class_names, desc="validation")


def scalar_metrics(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)):
            out[prefix + k] = v
        elif isinstance(v, dict) and k in ("groups", "group"):
            for g, gv in v.items():
                out.update(scalar_metrics(gv, f"{prefix}{g}/"))
    return out


def check_resume_config(cfg: Config, run_dir: Path, *, force: bool) -> None:
    """Refuse to resume a run with a config that differs from its ``config.yaml`` (``force``: warn only)."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    try:
        diff = config_diff(load_config(saved), cfg, RESUME_FREE_KEYS)
    except ConfigError as e:
        if not force:
            raise ConfigError(f"--resume: cannot read the run's config ({e}); pass --force to resume anyway")
        log.warning("--resume --force: cannot read the run's config (%s)", e)
        return
    if not diff:
        return
    listed = ", ".join(f"{k} ({old!r} -> {new!r})" for k, old, new in diff)
    if not force:
        raise ConfigError(f"--resume: the config differs from {saved} in {listed}; pass --force to resume "
                          "with the new values, or choose another run.out")
    log.warning("--resume --force: continuing with a changed config: %s", listed)


def record_invocation(run_dir: Path, **extra) -> None:
    """Append this start (command line, package versions, git commit, ...) to ``run_info.json``."""
    path = run_dir / "run_info.json"
    try:
        starts = json.loads(path.read_text())["starts"]
    except (OSError, ValueError, KeyError, TypeError):
        starts = []
    entry = {"command": shlex.join(sys.argv), "cwd": os.getcwd(), **extra, **environment_info()}
    atomic_write_text(path, json.dumps({"starts": starts + [entry]}, indent=1) + "\n")


def train(cfg: Config, *, resume: bool = False, force: bool = False) -> dict:
    """Train according to ``cfg``; returns the last validation metrics (rank 0) or {}.

    ``resume`` continues the run in ``cfg.run.out`` from its newest usable checkpoint; its config must
    match the run's ``config.yaml`` except for logging keys, unless ``force``. Rank 0 copies what is
    logged to ``train.log`` in the run directory.
    """
    run_dir = Path(cfg.run.out)
    handler = None
    if os.environ.get("RANK", "0") == "0":
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    try:
        return _train(cfg, resume=resume, force=force)
    except BaseException as e:
        if handler is not None:  # the reason a run stopped belongs in its log
            handler.handle(logging.makeLogRecord({"name": log.name, "levelno": logging.ERROR, "levelname": "ERROR",
                                                  "msg": "stopped: %s: %s", "args": (type(e).__name__, e)}))
        raise
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def _train(cfg: Config, *, resume: bool, force: bool) -> dict:
    info = init_distributed(cfg.run.device)
    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("timematters").setLevel(logging.INFO if info.is_main else logging.WARNING)
    run_dir = Path(cfg.run.out)
    if cfg.run.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"run.wandb={cfg.run.wandb} needs the wandb package: pip install 'timematters[wandb]'")
    if not resume and ckpt.has_checkpoints(run_dir):
        raise FileExistsError(f"{run_dir} already holds a run's checkpoints: pass --resume to continue it, "
                              "or choose another run.out")
    if resume:
        check_resume_config(cfg, run_dir, force=force)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.run.seed)  # model init: identical on every rank

    o = cfg.optim
    micro = o.micro_batch or o.batch_size // info.world_size
    train_set, class_names = build_dataset(cfg, cfg.data.train_split, train=True)
    spec = model_spec(cfg, class_names)
    model = build_model(spec, cfg.model.pretrained).to(info.device)
    if cfg.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    objective = make_objective(cfg, model, len(class_names)).to(info.device)
    if getattr(objective, "needs_flow", False):
        train_set.label_fn = flow_labeler(cfg, model.patch_size)

    sampler = GlobalBatchSampler(len(train_set), global_batch=o.batch_size, micro_batch=micro,
                                 rank=info.rank, world=info.world_size, seed=cfg.run.seed)
    workers = cfg.data.num_workers
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=workers, collate_fn=collate_fn(cfg),
                        pin_memory=info.device.type == "cuda", persistent_workers=False)
    val_loader = None
    if objective.needs_labels:  # every rank scores its shard; evaluate() gathers the scores
        val_set, _ = build_dataset(cfg, cfg.data.val_split, train=False, class_names=class_names)
        shard = list(range(info.rank, len(val_set), info.world_size))
        val_loader = DataLoader(val_set, batch_size=max(1, micro), sampler=shard, num_workers=workers,
                                collate_fn=collate_fn(cfg))

    trainee = Trainee(model, objective)
    groups = param_groups([("model", model), ("objective", objective)], o.weight_decay, o.no_decay)
    optimizer = build_optimizer(groups, lr=o.lr, betas=o.betas, amsgrad=o.amsgrad)
    autocast, scaler = amp_context(o.amp, info.device)
    if info.enabled:
        trainee = nn.parallel.DistributedDataParallel(
            trainee, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=True, broadcast_buffers=False)

    steps_per_epoch = sampler.steps_per_epoch
    total_steps = steps_per_epoch * o.epochs
    lr_fn = lambda s: lr_at(s, total_steps=total_steps, steps_per_epoch=steps_per_epoch, base_lr=o.lr,  # noqa: E731
                            min_lr=o.min_lr, schedule=o.schedule, warmup_epochs=o.warmup_epochs,
                            milestones=o.milestones, gamma=o.gamma)

    global_step = 0
    loaded = ckpt.load_latest_training_state(run_dir, model=model, objective=objective) if resume else None
    if resume and loaded is None and info.is_main:
        log.info("--resume: no checkpoint in %s, starting from scratch", run_dir)
    if loaded is not None:
        state, weights = loaded
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if state.get("rng_cuda") and torch.cuda.is_available():
            for i, s in enumerate(state["rng_cuda"][:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
        global_step = int(state["global_step"])
        log.info("resumed from %s at step %d", weights.name, global_step)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        record_invocation(run_dir, start_step=global_step, world_size=info.world_size,
                          device=str(info.device))
        log.info("%s %s: %d training clips, %d steps per epoch, %d epochs, from step %d, %d process(es) on %s",
                 "resuming" if global_step else "training", run_dir, len(train_set), steps_per_epoch, o.epochs,
                 global_step, info.world_size, info.device)
    barrier(info)
    metrics = MetricLog(run_dir, info.is_main, cfg.run.tensorboard, cfg.run.wandb, to_dict(cfg))

    def save(step: int) -> None:
        if not info.is_main:
            return
        state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                 "rng_cpu": torch.get_rng_state(), "global_step": step, "config": to_dict(cfg),
                 "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        ckpt.save_checkpoint(run_dir, model=model, objective=objective, spec=spec, train_state=state, step=step)

    def on_step(step: int) -> None:
        if cfg.run.ckpt_every_steps and step % cfg.run.ckpt_every_steps == 0 and step % steps_per_epoch:
            save(step)

    last_val: dict = {}
    run_failures = LoadFailures(action="substituted")  # the whole run's, for the end-of-run summary
    start_epoch = global_step // steps_per_epoch
    for epoch in range(start_epoch, o.epochs):
        start = global_step - epoch * steps_per_epoch
        sampler.set_epoch(epoch, start_step=start)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        t0 = time.time()
        failures = LoadFailures(action="substituted")
        global_step, epoch_stats = train_one_epoch(
            trainee, loader, optimizer, objective=objective, model=model, epoch=epoch, global_step=global_step,
            total_steps=total_steps, steps_per_epoch=steps_per_epoch, accum=sampler.accum, lr_fn=lr_fn,
            autocast=autocast, scaler=scaler, clip_grad=o.clip_grad, device=info.device, info=info,
            metrics=metrics, log_every=cfg.run.log_every, on_step=on_step, failures=failures)
        epoch_time = time.time() - t0
        lost = failures.finish(log)  # summed over ranks; more than data.max_fail_ratio of the loads: error
        run_failures.update(failures)
        save(global_step)
        values = {"epoch": epoch, "epoch_time_s": epoch_time, "data_time_s": epoch_stats["data_time_s"],
                  "clips_per_s": epoch_stats["clips"] / max(epoch_time, 1e-9),
                  "train_num_failed": lost["num_failed"], "train_failed_loads": lost["failed_loads"],
                  "train_substituted_frames": lost["substituted_frames"]}
        if val_loader is not None:
            last_val = validate(model, cfg, val_loader, class_names, info.device, autocast)
            values.update(scalar_metrics(last_val))
        if info.is_main:
            metrics.write("val" if val_loader is not None else "epoch", global_step, values)
            log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.2f}" for k, v in values.items() if "/" not in k))
            if last_val:
                atomic_write_text(run_dir / "val_metrics.json", json.dumps(last_val, indent=1, default=float))
        barrier(info)
    if info.is_main:  # end-of-run summary of the unreadable training videos (already summed over ranks)
        metrics.write("data", global_step, {"train_" + k: v for k, v in run_failures.summary().items()})
        if run_failures.noteworthy():
            log.warning("training: %s", run_failures.line(limit=5))
    metrics.close()
    cleanup(info)
    return last_val


def add_arguments(p: argparse.ArgumentParser, *, example: str = "synth_time") -> None:
    """The options of ``timematters train`` (and of ``pretrain``, after its ``--method``)."""
    p.add_argument("--config", required=True, help=f"YAML file, or a name in configs/ (e.g. {example})")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--force", action="store_true",
                   help="with --resume: accept a config that differs from the run's config.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. optim.lr=3e-4 (before or after the options)")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    train(cfg, resume=args.resume, force=args.force)
    return 0
