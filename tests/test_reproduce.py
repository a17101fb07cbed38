"""benchmarks/reproduce.py: the task graph, the resumable scheduler and the report (the study itself is
`make reproduce QUICK=1`, minutes, not a test)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce.py"


def load():
    spec = importlib.util.spec_from_file_location("reproduce_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_task_graph_is_complete_and_ordered(tmp_path):
    r = load()
    for scale in (r.QUICK, r.FULL):
        tasks = r.build_tasks(scale, tmp_path)
        keys = [t.key for t in tasks]
        assert len(keys) == len(set(keys))
        for i, t in enumerate(tasks):  # every prerequisite exists and comes earlier in the list
            for a in t.after:
                assert a in keys[:i], (t.key, a)
        # every (order, debias, flow) combination x seed of Table 3, and baseline / +TIME everywhere else
        for seed in scale.seeds:
            for c in r.ALL_COMBOS:
                assert f"table3/{r.combo_name(c)}_s{seed}" in keys
            for section in ("shortcut", "pretrained"):
                assert f"{section}/baseline_s{seed}" in keys and f"{section}/+order+debias+flow_s{seed}" in keys
            for arch in ("motionformer", "xvit"):
                assert f"backbones/{arch}_+order+debias+flow_s{seed}" in keys
        assert "image_compare" in keys
        if r.classes_option_available():
            assert any(k.startswith("subset_temporal/") for k in keys)


def test_scheduler_respects_order_skips_done_and_reports_failures(tmp_path):
    r = load()
    log = tmp_path / "calls.txt"

    def task(key, after=(), fail=False):
        done = tmp_path / f"{key}.done"
        code = (f"open({str(log)!r}, 'a').write({key!r} + '\\n'); "
                + ("raise SystemExit(3)" if fail else f"open({str(done)!r}, 'w').write('x')"))
        return r.Task(key, [sys.executable, "-c", code], done=done, after=tuple(after),
                      finalize=r.finish_generic)

    tasks = [task("a"), task("b", ["a"]), task("c", fail=True), task("d", ["c"]), task("e", ["b"])]
    failed = r.run_tasks(tasks, 2, tmp_path / "logs")
    assert sorted(failed) == ["c", "d"]                       # d never ran: its prerequisite failed
    calls = log.read_text().split()
    assert sorted(calls) == ["a", "b", "c", "e"]
    assert calls.index("a") < calls.index("b") < calls.index("e")
    stamp = json.loads((tmp_path / "reproduce_task.json").read_text())
    assert stamp["cpu_s"] >= 0 and "commit" in stamp

    log.unlink()
    failed = r.run_tasks(tasks, 2, tmp_path / "logs")        # a rerun runs only what is not done
    assert sorted(failed) == ["c", "d"] and log.read_text().split() == ["c"]


def _result(out: Path, section: str, name: str, seed: int, top1: float, shuffled: float, combo) -> None:
    groups = {g: {"top1": top1 + d, "shuffled_top1": shuffled + d, "gap_top1": top1 - shuffled}
              for g, d in (("temporal", 1.0), ("static", -1.0))}
    val = {"top1": top1, "shuffled_top1": shuffled, "gap_top1": top1 - shuffled, "groups": groups}
    run = out / section / f"{name}_s{seed}"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"section": section, "name": name, "combo": combo, "val": val,
                                                 "seed": seed, "commit": "abc1234567", "dirty": False,
                                                 "cpu_s": 100.0, "optimizer_steps": 50}))


def test_report_means_stds_pending_cells_and_kept_text(tmp_path):
    r = load()
    out = tmp_path / "runs"
    for seed, (t, s) in enumerate([(40.0, 39.0), (42.0, 41.0), (44.0, 40.0)]):
        _result(out, "table3", "baseline", seed, t, s, [0, 0, 0])
    for seed, (t, s) in enumerate([(60.0, 30.0), (62.0, 31.0)]):
        _result(out, "table3", "+order+debias+flow", seed, t, s, [1, 1, 1])
    report = tmp_path / "results.md"
    report.write_text("# Measured results\n\nhand-written text above\n")
    tasks = r.build_tasks(r.FULL, out)
    r.write_report(out, r.FULL, False, tasks, ["table3/+order+debias+flow_s2"], report, tmp_path / "figs")
    text = report.read_text()
    assert "**Status: PARTIAL**" in text and "failed: table3/+order+debias+flow_s2" in text
    assert "| ✗ | ✗ | ✗ | 42.0 ± 2.0 | 40.0 ± 1.0 | 2.0 ± 1.7 |" in text       # mean ± sample std, 3 seeds
    assert "| ✓ | ✓ | ✓ | 61.0 ± 1.4 (n=2) |" in text                         # fewer seeds than asked: n shown
    assert "| ✓ | ✗ | ✗ | pending |" in text
    assert "+19.0 points (clear" in text                                      # +TIME vs baseline, all top-1
    assert "abc1234567 (5 runs)" in text and "hand-written text above" in text
    assert (tmp_path / "figs" / "reproduce_table3_shuffled.png").is_file()

    r.write_report(out, r.FULL, False, tasks, [], report, tmp_path / "figs")  # rewrites its block only
    again = report.read_text()
    assert again.count(r.GENERATED_BEGIN) == 1 and again.count("hand-written text above") == 1
