"""Every annotation format parses; every malformed file fails at once naming the file and the entry."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from timematters.data.annotations import AnnotationError, available_splits, read_annotations


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


# ------------------------------------------------------------------------------------------------ SSv2
def _ssv2(root: Path, *, in_labels_dir: bool, train=None, labels=None) -> Path:
    folder = root / "labels" if in_labels_dir else root
    folder.mkdir(parents=True, exist_ok=True)
    labels = labels if labels is not None else {"Pushing something from left to right": "0",
                                                "Pushing something from right to left": "1"}
    train = train if train is not None else [
        {"id": "11", "label": "pushing a cup from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["a cup"]},
        {"id": "12", "label": "pushing a pen from right to left",
         "template": "Pushing [something] from right to left", "placeholders": ["a pen"]},
    ]
    (folder / "something-something-v2-labels.json").write_text(json.dumps(labels))
    (folder / "something-something-v2-train.json").write_text(json.dumps(train))
    (folder / "something-something-v2-validation.json").write_text(json.dumps(train[:1]))
    (folder / "something-something-v2-test.json").write_text(json.dumps([{"id": "99"}]))
    return root


@pytest.mark.parametrize("in_labels_dir", [False, True])
def test_ssv2(tmp_path, in_labels_dir):
    root = _ssv2(tmp_path, in_labels_dir=in_labels_dir)
    records, classes = read_annotations(root, "ssv2", "train")
    assert classes == ["Pushing something from left to right", "Pushing something from right to left"]
    assert [(r.video_id, r.label) for r in records] == [("11", 0), ("12", 1)]
    assert records[0].path == root / "20bn-something-something-v2" / "11.webm"
    assert records[0].extra["placeholders"] == ["a cup"]
    test_records, _ = read_annotations(root, "ssv2", "test")
    assert [(r.video_id, r.label) for r in test_records] == [("99", -1)]
    assert available_splits(root, "ssv2") == ["train", "validation", "test"]
    assert len(read_annotations(root, "ssv2", "val")[0]) == 1


@pytest.mark.parametrize("case,match", [
    ("bad_json", r"something-something-v2-train\.json: invalid JSON at line 1"),
    ("no_id", r"something-something-v2-train\.json: entry 1: expected an object with an 'id' key"),
    ("unknown_template", r"something-something-v2-train\.json: entry 0 \(id 5\): template .* not in"),
    ("no_template", r"something-something-v2-train\.json: entry 0 \(id 5\): expected a 'template' key"),
    ("bad_index", r"something-something-v2-labels\.json: entry 'A': expected an integer index string"),
    ("gap_index", r"something-something-v2-labels\.json: class indices must be 0\.\.1"),
])
def test_ssv2_malformed(tmp_path, case, match):
    good = {"id": "5", "template": "A"}
    kwargs = {
        "bad_json": {},
        "no_id": {"train": [good, {"template": "A"}]},
        "unknown_template": {"train": [{"id": "5", "template": "B [something]"}]},
        "no_template": {"train": [{"id": "5"}]},
        "bad_index": {"labels": {"A": "zero"}, "train": [good]},
        "gap_index": {"labels": {"A": "0", "B": "2"}, "train": [good]},
    }[case]
    kwargs.setdefault("labels", {"A": "0"})
    root = _ssv2(tmp_path, in_labels_dir=False, **kwargs)
    if case == "bad_json":
        (root / "something-something-v2-train.json").write_text('[{"id": "1",')
    with pytest.raises(AnnotationError, match=match):
        read_annotations(root, "ssv2", "train")


def test_ssv2_missing_files(tmp_path):
    with pytest.raises(AnnotationError, match="something-something-v2-labels.json"):
        read_annotations(tmp_path, "ssv2", "train")


# ------------------------------------------------------------------------------------------------ Kinetics
def test_kinetics(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,aaa,14,24,train\n"
        "air drumming,bbb,0,10,train\n"
        "abseiling,ccc,5,15,train\n")
    (tmp_path / "annotations" / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nzumba,ddd,30,40,val\n")
    (tmp_path / "annotations" / "test.csv").write_text("youtube_id,time_start,time_end,split\neee,1,11,test\n")
    downloader = _touch(tmp_path / "train" / "abseiling" / "aaa_000014_000024.mp4")   # <split>/<label>/...
    flat = _touch(tmp_path / "train" / "bbb.mp4")                                   # <youtube_id>.mp4 fallback
    records, classes = read_annotations(tmp_path, "kinetics", "train")
    assert classes == ["abseiling", "air drumming", "zumba"]  # every CSV of the folder, sorted
    assert [r.label for r in records] == [0, 1, 0]
    assert records[0].path == downloader and records[1].path == flat
    assert records[2].path == tmp_path / "train" / "abseiling" / "ccc_000005_000015.mp4"  # missing: expected path
    assert records[0].extra == {"youtube_id": "aaa", "time_start": 14, "time_end": 24, "label_name": "abseiling"}
    val, _ = read_annotations(tmp_path, "kinetics", "validation")
    assert [r.label for r in val] == [2]
    test, _ = read_annotations(tmp_path, "kinetics", "test")
    assert [r.label for r in test] == [-1]


@pytest.mark.parametrize("content,match", [
    ("label,id,start\nx,y,1\n", r"train\.csv: line 1: header must have"),
    ("label,youtube_id,time_start,time_end,split\na,yt1,1,11,train\na,yt2,one,11,train\n",
     r"train\.csv: line 3: time_start/time_end must be numbers"),
    ("label,youtube_id,time_start,time_end,split\na,,1,11,train\n", r"train\.csv: line 2: empty youtube_id"),
])
def test_kinetics_malformed(tmp_path, content, match):
    (tmp_path / "train.csv").write_text(content)
    with pytest.raises(AnnotationError, match=match):
        read_annotations(tmp_path, "kinetics", "train")


# ------------------------------------------------------------------------------------------------ list
def test_path_label_list(tmp_path):
    (tmp_path / "train.csv").write_text("videos/a.mp4 0\nvideos/b c.mp4 2\n\n/abs/d.webm,1\n")
    records, classes = read_annotations(tmp_path, "list", "train", allow_outside_root=True)
    assert [(r.path, r.label) for r in records] == [
        (tmp_path / "videos" / "a.mp4", 0), (tmp_path / "videos" / "b c.mp4", 2), (Path("/abs/d.webm"), 1)]
    assert classes == ["0", "1", "2"]
    # the list file itself as root
    assert len(read_annotations(tmp_path / "train.csv", "list", "whatever", allow_outside_root=True)[0]) == 3
    with pytest.raises(AnnotationError, match=r"train\.csv: line 4: video /abs/d\.webm is outside the dataset root"
                                              r".*data\.allow_outside_root"):
        read_annotations(tmp_path, "list", "train")


def test_list_splits_share_the_training_classes(tmp_path):
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 3\n")
    (tmp_path / "val.txt").write_text("c.mp4 1\n")
    records, classes = read_annotations(tmp_path, "list", "val")
    assert classes == ["0", "1", "2", "3"] and records[0].label == 1  # the class count of the training list
    (tmp_path / "val.txt").write_text("c.mp4 1\n# comment\nd.mp4 4\n")
    with pytest.raises(AnnotationError, match=r"val\.txt: line 3: label 4 is outside 0\.\.3 .*train\.txt"):
        read_annotations(tmp_path, "list", "val")
    (tmp_path / "val.txt").write_text("c.mp4 -1\n")
    with pytest.raises(AnnotationError, match=r"val\.txt: line 1: label -1 is outside"):
        read_annotations(tmp_path, "list", "val")
    (tmp_path / "classes.txt").write_text("run\njump\nsit\nstand\nwave\n")  # a labels file names the classes
    (tmp_path / "val.txt").write_text("d.mp4 4\n")
    assert read_annotations(tmp_path, "list", "val")[1] == ["run", "jump", "sit", "stand", "wave"]


def test_path_label_list_malformed(tmp_path):
    (tmp_path / "val.txt").write_text("a.mp4 1\nb.mp4 label\n")
    with pytest.raises(AnnotationError, match=r"val\.txt: line 2: expected 'path label'"):
        read_annotations(tmp_path, "list", "val")


# ------------------------------------------------------------------------------------------------ UCF101
def _ucf(root: Path, trainlist: str) -> None:
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (lists / "trainlist01.txt").write_text(trainlist)
    (lists / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    (lists / "testlist02.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi\n")
    _touch(root / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi")


def test_ucf101(tmp_path):
    _ucf(tmp_path, "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g09_c02.avi 2\n")
    records, classes = read_annotations(tmp_path, "ucf101", "train")
    assert classes == ["ApplyEyeMakeup", "Archery"]
    assert [(r.video_id, r.label) for r in records] == [("v_ApplyEyeMakeup_g08_c01", 0), ("v_Archery_g09_c02", 1)]
    assert records[0].path == tmp_path / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi"
    assert [r.label for r in read_annotations(tmp_path, "ucf101", "test")[0]] == [1]
    assert [r.label for r in read_annotations(tmp_path, "ucf101", "test2")[0]] == [0]
    assert available_splits(tmp_path, "ucf101") == ["test1", "test2", "train1"]


@pytest.mark.parametrize("line,match", [
    ("ApplyEyeMakeup/v_a.avi 2\n", r"trainlist01\.txt: line 1: expected the 1-based index of ApplyEyeMakeup"),
    ("Unknown/v_a.avi 1\n", r"trainlist01\.txt: line 1: expected '<ClassName>/<video>'"),
])
def test_ucf101_malformed(tmp_path, line, match):
    _ucf(tmp_path, line)
    with pytest.raises(AnnotationError, match=match):
        read_annotations(tmp_path, "ucf101", "train")


# ------------------------------------------------------------------------------------------------ HMDB51
def _hmdb(root: Path, brush: str) -> None:
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    (splits / "brush_hair_test_split1.txt").write_text(brush)
    (splits / "cartwheel_test_split1.txt").write_text("c1.avi 2 \nc2.avi 1 \n")
    _touch(root / "hmdb51_org" / "brush_hair" / "b1.avi")


def test_hmdb51(tmp_path):
    _hmdb(tmp_path, "b1.avi 1 \nb2.avi 2 \nb3.avi 0 \n")
    train, classes = read_annotations(tmp_path, "hmdb51", "train1")
    assert classes == ["brush_hair", "cartwheel"]
    assert [(r.video_id, r.label) for r in train] == [("b1", 0), ("c2", 1)]
    assert train[0].path == tmp_path / "hmdb51_org" / "brush_hair" / "b1.avi"
    test, _ = read_annotations(tmp_path, "hmdb51", "test")
    assert [(r.video_id, r.label) for r in test] == [("b2", 0), ("c1", 1)]  # 0 = unused: in neither split


def test_hmdb51_malformed(tmp_path):
    _hmdb(tmp_path, "b1.avi 1\nb2.avi 3\n")
    with pytest.raises(AnnotationError, match=r"brush_hair_test_split1\.txt: line 2: expected '<video> <0\|1\|2>'"):
        read_annotations(tmp_path, "hmdb51", "train")


# ------------------------------------------------------------------------------------------------ folder
def test_folder_per_class(tmp_path):
    _touch(tmp_path / "train" / "dog" / "a.mp4")
    _touch(tmp_path / "train" / "cat" / "b.webm")
    _touch(tmp_path / "train" / "cat" / "notes.txt")
    records, classes = read_annotations(tmp_path, "folder", "train")
    assert classes == ["cat", "dog"]
    assert [(r.path.name, r.label) for r in records] == [("b.webm", 0), ("a.mp4", 1)]
    assert available_splits(tmp_path, "folder") == ["train"]
    flat = tmp_path / "flat"
    _touch(flat / "x" / "1.avi")
    assert [r.label for r in read_annotations(flat, "folder", "all")[0]] == [0]
    with pytest.raises(AnnotationError, match="no folder validation/"):
        read_annotations(tmp_path, "folder", "validation")


def test_folder_splits_share_the_training_classes(tmp_path):
    for cls in ("cat", "dog", "emu"):
        _touch(tmp_path / "train" / cls / f"{cls}1.mp4")
    _touch(tmp_path / "val" / "dog" / "d2.mp4")          # validation lacks "cat": labels must not shift
    _touch(tmp_path / "val" / "emu" / "e2.mp4")
    records, classes = read_annotations(tmp_path, "folder", "val")
    assert classes == ["cat", "dog", "emu"] and [r.label for r in records] == [1, 2]
    _touch(tmp_path / "val" / "fox" / "f2.mp4")          # a class training never saw
    with pytest.raises(AnnotationError, match=r"val/fox: class folder 'fox' is not among the 3 classes of the "
                                              r"class folders of .*train"):
        read_annotations(tmp_path, "folder", "val")
    (tmp_path / "classes.txt").write_text("emu\ndog\ncat\nfox\n")  # a labels file fixes names and order
    records, classes = read_annotations(tmp_path, "folder", "val")
    assert classes == ["emu", "dog", "cat", "fox"] and [r.label for r in records] == [1, 0, 3]
    (tmp_path / "classes.txt").write_text("emu\ndog\nemu\n")
    with pytest.raises(AnnotationError, match=r"classes\.txt: line 3: class 'emu' is listed twice"):
        read_annotations(tmp_path, "folder", "val")


def test_folder_entry_outside_the_root_is_refused(tmp_path):
    outside = tmp_path / "elsewhere" / "x.mp4"
    _touch(outside)
    root = tmp_path / "data"
    _touch(root / "train" / "cat" / "a.mp4")
    (root / "train" / "cat" / "b.mp4").symlink_to(outside)
    with pytest.raises(AnnotationError, match=r"train/cat: video .*b\.mp4 is outside the dataset root .*"
                                              r"\(it resolves to .*elsewhere/x\.mp4\)"):
        read_annotations(root, "folder", "train")
    assert len(read_annotations(root, "folder", "train", allow_outside_root=True)[0]) == 2
    (root / "train.txt").write_text("train/cat/a.mp4 0\n../elsewhere/x.mp4 0\n")
    with pytest.raises(AnnotationError, match=r"train\.txt: line 2: video .* is outside the dataset root"):
        read_annotations(root, "list", "train")


@pytest.mark.parametrize("fmt", ["list", "ssv2", "ucf101"])
def test_non_utf8_annotation_names_the_file_and_line(tmp_path, fmt):
    if fmt == "list":
        bad = tmp_path / "train.txt"
        bad.write_bytes("a.mp4 0\ncaf\u00e9.mp4 0\n".encode("latin-1"))
    elif fmt == "ssv2":
        _ssv2(tmp_path, in_labels_dir=False)
        bad = tmp_path / "something-something-v2-train.json"
        bad.write_bytes(b'[{"id": "1",\n "template": "caf\xe9"}]')
    else:
        _ucf(tmp_path, "ApplyEyeMakeup/v_a.avi\n")
        bad = tmp_path / "ucfTrainTestlist" / "classInd.txt"
        bad.write_bytes(b"1 ApplyEyeMakeup\n2 Arch\xe9ry\n")
    with pytest.raises(AnnotationError, match=rf"{bad.name}: line 2: not UTF-8 text \(byte 0xe9"):
        read_annotations(tmp_path, fmt, "train")


def test_unknown_format_and_root(tmp_path):
    with pytest.raises(ValueError, match="unknown annotation format"):
        read_annotations(tmp_path, "imagenet", "train")
    with pytest.raises(AnnotationError, match="does not exist"):
        read_annotations(tmp_path / "nope", "ssv2", "train")
