"""Every shipped recipe starts: load it, shrink only its sizes, and run it through the command line a user types.

For each file in ``timematters/configs/``: ``timematters train --config NAME`` (or ``timematters pretrain
--method M --config NAME`` for the label-free recipes) with overrides that touch only sizes (depth, width,
resolution, frames, epochs, batch, workers, ``model.pretrained``), on a tiny dataset in the recipe's own
format: real VP9 ``.webm`` files in Something-Something-v2's JSON layout for the SSv2 recipes, Kinetics CSVs
with H.264 ``.mp4`` files for the Kinetics recipes, the synthetic benchmark for ``*synth*`` recipes and the
image benchmark for image recipes. Each run makes exactly one optimiser step and, when the objective has a
class loss, one validation pass. A recipe that cannot start fails here.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from videos import write_video
from timematters import cli
from timematters.config import CONFIG_DIR, load_config, to_dict
from timematters.engine.pretrain import METHODS

CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))

# what the overrides may touch: sizes only (and where the run writes)
SIZE_KEYS = {
    "model.depth", "model.embed_dim", "model.num_heads", "model.patch_size", "model.pretrained",
    "model.extra.num_frames", "data.img_size", "data.scale", "data.num_frames", "data.num_workers",
    "optim.epochs", "optim.batch_size", "optim.micro_batch", "run.out",
    # SVT's views and head (resolution, frames, width)
    "objective.args.global_size", "objective.args.local_size", "objective.args.global_frames",
    "objective.args.local_frames", "objective.args.out_dim", "objective.args.hidden_dim",
    "objective.args.bottleneck_dim",
}
WIDTH = dict(depth=1, embed_dim=32, num_heads=2, patch_size=8)
SSV2_TEMPLATES = ["Pushing [something] from left to right", "Pushing [something] from right to left",
                  "Holding [something] next to [something]"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------------------------------ datasets
def _ssv2(root: Path) -> Path:
    """SSv2's layout: labels / train / validation JSON files and ``20bn-something-something-v2/<id>.webm``
    (VP9, 12 fps, landscape like the real videos). 4 train videos, 3 validation videos."""
    labels = {t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(SSV2_TEMPLATES)}
    (root / "something-something-v2-labels.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "something-something-v2-labels.json").write_text(json.dumps(labels, indent=1))
    vid = 1000
    for split, classes in (("train", [0, 1, 2, 0]), ("validation", [1, 2, 0])):
        entries = []
        for c in classes:
            vid += 1
            write_video(root / "20bn-something-something-v2" / f"{vid}.webm", 20, width=72, height=40)
            placeholders = ["a cup", "a box"][:SSV2_TEMPLATES[c].count("[")]
            entries.append({"id": str(vid), "label": SSV2_TEMPLATES[c], "template": SSV2_TEMPLATES[c],
                            "placeholders": placeholders})
        (root / f"something-something-v2-{split}.json").write_text(json.dumps(entries, indent=1))
    return root


def _kinetics(root: Path) -> Path:
    """Kinetics' CSVs (label,youtube_id,time_start,time_end,split) and ``<split>/<label>/<id>_<s>_<e>.mp4``."""
    for split, n in (("train", 4), ("validate", 2)):
        rows = ["label,youtube_id,time_start,time_end,split"]
        for i in range(n):
            label = ["abseiling", "juggling balls"][i % 2]
            yid = f"{split[:2]}{i:09d}"
            rows.append(f"{label},{yid},10,20,{split}")
            write_video(root / split / label / f"{yid}_000010_000020.mp4", 24, width=56, height=40)
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from timematters.data import synth_images as si
    from timematters.data.synth import generate

    base = tmp_path_factory.mktemp("recipe_data")
    images = base / "images"
    si.write_benchmark(images, si.SynthImageSpec(num_classes=3, img_size=32, train_per_class=3,
                                                 test_per_class=2, seed=1))
    return {
        "ssv2": _ssv2(base / "ssv2"),
        "kinetics": _kinetics(base / "kinetics"),
        "synth": generate(base / "synth", videos=28, frames=16, size=32, seed=0, workers=1),
        "imagefolder": images / "original",
    }


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    """A timm ViT in the layout of the recipes' initial weights, at the test's width."""
    import timm
    from safetensors.torch import save_file

    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000, img_size=32,
                            patch_size=WIDTH["patch_size"], embed_dim=WIDTH["embed_dim"], depth=WIDTH["depth"],
                            num_heads=WIDTH["num_heads"])
    path = tmp_path_factory.mktemp("weights") / "vit_base_patch16_224.orig_in21k_ft_in1k.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


# ---------------------------------------------------------------------------------------- overrides
def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in ("data", "model", "optim", "run", "objective", "args", "extra", "flow"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def size_overrides(name: str, raw: dict, data_root: Path, out: Path, vit: Path, train_videos: int) -> dict:
    """Sizes only: a 1-block, 32-wide model on 32 px clips, one optimiser step of a global batch that covers
    the training set, no loader workers."""
    flat = _flat(raw)
    batch = train_videos if train_videos % 2 == 0 else train_videos - 1
    ov = {"data.root": str(data_root), "run.out": str(out), "optim.epochs": 1, "optim.batch_size": batch,
          "optim.micro_batch": batch // 2, "data.num_workers": 0, "data.img_size": 32, "data.scale": [32, 40],
          **{f"model.{k}": v for k, v in WIDTH.items()}}
    ov["model.pretrained"] = str(vit) if flat.get("model.pretrained") else ""
    if flat.get("data.format", "ssv2") != "imagefolder" and flat.get("data.sampling", "tsn").startswith("tsn") \
            and "model.extra.num_frames" not in flat:
        ov["data.num_frames"] = 4                       # the clip (flow and order need >= 2 frames)
    if flat.get("objective.method") == "svt":           # views at the test's resolution, frames and width
        ov.update({"data.num_frames": 16, "model.extra.num_frames": 4, "objective.args.global_size": 32,
                   "objective.args.local_size": 16, "objective.args.global_frames": [2, 4],
                   "objective.args.local_frames": [2] * len(flat["objective.args.local_frames"]),
                   "objective.args.out_dim": 64, "objective.args.hidden_dim": 32,
                   "objective.args.bottleneck_dim": 16, "data.scale": [32, 32]})
    return ov


def _format_root(raw: dict, datasets: dict, name: str) -> Path:
    fmt = raw["data"].get("format", "ssv2")
    if fmt == "ssv2":
        return datasets["synth" if "synth" in name else "ssv2"]
    return datasets[fmt]


TRAIN_VIDEOS = {"ssv2": 4, "kinetics": 4}


# -------------------------------------------------------------------------------------------- tests
def test_every_shipped_config_is_covered():
    assert len(CONFIGS) >= 18 and {"ssv2_timesformer_time", "ssv2_motionformer_time", "ssv2_xvit_time",
                                   "pretrain_svt", "image_synth_time", "synth_time"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_recipe_trains_one_step_and_validates(name, datasets, vit_checkpoint, tmp_path):
    raw = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    root = _format_root(raw, datasets, name)
    fmt = raw["data"].get("format", "ssv2")
    if fmt == "imagefolder":
        train_count = len(list((root / "train").rglob("*.png")))
    elif root == datasets["synth"]:
        train_count = len(json.loads((root / "something-something-v2-train.json").read_text()))
    else:
        train_count = TRAIN_VIDEOS[fmt]
    out = tmp_path / "run"
    ov = size_overrides(name, raw, root, out, vit_checkpoint, train_count)
    assert set(ov) - {"data.root"} <= SIZE_KEYS, set(ov) - SIZE_KEYS - {"data.root"}

    method = raw["objective"]["method"]
    argv = [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in ov.items()]
    pretrain = {v: k for k, v in METHODS.items()}.get(method) if name.startswith("pretrain") else None
    if pretrain:
        argv = ["pretrain", "--method", pretrain, "--config", name, *argv]
    else:
        argv = ["train", "--config", name, *argv]
    assert cli.main(argv) == 0

    # the run used the recipe: every value it did not shrink is the shipped one
    ran = _flat(yaml.safe_load((out / "config.yaml").read_text()))
    recipe = _flat(to_dict(load_config(name)))
    for key, value in recipe.items():
        if key not in ov and key != "objective.method":
            assert ran[key] == value, key

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["type"] == "train"]
    assert [r["step"] for r in train_rows] == [1], "exactly one optimiser step"
    assert all(torch.isfinite(torch.tensor(float(v))) for k, v in train_rows[0].items()
               if isinstance(v, (int, float)))
    assert (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("*.safetensors"))
    if method in ("supervised", "time", "image_time"):     # a class loss: one validation pass
        val = json.loads((out / "val_metrics.json").read_text())
        assert 0.0 <= val["top1"] <= 100.0
        if fmt == "imagefolder":
            assert val["num_samples"] == len(list((root / "val").rglob("*.png")))
        else:
            val_videos = len(json.loads((root / "something-something-v2-validation.json").read_text()))
            assert val["num_videos"] == val_videos
            assert val["num_clips"] == val_videos * raw["data"].get("val_views", 1) * raw["data"].get("val_crops", 1)
