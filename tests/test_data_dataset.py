"""VideoDataset on real files: sample contract, keyed randomness, bad-input handling, DataLoader, data check."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from videos import decode_all, make_bad_files, write_video
from timematters import cli
from timematters.data.annotations import VideoRecord
from timematters.data.dataset import TooManyFailures, VideoDataset, build_video_dataset, collate

T, SIZE = 4, 32


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Six short real videos (VP9 and H.264, 48x64 and 64x48, 9 to 30 frames) and their full decodes."""
    root = tmp_path_factory.mktemp("videos")
    specs = [("a.webm", 30, 64, 48), ("b.mp4", 24, 64, 48), ("c.webm", 9, 48, 64),
             ("d.mp4", 3, 64, 48), ("e.webm", 20, 64, 48), ("f.mp4", 16, 48, 64)]
    paths = [write_video(root / name, n, width=w, height=h) for name, n, w, h in specs]
    return [VideoRecord(p, i % 3, p.stem) for i, p in enumerate(paths)], [decode_all(p) for p in paths]


def _dataset(records, **kw) -> VideoDataset:
    args = dict(num_frames=T, img_size=SIZE, train=True, scale=(SIZE, SIZE + 8))
    return VideoDataset(records, **{**args, **kw})


def test_train_sample_contract(videos):
    records, full = videos
    ds = _dataset(records, randaugment="rand-m9-mstd0.5-inc1")
    for i in range(len(ds)):
        s = ds[i]
        assert s["video"].shape == (T, 3, SIZE, SIZE) and s["video"].dtype == torch.float32
        assert s["video"].min() >= -1 and s["video"].max() <= 1
        assert s["label"] == records[i].label and s["index"] == i
        meta = s["meta"]
        assert meta["num_video_frames"] == len(full[i]) and len(meta["frame_indices"]) == T
        assert set(meta["geometry"]) == {"scale", "crop", "flip", "out_size"} and meta["view"] == 0
    assert ds[3]["meta"]["frame_indices"] == [0, 0, 1, 2]  # 3-frame video: frames repeat in order


def test_clip_is_the_decoded_frames_with_the_recorded_geometry(videos):
    records, full = videos
    ds = _dataset(records, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    from timematters.data.transforms import apply_geometry
    for i in (0, 1, 4):
        s = ds[i]
        raw = torch.from_numpy(full[i][s["meta"]["frame_indices"]]).permute(0, 3, 1, 2)
        expected = apply_geometry(raw, s["meta"]["geometry"]).float() / 255
        torch.testing.assert_close(s["video"], expected, rtol=0, atol=1e-6)


def test_keyed_randomness(videos):
    records, _ = videos
    a, b = _dataset(records, seed=3), _dataset(records, seed=3)
    for i in range(len(records)):  # a fresh instance (another worker, rank or a resumed run) draws the same
        sa, sb = a[i], b[i]
        assert sa["meta"] == sb["meta"] and torch.equal(sa["video"], sb["video"])
    before = [a[i]["meta"] for i in range(len(records))]
    a.set_epoch(1)
    after = [a[i]["meta"] for i in range(len(records))]
    assert sum(x != y for x, y in zip(before, after)) >= 4  # a new epoch draws new clips


def test_eval_views_and_crops(videos):
    records, _ = videos
    ds = _dataset(records, train=False, views=2, crops=3, randaugment="rand-m9-mstd0.5-inc1")
    assert len(ds) == len(records) * 6
    metas = [ds[i]["meta"] for i in range(6)]  # all views of video 0
    assert [m["video_index"] for m in metas] == [0] * 6 and [m["view"] for m in metas] == list(range(6))
    assert metas[0]["frame_indices"] != metas[3]["frame_indices"]          # two temporal views
    assert len({tuple(m["geometry"]["crop"]) for m in metas[:3]}) == 3     # three spatial crops
    assert ds[1]["meta"] == metas[1]                                       # eval is deterministic


def test_label_fn_gets_augmented_uint8_frames(videos):
    records, _ = videos
    seen = []

    def label_fn(frames, sample):
        seen.append(frames)
        assert frames.dtype == np.uint8 and frames.shape == (T, SIZE, SIZE, 3)
        return {"flow": torch.zeros(T - 1, 2, 2, dtype=torch.int64), "n_bright": int(frames.max())}

    ds = _dataset(records, label_fn=label_fn, randaugment="rand-m9-mstd0.5-inc1")
    s = ds[0]
    back = ((s["video"].permute(0, 2, 3, 1) * 0.5 + 0.5) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(back, seen[0])  # the video is exactly these frames, normalised
    batch = collate([ds[i] for i in range(3)])
    assert batch["video"].shape == (3, T, 3, SIZE, SIZE) and batch["flow"].shape == (3, T - 1, 2, 2)
    assert batch["label"].dtype == torch.int64 and batch["index"].tolist() == [0, 1, 2]
    assert isinstance(batch["meta"], list) and batch["n_bright"].shape == (3,)


@pytest.fixture
def with_bad(videos, tmp_path):
    records, _ = videos
    bad = make_bad_files(tmp_path / "bad", records[1].path)  # mp4: zero, truncated, garbage, missing
    bad["truncated_webm"] = tmp_path / "bad" / "truncated.webm"
    data = records[0].path.read_bytes()
    bad["truncated_webm"].write_bytes(data[: len(data) // 2])
    bad_records = [VideoRecord(p, 0, kind) for kind, p in bad.items()]
    return records + bad_records, bad


def test_bad_videos_are_skipped_counted_and_reported_once(with_bad, caplog):
    records, bad = with_bad
    ds = _dataset(records, max_fail_ratio=1.0)
    with caplog.at_level(logging.WARNING, logger="timematters.data.dataset"):
        samples = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]
    good_ids = {r.video_id for r in records[:6]}
    assert all(s["meta"]["video_id"] in good_ids for s in samples)  # substitutes are good videos
    assert {records[v].video_id for v in ds.failed} == set(bad)     # every kind detected
    assert ds.failures >= 2 * len(bad) and ds.attempts == ds.failures + len(samples)
    warnings = [r for r in caplog.records if "skipping video" in r.getMessage()]
    assert len(warnings) == len(bad)                                  # reported once per video
    subs = [s for s in samples if "substituted_for" in s["meta"]]
    assert {s["meta"]["substituted_for"] for s in subs} == set(bad)
    # the substitute is deterministic: a fresh instance picks the same video for the same item
    fresh = _dataset(records, max_fail_ratio=1.0)
    for s in subs[:3]:
        assert fresh[s["index"]]["meta"] == s["meta"]


def test_share_limit_raises(with_bad):
    records, _ = with_bad  # 5 bad of 11 videos
    ds = _dataset(records, max_fail_ratio=0.2, min_attempts=8)
    with pytest.raises(TooManyFailures, match="max_fail_ratio=0.2"):
        for i in range(len(ds)):
            ds[i]
    ok = _dataset(records, max_fail_ratio=0.6, min_attempts=8)
    for i in range(len(ok)):  # 5/11 ~ 0.45 of the draws fail: under a 0.6 limit the epoch completes
        ok[i]


def test_dataloader_workers_match_and_reraise(with_bad, videos):
    records, _ = videos
    ds = _dataset(records, seed=7)
    kw = dict(batch_size=3, collate_fn=collate, shuffle=False)
    serial = list(DataLoader(ds, num_workers=0, **kw))
    parallel = list(DataLoader(ds, num_workers=2, **kw))
    for a, b in zip(serial, parallel):
        assert torch.equal(a["video"], b["video"]) and a["meta"] == b["meta"]
    bad_ds = _dataset(with_bad[0][6:], max_fail_ratio=0.2, min_attempts=2)  # only bad videos
    with pytest.raises(TooManyFailures):
        list(DataLoader(bad_ds, num_workers=2, **kw))


def test_build_video_dataset_and_data_check(videos, tmp_path, capsys):
    records, _ = videos
    root = tmp_path / "ssv2"
    (root / "20bn-something-something-v2").mkdir(parents=True)
    for i, r in enumerate(records[:4]):
        (root / "20bn-something-something-v2" / f"{i}.webm").write_bytes(r.path.read_bytes())
    (root / "labels").mkdir()
    (root / "labels" / "something-something-v2-labels.json").write_text(json.dumps({"A": "0", "B": "1"}))
    train = [{"id": str(i), "template": "AB"[i % 2], "label": "x", "placeholders": []} for i in range(4)]
    (root / "labels" / "something-something-v2-train.json").write_text(json.dumps(train))
    ds, classes = build_video_dataset(root, "ssv2", "train", train=True, num_frames=T, img_size=SIZE,
                                      scale=(SIZE, SIZE), limit=3)
    assert classes == ["A", "B"] and len(ds) == 3 and ds[2]["label"] == 0

    assert cli.main(["data", "check", str(root)]) == 0
    assert "4 of 4 videos decode" in capsys.readouterr().out
    # corrupt one (garbage), truncate one, and list a missing one
    (root / "20bn-something-something-v2" / "1.webm").write_bytes(b"\x00garbage" * 100)
    good = (root / "20bn-something-something-v2" / "2.webm").read_bytes()
    (root / "20bn-something-something-v2" / "2.webm").write_bytes(good[: len(good) // 2])
    train.append({"id": "404", "template": "A", "label": "x", "placeholders": []})
    (root / "labels" / "something-something-v2-train.json").write_text(json.dumps(train))
    assert cli.main(["data", "check", str(root), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert "2 of 5 videos decode" in out
    for name in ("1.webm", "2.webm", "404.webm"):
        assert f"FAIL {root / '20bn-something-something-v2' / name}" in out
    assert "missing file" in out
    (root / "labels" / "something-something-v2-train.json").write_text("[{")
    assert cli.main(["data", "check", str(root)]) == 2
    assert "invalid JSON" in capsys.readouterr().err
