"""`timematters eval-backgrounds` on a model trained for a few steps through the real engine."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from timematters.evaluation import backgrounds as bgmod
from timematters.config import load_config
from timematters.data import synth_images as si
from timematters.data.images import build_image_dataset


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny synthetic benchmark and a ViT trained on it for a few ImageTIME steps by `timematters train`."""
    from timematters.engine.train import train

    root = tmp_path_factory.mktemp("bg")
    si.write_benchmark(root / "data", si.SynthImageSpec(num_classes=3, img_size=32, train_per_class=8,
                                                        test_per_class=5, seed=2))
    cfg = load_config("image_synth_time", [f"data.root={root / 'data' / 'original'}", f"run.out={root / 'run'}",
                                           "optim.epochs=1", "optim.batch_size=8", "data.num_workers=0",
                                           "model.depth=1", "run.tensorboard=false"])
    train(cfg)
    return root


def test_numbers_are_fractions_and_bg_gap_is_mixed_same_minus_mixed_rand(trained, capsys):
    p = argparse.ArgumentParser()
    bgmod.add_arguments(p)
    out = trained / "bg.json"
    assert bgmod.main(p.parse_args(["--checkpoint", str(trained / "run"), "--data", str(trained / "data"),
                                    "--out", str(out), "--device", "cpu"])) == 0
    printed = capsys.readouterr().out
    for label in ("Original", "Only-FG", "Mixed-Same", "Mixed-Rand", "Mixed-Next", "BG-Gap"):
        assert label in printed
    result = json.loads(out.read_text())
    acc = result["accuracy"]
    assert list(acc) == list(bgmod.VARIANTS)
    assert all(0.0 <= a <= 1.0 for a in acc.values())
    assert all(n == 15 for n in result["num_images"].values())
    assert result["bg_gap"] == pytest.approx(acc["mixed_same"] - acc["mixed_rand"])
    assert result["method"] == "image_time"

    # Original re-scored by hand from the checkpoint
    from timematters.engine.checkpoint import load_model

    model, spec = load_model(trained / "run")
    ds, _ = build_image_dataset(trained / "data" / "original", "val", train=False, img_size=spec["img_size"],
                                mean=spec["mean"], std=spec["std"], class_names=spec["class_names"])
    with torch.no_grad():
        preds = [model(ds[i]["image"][None]).argmax(-1).item() for i in range(len(ds))]
    assert acc["original"] == pytest.approx(sum(p == ds[i]["label"] for i, p in enumerate(preds)) / len(ds))


def test_missing_variant_is_named(trained, tmp_path):
    from timematters.engine.checkpoint import load_model

    model, spec = load_model(trained / "run")
    (tmp_path / "original" / "val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="only_fg/val"):
        bgmod.evaluate_backgrounds(model, tmp_path, class_names=spec["class_names"], img_size=32,
                                   mean=(0.5,) * 3, std=(0.5,) * 3)


def test_format_table_is_in_percent():
    table = bgmod.format_table({"accuracy": {"original": 0.5, "mixed_same": 0.75, "mixed_rand": 0.25},
                                "bg_gap": 0.5})
    assert "Original     50.00" in table and "BG-Gap       50.00" in table
