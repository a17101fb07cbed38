"""evaluate(): original / shuffled / reversed accuracy in one pass, per class, per group, multi-view."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from timematters.evaluation.evaluate import build_variants, evaluate, shuffle_orders


class FrameAverage(nn.Module):
    """Order-blind by construction: a per-frame linear classifier averaged over time."""

    def __init__(self, channels: int = 3, num_classes: int = 5):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes, bias=False)

    def forward(self, video: torch.Tensor) -> torch.Tensor:       # (B, T, C, H, W) -> (B, K)
        return self.fc(video.mean(dim=(3, 4))).mean(dim=1)


class FrameWeighted(nn.Module):
    """Order-sensitive: frame t is weighted by (t + 1) before averaging."""

    def __init__(self, channels: int = 3, num_classes: int = 5):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes, bias=False)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        T = video.shape[1]
        w = torch.arange(1, T + 1, dtype=video.dtype, device=video.device)
        per_frame = self.fc(video.mean(dim=(3, 4)))                  # (B, T, K)
        return (per_frame * w[None, :, None]).sum(1) / w.sum() * 8


def make_batches(model: nn.Module, num_videos: int, batch_size: int, T: int = 6, views: int = 1, seed: int = 0):
    """Random clips labelled with the model's own prediction on the (view-averaged) original clip."""
    g = torch.Generator().manual_seed(seed)
    videos = torch.randn(num_videos, views, T, 3, 4, 4, generator=g)
    with torch.no_grad():
        probs = model(videos.flatten(0, 1)).softmax(-1).view(num_videos, views, -1).mean(1)
    labels = probs.argmax(-1)
    samples = [(v, w) for v in range(num_videos) for w in range(views)]
    batches = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batches.append({
            "video": torch.stack([videos[v, w] for v, w in chunk]),
            "label": torch.stack([labels[v] for v, _ in chunk]),
            "index": torch.tensor([start + i for i in range(len(chunk))]),
            "meta": [{"video_index": v, "video_id": f"vid{v}", "view": w} for v, w in chunk],
        })
    return batches


def test_shuffle_orders_are_permutations_never_identity_and_batch_independent():
    a = shuffle_orders([0, 1, 2, 3, 4, 5], 4, seed=3, shuffle=0)
    b = shuffle_orders([3, 4, 5], 4, seed=3, shuffle=0)
    assert a.shape == (6, 4)
    assert torch.equal(a[3:], b)                                     # depends on the sample index only
    for row in a:
        assert sorted(row.tolist()) == [0, 1, 2, 3]
        assert row.tolist() != [0, 1, 2, 3]
    assert not torch.equal(a, shuffle_orders([0, 1, 2, 3, 4, 5], 4, seed=3, shuffle=1))


def test_build_variants_stacks_original_shuffled_reversed():
    video = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1, 1, 1).expand(2, 4, 3, 2, 2).contiguous()
    stacked, variants = build_variants(video, [0, 1], shuffles=2, seed=0, reverse=True)
    assert variants == [("original", 0), ("shuffled", 0), ("shuffled", 1), ("reversed", 0)]
    assert stacked.shape == (8, 4, 3, 2, 2)
    assert torch.equal(stacked[:2], video)
    assert torch.equal(stacked[6:], video.flip(1))
    for i in range(2, 6):                                            # shuffled clips hold the same frames
        assert sorted(stacked[i, :, 0, 0, 0].tolist()) == sorted(video[i % 2, :, 0, 0, 0].tolist())


def test_order_blind_model_has_zero_gap():
    torch.manual_seed(0)
    model = FrameAverage()
    batches = make_batches(model, num_videos=24, batch_size=5)
    out = evaluate(model, batches, device="cpu", shuffles=3, per_sample=True)
    assert out["top1"] == 100.0
    assert out["shuffled_top1"] == out["top1"] and out["reversed_top1"] == out["top1"]
    assert out["gap_top1"] == 0.0 and out["gap_top5"] == 0.0 and out["reverse_gap_top1"] == 0.0
    ps = out["per_sample"]
    assert len(ps["p_y"]) == 24
    assert torch.allclose(torch.tensor(ps["p_y"]), torch.tensor(ps["p_y_shuffled"]), atol=1e-6)
    for stats in out["per_class"].values():
        assert stats["gap_top1"] == 0.0


def test_order_sensitive_model_loses_accuracy_and_is_deterministic():
    torch.manual_seed(1)
    model = FrameWeighted()
    batches = make_batches(model, num_videos=40, batch_size=8, T=8)
    out = evaluate(model, batches, device="cpu", shuffles=2, seed=7)
    assert out["top1"] == 100.0
    assert out["shuffled_top1"] < 100.0 and out["gap_top1"] > 0
    assert out["reversed_top1"] < 100.0
    # the same numbers with another batch size: permutations depend on (seed, shuffle, video) only
    rebatched = make_batches(model, num_videos=40, batch_size=3, T=8)
    again = evaluate(model, rebatched, device="cpu", shuffles=2, seed=7)
    assert again["shuffled_top1"] == out["shuffled_top1"]
    other_seed = evaluate(model, batches, device="cpu", shuffles=2, seed=8)
    assert other_seed["top1"] == out["top1"]
    assert model.training                                             # training mode restored


def test_multi_view_averaging_groups_and_per_class():
    torch.manual_seed(2)
    model = FrameWeighted(num_classes=4)
    batches = make_batches(model, num_videos=10, batch_size=4, T=4, views=3)
    names = ["a", "b", "c", "d"]
    out = evaluate(model, batches, device="cpu", shuffles=1, class_names=names,
                   class_groups={"ab": ["a", "b"], "cd": [2, 3]})
    assert out["num_videos"] == 10 and out["num_clips"] == 30
    assert out["top1"] == 100.0                                       # labels are the 3-view ensemble's argmax
    counts = sum(s["count"] for s in out["per_class"].values())
    assert counts == 10
    assert out["groups"]["ab"]["count"] + out["groups"]["cd"]["count"] == 10
    n_ab = out["groups"]["ab"]["count"]
    if n_ab:
        manual = sum(out["per_class"][c]["shuffled_top1"] * out["per_class"][c]["count"]
                     for c in ("a", "b") if c in out["per_class"]) / n_ab
        assert math.isclose(out["groups"]["ab"]["shuffled_top1"], manual, rel_tol=1e-9)


class RecordOrders(nn.Module):
    """Order-blind classifier that records the frame order it was shown (frame t holds the value t)."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        self.seen.append(video[:, :, 0, 0, 0].round().long())        # (B', T) the frame order
        return torch.zeros(video.shape[0], 2)


def test_all_crops_of_a_video_get_the_same_shuffle():
    """Three spatial crops per video (as `val_crops: 3`): one permutation per video, not one per crop,
    so the summed shuffled score is that of one shuffled video, not an ensemble over permutations."""
    T, crops, videos = 6, 3, 5
    clip = torch.arange(T, dtype=torch.float32).view(1, T, 1, 1, 1).expand(1, T, 3, 2, 2)
    samples = [(v, c) for v in range(videos) for c in range(crops)]           # dataset order: video major
    batches = []
    for start in range(0, len(samples), 4):                                     # batches cut across videos
        chunk = samples[start:start + 4]
        batches.append({"video": clip.expand(len(chunk), -1, -1, -1, -1).clone(),
                        "label": torch.zeros(len(chunk), dtype=torch.long),
                        "index": torch.tensor([start + i for i in range(len(chunk))]),
                        "meta": [{"video_index": v, "view": c} for v, c in chunk]})
    model = RecordOrders()
    evaluate(model, batches, device="cpu", shuffles=2, reverse=False)
    orders: dict[tuple[int, int], set] = {}
    for batch, seen in zip(batches, model.seen):
        B = batch["video"].shape[0]
        seen = seen.view(3, B, T)                                               # (variants, B, T)
        for b, meta in enumerate(batch["meta"]):
            for k in (1, 2):
                orders.setdefault((meta["video_index"], k), set()).add(tuple(seen[k, b].tolist()))
    assert all(len(o) == 1 for o in orders.values())                           # one order per video and shuffle
    assert len({next(iter(orders[v, 1])) for v in range(videos)}) > 1           # but not one for all videos
    assert all(orders[v, 1] != set([tuple(range(T))]) for v in range(videos))   # never the identity


def test_bad_inputs_raise_clear_errors():
    model = FrameAverage()
    batches = make_batches(model, num_videos=4, batch_size=2)
    with pytest.raises(KeyError, match="zzz"):
        evaluate(model, batches, device="cpu", class_names=list("abcde"), class_groups={"g": ["zzz"]})
    unlabelled = [dict(b, label=torch.full_like(b["label"], -1)) for b in batches]
    with pytest.raises(ValueError, match="no sample has a label"):
        evaluate(model, unlabelled, device="cpu")
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [], device="cpu")


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import json

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(3)
        model = FrameWeighted(num_classes=4)
        batches = make_batches(model, num_videos=7, batch_size=1, T=4, views=2)
        # shard clip by clip (views of one video land on different ranks), as the engine's validation does
        mine = batches[rank::world]
        out = evaluate(model, mine, device="cpu", shuffles=2, seed=5)
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(out, f)
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_shards_merge_to_the_single_process_result(tmp_path):
    import json

    import torch.multiprocessing as mp

    torch.manual_seed(3)
    model = FrameWeighted(num_classes=4)
    single = evaluate(model, make_batches(model, num_videos=7, batch_size=1, T=4, views=2), device="cpu",
                      shuffles=2, seed=5)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out.json")), nprocs=2, join=True)
    merged = json.loads((tmp_path / "out.json").read_text())
    assert merged["num_videos"] == single["num_videos"] == 7 and merged["num_clips"] == 14
    for key in ("top1", "top5", "shuffled_top1", "reversed_top1", "gap_top1"):
        assert merged[key] == pytest.approx(single[key])
    assert merged["loss"] == pytest.approx(single["loss"])
