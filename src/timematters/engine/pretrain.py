"""``timematters pretrain --method {rtt,taco,svt,time} --config FILE [key=value ...]``.

Label-free pretraining runs through the same engine as supervised training; only the objective
differs. ``--method time`` is TIME's order and flow tasks without the class loss (objective
``time_pretrain``), so all four methods can be compared on one backbone.
"""
from __future__ import annotations

import argparse

from ..config import load_config
from .train import add_arguments as train_arguments, train

METHODS = {"rtt": "rtt", "taco": "taco", "svt": "svt", "time": "time_pretrain"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=sorted(METHODS), help="pretraining objective")
    train_arguments(p, example="pretrain_svt_synth")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    cfg.objective.method = METHODS[args.method]
    train(cfg, resume=args.resume, force=args.force)
    return 0
