"""The four-way comparison's table: mean +- sample std over seeds and the difference to the baseline."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "image_time_compare.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("image_time_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result(acc: float, same: float, rand: float) -> dict:
    accuracy = {v: acc for v in ("original", "only_fg", "mixed_next")}
    accuracy.update(mixed_same=same, mixed_rand=rand)
    return {"accuracy": accuracy, "bg_gap": same - rand}


def test_summary_table(compare):
    table = compare.summary_table({"Baseline": [result(0.5, 0.8, 0.4), result(0.7, 0.8, 0.2)],
                                   "+both": [result(0.9, 0.9, 0.6)]})
    lines = table.splitlines()
    assert lines[0] == "| | Baseline | +both |"
    assert len(lines) == 2 + 6
    original = next(line for line in lines if line.startswith("| Original"))
    assert "60.0 ± 14.1" in original and "90.0 ± 0.0 (+30.0)" in original     # stdev of (50, 70) = 14.14
    gap = next(line for line in lines if line.startswith("| BG-Gap ↓"))
    assert "50.0 ± 14.1" in gap and "30.0 ± 0.0 (-20.0)" in gap


def test_arms_are_the_four_configs(compare):
    from timematters.config import load_config

    weights = {name: load_config(cfg).objective.weights for name, cfg in compare.ARMS}
    assert [(w["order"], w["debias"]) for w in weights.values()] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    base = load_config(compare.ARMS[0][1])
    for _, cfg in compare.ARMS[1:]:            # the same recipe apart from the loss weights
        other = load_config(cfg)
        assert (other.data, other.model, other.optim) == (base.data, base.model, base.optim)
