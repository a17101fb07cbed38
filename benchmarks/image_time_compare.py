"""TIME for images, four ways: baseline vs +L_order vs +L_debias vs +both, several seeds, Table-4 style.

    .venv/bin/python benchmarks/image_time_compare.py --out runs/image_compare --seeds 0 1 2

Writes the synthetic background-bias benchmark (``timematters synth-images``) to ``OUT/data`` unless it is
there, trains each arm with ``timematters train`` (configs ``image_synth_{baseline,order,debias,time}``,
the same recipe with different loss weights) for every seed, scores every run with the Backgrounds
Challenge protocol (``timematters eval-backgrounds``) and prints / writes the table as mean +- sample
standard deviation over seeds, with the difference to the baseline's mean in parentheses.
A killed comparison continues where it stopped (finished runs are kept, others resume).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from timematters.evaluation.backgrounds import LABELS, VARIANTS, evaluate_backgrounds
from timematters.config import load_config
from timematters.data.synth_images import SynthImageSpec, write_benchmark
from timematters.engine.checkpoint import load_model
from timematters.engine.train import train

ARMS = [("Baseline", "image_synth_baseline"), ("+L_order", "image_synth_order"),
        ("+L_debias", "image_synth_debias"), ("+L_TIME (both)", "image_synth_time")]
ROWS = [*VARIANTS, "bg_gap"]
ROW_LABELS = {**LABELS, "bg_gap": "BG-Gap"}


def run_arm(config: str, data: Path, run_dir: Path, seed: int, overrides: list[str]) -> dict:
    """Train (or resume) one run and score it on the five variants; cached in ``run_dir/backgrounds.json``."""
    result_file = run_dir / "backgrounds.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    cfg = load_config(config, [f"data.root={data / 'original'}", f"run.out={run_dir}", f"run.seed={seed}",
                               *overrides])
    t0 = time.time()
    train(cfg, resume=True)
    train_s = time.time() - t0
    model, spec = load_model(run_dir)
    result = evaluate_backgrounds(model, data, class_names=spec["class_names"], img_size=spec["img_size"],
                                  mean=tuple(spec["mean"]), std=tuple(spec["std"]))
    result.update(config=config, seed=seed, train_seconds=train_s)
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


def value(result: dict, row: str) -> float:
    return 100.0 * (result["bg_gap"] if row == "bg_gap" else result["accuracy"][row])


def summary_table(results: dict[str, list[dict]]) -> str:
    """Markdown: rows = Table 4's rows, columns = arms; mean +- std over seeds (diff to the baseline mean)."""
    names = list(results)
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in ROWS:
        label = ROW_LABELS[row]
        base = statistics.mean(value(r, row) for r in results[names[0]])
        cells = []
        for name in names:
            vals = [value(r, row) for r in results[name]]
            mean = statistics.mean(vals)
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            diff = "" if name == names[0] else f" ({mean - base:+.1f})"
            cells.append(f"{mean:.1f} ± {std:.1f}{diff}")
        lines.append(f"| {label} {'↓' if row == 'bg_gap' else '↑'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/image_compare")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic benchmark")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a small, shared CPU: no spin-waiting)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every run")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    data = out / "data"
    if not (data / "benchmark.json").is_file():
        print(f"writing the synthetic background-bias benchmark to {data}")
        write_benchmark(data, SynthImageSpec(seed=args.data_seed), overwrite=True)
    results: dict[str, list[dict]] = {}
    for name, config in ARMS:
        for seed in args.seeds:
            run_dir = out / "runs" / f"{config}_seed{seed}"
            print(f"== {name} seed {seed} ({config}) -> {run_dir}", flush=True)
            r = run_arm(config, data, run_dir, seed, args.overrides)
            print("   " + ", ".join(f"{ROW_LABELS[k]} {value(r, k):.1f}" for k in ROWS), flush=True)
            results.setdefault(name, []).append(r)
    table = summary_table(results)
    header = (f"Backgrounds Challenge top-1 (%) on the synthetic benchmark ({data}), mean ± std over seeds "
              f"{args.seeds}; in parentheses: difference to the baseline mean.")
    (out / "table.md").write_text(header + "\n\n" + table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    print("\n" + header + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
