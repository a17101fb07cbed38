"""The pretraining benchmark (``synth --preset pretrain``) and the pretext fixes of issue 13: the engine's
clipping hook, TaCo's own-video negatives and augmentation, TIME's order task on shuffled clips, the
teacher evaluated for SVT, the pretext report next to every probe, nuisance targets and fine-tuning
through the engine."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from timematters.data import synth_pretrain as SP
from timematters.data.decode import read_frames
from timematters.evaluation import protocols as P
from timematters.objectives import build_objective
from timematters.objectives.base import Objective
from timematters.objectives.taco import TaCo

from pretext_helpers import tiny_model


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    root = tmp_path_factory.mktemp("events")
    return SP.generate(root / "ev", videos=24, frames=32, size=32, workers=1)


# ------------------------------------------------------------------------------------------ benchmark
def test_benchmark_layout_nuisance_and_decoding(events):
    meta = json.loads((events / "timematters-meta.json").read_text())
    assert meta["params"]["preset"] == "pretrain" and meta["splits"] == {"train": 16, "validation": 8}
    train = json.loads((events / "something-something-v2-train.json").read_text())
    frames = read_frames(events / "20bn-something-something-v2" / f"{train[0]['id']}.webm", list(range(32)))
    assert frames.shape == (32, 32, 32, 3)
    for vid, entry in meta["videos"].items():
        n = entry["nuisance"]
        assert len(n["background"]) == 32 and n["side"] in (0, 1) and 0 <= n["shape"] <= len(SP.SHAPES)
    shapes = SP.nuisance_labels(events, "shape")
    assert set(shapes) == set(meta["videos"])
    with pytest.raises(ValueError, match="no nuisance factor 'colour'"):
        SP.nuisance_labels(events, "colour")


def test_no_colour_is_shared_by_the_frames_of_a_video():
    video, nuisance, _ = SP.sample_clip(0, seed=0, index=3, frames=64, size=32)
    corner = video[:, 2, 2].astype(float)                      # background pixel (T, 3)
    # the background changes between most pairs of consecutive frames
    assert (np.abs(np.diff(corner, axis=0)).sum(-1) > 10).mean() > 0.8
    assert len(set(nuisance["background"])) >= 4


def test_every_event_has_an_arrow_of_time():
    """Bounces lose energy (each apex lower than the last) and the object ends at rest on the floor."""
    T, S = 64, 32.0
    _, y = SP._ballistic(T, S, x0=16, y0=10, vx=0, vy=0, start=0.0, floor_y=24, restitution=0.4)
    assert y[-1] == pytest.approx(24) and np.abs(np.diff(y[-8:])).max() < 1e-6
    x, y = SP._ballistic(T, S, x0=16, y0=5, vx=0, vy=0, start=0.0, floor_y=24, restitution=0.6)
    # apex heights above the floor: where the object stops rising
    heights = [24 - y[i + 1] for i in np.nonzero((np.diff(y)[:-1] < 0) & (np.diff(y)[1:] >= 0))[0]]
    assert len(heights) >= 1 and all(h2 < h1 for h1, h2 in zip([24 - 5] + heights, heights))
    # a slide in decelerates to a stop; played backwards it would speed up from rest
    xs = SP._friction_slide(T, -5.0, 40.0, 60.0, 0.1)
    v = np.diff(xs)
    moving = v[v > 1e-9]
    assert np.all(np.diff(moving[1:]) <= 1e-9) and v[-1] == pytest.approx(0)   # [0]: starts mid-frame


def test_objects_are_upright():
    """Every shape stands on its base: more of its area is in the bottom half than in the top half, or it
    has a marked top (house roof, arrow head, mushroom cap, tee bar) - in any case not symmetric under a
    half turn."""
    u, v = np.meshgrid(np.linspace(-1.5, 1.5, 61), np.linspace(-1.5, 1.5, 61))
    for shape in SP.SHAPES:
        inside = SP._shape_sdf(shape, u, v) < 0
        assert inside.any() and not np.array_equal(inside, inside[::-1, ::-1]), shape


def test_synth_cli_pretrain_preset(tmp_path):
    from timematters.cli import main
    assert main(["synth", "--preset", "pretrain", "--out", str(tmp_path / "b"), "--videos", "16", "--frames", "16",
                 "--workers", "1"]) == 0
    meta = json.loads((tmp_path / "b" / "timematters-meta.json").read_text())
    assert meta["params"]["frames"] == 16 and meta["params"]["size"] == 32


# ------------------------------------------------------------------------------------------ objectives
def test_clip_hook_default_is_global_and_svt_is_per_parameter():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.full((3,), 10.0), torch.full((4,), 0.1)
    Objective().clip_grad_([a, b], 1.0)                        # global norm: b shrinks with a
    assert torch.cat([a.grad, b.grad]).norm() == pytest.approx(1.0, rel=1e-4)
    assert b.grad.norm() < 0.1
    model = tiny_model()
    svt = build_objective("svt", model, num_classes=0, out_dim=32, hidden_dim=16, bottleneck_dim=8,
                          global_size=32, local_size=16, global_frames=(4,), local_frames=(2,))
    a.grad, b.grad = torch.full((3,), 10.0), torch.full((4,), 0.1)
    svt.clip_grad_([a, b], 1.0)                                # each on its own: b is left alone
    assert a.grad.norm() == pytest.approx(1.0, rel=1e-4) and b.grad.norm() == pytest.approx(0.2, rel=1e-4)


def test_engine_calls_the_objectives_clip_hook(events, tmp_path, monkeypatch):
    from timematters.config import load_config
    from timematters.engine.train import train
    from timematters.objectives.svt import SVT
    calls = []
    original = SVT.clip_grad_
    monkeypatch.setattr(SVT, "clip_grad_", lambda self, params, max_norm: (calls.append(max_norm),
                                                                            original(self, params, max_norm)))
    cfg = load_config("pretrain_svt_synth", [f"data.root={events}", f"run.out={tmp_path / 'run'}", "optim.epochs=1",
                                             "optim.batch_size=8", "data.num_frames=32", "data.num_workers=0"])
    cfg.objective.method = "svt"
    train(cfg)
    assert calls and all(c == 3.0 for c in calls)


def test_taco_defaults_and_own_video_keys_are_no_negatives():
    model = tiny_model()
    obj = TaCo(model, queue_size=8, proj_dim=8, hidden_dim=16, num_speeds=2)
    assert obj.tasks == ("speed", "shuffle") and obj.augment
    video = torch.randn(2, 16, 3, 32, 32)
    batch = {"video": video, "index": torch.tensor([3, 5])}
    obj(model, batch)                                         # first step: keys of videos 3 and 5 queued
    assert sorted(obj.queue_index[obj.queue_index >= 0].tolist()) == [3, 5]
    _, _, mask = obj._memory(model, batch, video[:, :8], {})
    assert mask.sum() == 2 and mask[0, obj.queue_index == 3].all() and mask[1, obj.queue_index == 5].all()


def test_taco_query_and_key_get_different_augmentations():
    model = tiny_model()
    obj = TaCo(model, queue_size=8, proj_dim=8, hidden_dim=16, num_speeds=2)
    clip = torch.rand(1, 1, 8, 3, 32, 32) * 2 - 1
    both = obj._augment(clip.expand(1, 2, 8, 3, 32, 32).contiguous(), torch.tensor([0]), stream=2)
    assert not torch.allclose(both[0, 0], both[0, 1])
    again = obj._augment(clip.expand(1, 2, 8, 3, 32, 32).contiguous(), torch.tensor([0]), stream=2)
    torch.testing.assert_close(both, again)                   # keyed by (seed, step, index)


def test_time_pretext_order_targets_are_the_shown_frames_original_indices():
    """On a shuffled clip the target of shown position p is order[p], a random permutation: the time
    embedding (which only knows p) cannot predict it, the content must (on a constant clip: chance)."""
    from timematters import temporal
    model = tiny_model()
    obj = build_objective("time_pretrain", model, num_classes=2, weights={"flow": 0})
    assert obj.order_on == "shuffled"
    seen = {}
    head_loss = obj.order_head.loss
    obj.order_head.loss = lambda x, positions=None: (seen.update(x=x, positions=positions), head_loss(x, positions))[1]
    video = torch.randn(4, 8, 3, 32, 32)
    batch = {"video": video, "index": torch.arange(4)}
    losses, out = obj(model, batch)
    order = obj.shuffle_orders(batch, 8)
    torch.testing.assert_close(seen["positions"], order)
    assert not (order == torch.arange(8)).all(dim=1).any()     # never the identity
    with torch.no_grad():
        expected = model.forward_features(temporal.apply_order(video, order)).tokens.mean(dim=2)
    torch.testing.assert_close(seen["x"], expected)
    assert set(losses) == {"order"} and out["chance/order"] == pytest.approx(1 / 8)


# ------------------------------------------------------------------------------------------ protocols
def _write_rows(run, rows):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"type": "train", "step": i, **r}) + "\n"
                                               for i, r in enumerate(rows)))


def test_pretext_report_flags_runs_at_chance(tmp_path, caplog):
    _write_rows(tmp_path / "a", [{"acc/transform": 0.26, "chance/transform": 0.25, "acc/speed": 0.25,
                                  "chance/speed": 0.25}] * 6)
    with caplog.at_level(logging.WARNING):
        rep = P.pretext_report(tmp_path / "a")
    assert rep["pretrained"] is False and sorted(rep["at_chance"]) == ["speed", "transform"]
    assert "NOT PRETRAINED" in caplog.text
    _write_rows(tmp_path / "b", [{"acc/transform": 0.6, "chance/transform": 0.25}] * 6)
    assert P.pretext_report(tmp_path / "b")["pretrained"] is True
    _write_rows(tmp_path / "c", [{"svt/teacher_entropy": 6.8, "svt/max_entropy": 6.93,
                                  "svt/teacher_batch_entropy": 6.9}] * 6)
    rep = P.pretext_report(tmp_path / "c")
    assert rep["pretrained"] is False and rep["collapsed"] == "uniform"
    assert P.pretext_report(tmp_path / "none")["pretrained"] is None


@pytest.fixture(scope="module")
def svt_run(events, tmp_path_factory):
    """A checkpoint whose objective keeps an EMA teacher that differs from the student."""
    from timematters.data.annotations import read_annotations
    from timematters.engine.checkpoint import save_checkpoint
    import timematters
    _, names = read_annotations(events, "ssv2", "train")
    kwargs = dict(num_classes=len(names), num_frames=8, img_size=32, depth=2, embed_dim=64, num_heads=2,
                  patch_size=8)
    torch.manual_seed(0)
    model = timematters.create_model("timesformer_tiny", **kwargs)
    svt = build_objective("svt", model, num_classes=0, out_dim=32, hidden_dim=16, bottleneck_dim=8)
    with torch.no_grad():
        for p in svt.teacher_backbone.parameters():
            p.add_(1.0)
    spec = {"name": "timesformer_tiny", "create_kwargs": kwargs, "class_names": names, "num_frames": 8,
            "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "data": {"root": str(events), "format": "ssv2"},
            "method": "svt"}
    run = tmp_path_factory.mktemp("svt") / "run"
    save_checkpoint(run, model=model, objective=svt, spec=spec, train_state={}, step=1)
    _write_rows(run, [{"svt/teacher_entropy": 2.0, "svt/max_entropy": 3.47, "svt/teacher_batch_entropy": 3.0,
                       "svt/kl": 0.2}])
    return run, model, svt


def test_svt_is_evaluated_with_its_teacher(svt_run):
    run, model, svt = svt_run
    teacher, spec = P.load_backbone(str(run), torch.device("cpu"))
    assert spec["evaluated"] == "teacher"
    torch.testing.assert_close(teacher.state_dict()["blocks.0.attn.qkv.weight"],
                               svt.teacher_backbone.state_dict()["blocks.0.attn.qkv.weight"])
    student, spec = P.load_backbone(str(run), torch.device("cpu"), student=True)
    assert spec["evaluated"] == "student"
    torch.testing.assert_close(student.state_dict()["blocks.0.attn.qkv.weight"],
                               model.state_dict()["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("extra", [["--target", "shape"], ["--mode", "slowfast", "--fast-frames", "16"]])
def test_knn_nuisance_target_and_slowfast(svt_run, events, tmp_path, extra):
    from timematters.cli import main
    run, _, _ = svt_run
    out = tmp_path / "m.json"
    assert main(["knn", "--checkpoint", str(run), "--data", str(events), "--num-workers", "0", "--device", "cpu",
                 "--k", "3", "--out", str(out), *extra]) == 0
    rec = json.loads(out.read_text())
    assert rec["evaluated"] == "teacher" and rec["pretrained"] is True and "svt/kl" in rec["pretext"]["metrics"]
    assert rec["videos_test"] == 8


def test_finetune_runs_through_the_engine_and_resumes(svt_run, events, tmp_path):
    from timematters.cli import main
    run, _, _ = svt_run
    out, run_dir = tmp_path / "ft.json", tmp_path / "ft"
    argv = ["finetune", "--checkpoint", str(run), "--data", str(events), "--num-workers", "0", "--device", "cpu",
            "--epochs", "1", "--batch-size", "8", "--run-dir", str(run_dir), "--out", str(out)]
    assert main(argv) == 0
    rec = json.loads(out.read_text())
    assert {"top1", "top5"} <= set(rec) and rec["evaluated"] == "teacher"
    assert (run_dir / "checkpoints" / "latest.json").is_file() and (run_dir / "metrics.jsonl").is_file()
    first = rec["top1"]
    assert main(argv) == 0                                     # finished: resumed, nothing retrained
    assert json.loads(out.read_text())["top1"] == first
    assert not hasattr(P, "evaluate_classifier")               # one training loop in the project
