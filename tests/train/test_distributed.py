"""Multi-process training on CPU with gloo: two processes equal one process with the same global batch (LoRA
replicated, full fine-tuning sharded with FSDP2, with gradient checkpointing and accumulation), resume after a
stop and after a killed process is exact, checkpoints resume on another number of processes (sharded 2 -> 1,
whole 1 -> 2), and the launch pieces (slicing, torchrun command line, CLI, failure report) do what they say.

The two-process runs of one test module share one spawn of two workers (`runs` below): starting processes and
importing torch is most of their cost. Workers run `train()` on a tiny Llama saved as a local model directory.
"""
import json
import os
import signal
import socket

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.train import api
from tuneforge.train import distributed as dist_mod
from tuneforge.train import launcher
from tuneforge.train.distributed import Parallel
from tuneforge.train.launcher import torchrun_command

WORLD = 2
ROWS = 13  # a global micro-batch of 4 leaves one example at the end of the epoch: one process runs a stand-in


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, jobs: list[dict]) -> None:
    """One process of a two-process run: joins the group the way torchrun's environment describes, then runs each
    job's train(); `kill_at` makes process 1 kill itself (SIGKILL, no clean-up) in that training forward."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    assert launcher.init_from_env("cpu") and torch.distributed.get_backend() == "gloo"
    for job in jobs:
        if job.get("kill_at") and rank == 1:
            _kill_in_forward(job["kill_at"])
        api.train(job["config"], progress=False)
    launcher.shutdown()


def _kill_in_forward(call: int) -> None:
    from tuneforge.train.tasks.sft import SFTTask

    original, calls = SFTTask.loss_sum, [0]

    def loss_sum(self, model, batch):
        if model.training:
            calls[0] += 1
            if calls[0] == call:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, model, batch)

    SFTTask.loss_sum = loss_sum


def _spawn(jobs: list[dict]) -> None:
    """Two workers, forked where the platform can (this process has imported torch and transformers already:
    a spawned worker spends most of its life importing them again)."""
    import importlib

    import torch.multiprocessing as mp

    for name in ("torch.distributed.checkpoint", "torch.distributed.fsdp", "transformers", "tuneforge.data",
                 "tuneforge.io", "tuneforge.methods", "tuneforge.train.tasks"):
        importlib.import_module(name)  # here once, not in each worker
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(_free_port(), jobs), nprocs=WORLD, join=True, start_method=method)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tuneforge.models import tiny_llama, tiny_tokenizer

    root = tmp_path_factory.mktemp("distributed")
    tiny_llama(seed=1).save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu",
             "nu", "xi"]
    records = [{"instruction": f"Repeat {w} {i} times", "input": "", "output": " ".join([w] * (i % 4 + 1))}
               for i, w in enumerate(words[:ROWS])]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


LR, STEPS = 1e-2, 5


def config(root, name: str, method: str = "lora", **train) -> dict:
    """A tiny run: constant lr after warm-up, so a run stopped early and resumed follows the same schedule. In float64:
    these tests check algebra (the same global batch gives the same update), and in float32 the summation order that
    differs between one and two processes (and between CPU kernel families) leaves last-bit differences that Adam
    amplifies wherever a gradient is near zero: no float32 tolerance follows from the arithmetic (see `tolerance`)."""
    fields = {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"], "lora_dropout": train.pop("dropout", 0.0)}
    settings = {"max_steps": STEPS, "micro_batch_size": 2, "learning_rate": LR, "lr_schedule": "constant",
                "warmup_steps": 2, "seed": 3, "max_grad_norm": 1.0, **train}
    return {
        "model": {"name": str(root / "base"), "device": "cpu", "dtype": "float64"},
        "method": fields if method == "lora" else {"name": method},
        "task": "sft",
        "data": {"train": str(root / "train.jsonl"), "validation": str(root / "train.jsonl"), "format": "alpaca",
                 "max_length": 64, "packing": False, "limit_eval": 4},
        "train": settings,
        "output_dir": str(root / name),
    }


@pytest.fixture(scope="module")
def runs(setup):
    """Every two-process run the equality and resume tests compare, in one spawn of two workers (after a
    one-process run whose checkpoint a sharded two-process run resumes)."""
    api.train(config(setup, "full_grown", "full", max_steps=2, micro_batch_size=4), progress=False)
    jobs = [
        config(setup, "lora"),  # 2 x micro-batch 2
        config(setup, "lora_accum_ckpt", micro_batch_size=1, grad_accum_steps=2, gradient_checkpointing=True),
        config(setup, "lora_dropout", dropout=0.1),
        config(setup, "lora_stopped", dropout=0.1, max_steps=2),
        config(setup, "lora_stopped", dropout=0.1),  # resumes from step 2
        config(setup, "full", "full", max_steps=3),
        config(setup, "full_accum_ckpt", "full", max_steps=3, micro_batch_size=1, grad_accum_steps=2,
               gradient_checkpointing=True),
        config(setup, "full_stopped", "full", max_steps=2),
        config(setup, "full_grown", "full", max_steps=3),  # resumes the one-process checkpoint, sharded
        config(setup, "full_hooks", "full", max_steps=3, eval_every=1, save_best="eval_loss",
               report_to=["tensorboard"]),  # save_best gathers sharded weights; process 0 alone logs
    ]
    _spawn([{"config": job} for job in jobs])
    return setup


def adapter(root, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(root / name / "adapter" / "adapter_model.safetensors"))


def tolerance(dtype: torch.dtype = torch.float64, reduction_length: int = 4 * 64 * 64, adam_eps: float = 1e-8) -> float:
    """The most two runs that differ only in summation order can drift apart, from the arithmetic: a gradient summed
    over n terms (tokens x hidden width) in one order or another differs by at most n * u * |g| (u = unit roundoff,
    |g| <= 1 after clipping to max_grad_norm 1); Adam divides it by at least eps, so one step moves a weight by at
    most lr * n * u / eps more, and STEPS steps by STEPS times that. In float64 this is ~5e-6 while the weights move
    by ~lr per step, so a wrong batch split (differences of order lr) cannot pass; in float32 it exceeds lr itself."""
    unit_roundoff = torch.finfo(dtype).eps / 2
    return STEPS * LR * reduction_length * unit_roundoff / adam_eps


def assert_close(a: dict, b: dict) -> None:
    """Equal up to float summation order (`tolerance`), for LoRA and for full fine-tuning alike."""
    assert a.keys() == b.keys() and a
    for key in a:
        assert a[key].dtype == torch.float64, (key, a[key].dtype)
        assert torch.allclose(a[key], b[key], atol=tolerance(), rtol=0), (key, (a[key] - b[key]).abs().max())


def train_losses(root, name: str) -> list[float]:
    lines = (root / name / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def one_process(root, name: str, method: str = "lora", **train):
    """The same run in this process, with the two processes' global batch as its micro-batch."""
    return api.train(config(root, name, method, micro_batch_size=4, **train), progress=False)


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    """LoRA replicated on 2 processes x micro-batch 2 (the last micro-batch of the epoch leaves process 0 with a
    stand-in) gives the adapter and losses of 1 process x micro-batch 4; so does 2 x 1 x 2 accumulation steps
    with gradient checkpointing (the PEFT + DDP + checkpointing failure cannot occur: gradients are reduced
    once, after backward)."""
    single = one_process(runs, "lora_single")
    assert single.steps == 5
    assert_close(adapter(runs, "lora"), adapter(runs, "lora_single"))
    assert_close(adapter(runs, "lora_accum_ckpt"), adapter(runs, "lora_single"))
    assert train_losses(runs, "lora") == pytest.approx(train_losses(runs, "lora_single"), rel=1e-5)
    assert train_losses(runs, "lora_accum_ckpt") == pytest.approx(train_losses(runs, "lora_single"), rel=1e-5)
    tokens = [json.loads(r)["tokens"] for r in (runs / "lora" / "metrics.jsonl").read_text().splitlines()
              if "tokens" in r]
    assert tokens == [r["tokens"] for r in single.history if "tokens" in r]  # counted over both processes


def test_fsdp_full_fine_tuning_equals_one_process(runs):
    """Full fine-tuning shards the model (FSDP2 on gloo); the gathered weights equal a one-process run's."""
    one_process(runs, "full_single", "full", max_steps=3)
    assert_close(adapter(runs, "full"), adapter(runs, "full_single"))
    assert_close(adapter(runs, "full_accum_ckpt"), adapter(runs, "full_single"))
    assert (runs / "full" / "checkpoints" / "step-3" / "sharded" / ".metadata").is_file()
    assert not (runs / "full" / "checkpoints" / "step-3" / "trainable.safetensors").exists()


def test_save_best_and_tracking_in_a_sharded_two_process_run(runs):
    """save_best gathers the sharded weights (every process) and process 0 writes them: they equal a one-process
    run's best; the TensorBoard events come from process 0 alone (one event file)."""
    one_process(runs, "full_hooks_single", "full", max_steps=3, eval_every=1, save_best="eval_loss")
    best = json.loads((runs / "full_hooks" / "best" / "best.json").read_text())
    single = json.loads((runs / "full_hooks_single" / "best" / "best.json").read_text())
    assert best["step"] == single["step"] and best["value"] == pytest.approx(single["value"], rel=1e-5)
    assert_close(load_file(str(runs / "full_hooks" / "best" / "trainable.safetensors")),
                 load_file(str(runs / "full_hooks_single" / "best" / "trainable.safetensors")))
    assert len(list((runs / "full_hooks" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_stopped_two_process_run_resumes_exactly(runs):
    """With LoRA dropout (each process its own generator, restored from rng.pt / rng-rank1.pt): stopped after 2
    steps and resumed to 5, the adapter and losses are those of the uninterrupted two-process run."""
    last = runs / "lora_stopped" / "checkpoints" / "step-5"
    assert (last / "rng.pt").is_file() and (last / "rng-rank1.pt").is_file()
    for key, value in adapter(runs, "lora_dropout").items():
        assert torch.equal(value, adapter(runs, "lora_stopped")[key]), key
    assert train_losses(runs, "lora_stopped") == train_losses(runs, "lora_dropout")


def test_sharded_checkpoint_resumes_on_one_process(runs):
    """A two-process FSDP checkpoint (step 2 of 3) loads into one process and finishes as the two-process run
    (micro_batch_size is per process: one process takes both processes' micro-batches to keep the global batch)."""
    resumed = api.train(config(runs, "full_stopped", "full", max_steps=3, micro_batch_size=4), progress=False)
    assert resumed.steps == 3 and len(train_losses(runs, "full_stopped")) == 3
    assert_close(adapter(runs, "full_stopped"), adapter(runs, "full"))


def test_one_process_checkpoint_resumes_sharded(runs):
    """Whole tensors saved by one process (step 2 of 3) load into the model sharded over two, which finishes as
    the two-process run."""
    assert (runs / "full_grown" / "checkpoints" / "step-2" / "trainable.safetensors").is_file()
    assert len(train_losses(runs, "full_grown")) == 3
    assert_close(adapter(runs, "full_grown"), adapter(runs, "full"))


def test_killed_process_stops_the_run_and_it_resumes(runs):
    """Process 1 is killed (SIGKILL) inside step 4, after a checkpoint at step 2: the other process stops too
    (its next collective fails, and the launcher ends the group), and starting the run again gives the adapter
    of the uninterrupted run."""
    import torch.multiprocessing as mp

    job = config(runs, "lora_killed", dropout=0.1, save_every=2)
    with pytest.raises((mp.ProcessExitedException, mp.ProcessRaisedException)):
        _spawn([{"config": job, "kill_at": 4}])  # forwards 1-3 are steps 1-3; the 4th is inside step 4
    assert [p.name for p in (runs / "lora_killed" / "checkpoints").iterdir()] == ["step-2"]
    _spawn([{"config": job}])
    for key, value in adapter(runs, "lora_dropout").items():
        assert torch.equal(value, adapter(runs, "lora_killed")[key]), key
    assert train_losses(runs, "lora_killed") == train_losses(runs, "lora_dropout")


def test_each_process_takes_its_slice_of_the_global_micro_batch():
    task = type("Task", (), {"collate": staticmethod(lambda examples: {"rows": examples})})()
    examples = list("abcdefg")
    chunks = [[0, 1, 2, 3], [4, 5, 6]]
    assert [b["rows"] for b in Parallel(0, 2).collate(task, examples, chunks)] == [["a", "b"], ["e"]]
    assert [b["rows"] for b in Parallel(1, 2).collate(task, examples, chunks)] == [["c", "d"], ["f", "g"]]
    stand_in = Parallel(0, 2).collate(task, examples, [[5]])[0]
    assert stand_in["rows"] == ["f"] and stand_in[dist_mod.STAND_IN]
    assert Parallel().collate(task, examples, chunks) == [{"rows": list("abcd")}, {"rows": list("efg")}]


def test_one_process_changes_nothing():
    par = Parallel.current()
    assert (par.rank, par.world_size, par.is_main) == (0, 1, True)
    sentinel = object()
    assert par.task(sentinel) is sentinel and par.agree(sentinel) is sentinel and par.all_sum(3) == 3


def test_backend_follows_the_device():
    assert launcher.backend_for(torch.device("cpu")) == "gloo"
    assert launcher.backend_for(torch.device("cuda", 1)) == "nccl"


def test_torchrun_command_lines():
    local = torchrun_command("run.yaml", ["--set", "train.max_steps=3"], nproc=2)
    assert local[1:] == ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                         "-m", "tuneforge", "train", "run.yaml", "--set", "train.max_steps=3"]
    nodes = torchrun_command("run.yaml", nproc=8, nnodes=2, rdzv_endpoint="10.0.0.1:29500")
    assert nodes[3:13] == ["--nproc-per-node", "8", "--nnodes", "2", "--rdzv-backend", "c10d",
                           "--rdzv-endpoint", "10.0.0.1:29500", "--rdzv-id", "tuneforge"]
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match="rdzv-endpoint"):
        torchrun_command("run.yaml", nproc=8, nnodes=2)


def test_a_failure_is_recorded_for_torchrun(tmp_path, monkeypatch):
    """torchrun's failure summary shows the message a process left in TORCHELASTIC_ERROR_FILE."""
    from tuneforge.errors import DataError

    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    try:
        raise DataError("no such column", file="train.jsonl", line=3)
    except DataError as err:
        launcher.record_failure(err)
    recorded = json.loads((tmp_path / "error.json").read_text())
    assert "train.jsonl:3: no such column" in json.dumps(recorded)


def test_cli_nproc_launches_torchrun(monkeypatch):
    import typer
    from typer.testing import CliRunner

    from tuneforge.cli import train as cli_train

    calls = []
    monkeypatch.setattr(launcher, "launch", lambda *a, **k: calls.append((a, k)) or 0)
    monkeypatch.setattr(api, "train", lambda *a, **k: pytest.fail("trained in the launching process"))
    app = typer.Typer()
    cli_train.register(app)

    @app.callback()
    def _root():
        """Keep `train` a named subcommand, as in the real app."""

    result = CliRunner().invoke(app, ["train", "run.yaml", "--nproc", "2", "--set", "seed=1", "--no-resume"])
    assert result.exit_code == 0, result.output
    assert calls == [(("run.yaml", ["seed=1"]), {"nproc": 2, "nnodes": 1, "rdzv_endpoint": None, "resume": False,
                                                  "progress": True, "replace_process": True})]


@pytest.mark.slow
def test_cli_runs_two_processes_through_torchrun(setup, tmp_path):
    """The real path: `python -m tuneforge train CONFIG --nproc 2` execs torchrun, whose two processes train and
    process 0 alone writes the adapter and the metrics. (A failing process's message in torchrun's summary:
    test_a_failure_is_recorded_for_torchrun; launching a failing run here would double this test's time.)"""
    import subprocess
    import sys

    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config(setup, "cli_run", max_steps=3)))
    cmd = [sys.executable, "-m", "tuneforge", "train", str(path), "--nproc", "2", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("trained 3 steps") == 1  # process 0 reports, process 1 does not
    assert (setup / "cli_run" / "adapter" / "adapter_model.safetensors").is_file()
    records = [json.loads(line) for line in (setup / "cli_run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
