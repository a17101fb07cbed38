"""SVT: views, DINO loss, centre, EMA teacher, optimiser hooks, slow-fast features, a short training run."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timematters import create_model
from timematters.evaluation.slowfast import default_fast_shape, resample_clip, slow_fast_features
from timematters.engine.optim import param_groups
from timematters.objectives import build_objective
from timematters.objectives.svt import (SVT, DINOHead, clip_grad_per_parameter_, random_resized_crop_box,
                                        window_indices)
from timematters.utils import rng_for

B, T_SRC, IMG = 3, 16, 32
NO_AUG = dict(flip_p=0.0, color_jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0, 0.0), solarize_p=(0.0, 0.0, 0.0))
SMALL_HEAD = dict(out_dim=128, hidden_dim=64, bottleneck_dim=32)


def tiny_model(seed: int = 0, img: int = IMG):
    torch.manual_seed(seed)
    return create_model("timesformer_tiny", num_classes=0, num_frames=8, img_size=img, depth=2, embed_dim=64,
                        num_heads=2, patch_size=8)


def small_svt(model, **kw):
    args = dict(SMALL_HEAD, global_frames=(4, 8), local_frames=(2, 4), global_size=IMG, local_size=16)
    args.update(kw)
    return build_objective("svt", model, num_classes=0, **args)


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return {"video": torch.rand(B, T_SRC, 3, IMG, IMG, generator=g) * 2 - 1, "index": torch.tensor([5, 9, 2])}


# ------------------------------------------------------------------------------------------- views
def test_paper_views_shapes_and_counts(model, batch):
    obj = build_objective("svt", model, num_classes=0, global_size=IMG, local_size=16, **SMALL_HEAD)
    assert isinstance(obj, SVT) and obj.needs_labels is False
    views = obj.make_views(batch["video"], batch["index"])
    # the paper: 2 global views with T = 8 and 16, 8 local views with T in {2, 4, 8, 16}
    assert len(views) == 10
    assert [tuple(v.shape) for v in views[:2]] == [(B, 8, 3, IMG, IMG), (B, 16, 3, IMG, IMG)]
    assert [v.shape[1] for v in views[2:]] == [2, 2, 4, 4, 8, 8, 16, 16]
    assert all(v.shape[-2:] == (16, 16) for v in views[2:])
    assert all(v.dtype == batch["video"].dtype and v.device == batch["video"].device for v in views)


def _time_coded_video(num_frames: int) -> torch.Tensor:
    """(B, T, 3, H, W) whose frame t is the constant t / (T - 1), normalised with mean = std = 0.5."""
    t = torch.arange(num_frames, dtype=torch.float32) / (num_frames - 1)
    return (t.view(1, -1, 1, 1, 1).expand(B, num_frames, 3, IMG, IMG) - 0.5) / 0.5


def _frame_ids(view: torch.Tensor, num_frames: int) -> np.ndarray:
    value = view.mean(dim=(2, 3, 4)) * 0.5 + 0.5                       # (B, T_v) back to [0, 1]
    return torch.round(value * (num_frames - 1)).long().numpy()


@pytest.mark.parametrize("num_src", [16, 32])
def test_temporal_extents_follow_the_paper(model, num_src):
    obj = small_svt(model, global_frames=(8, 16), local_frames=(2, 4, 8, 16), **NO_AUG)
    views = obj.make_views(_time_coded_video(num_src), torch.arange(B))
    g_window, l_window = round(0.9 * num_src), max(1, round(num_src / 8))
    starts = set()
    for v, view in enumerate(views):
        ids = _frame_ids(view, num_src)                                 # (B, T_v)
        assert (np.diff(ids, axis=1) >= 0).all(), "frames keep their order"
        span = ids[:, -1] - ids[:, 0]
        window = g_window if v < 2 else l_window
        assert (span == window - 1).all(), (v, ids)
        starts.update(ids[:, 0].tolist())
    assert len(starts) > 1, "windows start at random places"


def test_public_preset_uses_the_two_ends_for_globals(model):
    obj = small_svt(model, global_frames=(8, 8), local_frames=(8,) * 8, global_window="ends", **NO_AUG)
    views = obj.make_views(_time_coded_video(T_SRC), torch.arange(B))
    assert len(views) == 10 and all(v.shape[1] == 8 for v in views)
    first, second = _frame_ids(views[0], T_SRC), _frame_ids(views[1], T_SRC)
    assert (first[:, 0] == 0).all() and (second[:, -1] == T_SRC - 1).all()


def test_augmentation_is_shared_by_the_frames_of_a_view(model):
    obj = small_svt(model, flip_p=0.5, color_jitter_p=1.0, grayscale_p=0.0, blur_p=(1.0, 1.0, 1.0),
                    solarize_p=(1.0, 1.0, 1.0))
    g = torch.Generator().manual_seed(3)
    still = (torch.rand(B, 1, 3, IMG, IMG, generator=g) * 2 - 1).expand(B, T_SRC, 3, IMG, IMG)   # no motion
    views = obj.make_views(still, torch.arange(B))
    for view in views:
        assert torch.allclose(view, view[:, :1].expand_as(view), atol=1e-6), "one draw per view, all frames"
    assert not torch.allclose(views[0], views[1][:, :4]), "each view draws its own augmentation"


def test_views_are_keyed_by_seed_step_and_index(model, batch):
    obj = small_svt(model)
    a = obj.make_views(batch["video"], batch["index"])
    b = obj.make_views(batch["video"], batch["index"])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = obj.make_views(batch["video"], batch["index"] + 100)
    assert not torch.equal(a[0], c[0])
    obj.step.fill_(7)
    d = obj.make_views(batch["video"], batch["index"])
    assert not torch.equal(a[0], d[0])


def test_window_indices_and_crop_boxes():
    assert window_indices(16, 2, 5, 4).tolist() == [5, 5, 6, 6]
    assert window_indices(16, 14, 2, 2).tolist() == [2, 15]
    rng = rng_for(0, 1, 2)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(rng, 48, 64, (0.05, 0.4))
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 64
        assert 0.04 <= h * w / (48 * 64) <= 0.42          # rounding to whole pixels


def test_bad_arguments_are_named(model):
    with pytest.raises(ValueError, match="local_time_fraction"):
        small_svt(model, local_time_fraction=0.0)
    with pytest.raises(ValueError, match="unknown loss weight"):
        small_svt(model, weights={"dino": 1.0})
    with pytest.raises(ValueError, match="global_window"):
        small_svt(model, global_window="middle")
    obj = small_svt(model)
    with pytest.raises(ValueError, match=r"batch\['video'\]"):
        obj.make_views(torch.zeros(B, T_SRC, IMG, IMG), None)


# ---------------------------------------------------------------------------------------- loss, centre
def test_head_last_layer_is_normalised():
    head = DINOHead(64, 50, hidden_dim=32, bottleneck_dim=16)
    assert head(torch.randn(4, 64)).shape == (4, 50)
    w = head.last_layer.weight                                          # (50, 16)
    assert torch.allclose(w.norm(dim=1), torch.ones(50), atol=1e-5)
    assert not head.last_layer.parametrizations.weight.original0.requires_grad


def test_loss_matches_direct_pairwise_cross_entropy(model, batch):
    obj = small_svt(model, local_frames=(2, 4, 4))
    obj.center.normal_()                          # a non-zero centre takes part in the teacher's softmax
    center = obj.center.clone()
    losses, outputs = obj(model, batch)
    # the same views again (same seed, step and indices), teacher == student after the first sync
    views = obj.make_views(batch["video"], batch["index"])
    with torch.no_grad():
        s_out = torch.stack([obj.student_head(model.forward_features(v).cls) for v in views])
        t_out = torch.stack([obj.teacher_head(obj.teacher_backbone.forward_features(v).cls) for v in views[:2]])
    terms = []
    for t in range(2):
        q = F.softmax((t_out[t] - center) / 0.04, dim=-1)
        for s in range(len(views)):
            if s != t:
                terms.append(torch.sum(-q * F.log_softmax(s_out[s] / 0.1, dim=-1), dim=-1).mean())
    assert torch.allclose(losses["svt"], torch.stack(terms).mean(), atol=1e-5)
    assert set(outputs) >= {"svt/teacher_entropy", "svt/feature_std", "svt/momentum", "svt/loss_gg", "svt/loss_lg"}
    assert all(not torch.is_tensor(v) or not v.requires_grad for v in outputs.values())
    # the centre moved to 0.9 * old + 0.1 * mean teacher output
    assert torch.allclose(obj.center, 0.9 * center + 0.1 * t_out.mean(dim=(0, 1)), atol=1e-5)


def test_weight_scales_the_loss(model, batch):
    torch.manual_seed(0)
    a = small_svt(model)(model, batch)[0]["svt"]
    torch.manual_seed(0)                       # the same head initialisation
    b = small_svt(model, weights={"svt": 0.5})(model, batch)[0]["svt"]
    assert torch.allclose(b, 0.5 * a, atol=1e-6)


def test_collapse_stats():
    K = 32
    uniform = torch.full((2, 5, K), 1.0 / K)
    spread = SVT.collapse_stats(uniform, torch.randn(256, 64))
    assert math.isclose(float(spread["svt/teacher_entropy"]), math.log(K), rel_tol=1e-5)
    assert 0.9 < float(spread["svt/feature_std"]) < 1.1                  # random directions
    collapsed = SVT.collapse_stats(F.one_hot(torch.zeros(2, 5, dtype=torch.long), K).float(),
                                   torch.ones(8, 64))
    assert float(collapsed["svt/teacher_entropy"]) < 1e-6 and float(collapsed["svt/feature_std"]) < 1e-6


# ---------------------------------------------------------------------------------------- teacher
def test_teacher_gets_no_gradients_and_no_optimiser_slot(model, batch):
    obj = small_svt(model)
    losses, _ = obj(model, batch)
    sum(losses.values()).backward()
    teacher = [*obj.teacher_backbone.parameters(), *obj.teacher_head.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in teacher)
    assert any(p.grad is not None for p in model.parameters())
    assert all(p.grad is not None for p in obj.student_head.mlp.parameters())
    groups = param_groups([("model", model), ("objective", obj)], 0.04)
    in_optimiser = {id(p) for g in groups for p in g["params"]}
    assert not in_optimiser & {id(p) for p in teacher}
    assert {id(p) for p in obj.student_head.mlp.parameters()} <= in_optimiser


def test_first_forward_copies_the_final_student_into_the_teacher(model, batch):
    obj = small_svt(model)
    with torch.no_grad():                      # e.g. pretrained weights loaded after the objective was built
        for p in model.parameters():
            p.add_(0.1)
    obj(model, batch)
    for (n, s), t in zip(model.named_parameters(), obj.teacher_backbone.parameters()):
        assert torch.equal(s, t), n
    # a resumed objective keeps its own teacher
    resumed = small_svt(tiny_model(seed=1))
    resumed.load_state_dict(obj.state_dict())
    before = [p.clone() for p in resumed.teacher_backbone.parameters()]
    resumed(tiny_model(seed=2), batch)
    assert all(torch.equal(a, b) for a, b in zip(before, resumed.teacher_backbone.parameters()))


def test_ema_update_and_momentum_schedule(model, batch):
    obj = small_svt(model, momentum_teacher=0.9)
    obj(model, batch)                          # syncs the teacher
    old = [p.clone() for p in obj.teacher_backbone.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    obj.on_step_end(model, 1, 4)
    for o, s, t in zip(old, model.parameters(), obj.teacher_backbone.parameters()):
        assert torch.allclose(t, 0.9 * o + 0.1 * s, atol=1e-6)
    # cosine from the base value at iteration 0 to 1 at the end
    assert math.isclose(float(obj.momentum), 1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2, rel_tol=1e-6)
    assert int(obj.step) == 1
    obj.on_step_end(model, 4, 4)
    assert math.isclose(float(obj.momentum), 1.0)


def test_teacher_temperature_warmup(model):
    obj = small_svt(model, warmup_teacher_temp=0.02, teacher_temp=0.06, warmup_teacher_temp_frac=0.5)
    assert math.isclose(float(obj.teacher_temp), 0.02, rel_tol=1e-6)
    obj.on_step_end(model, 5, 20)              # halfway through a 10-step warmup
    assert math.isclose(float(obj.teacher_temp), 0.04, rel_tol=1e-6)
    obj.on_step_end(model, 12, 20)
    assert math.isclose(float(obj.teacher_temp), 0.06, rel_tol=1e-6)


def test_last_layer_freeze_and_weight_decay_schedule(model, batch):
    obj = small_svt(model, weight_decay_end=0.4)
    groups = param_groups([("model", model), ("objective", obj)], 0.04)
    opt = torch.optim.AdamW(groups, lr=1e-3)
    last = obj.student_head.last_layer.parametrizations.weight.original1

    def backward():
        opt.zero_grad(set_to_none=True)
        sum(obj(model, batch)[0].values()).backward()

    backward()
    assert last.grad is not None
    obj.before_optimizer_step(opt, epoch=0, step=0, total_steps=10)
    assert last.grad is None                                          # frozen in the first epoch
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([0.04, 0.0])
    backward()
    obj.before_optimizer_step(opt, epoch=1, step=10, total_steps=10)
    assert last.grad is not None
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([0.4, 0.0])
    assert obj.weight_decay_at(5, 10, 0.04) == pytest.approx(0.22)


def test_per_parameter_clipping():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4])
    norms = clip_grad_per_parameter_([a, b], 1.0)
    assert norms.tolist() == pytest.approx([5.0, 0.5])
    assert a.grad.norm() == pytest.approx(1.0, rel=1e-4) and b.grad.tolist() == pytest.approx([0.3, 0.4])


# ---------------------------------------------------------------------------------------- slow-fast
def test_slow_fast_features(model):
    model.eval()
    g = torch.Generator().manual_seed(4)
    video = torch.randn(2, T_SRC, 3, IMG, IMG, generator=g)
    with torch.no_grad():
        avg, slow, fast = slow_fast_features(model, video, slow=(8, IMG, IMG), fast=(T_SRC, 16, 16),
                                             return_both=True)
        single = model.forward_features(resample_clip(video, (8, IMG, IMG))).cls
    assert avg.shape == (2, model.embed_dim)
    assert torch.allclose(avg, (slow + fast) / 2)
    assert torch.allclose(slow, single)
    assert not torch.allclose(avg, slow, atol=1e-4) and not torch.allclose(avg, fast, atol=1e-4)
    # defaults: 8 frames at full size; all frames at 96/224 of the size, in whole patches
    assert default_fast_shape(video, patch_size=8) == (T_SRC, 16, 16)
    assert default_fast_shape(torch.zeros(1, 64, 3, 224, 224), patch_size=16) == (64, 96, 96)
    with torch.no_grad():
        assert torch.allclose(slow_fast_features(model, video), avg, atol=1e-6)
    with pytest.raises(ValueError, match="fast"):
        slow_fast_features(model, video, fast=(0, 16, 16))


def test_resample_clip_takes_uniform_frames():
    video = torch.arange(16, dtype=torch.float32).view(1, 16, 1, 1, 1).expand(1, 16, 3, 8, 8)
    out = resample_clip(video, (4, 4, 4))
    assert out.shape == (1, 4, 3, 4, 4)
    assert out[0, :, 0, 0, 0].tolist() == pytest.approx([0.0, 5.0, 10.0, 15.0])


# ---------------------------------------------------------------------------------------- training
def _synth_set(per_class: int, offset: int, frames: int = 16, size: int = 64):
    """In-memory clips of the synthetic benchmark on one background colour: (N, T, 3, S, S) normalised."""
    from timematters.data.synth import CLASSES, sample_clip
    clips, labels = [], []
    for c in range(len(CLASSES)):
        for j in range(per_class):
            v, _, _ = sample_clip(c, 0, offset + 1000 * c + j, frames=frames, size=size, background=0)
            clips.append(torch.from_numpy(v).permute(0, 3, 1, 2).float() / 127.5 - 1)   # mean = std = 0.5
            labels.append(c)
    return torch.stack(clips), torch.tensor(labels)


def _knn_accuracy(model, xtr, ytr, xva, yva, k=20, temperature=0.07):
    """Weighted kNN (the SVT / DINO protocol) on CLS features of 8 uniformly sampled frames."""
    model.eval()
    with torch.no_grad():
        ftr, fva = (F.normalize(model.forward_features(resample_clip(x, (8, *x.shape[-2:]))).cls, dim=1)
                    for x in (xtr, xva))
    sim, idx = (fva @ ftr.T).topk(k, dim=1)
    votes = torch.zeros(len(fva), int(ytr.max()) + 1).scatter_add_(1, ytr[idx], (sim / temperature).exp())
    return float((votes.argmax(1) == yva).float().mean())


@pytest.mark.slow
def test_short_training_run_learns_without_collapse():
    from timematters.engine.optim import build_optimizer, lr_at

    xtr, ytr = _synth_set(8, 0)                 # 112 training clips, 14 classes
    xva, yva = _synth_set(4, 500)               # 56 validation clips
    random_model = tiny_model(img=64)
    random_knn = _knn_accuracy(random_model, xtr, ytr, xva, yva)
    random_std = _feature_std(random_model, xva)

    model = tiny_model(img=64)
    # scaled down for a few CPU steps: larger crops (the object stays in view on one background colour)
    # and a sharper teacher (0.02), which keeps this short run away from the uniform collapse
    obj = build_objective("svt", model, num_classes=0, seed=0, out_dim=1024, hidden_dim=256, bottleneck_dim=64,
                          global_frames=(4, 8), local_frames=(2, 2, 4, 4), global_size=64, local_size=32,
                          global_scale=(0.5, 1.0), local_scale=(0.2, 0.6), local_time_fraction=0.25, flip_p=0.0,
                          teacher_temp=0.02, warmup_teacher_temp=0.02, momentum_teacher=0.99)
    opt = build_optimizer(param_groups([("model", model), ("objective", obj)], 0.04), lr=5e-4)
    batch, epochs = 16, 4
    steps_per_epoch = len(xtr) // batch
    total = steps_per_epoch * epochs
    step, stats = 0, []
    for epoch in range(epochs):
        model.train(), obj.train()
        perm = torch.from_numpy(rng_for(0, epoch, 0xDA7A).permutation(len(xtr)))
        for s in range(steps_per_epoch):
            idx = perm[s * batch:(s + 1) * batch]
            losses, outputs = obj(model, {"video": xtr[idx], "index": idx})
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            lr = lr_at(step, total_steps=total, steps_per_epoch=steps_per_epoch, base_lr=5e-4, min_lr=1e-6,
                       schedule="cosine", warmup_epochs=1)
            for g in opt.param_groups:
                g["lr"] = lr
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 3.0)
            obj.before_optimizer_step(opt, epoch=epoch, step=step, total_steps=total)
            opt.step()
            step += 1
            obj.on_step_end(model, step, total)
            stats.append({k: float(v) for k, v in outputs.items()})

    assert max(st["svt/teacher_entropy"] for st in stats[-3:]) < 0.97 * math.log(1024), stats[-3:]  # not uniform
    assert _feature_std(model, xva) > 0.5 * random_std                  # not collapsed to one point
    assert _knn_accuracy(model, xtr, ytr, xva, yva) > random_knn


def _feature_std(model, x):
    model.eval()
    with torch.no_grad():
        cls = model.forward_features(resample_clip(x, (8, *x.shape[-2:]))).cls
    return float(SVT.collapse_stats(torch.full((1, 2, 2), 0.5), cls)["svt/feature_std"])
