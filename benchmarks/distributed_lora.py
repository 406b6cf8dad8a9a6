"""LoRA SFT of SmolLM2-135M-Instruct on 1 process against N processes (torchrun, gloo on CPU / NCCL on GPUs),
with the same global batch, through the real `tuneforge train` command.

Work: LoRA r=16, alpha=32 on q/k/v/o/gate/up/down; Stanford Alpaca (CC BY-NC 4.0, research use only, from
../shared/data/alpaca) packed into rows of 256 tokens; a global batch of `--rows` rows per optimizer step, which
is micro_batch_size rows on one process and rows / N on each of N processes; constant lr, no evaluation.

On CPU the comparison is made on the same cores: one process uses all of them as intra-op threads
(`--threads`, default: every core), N processes get cores / N threads each (torchrun's OMP_NUM_THREADS). On a
2-core machine that bounds the gain: two processes do the same matmuls on the same two cores, and pay an
all-reduce of the adapter's gradients per step on top; what they can win is the part of a step that does not
parallelise across threads. With GPUs, each process gets its own device.

Both runs see the same batches, so their losses must agree step by step (last column): the check that the
speed-up is not bought with a different computation. Timing skips the first `--warmup` steps and reads step
times from each run's metrics.jsonl (`elapsed_s`). The machine is shared: the load average is printed before and
after each run, and runs alternate over `--repeats` rounds.

    python benchmarks/distributed_lora.py --nproc 2 --steps 8 --warmup 2
    python benchmarks/distributed_lora.py --nproc 8 --device cuda --rows 64 --max-length 1024   # a GPU machine
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ALPACA = REPO.parent / "shared" / "data" / "alpaca"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_config(out: Path, rows_per_process: int, args) -> dict:
    return {
        "model": {"name": "smollm2-135m-instruct", "device": args.device},
        "method": {"name": "lora", "r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": TARGETS},
        "task": "sft",
        "data": {"train": str(ALPACA / "train.jsonl"), "format": "alpaca", "max_length": args.max_length,
                 "packing": True, "limit_train": args.rows * args.steps * 4},
        "train": {"max_steps": args.steps, "micro_batch_size": rows_per_process, "learning_rate": 2e-4,
                  "lr_schedule": "constant", "seed": 0, "log_every": 1, "save_every": None, "keep_last": 1},
        "output_dir": str(out),
    }


def train(nproc: int, out: Path, args) -> dict:
    """One run of `tuneforge train` (through torchrun when nproc > 1); step records of its metrics.jsonl."""
    cfg_path = out.with_suffix(".yaml")
    cfg_path.write_text(yaml.safe_dump(run_config(out, args.rows // nproc, args)))
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "tuneforge", "train", str(cfg_path), "--quiet", "--no-resume"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
        if args.device == "cpu":
            env["OMP_NUM_THREADS"] = str(max(1, args.threads // nproc))
    else:
        env["OMP_NUM_THREADS"] = str(args.threads)
    before = load_average()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    return {"steps": steps, "load_before": before, "load_after": load_average()}


def step_times(steps: list[dict], warmup: int) -> list[float]:
    elapsed = [r["elapsed_s"] for r in steps]
    return [b - a for a, b in zip(elapsed[warmup:], elapsed[warmup + 1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4, help="global batch: packed rows per optimizer step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads in all (split over processes)")
    args = parser.parse_args()
    if args.rows % args.nproc:
        raise SystemExit("--rows must be a multiple of --nproc (the same global batch on both sides)")
    print(f"machine: {os.cpu_count()} cores; load average at start {load_average()}")
    results: dict[int, list[dict]] = {1: [], args.nproc: []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            for nproc in (1, args.nproc):
                run = train(nproc, Path(tmp) / f"run-{nproc}-{round_}", args)
                results[nproc].append(run)
                times = step_times(run["steps"], args.warmup)
                print(f"  round {round_ + 1}, {nproc} process(es): median step {statistics.median(times):.2f}s "
                      f"(load {run['load_before']} -> {run['load_after']})")
    header = "| processes | threads each | median step (s) | tokens/s | speed-up | max loss difference vs 1 process |"
    print("\n" + header + "\n|" + "---|" * 6)
    base = None
    for nproc, runs in results.items():
        median = statistics.median(t for run in runs for t in step_times(run["steps"], args.warmup))
        tokens_per_s = statistics.median(
            (run["steps"][-1]["tokens"] - run["steps"][args.warmup]["tokens"])
            / sum(step_times(run["steps"], args.warmup)) for run in runs
        )
        base = base or median
        losses = [r["loss"] for r in runs[0]["steps"]]
        reference = [r["loss"] for r in results[1][0]["steps"]]
        diff = max(abs(a - b) for a, b in zip(losses, reference))
        threads = args.threads if nproc == 1 else max(1, args.threads // nproc)
        print(f"| {nproc} | {threads if args.device == 'cpu' else '-'} | {median:.2f} | {tokens_per_s:,.0f} | "
              f"{base / median:.2f}x | {diff:.2e} |")
    print(f"\n{args.steps} steps x {args.rows} rows x {args.max_length} tokens (first {args.warmup} steps not timed), "
          f"{args.repeats} round(s); load average at end {load_average()}")


if __name__ == "__main__":
    main()
