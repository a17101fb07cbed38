"""Confidence gap p(y|x) - p(y|x_shuffled) per sample, as a 20-bin histogram (TIME paper, Fig. 1c).

A model that uses frame order is confident on the original clip and unsure on the shuffled one (gap
near +1); an order-blind model scores both the same (gap near 0).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

NUM_BINS = 20          # the paper's Fig. 1c uses 20 bins
GAP_RANGE = (-1.0, 1.0)


def confidence_gaps(p_y: Sequence[float], p_y_shuffled: Sequence[float]) -> np.ndarray:
    p, q = np.asarray(p_y, dtype=np.float64), np.asarray(p_y_shuffled, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"confidence gap: p(y|x) and p(y|x_shuffled) must be 1-D of equal length, "
                         f"got {p.shape} and {q.shape}")
    if p.size and (p.min() < 0 or p.max() > 1 or q.min() < 0 or q.max() > 1):
        raise ValueError("confidence gap: probabilities must lie in [0, 1]")
    return p - q


def gap_histogram(gaps: np.ndarray, *, bins: int = NUM_BINS, value_range: tuple[float, float] = GAP_RANGE
                  ) -> dict[str, Any]:
    """Counts and probability mass per bin over ``value_range`` (last bin closed, so every gap is counted)."""
    gaps = np.asarray(gaps, dtype=np.float64)
    # float rounding can put a gap a hair outside [-1, 1]; clip so the counts always sum to the sample count
    clipped = np.clip(gaps, *value_range)
    counts, edges = np.histogram(clipped, bins=bins, range=value_range)
    n = int(gaps.size)
    return {
        "edges": edges.tolist(),
        "counts": counts.astype(int).tolist(),
        "mass": (counts / max(n, 1)).tolist(),
        "count": n,
        "mean": float(gaps.mean()) if n else float("nan"),
        "median": float(np.median(gaps)) if n else float("nan"),
    }


def plot_confidence_gap(histograms: Mapping[str, Mapping[str, Any]], path: str, *, title: str | None = None) -> None:
    """Overlay the histograms of several models (one colour each) and save a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    n = len(histograms)
    for i, (name, h) in enumerate(histograms.items()):
        edges, mass = np.asarray(h["edges"]), np.asarray(h["mass"])
        # bars of the models side by side inside each bin, so no model hides another
        width = np.diff(edges) / n
        mean = 0.0 if abs(h["mean"]) < 5e-4 else h["mean"]
        ax.bar(edges[:-1] + i * width, mass, width=width, align="edge", alpha=0.85,
               label=f"{name}: mean gap {mean:+.3f} (n={h['count']})")
    ax.axvline(0, color="0.4", linewidth=0.8, linestyle="--")
    ax.set_xlim(*GAP_RANGE)
    ax.set_xlabel("confidence gap  p(y | x) − p(y | x shuffled)")
    ax.set_ylabel("probability mass")
    bins = len(next(iter(histograms.values()))["counts"])
    ax.set_title(title or f"Confidence gap between original and shuffled clips ({bins} bins)")
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
