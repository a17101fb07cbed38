"""`data.classes`: train and evaluate on a class subset (Table 3's subset columns), through the CLI."""
from __future__ import annotations

import json

import pytest
import torch

from timematters.cli import main as cli_main
from timematters.data.dataset import build_video_dataset
from timematters.data.synth import LABELS_FILE, META_FILE, generate


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("classes") / "synth", videos=28, frames=8, size=32, seed=0, workers=1)


def _group(root, name):
    return [c["name"] for c in json.loads((root / META_FILE).read_text())["classes"] if c["group"] == name]


def test_subset_keeps_names_and_remaps_labels(synth):
    names = list(json.loads((synth / LABELS_FILE).read_text()))
    static = _group(synth, "static")
    full, all_names = build_video_dataset(synth, "ssv2", "train", train=False, num_frames=4, img_size=32)
    sub, sub_names = build_video_dataset(synth, "ssv2", "train", train=False, num_frames=4, img_size=32,
                                         classes=static)
    assert all_names == names and sub_names == static
    expected = [(r.video_id, static.index(all_names[r.label])) for r in full.records if all_names[r.label] in static]
    assert [(r.video_id, r.label) for r in sub.records] == expected
    assert 0 < len(sub.records) < len(full.records)


def test_train_and_eval_on_a_group(synth, tmp_path, capsys):
    """`timematters train ... data.classes=temporal` (the benchmark's group): the model has one output per
    temporal class, validation and `timematters eval` score only those classes' videos."""
    temporal = _group(synth, "temporal")
    val = json.loads((synth / "something-something-v2-validation.json").read_text())
    val_names = [v["template"].replace("[", "").replace("]", "") for v in val]
    n_val = sum(n in temporal for n in val_names)
    run = tmp_path / "run"
    torch.set_num_threads(1)
    assert cli_main(["train", "--config", "synth_baseline", f"data.root={synth}", f"run.out={run}",
                     "data.classes=temporal", "optim.epochs=1", "optim.batch_size=4", "data.num_workers=0",
                     "data.num_frames=4", "data.img_size=32", "data.scale=[32,40]", "model.depth=1",
                     "model.embed_dim=32", "model.num_heads=2", "model.patch_size=8"]) == 0
    metrics = json.loads((run / "val_metrics.json").read_text())
    assert metrics["num_videos"] == n_val and set(metrics["per_class"]) <= set(temporal)
    out = tmp_path / "eval.json"
    assert cli_main(["eval", "--checkpoint", str(run), "--shuffles", "1", "--out", str(out)]) == 0
    ev = json.loads(out.read_text())
    assert ev["num_videos"] == n_val and set(ev["per_class"]) <= set(temporal)
    capsys.readouterr()
    assert cli_main(["train", "--config", "synth_baseline", f"data.root={synth}", f"run.out={tmp_path / 'x'}",
                     "data.classes=[temporal, no such class]", "data.num_workers=0"]) == 2
    assert "error: data.classes: 'no such class' is neither a class of the dataset nor a group" in capsys.readouterr().err
