"""No silent data errors, through the commands a user runs: evaluation excludes, counts and lists unreadable
videos (eval, audit, kNN, the engine's validation), training counts what it substitutes, and a validation
split with a class training never saw is an error naming the folder."""
from __future__ import annotations

import json
import logging

import pytest

from test_data_videos import make_bad_files, write_video
from tiny_run import save_tiny_run
from videos import awkward_corpus
from timematters.cli import main as cli_main
from timematters.data.annotations import VideoRecord
from timematters.data.dataset import LoadFailures, TooManyFailures, VideoDataset, collate

CLASSES = ["cat", "dog", "emu"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A folder-per-class dataset of real videos (validation lacks "cat", one validation video is broken)
    and a checkpoint of a tiny model that names it."""
    root = tmp_path_factory.mktemp("errors")
    data = root / "data"
    for i, cls in enumerate(CLASSES):
        for k in range(2):
            write_video(data / "train" / cls / f"{cls}{k}.mp4", 10 + 2 * k + i)
    for cls in CLASSES[1:]:
        for k in range(2):
            write_video(data / "val" / cls / f"{cls}_val{k}.mp4", 12 + k)
    good = data / "val" / "dog" / "dog_val0.mp4"
    (data / "val" / "dog" / "broken.mp4").write_bytes(good.read_bytes()[:300])   # the header only
    save_tiny_run(root / "run", CLASSES, data, format="folder")
    return root / "run", data, data / "val" / "dog" / "broken.mp4"


def test_eval_cli_excludes_counts_and_lists_a_broken_video(folder_run, tmp_path, caplog):
    run, data, broken = folder_run
    out = tmp_path / "metrics.json"
    with caplog.at_level(logging.WARNING):
        assert cli_main(["eval", "--checkpoint", str(run), "--split", "val", "--views", "2", "--shuffles", "1",
                         "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["num_failed"] == 1 and [f["path"] for f in m["failed"]] == [str(broken)]
    assert m["failed"][0]["reason"]
    assert m["num_videos"] == 4 and m["num_clips"] == 8            # the broken video is not scored, not replaced
    assert set(m["per_class"]) == {"dog", "emu"}                     # labels by name: validation has no "cat"
    assert m["per_class"]["dog"]["count"] == 2
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and str(broken) in lines[0] and "1 video failed to load and was excluded" in lines[0]


def test_audit_and_knn_report_the_excluded_video(folder_run, tmp_path):
    run, data, broken = folder_run
    assert cli_main(["audit", "--model", str(run), "--split", "val", "--probe-split", "val", "--gradcam-videos",
                     "2", "--shuffles", "1", "--out", str(tmp_path / "audit")]) == 0
    audited = json.loads((tmp_path / "audit" / "metrics.json").read_text())["models"][0]
    ev = audited["eval"]
    assert ev["num_failed"] == 1 and ev["failed"][0]["path"] == str(broken) and ev["num_videos"] == 4
    assert audited["probe"]["num_failed"] == 2 and {f["path"] for f in audited["probe"]["failed"]} == {str(broken)}
    assert audited["probe"]["num_test_clips"] == 4
    out = tmp_path / "knn.json"
    assert cli_main(["knn", "--checkpoint", str(run), "--val-split", "val", "--k", "2", "--num-workers", "0",
                     "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["num_failed"] == 1 and m["failed"] == [{"split": "val", "path": str(broken), "reason": m["failed"][0]["reason"]}]
    assert m["videos_train"] == 6 and m["videos_test"] == 4


def test_too_many_failures_is_checked_at_the_end_of_the_pass(folder_run, tmp_path, capsys):
    run, data, _ = folder_run
    bad_root = tmp_path / "data"
    import shutil
    shutil.copytree(data, bad_root)
    (bad_root / "val" / "emu" / "emu_val0.mp4").write_bytes(b"")       # 2 of 5 validation videos now fail
    # fewer loads than min_attempts (50): the dataset's early check never fires, the end of the pass does
    code = cli_main(["eval", "--checkpoint", str(run), "--data", str(bad_root), "--split", "val",
                     "--shuffles", "1", "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert code == 2 and "2 of 5 loads failed in this pass" in err and "max_fail_ratio=0.2" in err
    assert "Traceback" not in err and not (tmp_path / "m.json").exists()


def test_eval_cli_on_mismatched_folders_is_an_error(folder_run, tmp_path, capsys):
    run, data, _ = folder_run
    import shutil
    root = tmp_path / "data"
    shutil.copytree(data, root)
    write_video(root / "val" / "fox" / "fox0.mp4", 8)                    # a class training never saw
    code = cli_main(["eval", "--checkpoint", str(run), "--data", str(root), "--split", "val",
                     "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{root / 'val' / 'fox'}: class folder 'fox' is not among the 3 classes" in err


def test_exclude_mode_markers_collate_and_counts(tmp_path):
    good = write_video(tmp_path / "good.mp4", 9)
    bad = make_bad_files(tmp_path / "bad", good)
    records = [VideoRecord(good, 0, "good")] + [VideoRecord(p, 1, k) for k, p in bad.items()]
    ds = VideoDataset(records, num_frames=4, img_size=32, train=False, views=2, max_fail_ratio=1.0)
    assert ds.on_error == "exclude"
    items = [ds[i] for i in range(len(ds))]
    assert all("video" in s for s in items[:2])
    markers = [s["excluded"] for s in items[2:]]
    assert {m["video_id"] for m in markers} == set(bad) and all(m["reason"] for m in markers)
    batch = collate(items[:3])
    assert batch["video"].shape[0] == 2 and len(batch["excluded"]) == 1
    assert collate(items[2:4]) == {"excluded": markers[:2]}
    failures = LoadFailures(max_fail_ratio=0.5)
    kept = [failures.add(collate(items[i:i + 3])) for i in range(0, len(items), 3)]
    assert kept[0]["video"].shape[0] == 2 and kept[1] is None
    assert failures.loads == 10 and failures.failed_loads == 8 and len(failures.failed) == 4
    with pytest.raises(TooManyFailures, match="8 of 10 loads failed.*max_fail_ratio=0.5"):
        failures.finish()
    # the same through DataLoader workers: markers travel in the batches, the main process counts them
    from torch.utils.data import DataLoader
    parallel = LoadFailures(max_fail_ratio=1.0)
    kept = list(parallel.track(DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate)))
    assert sum(len(b["video"]) for b in kept) == 2 and all("excluded" not in b for b in kept)
    assert (parallel.loads, parallel.failed_loads) == (10, 8) and parallel.failed == failures.failed
    # training substitutes: the sample names the failed loads it stands in for, and LoadFailures counts them
    train = VideoDataset(records, num_frames=4, img_size=32, train=True, scale=(32, 36), max_fail_ratio=1.0)
    sample = train[1]
    assert sample["meta"]["video_id"] == "good" and sample["meta"]["load_failures"][0]["path"] == str(bad["zero"])
    counted = LoadFailures(action="substituted")
    counted.add(collate([sample]))
    lost = sample["meta"]["load_failures"]
    assert counted.failed_loads == len(lost) and counted.summary()["num_failed"] == len({f["path"] for f in lost})


def _trailing_folder(tmp_path, run):
    """A folder dataset of real awkward files: two H.264 files (MP4, Matroska) whose last packet decodes to
    no frame among the 4 training videos, one among the 2 validation videos; the run's overrides (every
    training video is drawn once per epoch, every clip asks for the last frame: 8 frames of 8)."""
    import shutil
    from test_engine import tiny_overrides
    corpus = awkward_corpus(tmp_path / "corpus", frames=7)  # trailing_empty: 8 frames indexed, 7 decode
    data = tmp_path / "data"
    layout = {"train/a": ["h264_trailing_empty.mp4", "h264_bframes.mp4"],
              "train/b": ["h264_trailing_empty.mkv", "vp9.webm"],
              "validation/a": ["h264_trailing_empty.mp4"], "validation/b": ["h264_bframes.mkv"]}
    for folder, names in layout.items():
        (data / folder).mkdir(parents=True)
        for name in names:
            shutil.copy(corpus[name].path, data / folder / name)
    return tiny_overrides(data, run, **{"data.format": "folder", "data.num_frames": 8, "data.num_workers": 1,
                                        "optim.epochs": 2, "optim.batch_size": 4, "model.embed_dim": 32})


def test_substituted_frames_reach_training_and_evaluation_metrics(tmp_path, caplog):
    """Each clip of a trailing-empty file has one substituted frame (the nearest decoded one). Through the
    train CLI (a DataLoader worker) the count reaches metrics.jsonl per epoch and for the run, the
    validation row and the eval CLI's JSON, and the one line on screen says so."""
    run = tmp_path / "run"
    overrides = _trailing_folder(tmp_path, run)
    with caplog.at_level(logging.WARNING):
        assert cli_main(["train", "--config", "synth_baseline", *overrides]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["type"] == "val"]
    assert [r["train_substituted_frames"] for r in epochs] == [2, 2]   # both trailing files, once per epoch
    assert [r["train_num_failed"] for r in epochs] == [0, 0]           # decoded, not failed
    assert [r["substituted_frames"] for r in epochs] == [1, 1]         # the validation pass
    summary = next(r for r in rows if r["type"] == "data")
    assert summary["train_substituted_frames"] == 4 and summary["train_num_failed"] == 0
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(m.startswith("training: 4 requested frames never came out of the decoder") for m in said), said
    caplog.clear()
    out = tmp_path / "eval.json"
    with caplog.at_level(logging.WARNING):
        assert cli_main(["eval", "--checkpoint", str(run), "--split", "validation", "--views", "2",
                         "--shuffles", "1", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["substituted_frames"] == 2 and m["num_failed"] == 0 and m["num_videos"] == 2   # 2 views of 1 file
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == ["2 requested frames never came out of the decoder and were replaced by the nearest "
                     "decoded frame before them"]


def _broken_synth(tmp_path):
    """A small synthetic benchmark with one broken training and one broken validation video; the run's
    overrides (every training video is drawn in the one epoch)."""
    from test_engine import tiny_overrides
    from timematters.data.synth import generate
    data = generate(tmp_path / "data", videos=28, frames=8, size=32, seed=0, bias=0.0, workers=1)
    split = {s: [str(e["id"]) for e in json.loads((data / f"something-something-v2-{s}.json").read_text())]
             for s in ("train", "validation")}
    video = lambda vid: data / "20bn-something-something-v2" / f"{vid}.webm"  # noqa: E731
    bad = {"validation": video(split["validation"][0]), "train": video(split["train"][0])}
    bad["validation"].write_bytes(b"")
    bad["train"].write_bytes(bad["train"].read_bytes()[:200])
    batch = 2 * (len(split["train"]) // 2)     # one optimiser step: every training video is drawn
    overrides = tiny_overrides(data, tmp_path / "run", **{"optim.epochs": 1, "optim.batch_size": batch,
                                                          "optim.micro_batch": batch // 2,
                                                          "data.max_fail_ratio": 0.5})
    return split, bad, overrides


def _rows(run_dir) -> dict[str, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {kind: next(r for r in rows if r["type"] == kind) for kind in ("val", "data")}


def test_engine_validation_excludes_and_training_counts_bad_videos(tmp_path):
    """One epoch of real training: the broken validation video is excluded and listed in val_metrics.json,
    the broken training video is substituted and counted in metrics.jsonl (per epoch and for the run)."""
    from timematters.config import load_config
    from timematters.engine.train import train
    split, bad, overrides = _broken_synth(tmp_path)
    video = lambda vid: bad["validation"].parent / f"{vid}.webm"  # noqa: E731
    val = train(load_config("synth_baseline", overrides))
    assert val["num_failed"] == 1 and val["failed"][0]["path"] == str(video(split["validation"][0]))
    assert val["num_videos"] == len(split["validation"]) - 1
    saved = json.loads((tmp_path / "run" / "val_metrics.json").read_text())
    assert saved["failed"] == val["failed"]
    rows = _rows(tmp_path / "run")
    epoch = rows["val"]
    assert epoch["num_failed"] == 1 and epoch["train_num_failed"] == 1 and epoch["train_failed_loads"] >= 1
    summary = rows["data"]
    assert summary["train_num_failed"] == 1
    assert summary["train_failed"][0]["path"] == str(video(split["train"][0]))


@pytest.mark.slow
def test_torchrun_counts_match_one_process(tmp_path):
    """Under DDP each rank sees part of the data; the counts in metrics.jsonl are summed over the ranks."""
    import os
    import subprocess
    import sys
    from test_engine import REPO, _free_port, run_cli
    _, bad, overrides = _broken_synth(tmp_path)
    one = run_cli(["train", "--config", "synth_baseline", *overrides])
    assert one.returncode == 0, one.stderr[-3000:]
    two_ov = [o.replace(str(tmp_path / "run"), str(tmp_path / "two")) for o in overrides]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", "-m", "timematters.cli", "train",
                          "--config", "synth_baseline", *two_ov], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _rows(tmp_path / "run"), _rows(tmp_path / "two")
    for kind, keys in (("val", ("num_failed", "failed_loads", "loads", "train_num_failed", "train_failed_loads")),
                       ("data", ("train_num_failed", "train_failed_loads", "train_loads", "train_failed"))):
        assert {k: a[kind][k] for k in keys} == {k: b[kind][k] for k in keys}, kind
    assert b["val"]["num_failed"] == 1 and b["data"]["train_failed"][0]["path"] == str(bad["train"])


@pytest.mark.slow
def test_torchrun_sums_substituted_frames_over_ranks(tmp_path):
    """Under DDP each rank decodes part of the clips; the substituted frames in metrics.jsonl are summed."""
    import os
    import subprocess
    import sys
    from test_engine import REPO, _free_port
    overrides = _trailing_folder(tmp_path, tmp_path / "two")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", "-m", "timematters.cli", "train",
                          "--config", "synth_baseline", *overrides],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_substituted_frames"] for r in rows if r["type"] == "val"] == [2, 2]
    assert [r["substituted_frames"] for r in rows if r["type"] == "val"] == [1, 1]
    assert next(r for r in rows if r["type"] == "data")["train_substituted_frames"] == 4
