"""Training checkpoints that resume exactly.

Layout of `output_dir/checkpoints/step-N/`:

    trainable.safetensors   every parameter with requires_grad (name -> tensor): adapters or the full model
    optimizer.pt            optimizer.state_dict()
    scheduler.pt            scheduler.state_dict()
    rng.pt                  python, numpy, torch CPU (and CUDA) generator states
    rng-rank{R}.pt          the same for process R > 0 of a multi-process run
    sharded/                instead of trainable.safetensors + optimizer.pt when a multi-process run shards the
                            model (FSDP): both written by every process with torch.distributed.checkpoint, and
                            loadable by any number of processes (see distributed.py)
    state.json              global step, data position (epoch, index in epoch), counters, metrics history

Why each piece: resuming must reproduce the uninterrupted run bit for bit, so everything that feeds the next
step is stored: weights, Adam moments, the lr step, the dropout generators and where in the data we were.
Only trainable parameters are written (frozen base weights are reloaded from the base model).

    config.yaml             the run config it was trained under (a copy of output_dir/config.yaml, when there is
                            one), which a resume compares with its own (train/resume_check.py)
    manifest.json           written last: every other file's size, so a damaged checkpoint is recognised

A checkpoint is written into a hidden temporary directory beside the final one, every file fsync'ed, and renamed
into place (then the parent directory fsync'ed), so neither a crash mid-write nor a power cut after the rename
leaves a half checkpoint that a resume would pick up. A resume takes the newest *complete* checkpoint: one whose
manifest, state.json or weights file is missing, truncated or unreadable is skipped with a warning naming it.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import TuneforgeError
from ..io.tempdirs import apply_umask
from ..io.tempdirs import temp_dir as user_temp_dir
from ..models.state_copy import copy_checked

FORMAT = 1
SHARDED = "sharded"
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    """All generators that dropout, sampling or user code may draw from, as torch.load(weights_only)-safe data."""
    version, keys, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, torch.tensor(keys, dtype=torch.int64), gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(int(k) for k in keys.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> CPU copy of every parameter that trains (copies, so tied or viewed tensors save cleanly)."""
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under root, oldest first (temporary directories are never listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike, warn: bool = True) -> Path | None:
    """The newest complete checkpoint; newer damaged ones are skipped (with a warning on stderr naming each)."""
    for path in reversed(list_checkpoints(root)):
        problem = damage(path)
        if problem is None:
            return path
        if warn:
            print(f"warning: skipping checkpoint {path}: {problem}; falling back to an older one", file=sys.stderr)
    return None


def damage(path: Path) -> str | None:
    """Why checkpoint `path` cannot be resumed from (a missing, truncated or unreadable file), or None."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as err:
        return f"state.json is unreadable ({err})"
    if not isinstance(state, dict) or "global_step" not in state:
        return "state.json holds no training state"
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            sizes = json.loads(manifest.read_text())["sizes"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"{MANIFEST} is unreadable ({err})"
        for name, size in sizes.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != size:
                return f"{name} has {file.stat().st_size} bytes, {size} were written"
    elif not (path / "scheduler.pt").is_file():  # a checkpoint from before manifests: its files must be there
        return "scheduler.pt is missing"
    weights = path / "trainable.safetensors"
    if weights.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except Exception as err:  # noqa: BLE001 - any parse failure means "not usable"
            return f"trainable.safetensors is unreadable ({err})"
    elif not (path / SHARDED).is_dir():
        return "it holds no weights (trainable.safetensors or sharded/)"
    return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(tmp: Path) -> None:
    """fsync every file, then write the manifest of their sizes (fsync'ed too) and fsync the directory."""
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    for file in files:
        _fsync(file)
    sizes = {str(p.relative_to(tmp)): p.stat().st_size for p in files}
    (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "sizes": sizes}, indent=1))
    _fsync(tmp / MANIFEST)
    for directory in {p.parent for p in files} | {tmp}:
        _fsync(directory)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename tmp onto final; an existing final (same step saved twice) is moved aside first, then removed."""
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
        os.replace(final, old / final.name)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def temp_dir(root: str | os.PathLike, step: int) -> Path:
    """A fresh hidden directory beside the final step-N, renamed onto it once complete."""
    return user_temp_dir(root, prefix=f".tmp-step-{step}-")  # not mkdtemp's 0700


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: dict,
    rng: dict | None = None,
    keep_last: int | None = 2,
    *,
    rank_rngs: list[dict] = (),
    prepared: Path | None = None,
    whole: tuple[dict, dict] | None = None,
) -> Path:
    """Write step-N atomically, then delete all but the newest keep_last checkpoints (keep_last < 1 keeps all).
    `rng` overrides the current generator states (the loop passes the states of the last finished step);
    `rank_rngs` are those of processes 1.. of a multi-process run; `prepared` is a `temp_dir` that already holds
    the sharded weights and optimizer state; `whole` is (trainable tensors, optimizer state dict) gathered from a
    model sharded over several processes, written instead of the model's and optimizer's own (the same files)."""
    root = Path(root)
    final = root / f"step-{step}"
    tmp = prepared or temp_dir(root, step)
    try:
        if prepared is None:
            weights, optim = whole or (trainable_state(model), optimizer.state_dict())
            save_file(weights, str(tmp / "trainable.safetensors"), metadata={"format": str(FORMAT)})
            torch.save(optim, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng if rng is not None else rng_state(), tmp / "rng.pt")
        for rank, rank_rng in enumerate(rank_rngs, start=1):
            torch.save(rank_rng, tmp / f"rng-rank{rank}.pt")
        (tmp / "state.json").write_text(json.dumps({"format": FORMAT, **state}, indent=1))
        if (root.parent / CONFIG).is_file():
            shutil.copyfile(root.parent / CONFIG, tmp / CONFIG)
        apply_umask(tmp)  # safetensors writes 0600: a checkpoint gets the permissions of the user's other files
        _seal(tmp)
        _replace_dir(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(root, keep_last)
    return final


def prune(root: str | os.PathLike, keep_last: int | None) -> None:
    """Delete old checkpoints beyond keep_last and leftovers of interrupted writes."""
    root = Path(root)
    for leftover in [*root.glob(".old-*"), *root.glob(".tmp-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    if keep_last is None or keep_last < 1:
        return
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def clear(root: str | os.PathLike) -> None:
    """Remove every checkpoint and temporary directory (a fresh run must not later resume from a stale one)."""
    root = Path(root)
    if root.is_dir():
        for path in root.iterdir():
            if path.is_dir() and (_STEP_DIR.match(path.name) or path.name.startswith((".tmp-", ".old-"))):
                shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer, scheduler, rank: int = 0) -> dict:
    """Restore weights, optimizer, scheduler and generators from a checkpoint of whole tensors (step-N); returns
    its state.json dict. A multi-process run loads through `Parallel.load_checkpoint` (distributed.py), which
    also reads sharded checkpoints and fills sharded models; this is the one-process path, used by it too."""
    path = Path(path)
    if (path / SHARDED).is_dir():
        raise TuneforgeError(f"checkpoint {path} is sharded (written by several processes); it loads through "
                             "tuneforge.train.distributed.Parallel.load_checkpoint, which `tuneforge train` uses")
    tensors, optim = read_whole(path, model)
    params = dict(model.named_parameters())
    for name, tensor in tensors.items():
        copy_checked(params[name], tensor, name, error=TuneforgeError,
                     hint=f"checkpoint {path} is of another model; start fresh with resume disabled (--no-resume)")
    optimizer.load_state_dict(optim)
    return load_rest(path, scheduler, rank)


def load_rest(path: Path, scheduler, rank: int = 0) -> dict:
    """Everything but the weights and optimizer state: the schedule, process `rank`'s generator states (a process
    the saving run did not have keeps its seed's) and state.json."""
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / ("rng.pt" if rank == 0 else f"rng-rank{rank}.pt")
    if rank == 0 or rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((path / "state.json").read_text())


def read_whole(path: Path, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """(trainable.safetensors, optimizer.pt) of a checkpoint of whole tensors, checked against the model's
    trainable parameter names."""
    tensors = load_file(str(path / "trainable.safetensors"))
    wanted = {n for n, p in model.named_parameters() if p.requires_grad}
    if wanted != set(tensors):
        missing, extra = sorted(wanted - set(tensors)), sorted(set(tensors) - wanted)
        raise TuneforgeError(
            f"checkpoint {path} does not match the model's trainable parameters "
            f"(missing: {missing[:5]}, unexpected: {extra[:5]}); start fresh with resume disabled (--no-resume)"
        )
    return tensors, torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
