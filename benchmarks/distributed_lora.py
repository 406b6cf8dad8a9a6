"""LoRA SFT of SmolLM2-135M-Instruct on 1 process against N processes (torchrun, gloo on CPU / NCCL on GPUs),
with the same global batch, through the real `tuneforge train` command.

Work: LoRA r=16, alpha=32 on q/k/v/o/gate/up/down; Stanford Alpaca (CC BY-NC 4.0, research use only, from
../shared/data/alpaca) packed into rows of 256 tokens; a global batch of `--rows` rows per optimizer step, which
is micro_batch_size rows on one process and rows / N on each of N processes; constant lr, no evaluation.

On CPU the comparison is made on the same cores. `--runs` lists the settings as PROCESSESxTHREADS (threads per
process, OMP_NUM_THREADS); the default compares one process using every core as intra-op threads, one process
with one thread per core share, and N processes with cores / N threads each. On a 2-core machine that bounds the
gain: two processes do the same matmuls on the same two cores, and pay an all-reduce of the adapter's gradients
per step on top; what they can win is the part of a step that does not parallelise across threads. On a busy
machine a process with several OpenMP threads can also lose far more than that to threads waiting for each other
(the second row isolates this). With GPUs, each process gets its own device and the thread count is left alone.

Both runs see the same batches, so their losses must agree step by step (last column): the check that the
speed-up is not bought with a different computation. Timing skips the first `--warmup` steps and reads step
times from each run's metrics.jsonl (`elapsed_s`). The machine is shared: the load average is printed before and
after each run, and runs alternate over `--repeats` rounds.

    python benchmarks/distributed_lora.py --steps 6 --warmup 2                      # 1x2, 1x1, 2x1 on 2 cores
    python benchmarks/distributed_lora.py --runs 1x1,2x1 --steps 6 --warmup 2
    python benchmarks/distributed_lora.py --runs 1x1,8x1 --device cuda --rows 64 --max-length 1024   # 8 GPUs
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


def train(nproc: int, threads: int, out: Path, args) -> dict:
    """One run of `tuneforge train` (through torchrun when nproc > 1); step records of its metrics.jsonl."""
    cfg_path = out.with_suffix(".yaml")
    cfg_path.write_text(yaml.safe_dump(run_config(out, args.rows // nproc, args)))
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "tuneforge", "train", str(cfg_path), "--quiet", "--no-resume"]
    cmd += ["--nproc", str(nproc)] if nproc > 1 else []
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = str(threads)
    before = load_average()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    return {"steps": steps, "load_before": before, "load_after": load_average()}


def step_times(steps: list[dict], warmup: int) -> list[float]:
    elapsed = [r["elapsed_s"] for r in steps]
    return [b - a for a, b in zip(elapsed[warmup:], elapsed[warmup + 1:])]


def parse_runs(text: str | None, cores: int) -> list[tuple[int, int]]:
    if text is None:
        return [(1, cores), (1, 1), (cores, 1)]
    return [tuple(int(x) for x in item.split("x")) for item in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", help="PROCESSESxTHREADS,... (default: 1xCORES,1x1,CORESx1)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4, help="global batch: packed rows per optimizer step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    settings = parse_runs(args.runs, os.cpu_count())
    if any(args.rows % nproc for nproc, _ in settings):
        raise SystemExit("--rows must be a multiple of every process count (the same global batch everywhere)")
    print(f"machine: {os.cpu_count()} cores; load average at start {load_average()}")
    results: dict[tuple[int, int], list[dict]] = {setting: [] for setting in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            for nproc, threads in settings:
                run = train(nproc, threads, Path(tmp) / f"run-{nproc}x{threads}-{round_}", args)
                results[(nproc, threads)].append(run)
                times = step_times(run["steps"], args.warmup)
                print(f"  round {round_ + 1}, {nproc} process(es) x {threads} thread(s): median step "
                      f"{statistics.median(times):.2f}s (load {run['load_before']} -> {run['load_after']})")
    header = "| processes x threads | median step (s) | tokens/s | speed-up | max loss difference vs first row |"
    print("\n" + header + "\n|" + "---|" * 5)
    base, reference = None, [r["loss"] for r in results[settings[0]][0]["steps"]]
    for (nproc, threads), runs in results.items():
        median = statistics.median(t for run in runs for t in step_times(run["steps"], args.warmup))
        tokens_per_s = statistics.median(
            (run["steps"][-1]["tokens"] - run["steps"][args.warmup]["tokens"])
            / sum(step_times(run["steps"], args.warmup)) for run in runs
        )
        base = base or median
        diff = max(abs(r["loss"] - b) for r, b in zip(runs[0]["steps"], reference))
        shown = f"{nproc} x {threads}" if args.device == "cpu" else f"{nproc} x -"
        print(f"| {shown} | {median:.2f} | {tokens_per_s:,.0f} | {base / median:.2f}x | {diff:.2e} |")
    print(f"\n{args.steps} steps x {args.rows} rows x {args.max_length} tokens (first {args.warmup} steps not timed), "
          f"{args.repeats} round(s); load average at end {load_average()}")


if __name__ == "__main__":
    main()
