"""Forward+backward throughput and peak memory: our TimeSformer vs Hugging Face ``TimesformerModel``.

Both models hold the same weights (the HF model is saved with ``save_pretrained`` and loaded into ours
through ``load_pretrained``), outputs are checked to match, then trials alternate between the two models
in one process with the same thread count (the machine may be shared: the median over interleaved
trials is reported). Also reports achieved GFLOP/s against the measured fp32 matmul rate.

    python benchmarks/backbone_speed.py --embed-dim 192 --depth 4 --frames 8 --img-size 112 --batch 4

On a shared, oversubscribed CPU use ``--threads 1``: multi-threaded passes then mostly measure how
often the OS deschedules one of the OpenMP threads, and the ratio swings from trial to trial.
Where ours saves time: patch tokens held as (B, N, T, D) (no transposes around the temporal attention),
``scaled_dot_product_attention``, the temporal ``proj`` and ``temporal_fc`` applied as one linear map
(about 8% fewer FLOPs), and no per-frame copies of the CLS beyond the one concatenation.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import timematters
from timematters.models.convert import hf_config_to_kwargs, read_hf_config


def matmul_gflops(device: torch.device, n: int = 1024, seconds: float = 1.0) -> float:
    """Measured fp32 matmul rate (best of a few timed runs)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        sync(device)
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 3:
            a @ b
            reps += 1
        sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, x: torch.Tensor, hf: bool) -> None:
    out = model(pixel_values=x).last_hidden_state if hf else model.forward_features(x).tokens
    out.float().square().mean().backward()
    model.zero_grad(set_to_none=True)


def count_flops(model, x: torch.Tensor, hf: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        train_step(model, x, hf)
    return counter.get_total_flops()


def peak_memory_mb(model, x: torch.Tensor, hf: bool) -> float:
    """Peak bytes allocated during one forward+backward, above what was allocated before it."""
    device = x.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        train_step(model, x, hf)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    # CPU: replay the profiler's allocation / free events
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(model, x, hf)
    current = peak = 0
    for e in sorted(prof.profiler.kineto_results.events(), key=lambda e: e.start_ns()):
        if e.name() == "[memory]":
            current += e.nbytes()
            peak = max(peak, current)
    return peak / 2 ** 20


def time_step(model, x: torch.Tensor, hf: bool) -> float:
    """Seconds for one forward+backward pass."""
    sync(x.device)
    t0 = time.perf_counter()
    train_step(model, x, hf)
    sync(x.device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embed-dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--trials", type=int, default=10, help="timed forward+backward passes per model")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from transformers import TimesformerConfig, TimesformerModel

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    cfg = TimesformerConfig(image_size=args.img_size, patch_size=16, num_frames=args.frames,
                            hidden_size=args.embed_dim, num_hidden_layers=args.depth,
                            num_attention_heads=args.heads, intermediate_size=4 * args.embed_dim)
    hf = TimesformerModel(cfg)
    with torch.no_grad():   # non-zero temporal parts, so the comparison exercises every path
        hf.embeddings.time_embeddings.normal_(0, 0.02)
        for layer in hf.encoder.layer:
            layer.temporal_dense.weight.normal_(0, 0.02)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = timematters.create_model("timesformer_tiny", num_classes=0, pretrained=tmp,
                                        **hf_config_to_kwargs(read_hf_config(tmp)))
    hf, ours = hf.to(device).train(), ours.to(device).train()
    x = torch.randn(args.batch, args.frames, 3, args.img_size, args.img_size, device=device,
                    generator=torch.Generator(device=device).manual_seed(args.seed))

    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
        f = ours.forward_features(x)
    B, T, N, D = f.tokens.shape
    diff = max((f.cls - ref[:, 0]).abs().max().item(),
               (f.tokens - ref[:, 1:].reshape(B, N, T, D).transpose(1, 2)).abs().max().item())

    flops = {"ours": count_flops(ours, x, False), "hf": count_flops(hf, x, True)}
    memory = {"ours": peak_memory_mb(ours, x, False), "hf": peak_memory_mb(hf, x, True)}
    peak_rate = matmul_gflops(device)

    for model, is_hf in ((ours, False), (hf, True)):   # warm-up
        train_step(model, x, is_hf)
    # One pass of each model per trial, the order alternating, so that load changes on a shared
    # machine hit both alike; medians over trials, and the ratio of each adjacent pair.
    seconds: dict[str, list[float]] = {"ours": [], "hf": []}
    for trial in range(args.trials):
        order = ["ours", "hf"] if trial % 2 == 0 else ["hf", "ours"]
        for name in order:
            model, is_hf = (ours, False) if name == "ours" else (hf, True)
            seconds[name].append(time_step(model, x, is_hf))
    rates = {name: [args.batch / t for t in ts] for name, ts in seconds.items()}
    ratios = [h / o for o, h in zip(seconds["ours"], seconds["hf"])]

    print(f"config: dim {args.embed_dim}, depth {args.depth}, heads {args.heads}, {args.frames} frames, "
          f"{args.img_size} px, batch {args.batch}, device {device}, threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}")
    print(f"max |ours - HF| (CLS and tokens, fp32): {diff:.2e}")
    print(f"measured fp32 matmul rate: {peak_rate:.1f} GFLOP/s")
    print(f"{'model':<6} {'clips/s (median)':>17} {'min..max':>14} {'GFLOP/fwd+bwd':>14} "
          f"{'GFLOP/s':>8} {'% of matmul':>11} {'peak MB':>8}")
    for name in ("ours", "hf"):
        med = statistics.median(rates[name])
        gflops = flops[name] / 1e9
        achieved = gflops * med / args.batch
        spread = f"{min(rates[name]):.2f}..{max(rates[name]):.2f}"
        print(f"{name:<6} {med:>17.2f} {spread:>14} {gflops:>14.2f} {achieved:>8.1f} "
              f"{100 * achieved / peak_rate:>10.1f}% {memory[name]:>8.1f}")
    print(f"speed-up ours/HF: {statistics.median(rates['ours']) / statistics.median(rates['hf']):.2f}x "
          f"(ratio of medians); median of paired ratios {statistics.median(ratios):.2f}x "
          f"[{' '.join(f'{r:.2f}' for r in ratios)}]")
    print(f"peak memory ours/HF: {memory['ours'] / max(memory['hf'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
