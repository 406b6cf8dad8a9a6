"""Choose the self-training settings on held-out TRAINING sentences, never on the validation split.

    TUNEFORGE_DATA=/work/shared/data python benchmarks/selftrain_select.py [--seeds 1,2,3] [--out runs/selftrain-select]
        [--settings base,pool-all-1000,...] [--rounds 1] [--final-seeds 1,2,3,4,5]

Splits sst2/train.jsonl (6,920 sentences) once, seeded, into a development part (`--dev` sentences, default 872,
the size of the validation split) and the rest (OUT/split/fit.jsonl). Each seed then draws its 346 labels (5% of
6,920, as the recipe) from the rest, the unlabelled pool is the rest too (the labelled ones left out), and every
round is scored on the development sentences. Each setting of SETTINGS (below) is run per seed; round 0 (the
supervised baseline, which no self-training setting changes) is trained once per seed and copied into every
setting's folder, where it resumes instead of training again. Writes OUT/select.md and OUT/select.json: per
setting and round the development accuracy, mean over seeds, and the paired gain over round 0 with its 95% t
interval over the seeds. With --final-seeds, the setting with the best mean gain (chosen by this rule, before any
validation figure exists; nothing when it is the recipe's own, whose figures exist) then runs as the recipe does, on the whole training file, scored on the validation
split, for those seeds (OUT/final/seed<s>), and OUT/final.md is benchmarks/selftrain_table.py's table of them
(docs/self_training.md).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
from pathlib import Path

import yaml

BASE = "configs/selftrain_sst2_minilm.yaml"
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
# name -> task.self_training overrides of the recipe (limit 2000, max_per_round 1000, threshold 0.9, balanced)
SETTINGS = {
    "base": {},
    "pool-all-1000": {"limit": None},
    "pool-all-3000": {"limit": None, "max_per_round": 3000},
    "pool-all-nocap": {"limit": None, "max_per_round": None},
    "pool-all-nocap-300steps": {"limit": None, "max_per_round": None, "max_steps": 300},
    "pool-all-3000-300steps": {"limit": None, "max_per_round": 3000, "max_steps": 300},
    "pool-all-3000-continue": {"limit": None, "max_per_round": 3000, "reinit": False},
    "pool-all-nocap-t0.99": {"limit": None, "max_per_round": None, "threshold": 0.99},
    "pool-all-3000-unbalanced": {"limit": None, "max_per_round": 3000, "balance": False},
}
DEFAULT = ("base", "pool-all-3000", "pool-all-3000-300steps")


def split(data_dir: Path, out: Path, dev: int, seed: int = 0) -> tuple[Path, Path]:
    rows = (data_dir / "sst2" / "train.jsonl").read_text().splitlines()
    held = set(random.Random(seed).sample(range(len(rows)), dev))
    out.mkdir(parents=True, exist_ok=True)
    fit, dev_path = out / "fit.jsonl", out / "dev.jsonl"
    fit.write_text("".join(r + "\n" for i, r in enumerate(rows) if i not in held))
    dev_path.write_text("".join(r + "\n" for i, r in enumerate(rows) if i in held))
    return fit, dev_path


def run_setting(name: str, seed: int, fit: Path, dev: Path, out: Path, rounds: int) -> list[dict]:
    from tuneforge.train.api import train

    cfg = yaml.safe_load(Path(BASE).read_text())
    folder = out / f"seed{seed}" / name
    cfg["task"]["self_training"].update({"unlabeled": str(fit), "rounds": rounds, **SETTINGS[name]})
    cfg["data"].update({"train": str(fit), "validation": str(dev), "shuffle_seed": seed})
    cfg["train"]["seed"] = seed
    cfg["output_dir"] = str(folder)
    shared = out / f"seed{seed}" / "round-0"  # the supervised round, trained once per seed
    mine = folder / "rounds" / "round-0"
    if (shared / "round.json").is_file() and not mine.exists():
        mine.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(shared, mine)
    train(cfg, progress=False)
    if not (shared / "round.json").is_file():
        shutil.copytree(mine, shared)
    return [json.loads(line) for line in (folder / "self_training.jsonl").read_text().splitlines() if line.strip()]


def run_final(name: str, rounds: int, seeds: list[int], out: Path) -> str:
    """The chosen setting on the recipe's own data (sst2:train, 346 labels; sst2:validation), per seed."""
    from tuneforge.train.api import train

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from selftrain_table import table

    folders = []
    for seed in seeds:
        cfg = yaml.safe_load(Path(BASE).read_text())
        cfg["task"]["self_training"].update({"rounds": rounds, **SETTINGS[name]})
        cfg["data"]["shuffle_seed"] = seed
        cfg["train"]["seed"] = seed
        cfg["output_dir"] = str(out / "final" / f"seed{seed}")
        train(cfg, progress=False)
        folders.append(cfg["output_dir"])
        text = f"setting {name} ({SETTINGS[name]}), chosen on held-out training sentences\n\n" + table(folders)
        (out / "final.md").write_text(text + "\n")  # after every seed: an interrupted run keeps what it has
    print(text)
    return text


def interval(diffs: list[float]) -> tuple[float, float | None, float | None]:
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, None, None
    half = T975[len(diffs) - 1] * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def main(seeds: list[int], out: Path, names: list[str], dev_size: int, rounds: int,
         final_seeds: list[int] = ()) -> dict:
    data_dir = Path(os.environ.get("TUNEFORGE_DATA", "../shared/data"))
    fit, dev = split(data_dir, out / "split", dev_size)
    logs = {name: {s: run_setting(name, s, fit, dev, out, rounds) for s in seeds} for name in names}
    lines = [f"# self-training settings on {dev_size} held-out training sentences (never validation), seeds "
             f"{','.join(map(str, seeds))}", "",
             "| setting | round | dev accuracy (mean) | gain over round 0 [95% t interval] | per seed | pseudo-labels "
             "(mean, agreement) |", "|---|---:|---:|---:|---|---:|"]
    result = {}
    for name in names:
        by_seed = logs[name]
        for r in range(1, rounds + 1):
            accs = [by_seed[s][r]["eval"]["accuracy"] for s in seeds]
            diffs = [by_seed[s][r]["eval"]["accuracy"] - by_seed[s][0]["eval"]["accuracy"] for s in seeds]
            mean, low, high = interval(diffs)
            kept = statistics.fmean(by_seed[s][r]["pseudo_labels"] for s in seeds)
            agree = statistics.fmean(by_seed[s][r]["pseudo_accuracy"] or 0.0 for s in seeds)
            result[f"{name}/round-{r}"] = {"settings": SETTINGS[name], "round": r, "accuracy": accs, "gain": diffs,
                                           "mean_gain": mean, "low": low, "high": high}
            shown = "" if low is None else f" [{low:+.4f}, {high:+.4f}]"
            lines.append(f"| {name} | {r} | {statistics.fmean(accs):.4f} | {mean:+.4f}{shown} | "
                         f"{', '.join(f'{d:+.4f}' for d in diffs)} | {kept:.0f} ({agree:.3f}) |")
    base_accs = [logs[names[0]][s][0]["eval"]["accuracy"] for s in seeds]
    lines += ["", f"round 0 (supervised, the same for every setting): {statistics.fmean(base_accs):.4f} "
              f"({', '.join(f'{a:.4f}' for a in base_accs)})"]
    best = max(result, key=lambda k: result[k]["mean_gain"])
    lines.append(f"best mean gain: {best}")
    (out / "select.md").write_text("\n".join(lines) + "\n")
    (out / "select.json").write_text(json.dumps({"seeds": seeds, "results": result, "best": best}, indent=1))
    print("\n".join(lines))
    name, r = best.split("/round-")
    if final_seeds and name == "base" and r == "1":  # the recipe as it is: its validation figures exist already
        print("the recipe's own settings have the best mean gain: nothing new to run on validation")
    elif final_seeds:
        run_final(name, int(r), list(final_seeds), out)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", default="runs/selftrain-select")
    parser.add_argument("--settings", default=",".join(DEFAULT), help=f"some of {', '.join(SETTINGS)}")
    parser.add_argument("--dev", type=int, default=872)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--final-seeds", default="", help="run the best setting on validation for these seeds")
    args = parser.parse_args()
    main([int(s) for s in args.seeds.split(",")], Path(args.out), args.settings.split(","), args.dev, args.rounds,
         [int(s) for s in args.final_seeds.split(",") if s])
