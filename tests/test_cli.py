"""The command line as a user meets it: user errors are one ``error: ...`` line with exit code 2 (a
traceback only under --debug), --version, overrides anywhere, documented values as written, help text
on every option of every subcommand."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timematters import __version__
from timematters.cli import COMMANDS, build_parser
from timematters.config import load_config, save_config

REPO = Path(__file__).resolve().parents[1]


def cli(*args, cwd=REPO, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "timematters.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_user_error(result, *fragments):
    """Exit code 2 and exactly one stderr line ``error: ...`` naming every fragment; no traceback. (It is the
    last line but for log lines that DataLoader workers may still flush while the process exits.)"""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def test_version():
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"timematters {__version__}"


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A dataset folder whose labels file is not JSON, a file that is not a checkpoint, a run directory."""
    root = tmp_path_factory.mktemp("user_errors")
    data = root / "ssv2"
    data.mkdir()
    (data / "something-something-v2-labels.json").write_text('{"pushing": "0",')  # cut off
    (root / "weights.safetensors").write_bytes(b"not a checkpoint at all")
    run = root / "run"
    run.mkdir()
    save_config(load_config("synth_time", [f"run.out={run}"]), run / "config.yaml")
    return root


@pytest.mark.parametrize("kind", ["config key", "config value", "config file", "missing checkpoint",
                                  "damaged checkpoint", "annotations", "missing data", "not a run", "resume config",
                                  "existing output"])
def test_user_errors_are_one_line_and_exit_2(kind, broken):
    run = broken / "run"
    cases = {
        "config key": (["train", "--config", "synth_time", "optim.learning_rate=1"], ["optim.learning_rate"]),
        "config value": (["train", "--config", "synth_time", "optim.epochs=many"], ["optim.epochs", "many"]),
        "config file": (["pretrain", "--method", "rtt", "--config", "no_such_config"], ["no_such_config"]),
        "missing checkpoint": (["eval", "--checkpoint", broken / "nothing"], [str(broken / "nothing")]),
        "damaged checkpoint": (["linear", "--checkpoint", broken / "weights.safetensors"], ["weights.safetensors"]),
        "annotations": (["train", "--config", "synth_baseline", f"data.root={broken / 'ssv2'}",
                         f"run.out={broken / 'out'}"], ["something-something-v2-labels.json", "invalid JSON"]),
        "missing data": (["train", "--config", "synth_baseline", f"data.root={broken / 'absent'}",
                          f"run.out={broken / 'out'}"], [str(broken / "absent"), "does not exist"]),
        "not a run": (["audit", "--model", run, "--out", broken / "report"], [str(run), "latest.json"]),
        # overrides before and after --resume; the documented value `off` as written
        "resume config": (["train", "--config", "synth_time", f"run.out={run}", "optim.amp=off", "--resume",
                           "optim.lr=0.01", "run.log_every=5"],
                          ["optim.amp ('auto' -> 'off')", "optim.lr (0.001 -> 0.01)", "--force"]),
        "existing output": (["synth-images", "--out", run], [str(run)]),
    }
    argv, fragments = cases[kind]
    line = assert_user_error(cli(*argv), *fragments)
    if kind == "resume config":
        assert "run.log_every" not in line  # logging keys may change on resume


def test_debug_shows_the_traceback():
    result = cli("train", "--config", "synth_time", "optim.learning_rate=1", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_unreadable_videos_in_training_are_one_line(tmp_path):
    """Every video of an SSv2-layout dataset is damaged: the DataLoader worker's error becomes one line."""
    data = tmp_path / "data"
    (data / "20bn-something-something-v2").mkdir(parents=True)
    (data / "something-something-v2-labels.json").write_text(json.dumps({"opening": "0", "closing": "1"}))
    for split, ids in (("train", range(16)), ("validation", range(16, 20))):
        entries = [{"id": str(i), "template": ["opening", "closing"][i % 2], "placeholders": []} for i in ids]
        (data / f"something-something-v2-{split}.json").write_text(json.dumps(entries))
        for i in ids:
            (data / "20bn-something-something-v2" / f"{i}.webm").write_bytes(b"\x1aE\xdf\xa3 truncated")
    result = cli("train", "--config", "synth_baseline", f"data.root={data}", f"run.out={tmp_path / 'run'}",
                 "data.num_frames=4", "data.img_size=32", "data.scale=[32, 36]", "model.depth=1",
                 "model.embed_dim=64", "model.num_heads=2", "optim.batch_size=4", "data.num_workers=1",
                 "run.tensorboard=false")
    assert_user_error(result, "failed")
# --------------------------------------------------------------------------------------------- help
def _subparsers(parser: argparse.ArgumentParser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, path + (name,))


def test_every_option_of_every_subcommand_has_help():
    parser = build_parser()
    seen = set()
    missing = []
    for path, p in _subparsers(parser):
        seen.add(path[:1])
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path) or 'timematters'} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing
    assert {(name,) for name, _, _ in COMMANDS} <= seen


def test_help_runs_for_every_subcommand():
    for name, _, _ in COMMANDS:
        text = build_parser(name)._subparsers._group_actions[0].choices[name].format_help()
        assert "usage:" in text, name


# ----------------------------------------------------------------------------------------- progress
def test_progress_is_plain_lines_when_output_is_not_a_terminal(tmp_path):
    result = cli("synth", "--out", tmp_path / "synth", "--videos", 28, "--frames", 4, "--size", 32,
                 "--workers", 1, env={"TIMEMATTERS_PROGRESS_INTERVAL": "0"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "timematters.progress: synth:" in line]
    assert len(lines) >= 28 and "28/28 video" in lines[-2] and "done, 28/28 video" in lines[-1]
    assert "\r" not in result.stderr


def test_progress_is_a_bar_on_a_terminal():
    import fcntl
    import pty
    import struct
    import termios
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    code = ("import time\nfrom timematters.utils import Progress\n"
            "for _ in Progress(range(20), desc='work', unit='item', interval=0): time.sleep(0.03)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=follower, stdout=follower,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.close(follower)
    out = b""
    while True:  # read while it runs: the terminal's buffer is small
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the program closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    proc.wait(timeout=120)
    assert proc.returncode == 0
    import re
    counts = [int(n) for n in re.findall(rb"work: .*?\| *(\d+)/20", out)]
    assert b"\r" in out and max(counts) > 0 and b"timematters.progress" not in out
