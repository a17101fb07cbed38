"""Does +TIME train as well with cheap flow labels as with the reference recipe's exact ones?

Trains ``configs/synth_time.yaml`` on the synthetic benchmark once per (flow-label variant, seed) through
the real engine and prints validation top-1 on all / temporal classes, the shuffled gap, and the epoch
time. A stopped comparison resumes where it left off.

    python benchmarks/flow_train_compare.py --data runs/demo/synth --out runs/flow_compare --seeds 0 1
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from timematters.config import load_config
from timematters.engine.train import train

VARIANTS = {
    "no flow (order+debias)": ["objective.weights={flow: 0}"],
    "reference (relative)": ["flow.threshold=relative"],
    "absolute tau 0.5 px": ["flow.threshold=0.5"],
    "exact on 10% of clips": ["flow.threshold=relative", "flow.fraction=0.1"],
    "DIS ultrafast 1/2 res": ["flow.threshold=0.5", "flow.estimator=dis_ultrafast", "flow.scale=0.5"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a synthetic benchmark directory (timematters synth)")
    p.add_argument("--out", default="runs/flow_compare")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every run (repeatable)")
    args = p.parse_args()
    rows = {}
    for name in args.variants:
        for seed in args.seeds:
            run = Path(args.out) / f"{list(VARIANTS).index(name)}-s{seed}"
            cfg = load_config("synth_time", [f"data.root={args.data}", f"run.out={run}", f"run.seed={seed}",
                                             *VARIANTS[name], *args.overrides])
            train(cfg, resume=True)
            val = json.loads((run / "val_metrics.json").read_text())
            epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            epoch_s = statistics.median(r["epoch_time_s"] for r in epochs if r["type"] == "val")
            rows.setdefault(name, []).append((val["top1"], val["groups"]["temporal"]["top1"],
                                              val["gap_top1"], epoch_s))
    print(f"\nsynth_time, seeds {args.seeds}: validation top-1 (%), mean over seeds (min-max)")
    print("| flow labels | all | temporal | gap (orig - shuffled) | s/epoch |")
    print("|---|---|---|---|---|")
    for name, vals in rows.items():
        cols = list(zip(*vals))
        cells = [f"{statistics.mean(c):.1f} ({min(c):.1f}-{max(c):.1f})" for c in cols[:3]]
        print(f"| {name} | " + " | ".join(cells) + f" | {statistics.mean(cols[3]):.0f} |")


if __name__ == "__main__":
    main()
