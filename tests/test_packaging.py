"""The wheel, installed into a fresh virtual environment, works from outside the checkout.

The wheel is built from this checkout and installed with ``--no-deps``; the dependencies (torch & co.)
are the ones already installed for the tests, made visible through a ``.pth`` line that adds their
site-packages directory to ``sys.path``. A plain path line does not run the ``.pth`` files inside that
directory, so the editable install of the checkout (``__editable__.timematters-*.pth``) stays invisible:
the test checks that ``timematters`` is imported from the new environment.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert result.returncode == 0, f"{cmd}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    source = tmp / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp / "dist"),
         str(source)], cwd=tmp)
    wheel = next((tmp / "dist").glob("timematters-*.whl"))
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    purelib = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip())
    # the already-installed dependencies, as a plain sys.path entry (their .pth files are not run)
    (purelib / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
        cwd=tmp)
    outside = tmp / "elsewhere"
    outside.mkdir()
    return wheel, env_dir, outside


def test_wheel_ships_the_configs(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(Path(n).name for n in names if n.startswith("timematters/configs/") and n.endswith(".yaml"))
    assert shipped == sorted(p.name for p in (REPO / "src" / "timematters" / "configs").glob("*.yaml"))


def test_installed_package_resolves_configs_by_name_outside_the_checkout(installed):
    _, env_dir, outside = installed
    code = ("import timematters, timematters.config as c; "
            "print(timematters.__file__); print(c.resolve_config_path('ssv2_timesformer_time')); "
            "print(c.load_config('synth_baseline').model.name)")
    out = run([str(env_dir / "bin" / "python"), "-c", code], cwd=outside).stdout.split()
    assert out[0].startswith(str(env_dir)) and out[1].startswith(str(env_dir)), out
    assert out[2] == "timesformer_tiny"
    exe = str(env_dir / "bin" / "timematters")
    assert "--config" in run([exe, "train", "--config", "synth_baseline", "--help"], cwd=outside).stdout
    listing = run([exe, "--help"], cwd=outside).stdout
    assert "export-hf" in listing and "predict" in listing


def test_installed_package_trains_a_shipped_config_by_name(installed):
    _, env_dir, outside = installed
    exe = str(env_dir / "bin" / "timematters")
    run([exe, "synth", "--out", "synth", "--videos", "28", "--frames", "8", "--size", "32"], cwd=outside)
    overrides = ["data.root=synth", "run.out=runs/tiny", "data.num_frames=4", "data.img_size=32", "data.scale=[32, 36]",
                 "data.num_workers=0", "model.depth=1", "model.embed_dim=32", "model.num_heads=2", "optim.epochs=1",
                 "optim.batch_size=8", "run.tensorboard=false"]
    run([exe, "train", "--config", "synth_baseline", *overrides], cwd=outside)
    assert (outside / "runs" / "tiny" / "checkpoints" / "latest.json").is_file()
    assert (outside / "runs" / "tiny" / "val_metrics.json").is_file()
