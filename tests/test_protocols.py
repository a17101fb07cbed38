"""Evaluation protocols: each one on a case whose answer is known, plus the CLI end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tiny_run import save_tiny_run
from timematters.evaluation import protocols as P
from timematters.evaluation.features import extract_features, window_starts
from timematters.utils import rng_for


def blobs(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    """Gaussian clusters around random unit centres (separable when spread is small)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=1) * 4
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    return x, y


@pytest.fixture(scope="module")
def separable():
    tr_x, tr_y = blobs(20, 6, 16, 0.3, seed=0)
    te_x, te_y = blobs(10, 6, 16, 0.3, seed=1)
    # same centres for train and test: re-draw the test set around the train centres
    g = torch.Generator().manual_seed(2)
    centres = torch.stack([tr_x[tr_y == c].mean(0) for c in range(6)])
    te_x = centres[te_y] + 0.3 * torch.randn(len(te_y), 16, generator=g)
    return tr_x, tr_y, te_x, te_y


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_linear_probe_separable(separable, solver):
    m = P.linear_probe(*separable, num_classes=6, solver=solver, epochs=30)
    assert m["top1"] == 100.0 and m["train_top1"] == 100.0


def test_linear_probe_noise_is_at_chance():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 8, generator=g), torch.randint(0, 3, (300,), generator=g)
    xt, yt = torch.randn(300, 8, generator=g), torch.randint(0, 3, (300,), generator=g)
    m = P.linear_probe(x, y, xt, yt, num_classes=3, epochs=30)
    assert m["top1"] < 50.0  # chance 33 %


def test_knn_separable_and_weighting(separable):
    assert P.knn_classify(*separable, num_classes=6, k=20)["top1"] == 100.0
    # weighted vote: one very close neighbour of class 1 beats two distant ones of class 0 at low T
    train_x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]])
    train_y = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.02]])
    scores = P.knn_scores(train_x, train_y, query, num_classes=2, k=3, temperature=0.07)
    assert scores.argmax(1).item() == 1
    assert P.knn_scores(train_x, train_y, query, num_classes=2, k=3, temperature=100.0).argmax(1).item() == 0


def test_retrieval_hit_rates(separable):
    m = P.retrieval_hit_rates(*separable)
    assert set(m) == {f"top{k}" for k in P.RETRIEVAL_KS}
    assert all(v == 100.0 for v in m.values())
    # a hand-made case: query 0's nearest train video has the wrong class, its second the right one
    train_x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]])
    train_y = torch.tensor([0, 1, 2])
    test_x = torch.tensor([[1.0, 0.1], [-1.0, 0.05]])
    test_y = torch.tensor([1, 2])
    m = P.retrieval_hit_rates(train_x, train_y, test_x, test_y, ks=(1, 2), normalize=False)
    assert m == {"top1": 50.0, "top2": 100.0}


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]])
    m = P.topk_accuracy(scores, torch.tensor([2, 0]), ks=(1, 2, 5))
    assert m == {"top1": 50.0, "top2": 100.0, "top5": 100.0}


def test_sync_pairs_cover_every_offset():
    for seed in range(20):
        rows = P.sync_pairs(6, rng_for(seed))
        assert rows[:, 2].tolist() == list(range(-6, 7))
        assert (rows[:, 1] - rows[:, 0] == rows[:, 2]).all()
        assert rows[:, :2].min() >= 0 and rows[:, :2].max() <= 12


def test_before_after_pairs_do_not_overlap():
    for seed in range(20):
        rows = P.before_after_pairs(20, 4, 10, rng_for(seed))
        assert (rows[:, 0] + 4 <= rows[:, 1]).all() and (rows[:, 1] + 4 <= 20).all() and rows.min() >= 0


def ramp_loader(num_videos: int, frames: int, batch: int, offset: int = 0):
    """Videos whose frame j is a constant image of value (j + start) / 100, start differing per video."""
    out = []
    for s in range(0, num_videos, batch):
        ids = list(range(s, min(num_videos, s + batch)))
        video = torch.stack([(torch.arange(frames).float() + (3 * i) % 7 + offset)[:, None, None, None]
                             .expand(frames, 3, 4, 4) / 100 for i in ids])
        out.append({"video": video, "label": torch.zeros(len(ids), dtype=torch.long),
                    "index": torch.tensor(ids), "meta": [{"video_index": i} for i in ids]})
    return out


def frame_means(video: torch.Tensor) -> torch.Tensor:  # (B, T, C, H, W) -> (B, T): keeps time order
    return video.mean(dim=(2, 3, 4))


def clip_mean(video: torch.Tensor) -> torch.Tensor:  # (B, T, C, H, W) -> (B, 1): blind to frame order
    return video.mean(dim=(1, 2, 3, 4))[:, None]


def test_sync_probe_recovers_offsets_from_time_aware_features():
    train = P.sync_features(frame_means, ramp_loader(12, 20, 4), clip_len=8, max_offset=6, seed=0)
    test = P.sync_features(frame_means, ramp_loader(6, 20, 4, offset=100), clip_len=8, max_offset=6, seed=1)
    assert train[0].shape == (12 * 13, 8) and sorted(set(train[1].tolist())) == list(range(13))
    m = P.time_task_probe("sync", *train, *test, hidden=64, epochs=200, lr=0.05)
    assert m["accuracy"] > 90.0 and m["mae"] < 0.2


def test_before_after_probe_needs_order_information():
    aware = (P.before_after_features(frame_means, ramp_loader(16, 16, 4), clip_len=8, pairs=4, seed=0),
             P.before_after_features(frame_means, ramp_loader(8, 16, 4, offset=50), clip_len=8, pairs=4, seed=1))
    m = P.time_task_probe("before-after", *aware[0], *aware[1], hidden=32, epochs=100, lr=0.05)
    assert m["accuracy"] == 100.0
    # the same pairs seen by an order-blind feature: both orders give the same vector -> chance
    blind = (P.before_after_features(clip_mean, ramp_loader(16, 16, 4), clip_len=8, pairs=4, seed=0),
             P.before_after_features(clip_mean, ramp_loader(8, 16, 4, offset=50), clip_len=8, pairs=4, seed=1))
    m = P.time_task_probe("before-after", *blind[0], *blind[1], hidden=32, epochs=100, lr=0.05)
    assert m["accuracy"] == pytest.approx(50.0, abs=10.0)


def labelled_ramps(num_videos: int, frames: int, offset: int = 0) -> list[dict]:
    """``ramp_loader`` with labels: every video rises (its arrow of time); odd ones are brighter (class 1)."""
    out = []
    for batch in ramp_loader(num_videos, frames, 4, offset=offset):
        label = batch["index"] % 2
        out.append({**batch, "video": batch["video"] + label[:, None, None, None, None].float(), "label": label})
    return out


def test_arrow_probe_tells_direction_only_from_order_aware_features():
    train = P.arrow_features(frame_means, labelled_ramps(16, 8))
    test = P.arrow_features(frame_means, labelled_ramps(8, 8, offset=2))
    assert train[0].shape == (32, 8) and train[1].tolist() == [0, 1] * 16
    m = P.arrow_probe(train, test, num_classes=2, epochs=200, lr=0.05)
    assert m["accuracy"] == 100.0 and m["class_direction_top1"] == 100.0 and m["class_direction_chance"] == 25.0
    # an order-blind feature gives the same vector both ways: exactly chance on the direction
    train = P.arrow_features(clip_mean, labelled_ramps(16, 8))
    test = P.arrow_features(clip_mean, labelled_ramps(8, 8, offset=2))
    torch.testing.assert_close(train[0][0::2], train[0][1::2])
    m = P.arrow_probe(train, test, num_classes=2, epochs=50, lr=0.05)
    assert m["accuracy"] == pytest.approx(50.0, abs=6.25) and m["class_direction_top1"] <= 56.25


def test_random_init_timesformer_is_blind_to_frame_order():
    """The time embedding starts at zero (as the official code), so divided space-time attention is
    permutation-equivariant in time and the CLS feature of a fresh model ignores frame order: the arrow
    and before/after probes of random init are at chance by construction, not by measurement noise."""
    model = _tiny_model().eval()
    video = torch.randn(2, model.num_frames, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = P.clip_features(model, video)                                  # the CLS feature the probes use
        r = P.clip_features(model, video.flip(1))
    torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)


def test_extract_features_averages_views_per_video():
    model = _tiny_model()
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(6, 8, 3, 32, 32, generator=g)  # 3 videos x 2 views
    loader = [{"video": clips[i:i + 4], "label": torch.tensor([v // 2 for v in range(i, min(6, i + 4))]),
               "index": torch.arange(i, min(6, i + 4)),
               "meta": [{"video_index": v // 2, "view": v % 2} for v in range(i, min(6, i + 4))]}
              for i in (0, 4)]
    feats, labels = extract_features(model, loader, device="cpu")
    with torch.no_grad():
        direct = model.forward_features(clips).cls.reshape(3, 2, -1).mean(1)
    assert feats.shape == (3, 64) and labels.tolist() == [0, 1, 2]
    torch.testing.assert_close(feats, direct, atol=1e-5, rtol=1e-4)
    # windows: a 12-frame clip cut into 3 windows of 8 frames
    long = torch.randn(2, 12, 3, 32, 32, generator=g)
    batch = [{"video": long, "label": torch.tensor([0, 1]), "index": torch.tensor([0, 1]), "meta": [{}, {}]}]
    feats, _ = extract_features(model, batch, device="cpu", clips_per_video=3, clip_len=8)
    with torch.no_grad():
        direct = torch.stack([model.forward_features(long[:, s:s + 8]).cls for s in window_starts(12, 8, 3)]).mean(0)
    torch.testing.assert_close(feats, direct, atol=1e-5, rtol=1e-4)
    assert window_starts(12, 8, 3) == [0, 2, 4]


def _tiny_model():
    import timematters
    torch.manual_seed(0)
    return timematters.create_model("timesformer_tiny", num_classes=0, num_frames=8, img_size=32, depth=2,
                                    embed_dim=64, num_heads=2, patch_size=8).eval()


# ------------------------------------------------------------------------------ CLI end to end
@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    """A tiny synthetic benchmark and a run directory holding a (randomly initialised) tiny backbone."""
    from timematters.data.synth import generate
    root = tmp_path_factory.mktemp("protocols")
    data = generate(root / "synth", videos=28, frames=24, size=32, workers=1)
    from timematters.data.annotations import read_annotations
    _, class_names = read_annotations(data, "ssv2", "train")
    run = root / "run"
    save_tiny_run(run, class_names, data, num_frames=8, embed_dim=64, method="rtt")
    return run, data


@pytest.mark.slow
@pytest.mark.parametrize("command,extra,keys", [
    ("linear", ["--epochs", "5"], {"top1", "top5", "train_top1"}),
    ("linear", ["--solver", "lbfgs"], {"top1", "top5"}),
    ("knn", ["--k", "5"], {"top1", "top5"}),
    ("retrieval", ["--views", "2"], {f"top{k}" for k in P.RETRIEVAL_KS}),
    ("finetune", ["--epochs", "1", "--batch-size", "8"], {"top1", "top5"}),
    ("linear", ["--task", "sync", "--max-offset", "3", "--epochs", "3", "--hidden", "32"], {"accuracy", "mae"}),
    ("linear", ["--task", "before-after", "--pairs", "2", "--epochs", "3", "--hidden", "32"], {"accuracy"}),
    ("linear", ["--task", "arrow", "--epochs", "3"], {"accuracy", "class_direction_top1", "knn_class_direction_top1"}),
])
def test_cli(run_and_data, tmp_path, command, extra, keys):
    from timematters.cli import main
    run, data = run_and_data
    out = tmp_path / "m.json"
    rc = main([command, "--checkpoint", str(run), "--data", str(data), "--num-workers", "0", "--device", "cpu",
               "--out", str(out), *extra])
    assert rc == 0
    record = json.loads(out.read_text())
    assert keys <= set(record) and record["protocol"] in (command, "sync", "before-after", "arrow")
    assert all(np.isfinite(record[k]) for k in keys)
    if "videos_test" in record:
        assert record["videos_test"] > 0


def test_load_backbone_random_init(run_and_data):
    run, _ = run_and_data
    trained, spec = P.load_backbone(str(run), torch.device("cpu"))
    fresh, spec2 = P.load_backbone(str(run), torch.device("cpu"), random_init=True, seed=5)
    assert (spec.pop("evaluated"), spec2.pop("evaluated")) == ("backbone", "random init")
    assert spec == spec2 and type(fresh) is type(trained)
    a, b = trained.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], b["blocks.0.attn.qkv.weight"])


def test_bad_solver_is_named():
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="solver"):
        P.linear_probe(x, y, x, y, num_classes=2, solver="adam")
