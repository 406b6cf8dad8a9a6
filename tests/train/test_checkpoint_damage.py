"""A damaged newest checkpoint does not block the run: resume falls back to the newest complete one (warning
naming the skipped one) and finishes exactly as the uninterrupted run; every file is fsync'ed before the
checkpoint is renamed into place; a process killed with SIGKILL while writing a checkpoint resumes exactly."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuneforge.train import checkpoint as ckpt
from tuneforge.train import run_training
from tuneforge.train.tasks.sft import SFTTask

from .common import PAD, make_cfg, make_examples, make_model

TRAIN = make_examples(16, seed=5)
CFG = dict(max_steps=6, save_every=2, keep_last=5, lr_schedule="constant", warmup_steps=1)  # stop at 4: same lr
ROOT = Path(__file__).resolve().parents[2]


def train(out, **overrides):
    return run_training(make_model(), SFTTask(PAD), TRAIN, [], make_cfg(**{**CFG, **overrides}), out, progress=False)


def step_losses(result) -> dict:
    return {r["step"]: r["loss"] for r in result.history if "loss" in r}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run, on one thread like every test here (conftest's one_thread is per test, and the
    summation order of a reduction depends on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return step_losses(train(tmp_path_factory.mktemp("straight")))
    finally:
        torch.set_num_threads(before)


def stop_after_4(out):
    train(out, max_steps=4)  # checkpoints step-2 and step-4; step-4 is then damaged


@pytest.mark.parametrize("damage", ["truncated weights", "garbled state", "missing optimizer"])
def test_damaged_latest_checkpoint_falls_back_to_the_newest_complete_one(tmp_path, capsys, straight, damage):
    stop_after_4(tmp_path)
    step4 = tmp_path / "checkpoints" / "step-4"
    if damage == "truncated weights":
        data = (step4 / "trainable.safetensors").read_bytes()
        (step4 / "trainable.safetensors").write_bytes(data[: len(data) // 2])
        reason = "trainable.safetensors has"
    elif damage == "garbled state":
        (step4 / "state.json").write_text('{"global_st')
        reason = "state.json is unreadable"
    else:
        (step4 / "optimizer.pt").unlink()
        reason = "optimizer.pt is missing"
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints") == tmp_path / "checkpoints" / "step-2"
    assert f"warning: skipping checkpoint {step4}: {reason}" in capsys.readouterr().err
    resumed = train(tmp_path)
    assert step_losses(resumed) == straight  # steps 3-6 recomputed from step-2: bit-identical


def test_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    train(tmp_path, max_steps=2, save_every=None)
    rename = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2].endswith("step-2"))
    tmp = events[rename][1]
    synced = {e[1] for e in events[:rename] if e[0] == "fsync"}
    final = tmp_path / "checkpoints" / "step-2"
    assert {str(Path(tmp) / p.name) for p in final.iterdir()} | {tmp} <= synced
    assert ("fsync", str(tmp_path / "checkpoints")) in events[rename:]  # the rename itself made durable


CHILD = """
import os, signal, sys
import torch
from tuneforge.train import checkpoint as ckpt
from tests.train.test_checkpoint_damage import train

torch.set_num_threads(1)
out, point = sys.argv[1], sys.argv[2]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "optimizer.pt":  # half a file written, then killed
    real = torch.save
    def save(obj, f, *a, **k):
        if str(f).endswith("optimizer.pt") and ".tmp-step-4" in str(f):
            with open(f, "wb") as h:
                h.write(b"PK partial")
            die()
        return real(obj, f, *a, **k)
    torch.save = save
elif point == "rename":  # every file written, killed before the rename
    ckpt._replace_dir = lambda tmp, final: die() if final.name == "step-4" else os.replace(tmp, final)
else:  # renamed, killed before old checkpoints are pruned
    ckpt.prune = lambda root, keep: die() if (root / "step-4").is_dir() else None
train(out)
"""


@pytest.mark.parametrize("point,resumes_from", [("optimizer.pt", 2), ("rename", 2), ("prune", 4)])
def test_kill_9_during_a_checkpoint_write_then_resume_is_exact(tmp_path, straight, point, resumes_from):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]), OMP_NUM_THREADS="1")
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), point], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == f"step-{resumes_from}"
    resumed = train(tmp_path)
    assert resumed.steps == 6
    assert step_losses(resumed) == straight
