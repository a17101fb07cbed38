"""Small helpers shared by every module: seeded generators, atomic writes, devices, progress."""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch


def seed_sequence(*keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys])


def rng_for(*keys: int) -> np.random.Generator:
    """A numpy generator derived from integer keys, e.g. (seed, epoch, sample_index)."""
    return np.random.default_rng(seed_sequence(*keys))


def torch_rng_for(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed_sequence(*keys).generate_state(1, dtype=np.uint64)[0] >> 1))
    return g


def _umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename over ``path``, fsync the folder.

    The file gets the permissions a plain ``open(path, "w")`` would give (0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ------------------------------------------------------------------------------------------- progress
PROGRESS_INTERVAL_S = float(os.environ.get("TIMEMATTERS_PROGRESS_INTERVAL", "30"))
_progress_log = logging.getLogger("timematters.progress")


class Progress:
    """Progress of a long job: a tqdm bar on a terminal, else a plain log line every ``interval`` seconds
    and one at the end (log files and CI output get no carriage-return noise). Silent on ranks other
    than 0 and with ``enabled=False``.

        for batch in Progress(loader, desc="validation"):
            ...
        bar = Progress(total=n, desc="synth", unit="video"); bar.update(); bar.close()
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, interval: float | None = None, leave: bool = False):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.enabled = enabled and rank == 0
        self.interval = PROGRESS_INTERVAL_S if interval is None else interval
        self.n, self.t0, self.postfix, self.closed = 0, time.monotonic(), "", False
        self.last = self.t0
        self.bar = None
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            _progress_log.info("%s", self._line())

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def _line(self, done: bool = False) -> str:
        elapsed = time.monotonic() - self.t0
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total and not done else ""
        rate = f", {self.n / elapsed:.2f} {self.unit}/s" if elapsed > 0 else ""
        text = f"{self.desc}: {'done, ' if done else ''}{count} {self.unit}{pct} in {elapsed:.0f} s{rate}"
        return text + (f" ({self.postfix})" if self.postfix else "")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.n and time.monotonic() - self.t0 >= self.interval:
            _progress_log.info("%s", self._line(done=True))  # short jobs: no line at all


def sized(iterable: Iterable) -> int | None:
    """``len(iterable)`` where it has one (a DataLoader, a list), else None (a generator)."""
    return len(iterable) if hasattr(iterable, "__len__") else None


def configure_logging(level: int = logging.INFO) -> None:
    """Timestamped lines on stderr: INFO and up from timematters, warnings from everything else."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("timematters").setLevel(level)
    logging.captureWarnings(True)


# ----------------------------------------------------------------------------------------- provenance
PACKAGES = ("torch", "torchvision", "numpy", "av", "torchcodec", "opencv-python-headless", "timm", "transformers",
            "safetensors", "tensorboard", "wandb")


def environment_info() -> dict:
    """What produced a result: time, host, Python, package versions, CUDA, and the git commit of the
    timematters source when it runs from a checkout (``dirty``: tracked files differ from the commit)."""
    import platform
    import subprocess
    from datetime import datetime, timezone
    from importlib import metadata

    from . import __version__

    packages = {"timematters": __version__}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    git = None
    src = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            status = subprocess.run(["git", "-C", src, "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=30)
            git = {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    cuda = torch.cuda.is_available()
    return {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
            "python": platform.python_version(), "packages": packages, "git": git,
            "cuda": torch.version.cuda if cuda else None,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []}
