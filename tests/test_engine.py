"""The training engine: sampler, schedule, checkpoints, and real training runs on the synthetic benchmark
(1 process, 2-process torchrun, SIGKILL and resume, corrupt videos)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from timematters.config import load_config
from timematters.engine import checkpoint as ckpt
from timematters.engine.optim import lr_at, param_groups
from timematters.engine.train import GlobalBatchSampler, train

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- units
@pytest.mark.parametrize("world,micro", [(1, 8), (1, 4), (2, 4), (2, 2), (4, 2)])
def test_global_batch_is_independent_of_world_size(world, micro):
    ref = GlobalBatchSampler(50, global_batch=8, micro_batch=8, rank=0, world=1, seed=3)
    ref.set_epoch(2)
    ref_steps = [sorted(b) for b in ref]
    samplers = [GlobalBatchSampler(50, global_batch=8, micro_batch=micro, rank=r, world=world, seed=3)
                for r in range(world)]
    per_rank = []
    for s in samplers:
        s.set_epoch(2)
        per_rank.append(list(s))
    accum = 8 // (micro * world)
    for g, expected in enumerate(ref_steps):
        got = sorted(i for r in range(world) for b in per_rank[r][g * accum:(g + 1) * accum] for i in b)
        assert got == expected
    # resuming at step 3 yields exactly the rest of the epoch
    samplers[0].set_epoch(2, start_step=3)
    assert list(samplers[0]) == per_rank[0][3 * accum:]


def test_sampler_rejects_bad_batch_layout():
    with pytest.raises(ValueError, match="multiple"):
        GlobalBatchSampler(100, global_batch=10, micro_batch=4, rank=0, world=1, seed=0)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(5, global_batch=8, micro_batch=8, rank=0, world=1, seed=0)


def test_lr_schedules():
    kw = dict(total_steps=100, steps_per_epoch=10, base_lr=1.0, min_lr=0.0)
    assert lr_at(0, schedule="cosine", warmup_epochs=1, **kw) == pytest.approx(0.1)
    assert lr_at(9, schedule="cosine", warmup_epochs=1, **kw) == pytest.approx(1.0)
    assert lr_at(100, schedule="cosine", warmup_epochs=1, **kw) == pytest.approx(0.0)
    assert lr_at(55, schedule="cosine", **kw) < lr_at(45, schedule="cosine", **kw)
    assert lr_at(19, schedule="step", milestones=(2, 5), **kw) == pytest.approx(1.0)
    assert lr_at(20, schedule="step", milestones=(2, 5), **kw) == pytest.approx(0.1)
    assert lr_at(50, schedule="step", milestones=(2, 5), **kw) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, schedule="linear", **kw)


def test_no_weight_decay_on_biases_norms_and_embeddings():
    from timematters import create_model
    m = create_model("timesformer_tiny", num_classes=3, num_frames=4, img_size=32, depth=1, embed_dim=64,
                     num_heads=2)
    decay, no_decay = param_groups([("model", m)], 0.05)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, p in m.named_parameters():
        if p.ndim <= 1 or name in m.no_weight_decay():
            assert id(p) in no_decay_ids, name
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    # the official TIME optimiser (the SSv2 recipes): only biases and 1-D parameters are exempt
    decay, no_decay = param_groups([("model", m)], 0.05, "1d")
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, p in m.named_parameters():
        assert (id(p) in no_decay_ids) == (p.ndim <= 1), name
    assert {"pos_embed", "cls_token", "time_embed"} <= {n for n, p in m.named_parameters()
                                                        if id(p) in {id(q) for q in decay["params"]}}
    with pytest.raises(ValueError, match="no_decay"):
        param_groups([("model", m)], 0.05, "none")


def test_checkpoint_pointer_and_pruning(tmp_path):
    lin = torch.nn.Linear(3, 2)
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, model=lin, objective=None, spec={"name": "x"}, step=step,
                             train_state={"global_step": step})
    weights, state = ckpt.latest_checkpoint(tmp_path)
    assert weights.name == "ckpt-0000003.safetensors" and state.is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.safetensors")) == [
        "ckpt-0000002.safetensors", "ckpt-0000003.safetensors"]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    # a later step number never deletes the checkpoint just written (write order decides, not names)
    ckpt.save_checkpoint(tmp_path, model=lin, objective=None, spec={"name": "x"}, step=1, train_state={})
    assert ckpt.latest_checkpoint(tmp_path)[0].is_file()
    assert ckpt.read_spec(tmp_path) == {"name": "x"}
    with pytest.raises(FileNotFoundError, match="latest.json"):
        ckpt.resolve_weights(tmp_path / "checkpoints")


def _two_checkpoints(run_dir):
    lin = torch.nn.Linear(3, 2)
    for step in (2, 4):
        with torch.no_grad():
            lin.weight.fill_(step)
        ckpt.save_checkpoint(run_dir, model=lin, objective=None, spec={"name": "x"}, step=step,
                             train_state={"global_step": step})
    return run_dir / "checkpoints"


@pytest.mark.parametrize("damage", ["truncated weights", "truncated train.pt", "missing weights",
                                    "missing train.pt", "truncated latest.json"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog, damage):
    d = _two_checkpoints(tmp_path)
    newest = {"weights": d / "ckpt-0000004.safetensors", "train.pt": d / "ckpt-0000004.train.pt",
              "latest.json": d / "latest.json"}[damage.split()[1]]
    if damage.startswith("truncated"):
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    else:
        newest.unlink()
    lin = torch.nn.Linear(3, 2)
    state, weights = ckpt.load_latest_training_state(tmp_path, model=lin, objective=None)
    expected = 4 if damage == "truncated latest.json" else 2  # the pointer's target is intact there
    assert state["global_step"] == expected and weights.name == f"ckpt-{expected:07d}.safetensors"
    assert torch.all(lin.weight == expected)
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert newest.name in warned, warned
    assert ("missing" if damage.startswith("missing") else "unreadable") in warned


def test_no_usable_checkpoint_is_a_clear_error(tmp_path):
    d = _two_checkpoints(tmp_path)
    for f in d.glob("*.train.pt"):
        f.write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(ckpt.CheckpointError, match="no usable checkpoint.*ckpt-0000004.train.pt.*ckpt-0000002"):
        ckpt.load_latest_training_state(tmp_path, model=torch.nn.Linear(3, 2), objective=None)
    assert ckpt.load_latest_training_state(tmp_path / "fresh", model=torch.nn.Linear(3, 2), objective=None) is None


def test_written_files_keep_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        d = _two_checkpoints(tmp_path)
    finally:
        os.umask(old)
    for f in d.iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f


def test_resume_refuses_a_changed_config_unless_forced(tmp_path, caplog):
    from timematters.config import save_config
    from timematters.engine.train import check_resume_config
    save_config(load_config("synth_time", [f"run.out={tmp_path}"]), tmp_path / "config.yaml")
    same = load_config("synth_time", [f"run.out={tmp_path}", "run.log_every=1", "run.tensorboard=false"])
    check_resume_config(same, tmp_path, force=False)  # logging keys may change
    changed = load_config("synth_time", [f"run.out={tmp_path}", "optim.epochs=3", "model.extra.foo=1"])
    with pytest.raises(ValueError, match=r"in model.extra \(\{\} -> \{'foo': 1\}\), optim.epochs \(8 -> 3\); pass --force"):
        check_resume_config(changed, tmp_path, force=False)
    check_resume_config(changed, tmp_path, force=True)
    assert "optim.epochs" in caplog.text


# ------------------------------------------------------------------------------------ training runs
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from timematters.data.synth import generate
    out = tmp_path_factory.mktemp("synth")
    generate(out, videos=48, frames=8, size=32, seed=0, bias=0.0)
    return out


def tiny_overrides(data, out, **extra):
    ov = {"data.root": str(data), "run.out": str(out), "data.num_frames": 4, "data.img_size": 32,
          "data.scale": "[32, 36]", "data.num_workers": 0, "model.depth": 2, "model.embed_dim": 64,
          "model.num_heads": 2, "optim.epochs": 2, "optim.batch_size": 8, "optim.lr": 5e-4,
          "run.log_every": 1, "run.tensorboard": "false", "run.deterministic": "true"}
    ov.update(extra)
    return [f"{k}={v}" for k, v in ov.items()]


def train_losses(run_dir: Path) -> dict[int, float]:
    """The last logged loss of every optimiser step (a resumed run re-logs the steps after its checkpoint)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["type"] == "train":
            out[row["step"]] = row["loss"]
    return out


def run_cli(args, env=None, **kw):
    env = {**(env or os.environ), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, "-m", "timematters.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_time_trains_and_validates_with_shuffled_metrics(synth, tmp_path):
    cfg = load_config("synth_time", tiny_overrides(synth, tmp_path / "run"))
    val = train(cfg)
    for key in ("top1", "top5", "shuffled_top1", "gap_top1"):
        assert key in val
    assert (tmp_path / "run" / "config.yaml").is_file()
    losses = train_losses(tmp_path / "run")
    assert len(losses) == 2 * (len(json.loads((synth / "something-something-v2-train.json").read_text())) // 8)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    terms = {k for r in rows if r["type"] == "train" for k in r}
    assert {"cls", "order", "debias", "flow"} <= terms
    from timematters.engine.checkpoint import load_model
    model, spec = load_model(tmp_path / "run")
    assert spec["num_frames"] == 4 and len(spec["class_names"]) == model.num_classes
    # what a run directory records beside config.yaml
    epochs = [r for r in rows if r["type"] == "val"]
    assert len(epochs) == 2 and all(r["clips_per_s"] > 0 and 0 <= r["data_time_s"] <= r["epoch_time_s"] for r in epochs)
    start = json.loads((tmp_path / "run" / "run_info.json").read_text())["starts"][0]
    assert start["packages"]["torch"] == torch.__version__.split("+")[0]
    if (REPO / ".git").exists():  # run from a checkout: its commit (None when installed from a wheel)
        assert len(start["git"]["commit"]) == 40
    assert start["command"] and start["start_step"] == 0
    logged = (tmp_path / "run" / "train.log").read_text()
    assert "training " in logged and "epoch 1: " in logged and "top1" in logged


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(synth, tmp_path):
    common = tiny_overrides(synth, tmp_path / "one", **{"optim.epochs": 1, "objective.method": "time",
                                                       "objective.weights": "{flow: 0}"})
    one = run_cli(["train", "--config", "synth_time", *common, "optim.micro_batch=4"])
    assert one.returncode == 0, one.stderr[-3000:]
    two_ov = [o.replace(str(tmp_path / "one"), str(tmp_path / "two")) for o in common]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", "-m", "timematters.cli", "train",
                          "--config", "synth_time", *two_ov, "optim.micro_batch=4"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) >= 4
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-4, abs=1e-5), step


@pytest.mark.slow
def test_sigkill_and_resume_reproduce_the_loss_curve(synth, tmp_path):
    ov = tiny_overrides(synth, tmp_path / "full", **{"run.ckpt_every_steps": 2, "objective.weights": "{flow: 0}"})
    full = run_cli(["train", "--config", "synth_time", *ov])
    assert full.returncode == 0, full.stderr[-3000:]
    killed_dir = tmp_path / "killed"
    ov_k = [o.replace(str(tmp_path / "full"), str(killed_dir)) for o in ov]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "timematters.cli", "train", "--config", "synth_time", *ov_k],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = killed_dir / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if pointer.is_file() and json.loads(pointer.read_text())["step"] >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = json.loads(pointer.read_text())["step"]
    resumed = run_cli(["train", "--config", "synth_time", "--resume", *ov_k])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = train_losses(tmp_path / "full"), train_losses(killed_dir)
    assert a.keys() == b.keys() and max(a) > step_at_kill
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-6), step


@pytest.mark.slow
def test_resume_past_a_damaged_checkpoint_reproduces_the_loss_curve(synth, tmp_path):
    run = tmp_path / "run"
    ov = tiny_overrides(synth, run, **{"run.ckpt_every_steps": 2, "objective.weights": "{flow: 0}"})
    first = run_cli(["train", "--config", "synth_time", *ov])
    assert first.returncode == 0, first.stderr[-3000:]
    before = train_losses(run)
    newest = json.loads((run / "checkpoints" / "latest.json").read_text())
    weights = run / "checkpoints" / newest["weights"]
    weights.write_bytes(weights.read_bytes()[:1000])  # a disk that filled up, a copy cut short
    resumed = run_cli(["train", "--config", "synth_time", "--resume", *ov])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert weights.name in resumed.stderr and "trying the previous one" in resumed.stderr
    import re
    step = int(re.search(r"resumed from ckpt-\d+\.safetensors at step (\d+)", resumed.stderr).group(1))
    assert 0 < step < newest["step"]
    after = train_losses(run)
    assert after.keys() == before.keys()
    for step in before:  # the steps after the previous checkpoint ran again, identically
        assert after[step] == pytest.approx(before[step], rel=1e-5, abs=1e-6), step


@pytest.mark.slow
def test_wandb_offline_run_records_the_metrics(synth, tmp_path):
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    ov = tiny_overrides(synth, run, **{"optim.epochs": 1, "run.wandb": "timematters-test"})
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PATH": os.environ.get("PATH", "")}
    result = run_cli(["train", "--config", "synth_baseline", *ov], env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = (run / "wandb-run-id.txt").read_text().strip()
    (log_file,) = (run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    data = log_file.read_bytes()
    for key in (b"train/loss", b"val/top1", b"val/shuffled_top1", b"val/clips_per_s", b"optim"):
        assert key in data, key
    # resuming continues the same W&B run
    again = run_cli(["train", "--config", "synth_baseline", "--resume", *ov], env={**os.environ, **env})
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "wandb-run-id.txt").read_text().strip() == run_id
    assert len(list((run / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1


@pytest.mark.slow
def test_training_survives_corrupt_videos(synth, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(synth, data)
    videos = sorted((data / "20bn-something-something-v2").glob("*.webm"))
    train_ids = {str(e["id"]) for e in json.loads((data / "something-something-v2-train.json").read_text())}
    bad = [v for v in videos if v.stem in train_ids][:3]
    bad[0].write_bytes(b"")                                   # zero bytes
    bad[1].write_bytes(bad[1].read_bytes()[:200])             # truncated
    bad[2].unlink()                                           # missing
    cfg = load_config("synth_baseline", tiny_overrides(data, tmp_path / "run", **{"optim.epochs": 1}))
    val = train(cfg)
    assert "top1" in val


@pytest.mark.slow
def test_nonfinite_loss_stops_with_a_clear_message(synth, tmp_path):
    cfg = load_config("synth_baseline", tiny_overrides(synth, tmp_path / "run", **{"optim.lr": 1e30,
                                                                                 "optim.epochs": 3}))
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train(cfg)
