"""The ``timematters`` command. Thin: each subcommand lives in the module that does the work, which
offers ``add_arguments(parser)`` and ``main(args) -> int``. The table below is every call site."""
from __future__ import annotations

import argparse
import importlib
import sys

# (subcommand, module, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("synth", "timematters.data.synth", "write the synthetic temporal benchmark (SSv2 layout)"),
    ("data", "timematters.data.check", "data tools: `data check DIR` decodes every video and reports failures"),
    ("train", "timematters.engine.train", "train a model (1 process or torchrun) from a config"),
    ("pretrain", "timematters.engine.pretrain", "label-free pretraining: --method {rtt,taco,svt,time}"),
    ("demo", "timematters.engine.demo", "the main job: synth benchmark, baseline vs +TIME, Table-3 style summary"),
    ("eval", "timematters.analysis.evaluate", "top-1/top-5 on original, shuffled and reversed clips"),
    ("audit", "timematters.analysis.audit", "temporal-bias audit: eval + order probe + confidence gap + GradCAM"),
    ("linear", "timematters.analysis.protocols", "linear probe on frozen features"),
    ("finetune", "timematters.analysis.protocols", "full fine-tuning of a pretrained backbone"),
    ("knn", "timematters.analysis.protocols", "weighted kNN classification on frozen features"),
    ("retrieval", "timematters.analysis.protocols", "video retrieval top-k hit rate"),
    ("synth-images", "timematters.data.synth_images", "write the synthetic background-bias image benchmark"),
    ("eval-backgrounds", "timematters.analysis.backgrounds", "Backgrounds Challenge protocol (Table 4)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timematters", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name, help_text in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("timematters"):
                continue  # the module for this command is not part of this build
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        add = getattr(module, f"add_{name.replace('-', '_')}_arguments", None) or module.add_arguments
        main = getattr(module, f"main_{name.replace('-', '_')}", None) or module.main
        add(p)
        p.set_defaults(func=main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
