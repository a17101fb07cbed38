"""Confidence-gap histogram: 20 bins over [-1, 1] holding every sample."""
from __future__ import annotations

import numpy as np
import pytest

from timematters.audit.confidence import confidence_gaps, gap_histogram, plot_confidence_gap


def test_histogram_bins_sum_to_sample_count_including_edges():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0, 1, 97), [1.0, 0.0, 1.0]])
    q = np.concatenate([rng.uniform(0, 1, 97), [0.0, 1.0, 1.0]])      # gaps +1, -1 and 0 at the edges
    h = gap_histogram(confidence_gaps(p, q))
    assert len(h["counts"]) == 20 and len(h["edges"]) == 21
    assert sum(h["counts"]) == h["count"] == 100
    assert np.isclose(sum(h["mass"]), 1.0)
    assert h["counts"][0] >= 1 and h["counts"][-1] >= 1
    assert h["edges"][0] == -1.0 and h["edges"][-1] == 1.0
    assert np.isclose(h["mean"], np.mean(p - q))


def test_order_blind_gaps_fall_in_the_two_central_bins():
    p = np.linspace(0.05, 0.95, 50)
    h = gap_histogram(confidence_gaps(p, p))
    assert h["counts"][10] == 50 and sum(h["counts"]) == 50          # gap 0 lies in bin [0, 0.1)


def test_bad_probabilities_raise_and_plot_writes_png(tmp_path):
    with pytest.raises(ValueError, match="equal length"):
        confidence_gaps([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        confidence_gaps([1.5], [0.1])
    hists = {"a": gap_histogram(np.array([0.5, 0.2, -0.1])), "b": gap_histogram(np.array([0.0, 0.01]))}
    plot_confidence_gap(hists, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 1000
