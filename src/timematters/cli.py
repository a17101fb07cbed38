"""timematters: temporal self-supervision for video transformers, and the temporal-bias audit.

Thin: each subcommand lives in the module that does the work, which
offers ``add_arguments(parser)`` and ``main(args) -> int``. The table below is every call site.

A user error (a bad config key, a missing file, a malformed annotation, an unusable checkpoint, a
decoder that is not installed) ends the command with one ``error: ...`` line on stderr and exit code 2;
``--debug`` shows the traceback instead. Any other exception is a bug and keeps its traceback."""
from __future__ import annotations

import argparse
import importlib
import re
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
    from . import __version__

    parser = argparse.ArgumentParser(prog="timematters", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"timematters {__version__}",
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (accepted anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        if command is None or name == command:
            _attach(sub, name, module_name, help_text)
        else:
            sub.add_parser(name, help=help_text)
    return parser


# exception classes (module, name) that report a user's mistake; checked only if the module was imported
USER_ERRORS = [("timematters.data.decode", "DecodeError"), ("timematters.data.dataset", "TooManyFailures"),
               ("timematters.data.images", "ImageDataError"), ("torch", "OutOfMemoryError")]


def is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, ModuleNotFoundError):  # an optional dependency (wandb, torchcodec, ...) is missing
        return not (exc.name or "").startswith("timematters")
    if isinstance(exc, (ValueError, OSError, FloatingPointError)):  # ConfigError, AnnotationError, files
        return True
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def error_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (a DataLoader worker's re-raise: its original message)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if any(line.startswith("Original Traceback") for line in lines):
        lines = [re.sub(r"^[\w.]+(Error|Exception|Failures): ", "", lines[-1])]
    return " ".join(lines) or type(exc).__name__


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides may stand anywhere after the subcommand (also after --resume)."""
    known = {name for name, _, _ in COMMANDS}
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in known else None)
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = list(args.overrides or []) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    args = parse_args([a for a in argv if a != "--debug"])
    from .utils import configure_logging

    configure_logging()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        if debug or not is_user_error(exc):
            raise
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
