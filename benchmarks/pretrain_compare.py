"""Self-supervised pretraining compared with random initialisation, on the pretraining benchmark.

    timematters synth --preset pretrain --out runs/pretext/events          # 2400 videos, 64 frames, 32 px
    nohup python benchmarks/pretrain_compare.py --data runs/pretext/events > runs/pretrain_compare.log 2>&1 &

Methods: random init, RTT, TaCo, SVT, TIME-pretext (order on shuffled clips + flow), each pretrained with
``timematters pretrain`` (the shipped ``pretrain_*_synth`` configs, the same tiny TimeSformer: depth 2,
width 64, patch 8, 32 px, 8-frame clips) for ``--epochs`` epochs, for every seed in ``--seeds``.
Protocols, every one through the project's evaluation layer (``evaluation/protocols.py``):

    frozen     linear probe (SGD, 100 epochs), kNN (k 20, T 0.07), retrieval (R@k, train-set queries),
               nuisance probes (kNN / linear on the benchmark's shape, side and background factors)
               and the pretraining run's pretext report (accuracies vs chance, ``pretrained`` flag)
    sync          RTT's synchronisation probe (offsets -6..6), on the first ``--probe-limit`` videos per split
    before-after  RTT's before/after probe, likewise
    arrow         the arrow-of-time probe: every clip forwards and backwards, linear probes of the direction
                  and of class x direction (``linear --task arrow``); random init is order-blind, so it
                  scores chance on the direction by construction
    finetune   fine-tuning through the training engine

Resumable: every finished (method, seed, protocol) result is written to ``--out`` (JSON, atomically)
and skipped on a rerun; an interrupted pretraining or fine-tuning resumes from its run directory.
The work runs phase by phase (frozen protocols for every seed first, then sync/order, then
fine-tuning), so the cheap, central numbers come first. ``--table`` prints the table of what is done.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

METHODS = {  # name -> (pretrain --method, config); random init has no pretraining
    "random": None,
    "rtt": ("rtt", "pretrain_rtt_synth"),
    "taco": ("taco", "pretrain_taco_synth"),
    "svt": ("svt", "pretrain_svt_synth"),
    "time": ("time", "pretrain_time_synth"),
}
NUISANCE = ("shape", "side", "background")


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_result(path: Path, key: str, value: dict) -> None:
    """Add one finished result and write the file atomically."""
    results = load_results(path)
    results[key] = value
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=float))
    os.replace(tmp, path)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ pretraining
def pretrain(method: str, seed: int, a: argparse.Namespace) -> Path:
    """Run (or resume) ``timematters pretrain`` in a subprocess; returns the run directory."""
    cli_method, config = METHODS[method]
    run = Path(a.runs) / f"{method}_s{seed}"
    cmd = [sys.executable, "-m", "timematters.cli", "pretrain", "--method", cli_method, "--config", config,
           "--resume", f"data.root={a.data}", f"run.out={run}", f"run.seed={seed}", f"optim.epochs={a.epochs}",
           f"optim.warmup_epochs={a.warmup}", "run.log_every=5", "run.tensorboard=false", *a.set]
    log(f"pretrain {method} seed {seed}: {' '.join(cmd[3:])}")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    log(f"pretrain {method} seed {seed}: done in {time.time() - t0:.0f} s")
    return run


# ------------------------------------------------------------------------------------------ protocols
def parse(command: str, checkpoint: Path, seed: int, random_init: bool, a: argparse.Namespace, *extra: str):
    from timematters.cli import build_parser
    argv = [command, "--checkpoint", str(checkpoint), "--data", a.data, "--num-workers", "1", "--device", "cpu",
            "--seed", str(seed), "--batch-size", "64", *extra] + (["--random-init"] if random_init else [])
    return build_parser(command).parse_args(argv)


def frozen(checkpoint: Path, seed: int, random_init: bool, a: argparse.Namespace) -> dict:
    """Linear, kNN, retrieval and nuisance probes on one extraction of frozen features."""
    import torch
    from timematters.data.annotations import read_annotations
    from timematters.data.synth_pretrain import nuisance_labels
    from timematters.evaluation import protocols as P
    args = parse("knn", checkpoint, seed, random_init, a)
    device = torch.device("cpu")
    model, spec = P._load(args, device)
    t0 = time.time()
    tr_x, tr_y, te_x, te_y, names = P.frozen_features(args, model, spec, device, views=1)
    out = {"evaluated": args.evaluated, "videos_train": len(tr_y), "videos_test": len(te_y),
           "extract_s": round(time.time() - t0, 1),
           "linear": P.linear_probe(tr_x, tr_y, te_x, te_y, num_classes=len(names), seed=seed),
           "knn": P.knn_classify(tr_x, tr_y, te_x, te_y, num_classes=len(names), k=20, temperature=0.07),
           "retrieval": P.retrieval_hit_rates(tr_x, tr_y, te_x, te_y)}
    # nuisance factors, in the order the features come (the splits' records; one view per video)
    ids = {s: [r.video_id for r in read_annotations(a.data, "ssv2", s)[0]] for s in ("train", "validation")}
    out["nuisance"] = {}
    for target in NUISANCE:
        lab = nuisance_labels(a.data, target)
        ytr = torch.tensor([lab[v] for v in ids["train"]])
        yte = torch.tensor([lab[v] for v in ids["validation"]])
        k = int(max(ytr.max(), yte.max())) + 1
        out["nuisance"][target] = {
            "knn": P.knn_classify(tr_x, ytr, te_x, yte, num_classes=k)["top1"],
            "linear": P.linear_probe(tr_x, ytr, te_x, yte, num_classes=k, seed=seed)["top1"],
            "majority": 100.0 * float((yte == torch.bincount(ytr).argmax()).float().mean())}
    if not random_init:
        out["pretext"] = P.pretext_report(checkpoint)
    return out


def time_probe(task: str, checkpoint: Path, seed: int, random_init: bool, a: argparse.Namespace) -> dict:
    from timematters.evaluation import protocols as P
    tmp = Path(a.runs) / "tmp" / f"{task}_{checkpoint.name}_{seed}_{int(random_init)}.json"
    limit = ["--limit", str(a.probe_limit)] if a.probe_limit and task != "arrow" else []
    args = parse("linear", checkpoint, seed, random_init, a, "--task", task, "--out", str(tmp), *limit)
    P.main_linear(args)
    record = json.loads(tmp.read_text())
    return {k: v for k, v in record.items() if isinstance(v, (int, float))}


def finetune(checkpoint: Path, seed: int, random_init: bool, method: str, a: argparse.Namespace) -> dict:
    from timematters.evaluation import protocols as P
    run = Path(a.runs) / f"finetune_{method}_s{seed}"
    args = parse("finetune", checkpoint, seed, random_init, a, "--epochs", str(a.finetune_epochs), "--lr", "1e-3",
                 "--batch-size", "32", "--run-dir", str(run), "--out", str(run) + ".json")
    P.main_finetune(args)
    record = json.loads(Path(str(run) + ".json").read_text())
    return {k: v for k, v in record.items() if isinstance(v, (int, float))}


# ------------------------------------------------------------------------------------------ table
def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f} ({len(v)})"


def table(results: dict, seeds: list[int], methods: list[str] | None = None) -> str:
    methods = methods or list(METHODS)
    def get(method, protocol, path):
        vals = []
        for s in seeds:
            r = results.get(f"{method}/s{s}/{protocol}")
            for p in path:
                r = r.get(p) if isinstance(r, dict) else None
            if isinstance(r, (int, float)):
                vals.append(float(r))
        return vals

    cols = [("linear top-1", "frozen", ("linear", "top1")), ("kNN top-1", "frozen", ("knn", "top1")),
            ("retrieval R@1", "frozen", ("retrieval", "top1")), ("fine-tune top-1", "finetune", ("top1",)),
            ("sync acc", "sync", ("accuracy",)), ("before/after acc", "before-after", ("accuracy",)),
            ("arrow: direction acc", "arrow", ("accuracy",)),
            ("arrow: class x direction top-1", "arrow", ("class_direction_top1",)),
            ("shape kNN (nuisance)", "frozen", ("nuisance", "shape", "knn")),
            ("background kNN (nuisance)", "frozen", ("nuisance", "background", "knn"))]
    lines = ["| init | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(_ms(get(m, p, path)) for _, p, path in cols) + " |")
    lines += ["", "Mean ± std over pretraining seeds (number of seeds in brackets); percent.", "",
              "Pretext accuracies at the end of pretraining (mean over seeds; chance in brackets):", ""]
    for m in methods:
        if m == "random":
            continue
        acc: dict[str, list] = {}
        flags = []
        for s in seeds:
            rep = (results.get(f"{m}/s{s}/frozen") or {}).get("pretext") or {}
            flags.append(rep.get("pretrained"))
            for k, v in (rep.get("metrics") or {}).items():
                acc.setdefault(k, []).append(v)
        parts = []
        for k in sorted(acc):
            if k.startswith("acc/") and "transform_" not in k:
                t = k[4:]
                ch = acc.get(f"chance/{t}")
                parts.append(f"{t} {np.mean(acc[k]):.3f}" + (f" ({np.mean(ch):.3f})" if ch else ""))
            elif k in ("svt/teacher_entropy", "svt/kl", "svt/teacher_batch_entropy"):
                parts.append(f"{k[4:]} {np.mean(acc[k]):.3f}")
        if parts:
            lines.append(f"- {m}: " + ", ".join(parts) + f"; pretrained flags {flags}")
    lines += ["", "Difference to random init (mean) against 2 x the larger seed std:", ""]
    for proto, path, label in (("frozen", ("linear", "top1"), "linear"), ("frozen", ("knn", "top1"), "kNN"),
                               ("arrow", ("accuracy",), "arrow of time: direction (linear)"),
                               ("arrow", ("class_direction_top1",), "class x direction (linear)")):
        base = get("random", proto, path)
        for m in methods:
            if m == "random":
                continue
            vals = get(m, proto, path)
            if len(vals) >= 2 and len(base) >= 2:
                d = np.mean(vals) - np.mean(base)
                bar = 2 * max(np.std(vals, ddof=1), np.std(base, ddof=1))
                lines.append(f"- {label} {m}: {d:+.1f} vs 2 std {bar:.1f} -> "
                             f"{'beats random init' if d > bar else 'not clearly better'}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="runs/pretext/events")
    p.add_argument("--runs", default="runs/pretrain_compare", help="pretraining and fine-tuning run directories")
    p.add_argument("--out", default="benchmarks/results/pretrain_compare.json")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--protocols", nargs="+", default=["frozen", "arrow", "sync", "before-after", "finetune"])
    p.add_argument("--epochs", type=int, default=2, help="pretraining epochs of every method")
    p.add_argument("--warmup", type=float, default=0.25, help="pretraining warm-up epochs")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--probe-limit", type=int, default=600,
                   help="sync / before-after: the first N videos of each split (0: all; default 600)")
    p.add_argument("--set", nargs="*", default=[], help="extra config overrides for every pretraining")
    p.add_argument("--table", action="store_true", help="print the table of the finished results and exit")
    a = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")   # no progress bars in the log (also in the subprocesses)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if a.table:
        print(table(load_results(out), a.seeds, a.methods))
        return 0
    a.data = str(Path(a.data))

    def checkpoint(method: str, seed: int) -> tuple[Path, bool]:
        """(run directory, random init?); random init borrows the architecture of the first method's run."""
        if method == "random":
            donor = next(m for m in a.methods if m != "random") if len(a.methods) > 1 else "rtt"
            return pretrain(donor, a.seeds[0], a), True
        return pretrain(method, seed, a), False

    for protocol in a.protocols:
        for seed in a.seeds:
            for method in a.methods:
                key = f"{method}/s{seed}/{protocol}"
                if key in load_results(out):
                    continue
                ck, random_init = checkpoint(method, seed)
                log(f"{key} ...")
                t0 = time.time()
                if protocol == "frozen":
                    res = frozen(ck, seed, random_init, a)
                elif protocol in ("sync", "before-after", "arrow"):
                    res = time_probe(protocol, ck, seed, random_init, a)
                elif protocol == "finetune":
                    res = finetune(ck, seed, random_init, method, a)
                else:
                    raise ValueError(f"unknown protocol {protocol!r}")
                res["seconds"] = round(time.time() - t0, 1)
                save_result(out, key, res)
                log(f"{key}: {json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)})}")
                out.with_suffix(".md").write_text(table(load_results(out), a.seeds, a.methods) + "\n")
    text = table(load_results(out), a.seeds, a.methods)
    out.with_suffix(".md").write_text(text + "\n")   # also when every result was already there
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
