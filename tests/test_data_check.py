"""``timematters data check`` as a user runs it: layout detection, annotation problems, parallel decoding, exit codes."""
from __future__ import annotations

import json
import logging

import pytest

from test_data_videos import write_video
from timematters import cli
from timematters.data.annotations import AnnotationError, detect_format


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", 12).read_bytes()


def test_detects_every_layout(tmp_path):
    layouts = {
        "ssv2": ["labels/something-something-v2-labels.json"],
        "kinetics": ["annotations/train.csv"],
        "ucf101": ["ucfTrainTestlist/classInd.txt"],
        "hmdb51": ["testTrainMulti_7030_splits/brush_hair_test_split1.txt"],
        "list": ["train.txt", "val.txt"],
        "folder": ["train/cat/a.mp4"],
    }
    for fmt, files in layouts.items():
        root = tmp_path / fmt
        for f in files:
            _touch(root / f)
        if fmt == "kinetics":
            (root / files[0]).write_text("label,youtube_id,time_start,time_end,split\n")
        found, evidence = detect_format(root)
        assert found == fmt and files[0].split("/")[-1 if fmt != "folder" else -2] in evidence
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationError, match="cannot tell the dataset layout.*pass --format"):
        detect_format(tmp_path / "empty")


def _folder_dataset(root, clip):
    for split, classes in (("train", ("cat", "dog")), ("val", ("cat", "dog"))):
        for cls in classes:
            for k in range(2):
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                (root / split / cls / f"{split}_{cls}{k}.mp4").write_bytes(clip)


def test_folder_dataset_with_a_broken_video_and_mismatched_folders(tmp_path, clip, capsys, caplog, monkeypatch):
    root = tmp_path / "data"
    _folder_dataset(root, clip)
    monkeypatch.setattr("timematters.utils.PROGRESS_INTERVAL_S", 0.0)
    with caplog.at_level(logging.INFO, logger="timematters.progress"):
        assert cli.main(["data", "check", str(root), "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "layout: folder (detected: class folders" in captured.out and "8 of 8 videos decode" in captured.out
    progress = [r.getMessage() for r in caplog.records if r.name == "timematters.progress"]
    assert progress and progress[-1].startswith("decoding: done, 8/8 video")  # not a terminal: plain lines

    broken = root / "val" / "dog" / "val_dog1.mp4"
    broken.write_bytes(clip[: len(clip) // 3])
    (root / "val" / "cat" / "train_cat0.mp4").write_bytes(clip)   # the same video in training and validation
    assert cli.main(["data", "check", str(root), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "8 of 9 videos decode" in out and f"FAIL {broken}:" in out and out.count("FAIL") == 1
    assert "problem: splits train and val share 1 ids" in out and "cat/train_cat0" in out

    (root / "val" / "fox").mkdir()
    (root / "val" / "fox" / "f.mp4").write_bytes(clip)           # a class training never saw
    assert cli.main(["data", "check", str(root), "--format", "folder"]) == 2
    captured = capsys.readouterr()
    assert f"error: {root / 'val' / 'fox'}: class folder 'fox' is not among the 2 classes" in captured.err
    assert "checking" not in captured.out                         # nothing decoded


def test_list_problems_and_exit_codes(tmp_path, clip, capsys):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(clip)
    (tmp_path / "train.txt").write_text("v/a.mp4 0\nv/a.mp4 1\n")    # the same video twice in one split
    assert cli.main(["data", "check", str(tmp_path), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "layout: list" in out and "problem: split train: 1 ids listed more than once, e.g. v/a.mp4 (x2)" in out
    assert "warning: no validation split" in out and "1 of 1 videos decode" in out

    (tmp_path / "train.txt").write_text("v/a.mp4 0\n../outside.mp4 0\n")
    assert cli.main(["data", "check", str(tmp_path)]) == 2
    assert "train.txt: line 2: video" in capsys.readouterr().err
    assert cli.main(["data", "check", str(tmp_path), "--allow-outside-root"]) == 1   # allowed: it is missing
    assert "FAIL" in capsys.readouterr().out

    (tmp_path / "train.txt").write_bytes("v/a.mp4 0\nv/\xe9t\xe9.mp4 0\n".encode("latin-1"))
    assert cli.main(["data", "check", str(tmp_path)]) == 2
    assert f"error: {tmp_path / 'train.txt'}: line 2: not UTF-8 text" in capsys.readouterr().err


def test_ssv2_validation_overlap(tmp_path, clip, capsys):
    (tmp_path / "20bn-something-something-v2").mkdir()
    for i in range(3):
        (tmp_path / "20bn-something-something-v2" / f"{i}.webm").write_bytes(clip)
    (tmp_path / "something-something-v2-labels.json").write_text(json.dumps({"A": "0"}))
    (tmp_path / "something-something-v2-train.json").write_text(json.dumps(
        [{"id": str(i), "template": "A"} for i in range(3)]))
    (tmp_path / "something-something-v2-validation.json").write_text(json.dumps([{"id": "2", "template": "A"}]))
    assert cli.main(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "layout: ssv2" in out and "problem: splits train and validation share 1 ids" in out
    assert "3 of 3 videos decode" in out


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["data", "check", "--help"])
    out = capsys.readouterr().out
    assert "exit status" in out and "0  all good" in out and "2  the annotations are unusable" in out
    assert "--workers" in out and "--allow-outside-root" in out
