"""The audit report: one self-contained ``report.html`` (tables + figures embedded as base64 PNG).

``write_report(out_dir, audit)`` reads the dictionary ``audit.run_audit`` builds (also written as
``metrics.json``) and the PNGs it names, all inside ``out_dir``.
"""
from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from timematters.utils import atomic_write_bytes


# ------------------------------------------------------------------------------------------ figures
def plot_accuracy(models: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Fig. 1a style: original / shuffled / reversed top-1 for all classes and each group, one panel per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(models)
    groups = ["all"] + sorted({g for m in models for g in m["eval"].get("groups", {})})
    fig, axes = plt.subplots(1, n, figsize=(max(4.2, 1.2 * len(groups) + 1.8) * n, 4.4), dpi=120,
                             sharey=True, squeeze=False)
    variants = [("top1", "original", "#3b75af"), ("shuffled_top1", "shuffled", "#ef8636"),
                ("reversed_top1", "reversed", "#7f7f7f")]
    width = 0.8 / len(variants)
    for ax, m in zip(axes[0], models):
        ev = m["eval"]
        x = np.arange(len(groups))
        for j, (key, label, color) in enumerate(variants):
            vals = [(ev if g == "all" else ev["groups"].get(g, {})).get(key) for g in groups]
            if all(v is None for v in vals):
                continue
            vals = [np.nan if v is None else v for v in vals]
            bars = ax.bar(x + (j - (len(variants) - 1) / 2) * width, vals, width, label=label, color=color)
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        counts = [(ev if g == "all" else ev["groups"].get(g, {})).get("count", ev.get("num_videos")) for g in groups]
        ax.set_xticks(x, [f"{g}\n(n={c})" for g, c in zip(groups, counts)], fontsize=8)
        ax.set_title(m["name"], fontsize=10)
        ax.set_ylim(0, 109)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("top-1 accuracy (%)")
    axes[0, -1].legend(loc="upper right", fontsize=8, ncol=3, frameon=False)
    fig.suptitle("Accuracy on original, frame-shuffled and time-reversed clips", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- HTML
CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1300px;
       color: #222; line-height: 1.45; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 10px 0; font-size: 13px; }
th, td { border: 1px solid #d6d6d6; padding: 4px 9px; text-align: right; }
th { background: #f2f4f7; } td.l, th.l { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
.meta { color: #555; font-size: 13px; } .note { color: #555; font-size: 13px; max-width: 1000px; }
img { max-width: 100%; border: 1px solid #eee; margin: 6px 0; }
figure { margin: 12px 0 22px 0; } figcaption { font-size: 13px; color: #444; max-width: 1000px; }
details summary { cursor: pointer; font-weight: 600; margin: 8px 0; }
"""


def _fmt(v: Any, digits: int = 1, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        v = 0.0 if abs(v) < 0.5 * 10 ** -digits else v        # no "-0.000"
        return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _img(out_dir: Path, name: str | None, alt: str) -> str:
    if not name:
        return ""
    data = base64.b64encode((out_dir / name).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _summary_rows(models: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for m in models:
        ev, probe, conf = m["eval"], m.get("probe"), m.get("confidence")
        rows.append([
            f"<b>{html.escape(m['name'])}</b>",
            _fmt(ev["top1"]), _fmt(ev["top5"]),
            _fmt(ev.get("shuffled_top1")), _fmt(ev.get("shuffled_top5")),
            _fmt(ev.get("reversed_top1")), _fmt(ev.get("reversed_top5")),
            _fmt(ev.get("gap_top1"), signed=True), _fmt(ev.get("reverse_gap_top1"), signed=True),
            _fmt(conf["mean"], 3, signed=True) if conf else "–",
            _fmt(probe["test_acc"][0]) if probe else "–",
            _fmt(probe["test_acc"][-1]) if probe else "–",
            _fmt(ev["num_videos"]),
        ])
    return rows


def _group_table(models: Sequence[Mapping[str, Any]]) -> str:
    groups = sorted({g for m in models for g in m["eval"].get("groups", {})})
    if not groups:
        return '<p class="note">No class groups for this dataset (use <code>--groups</code>).</p>'
    rows = []
    for g in groups:
        for m in models:
            s = m["eval"]["groups"].get(g)
            if s is None:
                continue
            rows.append([html.escape(g), html.escape(m["name"]), _fmt(s["num_classes"]), _fmt(s["count"]),
                         _fmt(s["top1"]), _fmt(s.get("shuffled_top1")), _fmt(s.get("reversed_top1")),
                         _fmt(s.get("gap_top1"), signed=True), _fmt(s.get("class_mean_top1")),
                         _fmt(s.get("class_mean_shuffled_top1"))])
    return _table(["group", "model", "classes", "videos", "top-1", "shuffled top-1", "reversed top-1",
                   "gap", "class-mean top-1", "class-mean shuffled"], rows, left=2)


def _per_class_table(models: Sequence[Mapping[str, Any]], class_groups: Mapping[str, Sequence[str]]) -> str:
    member = {}
    for g, names in class_groups.items():
        for n in names:
            member.setdefault(n, []).append(g)
    classes = list(dict.fromkeys(c for m in models for c in m["eval"]["per_class"]))
    header = ["class", "groups", "videos"]
    for m in models:
        header += [f"{m['name']}: top-1", "shuffled", "reversed", "gap"]
    rows = []
    for c in classes:
        first = next(m["eval"]["per_class"][c] for m in models if c in m["eval"]["per_class"])
        row = [html.escape(c), html.escape(", ".join(member.get(c, []))), _fmt(first["count"])]
        for m in models:
            s = m["eval"]["per_class"].get(c, {})
            row += [_fmt(s.get("top1")), _fmt(s.get("shuffled_top1")), _fmt(s.get("reversed_top1")),
                    _fmt(s.get("gap_top1"), signed=True)]
        rows.append(row)
    return _table(header, rows, left=2)


def render_html(out_dir: str | Path, audit: Mapping[str, Any]) -> str:
    out_dir = Path(out_dir)
    models = audit["models"]
    figs = audit.get("figures", {})
    s = audit.get("settings", {})
    names = " vs ".join(m["name"] for m in models)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>timematters audit: {html.escape(names)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Temporal-bias audit: {html.escape(names)}</h1>",
             f"<p class='meta'>data <code>{html.escape(str(audit.get('data')))}</code> · split "
             f"{html.escape(str(audit.get('split')))} · {s.get('views', 1)} view(s) × {s.get('crops', 1)} crop(s) · "
             f"{s.get('shuffles')} shuffle(s) per clip · seed {s.get('seed')} · generated {html.escape(str(audit.get('created')))}</p>"]
    parts.append("<h2>Models</h2>" + _table(
        ["name", "source", "kind", "frames", "size"],
        [[html.escape(m["name"]), f"<code>{html.escape(m['source'])}</code>", html.escape(m["kind"]),
          _fmt(m["num_frames"]), _fmt(m["img_size"])] for m in models], left=3))

    parts.append("<h2>Accuracy on original, shuffled and reversed clips</h2>")
    parts.append("<p class='note'>Top-1/top-5 in % (TIME paper, Table 1). Shuffled: every clip with a random "
                 "non-identity frame permutation, accuracy averaged over the shuffles. Gap = original − shuffled; a "
                 "model that uses frame order loses accuracy when the order is destroyed. Mean confidence gap = "
                 "mean over videos of p(y|x) − p(y|x shuffled). Order probe: frame-index accuracy of a linear "
                 "probe on the first / last block.</p>")
    parts.append(_table(["model", "top-1", "top-5", "shuffled top-1", "shuffled top-5", "reversed top-1",
                         "reversed top-5", "gap top-1", "reverse gap top-1", "mean conf. gap",
                         "probe block 1", "probe last block", "videos"], _summary_rows(models)))
    parts.append("<h3>Per class group</h3>" + _group_table(models))
    parts.append("<figure>" + _img(out_dir, figs.get("accuracy"), "accuracy") +
                 "<figcaption>Top-1 on original / shuffled / reversed clips, for all classes and per class group "
                 "(TIME paper, Fig. 1a).</figcaption></figure>")

    if figs.get("probe"):
        parts.append("<h2>Temporal-order probe per block</h2>")
        parts.append("<figure>" + _img(out_dir, figs["probe"], "order probe") +
                     "<figcaption>Frozen model; per block, the patch tokens are averaged over space and a linear "
                     "classifier predicts each frame's index (trained on the train split, tested on the audited "
                     "split). High accuracy = the block still knows the frame order (TIME paper, Fig. 1b)."
                     "</figcaption></figure>")
        probe_models = [m for m in models if m.get("probe")]
        blocks = max(len(m["probe"]["blocks"]) for m in probe_models)
        parts.append(_table(["model", "clips (train / test)"] + [f"block {b}" for b in range(1, blocks + 1)],
                            [[html.escape(m["name"]),
                              f"{m['probe']['num_train_clips']} / {m['probe']['num_test_clips']}"]
                             + [_fmt(a) for a in m["probe"]["test_acc"]] + ["–"] * (blocks - len(m["probe"]["test_acc"]))
                             for m in probe_models], left=2))

    if figs.get("confidence"):
        parts.append("<h2>Confidence gap</h2>")
        parts.append("<figure>" + _img(out_dir, figs["confidence"], "confidence gap") +
                     "<figcaption>Per video, p(y|x) − p(y|x shuffled), as probability mass in 20 bins over [−1, 1] "
                     "(TIME paper, Fig. 1c). Mass near 0: the model is as confident on shuffled clips as on the "
                     "original ones, i.e. it ignores frame order.</figcaption></figure>")

    if figs.get("gradcam"):
        parts.append("<h2>GradCAM</h2>")
        parts.append("<p class='note'>GradCAM (pytorch-grad-cam) for the true class, on the last block's "
                     "pre-attention tokens, one heat map per frame (normalised over the whole clip; TIME paper, "
                     "Fig. 4). A dark strip means GradCAM found no positive evidence for the class in that clip.</p>")
        for g in figs["gradcam"]:
            parts.append("<figure>" + _img(out_dir, g["png"], g["caption"]) +
                         f"<figcaption>{html.escape(g['caption'])}</figcaption></figure>")

    parts.append("<h2>Per class</h2><details><summary>show the per-class table "
                 f"({len({c for m in models for c in m['eval']['per_class']})} classes)</summary>")
    parts.append(_per_class_table(models, audit.get("class_groups", {})) + "</details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: str | Path, audit: Mapping[str, Any]) -> Path:
    """Write ``out_dir/report.html`` (figures embedded) and return its path."""
    path = Path(out_dir) / "report.html"
    atomic_write_bytes(path, render_html(out_dir, audit).encode("utf-8"))
    return path
