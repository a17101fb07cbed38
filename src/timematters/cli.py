"""timematters: temporal self-supervision for video transformers, and the temporal-bias audit.

Thin: each subcommand lives in the module that does the work, which
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
    ("eval", "timematters.evaluation.evaluate", "top-1/top-5 on original, shuffled and reversed clips"),
    ("audit", "timematters.audit.audit", "temporal-bias audit: eval + order probe + confidence gap + GradCAM"),
    ("linear", "timematters.evaluation.protocols", "linear probe on frozen features"),
    ("finetune", "timematters.evaluation.protocols", "full fine-tuning of a pretrained backbone"),
    ("knn", "timematters.evaluation.protocols", "weighted kNN classification on frozen features"),
    ("retrieval", "timematters.evaluation.protocols", "video retrieval top-k hit rate"),
    ("synth-images", "timematters.data.synth_images", "write the synthetic background-bias image benchmark"),
    ("eval-backgrounds", "timematters.evaluation.backgrounds", "Backgrounds Challenge protocol (Table 4)"),
    ("export-hf", "timematters.models.export", "export a run: TimeSformer -> transformers folder, others -> from_pretrained folder"),
    ("predict", "timematters.evaluation.predict", "top classes for video files, and for their shuffled and reversed frames"),
]


def _attach(sub, name: str, module_name: str, help_text: str) -> None:
    module = importlib.import_module(module_name)
    p = sub.add_parser(name, help=help_text, description=help_text)
    key = name.replace("-", "_")
    add = getattr(module, f"add_{key}_arguments", None) or module.add_arguments
    add(p)
    p.set_defaults(func=getattr(module, f"main_{key}", None) or module.main)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` only that subcommand's module is imported (imports are slow)."""
    parser = argparse.ArgumentParser(prog="timematters", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        if command is None or name == command:
            _attach(sub, name, module_name, help_text)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    known = {name for name, _, _ in COMMANDS}
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in known else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as e:  # a data error is one readable line naming the file, not a traceback
        from timematters.data import AnnotationError, TooManyFailures
        if not isinstance(e, (AnnotationError, TooManyFailures)):
            raise
        print(f"timematters {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
