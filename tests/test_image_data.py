"""ImageFolder datasets: layout, labels, per-sample determinism and the bad-input rules."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from timematters.data.dataset import TooManyFailures
from timematters.data.images import ImageDataError, build_image_dataset, collate, scan_image_folder


def write_folder(root, split="train", classes=("cat", "dog"), per_class=4, size=(40, 48), seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        d = root / split / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
    return root


def build(root, split="train", **kw):
    args = dict(train=True, img_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), seed=0)
    args.update(kw)
    return build_image_dataset(root, split, **args)


def test_layout_labels_shapes_and_normalisation(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    ds, names = build(tmp_path, train=False)
    assert names == ["cat", "dog"] and len(ds) == 8
    s = ds[5]
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert s["label"] == 1 and s["index"] == 5 and "substituted_for" not in s["meta"]
    # eval: short side 40 -> 32 (scale 0.8), then the centre crop of the 32 x 38 image
    assert s["meta"]["geometry"]["scale"] == pytest.approx(0.8) and s["meta"]["geometry"]["crop"] == [3, 0, 35, 32]
    # normalised as (x / 255 - mean) / std
    assert s["image"].min() >= (0 - 0.5) / 0.25 - 1e-6 and s["image"].max() <= (1 - 0.5) / 0.25 + 1e-6


def test_class_names_fix_the_labels(tmp_path):
    write_folder(tmp_path, split="val", classes=("dog",))
    ds, names = build(tmp_path, "val", class_names=["cat", "dog"])
    assert names == ["cat", "dog"] and {ds[i]["label"] for i in range(len(ds))} == {1}
    with pytest.raises(ImageDataError, match="not among the 2 classes of the given class list"):
        build(tmp_path, "val", class_names=["cat", "bird"])


def test_validation_maps_onto_the_training_classes(tmp_path):
    write_folder(tmp_path, split="train", classes=("cat", "dog", "emu"), per_class=1)
    write_folder(tmp_path, split="val", classes=("dog", "emu"), per_class=1)   # no "cat": labels must not shift
    ds, names = build(tmp_path, "val", train=False)
    assert names == ["cat", "dog", "emu"] and [ds[i]["label"] for i in range(len(ds))] == [1, 2]
    write_folder(tmp_path, split="val", classes=("fox",), per_class=1)
    with pytest.raises(ImageDataError, match=r"val/fox: class folder\(s\) \['fox'\] are not among the 3 classes "
                                             r"of the class folders of .*train"):
        build(tmp_path, "val", train=False)


def test_missing_or_empty_folders_are_named(tmp_path):
    with pytest.raises(ImageDataError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(ImageDataError, match="has no images"):
        scan_image_folder(tmp_path / "train")


def test_random_draws_are_a_function_of_seed_epoch_index(tmp_path):
    write_folder(tmp_path)
    ds, _ = build(tmp_path, randaugment="rand-m9-mstd0.5-inc1")
    a, b = ds[3], ds[3]
    assert torch.equal(a["image"], b["image"]) and a["meta"]["geometry"] == b["meta"]["geometry"]
    other, _ = build(tmp_path, randaugment="rand-m9-mstd0.5-inc1")           # a second instance (another worker)
    assert torch.equal(other[3]["image"], a["image"])
    draws = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        draws.add(ds[3]["image"].numpy().tobytes())
    assert len(draws) > 1
    ev, _ = build(tmp_path, train=False)
    ev.set_epoch(5)
    assert torch.equal(ev[3]["image"], build(tmp_path, train=False)[0][3]["image"])   # eval is deterministic


def test_bad_images_are_skipped_counted_and_substituted(tmp_path, caplog):
    write_folder(tmp_path, per_class=5)
    cat = tmp_path / "train" / "cat"
    (cat / "1.png").write_bytes(b"")                                          # zero bytes
    (cat / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)        # corrupt
    good = (cat / "3.png").read_bytes()
    (cat / "3.png").write_bytes(good[: len(good) // 2])                       # truncated
    ds, _ = build(tmp_path, max_fail_ratio=0.9)
    (cat / "4.png").unlink()                                                  # vanished after the scan
    with caplog.at_level(logging.WARNING, logger="timematters.data.images"):
        s = ds[1]
    assert s["index"] == 1 and s["meta"]["substituted_for"].endswith("1.png")
    assert s["meta"]["path"].endswith("dog/0.png") and s["label"] == 1      # the next readable image
    bad = {str(cat / f"{i}.png") for i in (1, 2, 3, 4)}
    assert set(ds.failed) == bad and all(p in caplog.text for p in bad)
    assert "zero-byte" in ds.failed[str(cat / "1.png")] and "missing" in ds.failed[str(cat / "4.png")]
    assert (ds.attempts, ds.failures) == (5, 4)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="timematters.data.images"):
        s0 = ds[0]
    assert "skipping" not in caplog.text and "substituted_for" not in s0["meta"]   # reported once only
    assert "4 bad images" in ds.failure_summary()


def test_evaluation_excludes_bad_images_and_lists_them(tmp_path):
    from timematters.data.dataset import LoadFailures
    from torch.utils.data import DataLoader
    write_folder(tmp_path, split="val", per_class=3)
    broken = tmp_path / "val" / "cat" / "1.png"
    broken.write_bytes(b"")
    ds, _ = build(tmp_path, "val", train=False, max_fail_ratio=0.5)
    assert ds.on_error == "exclude" and ds[1] == {"excluded": {"path": str(broken), "reason": ds.failed[str(broken)],
                                                               "index": 1}}
    failures = LoadFailures(what="images")
    batches = list(failures.track(DataLoader(ds, batch_size=2, collate_fn=collate)))
    assert sum(len(b["label"]) for b in batches) == 5 and all("excluded" not in b for b in batches)
    summary = failures.finish()
    assert summary["num_failed"] == 1 and summary["failed"][0]["path"] == str(broken)


def test_too_many_failures_stop_with_the_files_named(tmp_path):
    write_folder(tmp_path, per_class=2)
    for name in ("0.png", "1.png"):
        (tmp_path / "train" / "cat" / name).write_bytes(b"")
    ds, _ = build(tmp_path, max_fail_ratio=0.3)
    with pytest.raises(TooManyFailures, match=r"3 of 4 image loads .*max_fail_ratio=0\.3.*cat/0\.png"):
        for i in range(len(ds)):
            ds[i]
    ok, _ = build(tmp_path, max_fail_ratio=0.9)                               # a looser limit lets the epoch run
    assert len([ok[i] for i in range(len(ok))]) == 4 and len(ok.failed) == 2


def test_collate_stacks_tensors_and_keeps_meta(tmp_path):
    write_folder(tmp_path)
    ds, _ = build(tmp_path)
    batch = collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 32, 32)
    assert batch["label"].dtype == torch.int64 and batch["index"].tolist() == [0, 1, 2]
    assert isinstance(batch["meta"], list) and len(batch["meta"]) == 3 and "geometry" in batch["meta"][0]
