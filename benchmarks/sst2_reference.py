"""SST-2 full fine-tuning of all-MiniLM-L6-v2: `tuneforge train` with the shipped config against a plain
PyTorch + transformers loop (#24's reference: 2 epochs, lr 5e-5, a linear head on the mean-pooled token states,
as the checkpoint was trained), same seeds, scored on the same validation sentences with paired intervals.

Asks whether the 0.87-0.88 the shipped recipe reaches on validation is ours or the data's: if a loop written
from scratch, with nothing of tuneforge in its training path, lands at the same accuracy, the gap to 0.89 is not
in our code.

    TUNEFORGE_DATA=../shared/data python benchmarks/sst2_reference.py --seeds 42,43,44 --out runs/sst2-reference

Each system and seed runs in a fresh process, one after another (`--systems reference` or `--systems tuneforge`
runs one side; `--report` only reads what is there). Data: SST-2 sentence level (research use, no license stated),
all 6,920 training sentences, the 872 validation sentences.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "classify_sst2_minilm_full.yaml"


def reference_run(seed: int, out: Path, limit: int | None = None, epochs: int = 2, lr: float = 5e-5, batch: int = 32, max_length: int = 64,
                  weight_decay: float = 0.01, warmup_ratio: float = 0.1) -> dict:
    """The plain loop: AutoModel + nn.Linear on the masked mean of the last hidden states, AdamW with decay on
    weights only, 10% linear warm-up then linear decay, shuffled batches padded to their longest sentence."""
    import torch
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    from tuneforge.config.data_sets import resolve_data_path
    from tuneforge.data import read_records
    from tuneforge.models.packaged import packaged_path

    torch.manual_seed(seed)
    path = packaged_path("all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path)
    head = torch.nn.Linear(encoder.config.hidden_size, 2)
    train = read_records(resolve_data_path("sst2:train", key="data"))[:limit]
    validation = read_records(resolve_data_path("sst2:validation", key="data"))

    def batches(records, order):
        for start in range(0, len(order), batch):
            rows = [records[i] for i in order[start:start + batch]]
            enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            yield enc, torch.tensor([int(r["label"]) for r in rows])

    def logits_of(enc):
        states = encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        return head((states * mask).sum(1) / mask.sum(1).clamp(min=1e-9))

    params = list(encoder.named_parameters()) + [("head." + n, p) for n, p in head.named_parameters()]
    no_decay = ("bias", "LayerNorm.weight")
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in params if not any(k in n for k in no_decay)], "weight_decay": weight_decay},
         {"params": [p for n, p in params if any(k in n for k in no_decay)], "weight_decay": 0.0}], lr=lr)
    steps = epochs * ((len(train) + batch - 1) // batch)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * steps), steps)
    generator = torch.Generator().manual_seed(seed)
    started = time.time()
    for _ in range(epochs):
        encoder.train()
        for enc, labels in batches(train, torch.randperm(len(train), generator=generator).tolist()):
            loss = torch.nn.functional.cross_entropy(logits_of(enc), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    encoder.eval()
    predicted = []
    with torch.no_grad():
        for enc, _ in batches(validation, list(range(len(validation)))):
            predicted += logits_of(enc).argmax(-1).tolist()
    gold = [int(r["label"]) for r in validation]
    return {"system": "reference", "seed": seed, "gold": gold, "predicted": predicted, "steps": steps,
            "train_seconds": round(time.time() - started, 1)}


def tuneforge_run(seed: int, out: Path, limit: int | None = None) -> dict:
    """The user's path: `tuneforge train` with the shipped config, then its validation predictions."""
    from tuneforge.eval.classification import classifier_predictions

    run_dir = out / "tuneforge" / f"seed-{seed}"
    started = time.time()
    subprocess.run([str(Path(sys.executable).with_name("tuneforge")), "train", str(CONFIG), "--set", f"train.seed={seed}",
                    "--set", f"output_dir={run_dir}"] + (["--set", f"data.limit_train={limit}"] if limit else []),
                   check=True)
    seconds = round(time.time() - started, 1)
    scored = classifier_predictions(run_dir)
    return {"system": "tuneforge", "seed": seed, "gold": list(scored["gold"]), "predicted": list(scored["predicted"]),
            "train_seconds": seconds}


def report(out: Path) -> str:
    """Mean +- std over seeds per system and the paired interval of tuneforge's seed-mean minus the reference's."""
    import numpy as np

    from tuneforge.eval import bootstrap

    runs: dict[str, dict[int, dict]] = {}
    for file in sorted(out.glob("*/seed-*.json")):
        row = json.loads(file.read_text())
        runs.setdefault(row["system"], {})[row["seed"]] = row
    lines = ["| system | accuracy, mean ± std | per seed | train minutes per seed |", "|---|---:|---:|---:|"]
    hits = {}
    for system, by_seed in sorted(runs.items()):
        seeds = sorted(by_seed)
        correct = [np.equal(by_seed[s]["gold"], by_seed[s]["predicted"]) for s in seeds]
        per_seed = [c.mean() for c in correct]
        hits[system] = (seeds, np.mean(correct, 0))
        minutes = " / ".join(f"{by_seed[s]['train_seconds'] / 60:.1f}" for s in seeds)
        lines.append(f"| {system} | {np.mean(per_seed):.4f} ± {np.std(per_seed, ddof=1) if len(seeds) > 1 else 0:.4f}"
                     f" | {' / '.join(f'{a:.4f}' for a in per_seed)} (seeds {', '.join(map(str, seeds))}) | {minutes} |")
    if {"tuneforge", "reference"} <= hits.keys():
        a, b = hits["tuneforge"][1], hits["reference"][1]
        low, high = bootstrap.paired_interval(bootstrap.mean_of(a), bootstrap.mean_of(b), len(a))
        lines.append(f"\ntuneforge seed-mean minus reference seed-mean: {a.mean() - b.mean():+.4f} "
                     f"[paired 95% CI {low:+.4f}, {high:+.4f}] over {len(a)} validation sentences "
                     f"(seeds {hits['tuneforge'][0]} vs {hits['reference'][0]})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--systems", default="reference,tuneforge")
    parser.add_argument("--out", default="runs/sst2-reference")
    parser.add_argument("--limit-train", type=int, help="first N training sentences only (a smoke run)")
    parser.add_argument("--report", action="store_true", help="only print the table of what is in --out")
    parser.add_argument("--one", nargs=2, metavar=("SYSTEM", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    unknown = set(args.systems.split(",")) - {"reference", "tuneforge"}
    if unknown:
        parser.error(f"--systems: unknown {', '.join(sorted(unknown))} (known: reference, tuneforge)")
    if args.one:  # a child process: one system, one seed
        system, seed = args.one[0], int(args.one[1])
        row = (reference_run if system == "reference" else tuneforge_run)(seed, out, args.limit_train)
        (out / system).mkdir(parents=True, exist_ok=True)
        (out / system / f"seed-{seed}.json").write_text(json.dumps(row))
        print(f"{system} seed {seed}: accuracy "
              f"{sum(g == p for g, p in zip(row['gold'], row['predicted'])) / len(row['gold']):.4f} "
              f"in {row['train_seconds'] / 60:.1f} min", flush=True)
        return
    if not args.report:
        for seed in map(int, args.seeds.split(",")):
            for system in args.systems.split(","):
                if (out / system / f"seed-{seed}.json").exists():
                    continue  # resumes: a finished system and seed is not run again
                limit = ["--limit-train", str(args.limit_train)] if args.limit_train else []
                subprocess.run([sys.executable, __file__, "--out", str(out), "--one", system, str(seed)] + limit, check=True)
    table = report(out)
    print(table)
    (out / "report.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
