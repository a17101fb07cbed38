"""End to end on the synthetic benchmark: `timematters eval` and `timematters audit` for our model and HF models."""
from __future__ import annotations

import json

import pytest
import transformers

from timematters.cli import main as cli_main
from timematters.data.synth import LABELS_FILE, generate
from tiny_run import save_tiny_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A tiny synthetic benchmark, one timematters run and two Hugging Face model directories."""
    root = tmp_path_factory.mktemp("audit")
    data = generate(root / "synth", videos=42, frames=8, size=32, seed=0, workers=1)
    names = list(json.loads((data / LABELS_FILE).read_text()))
    save_tiny_run(root / "run", names, data)
    # HF models label their outputs in reverse order, so the audit must remap by name
    id2label = dict(enumerate(reversed(names)))
    label2id = {v: k for k, v in id2label.items()}
    common = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64, num_labels=len(names), id2label=id2label,
                  label2id=label2id)
    transformers.TimesformerForVideoClassification(transformers.TimesformerConfig(**common)).save_pretrained(root / "tsf")
    transformers.VideoMAEForVideoClassification(
        transformers.VideoMAEConfig(tubelet_size=2, **common)).save_pretrained(root / "vmae")
    return root, data, names


def test_eval_cli_multi_view(bench, tmp_path):
    root, data, names = bench
    out = tmp_path / "metrics.json"
    assert cli_main(["eval", "--checkpoint", str(root / "run"), "--views", "2", "--crops", "3",
                     "--shuffles", "2", "--batch-size", "12", "--per-sample", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    n_val = len(json.loads((data / "something-something-v2-validation.json").read_text()))
    assert m["num_videos"] == n_val and m["num_clips"] == n_val * 6
    assert set(m["groups"]) == {"temporal", "static"}                       # from timematters-meta.json
    assert m["groups"]["temporal"]["count"] + m["groups"]["static"]["count"] == n_val
    assert m["gap_top1"] == pytest.approx(m["top1"] - m["shuffled_top1"])
    assert sum(c["count"] for c in m["per_class"].values()) == n_val
    assert len(m["per_sample"]["p_y"]) == len(m["per_sample"]["p_y_shuffled"]) == n_val


def test_audit_report_side_by_side_with_hf_models(bench, tmp_path):
    root, data, names = bench
    out = tmp_path / "report"
    assert cli_main(["audit", "--model", str(root / "run"), "--model", str(root / "tsf"), "--model",
                     str(root / "vmae"), "--names", "ours", "hf-timesformer", "hf-videomae", "--data", str(data),
                     "--out", str(out), "--shuffles", "2", "--probe-train-videos", "12", "--probe-test-videos", "6",
                     "--gradcam-videos", "2", "--batch-size", "8"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["name"] for m in metrics["models"]] == ["ours", "hf-timesformer", "hf-videomae"]
    for m in metrics["models"]:
        assert sum(m["confidence"]["counts"]) == m["eval"]["num_videos"] == m["confidence"]["count"]
        assert len(m["probe"]["test_acc"]) == 2
        assert 0 <= min(m["probe"]["test_acc"]) and max(m["probe"]["test_acc"]) <= 100
    vmae = metrics["models"][2]
    assert vmae["probe"]["num_frames"] == 2                                 # tubelet 2: T' = 4 / 2
    # sinusoidal position embeddings keep frame positions: VideoMAE's first block knows the order
    assert vmae["probe"]["test_acc"][0] > 90
    html = (out / "report.html").read_text()
    for name in ("ours", "hf-timesformer", "hf-videomae", "Confidence gap", "Temporal-order probe", "GradCAM"):
        assert name in html
    figures = metrics["figures"]
    pngs = [figures["accuracy"], figures["probe"], figures["confidence"]] + [g["png"] for g in figures["gradcam"]]
    assert len(figures["gradcam"]) == 2
    for png in pngs:
        assert (out / png).is_file()
    assert html.count("data:image/png;base64,") == len(pngs)                # self-contained
