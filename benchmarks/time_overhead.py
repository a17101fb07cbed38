"""TIME's training-step overhead over the supervised baseline, same backbone, same process.

The debias term needs a second forward/backward pass on the shuffled clip, so ~2x the baseline is the
natural floor; order and flow heads add little on top. Trials are interleaved so machine load hits every
variant alike. Flow labels are given (their cost is measured by benchmarks/flow_labels.py).

    python benchmarks/time_overhead.py [--model timesformer_tiny --dim 192 --depth 4 --frames 8 --size 112]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from timematters import create_model
from timematters.objectives import build_objective

VARIANTS = {
    "baseline (cls)": ("supervised", {}),
    "+order": ("time", {"debias": 0, "flow": 0}),
    "+order+debias": ("time", {"flow": 0}),
    "+TIME (order+debias+flow)": ("time", {}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="timesformer_tiny")
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    B, T, S, K = args.batch, args.frames, args.size, 10
    g = S // 16
    batch = {"video": torch.randn(B, T, 3, S, S), "label": torch.randint(0, K, (B,)),
             "index": torch.arange(B), "flow": torch.randint(0, 9, (B, T - 1, g, g))}
    runs = {}
    for name, (method, weights) in VARIANTS.items():
        model = create_model(args.model, num_classes=K, num_frames=T, img_size=S, depth=args.depth,
                             embed_dim=args.dim, num_heads=args.heads)
        obj = build_objective(method, model, num_classes=K, weights=weights)
        opt = torch.optim.AdamW(list(model.parameters()) + list(obj.parameters()), lr=1e-4)
        runs[name] = (model, obj, opt)

    def step(model, obj, opt):
        losses, _ = obj(model, batch)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    for model, obj, opt in runs.values():  # warm-up
        step(model, obj, opt)
    times = {name: [] for name in runs}
    for _ in range(args.trials):
        for name, (model, obj, opt) in runs.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(model, obj, opt)
            times[name].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times["baseline (cls)"])
    print(f"{args.model} dim {args.dim} depth {args.depth}, B={B} T={T} {S}px, {torch.get_num_threads()} threads, "
          f"median of {args.trials} trials x {args.steps} steps")
    print(f"{'variant':30s} {'s/step':>8s} {'x baseline':>10s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:30s} {med:8.3f} {med / base:10.2f}")


if __name__ == "__main__":
    main()
