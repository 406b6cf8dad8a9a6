"""The self-training figure: supervised-only (round 0) against self-training (the last round) per seed, from the
runs' self_training.jsonl files, with mean +- sample std, the paired difference per seed and its 95% t interval
over the seeds.

    python benchmarks/selftrain_table.py runs/selftrain-sst2-minilm-seed1 runs/selftrain-sst2-minilm-seed2 ...

Round 0 of a self-training run is the supervised baseline of the same seed (same labelled draw, initial weights,
data order and step count), so the difference per seed is a paired one.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import yaml

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {std:.4f}"


def table(run_dirs: list[str], metric: str = "accuracy") -> str:
    rows, supervised, selftrained, diffs = [], [], [], []
    for run in map(Path, run_dirs):
        log = [json.loads(line) for line in (run / "self_training.jsonl").read_text().splitlines() if line.strip()]
        seed = yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"]
        first, last = log[0], log[-1]
        a, b = first["eval"][metric], last["eval"][metric]
        supervised.append(a)
        selftrained.append(b)
        diffs.append(b - a)
        agree = last.get("pseudo_accuracy")
        pseudo = f"{last['pseudo_labels']} of {last['pool']} ({agree:.3f} right)" if agree is not None else \
            f"{last['pseudo_labels']} of {last['pool']}"
        minutes = sum(r["wall_time_s"] + r.get("predict_s", 0.0) for r in log) / 60
        rows.append(f"| {seed} | {a:.4f} | {b:.4f} | {b - a:+.4f} | {pseudo} | {minutes:.1f} |")
    head = ["| seed | supervised only (round 0) | self-training (round %d) | difference | pseudo-labels kept "
            "(agreement with the hidden labels) | minutes |" % (len(log) - 1),
            "|---:|---:|---:|---:|---:|---:|"]
    tail = f"| mean +- std | {_mean_std(supervised)} | {_mean_std(selftrained)} | {_mean_std(diffs)} | | |"
    lines = head + rows + [tail]
    if len(diffs) > 1:  # Student t over the seeds: the draw of the labelled records varies with the seed
        half = T975[len(diffs) - 1] * statistics.stdev(diffs) / len(diffs) ** 0.5
        mean = statistics.mean(diffs)
        lines += ["", f"paired difference (self-training - supervised), mean over {len(diffs)} seeds: {mean:+.4f}, "
                  f"95% t interval [{mean - half:+.4f}, {mean + half:+.4f}]"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1:]))
