"""How far can one more SST-2 run of this family go? Scores trained classify runs on the 872 validation sentences,
each alone and as a mean-probability ensemble per group, and counts the sentences every run gets wrong (none of
them will learn these) and the ones the runs disagree on (where a better single run has to win its points).

    python benchmarks/sst2_ensemble_ceiling.py teachers=runs/sst2-full/seed-4{2,3,4} \
        students=runs/sst2-distill/seed-4{2,3,4}

Arguments: run folders, each optionally prefixed `group=` (consecutive folders after a prefixed one join its
group). With two groups or more it also scores the groups' ensemble with every group weighing the same (what
task.distill.teacher_weights [1, 1, 1, 3] gives three seeds of one family and one run of another). Reads
sst2/validation.jsonl under TUNEFORGE_DATA, as the training configs do.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch

from tuneforge.errors import ConfigError
from tuneforge.train.distill import teacher_probabilities
from tuneforge.train.tasks.classify import ClassifyTask


def main(arguments: list[str]) -> None:
    if not arguments or "TUNEFORGE_DATA" not in os.environ:
        sys.exit(__doc__)
    rows = [json.loads(line) for line in (Path(os.environ["TUNEFORGE_DATA"]) / "sst2" / "validation.jsonl")
            .read_text().splitlines() if line.strip()]
    texts, gold = [r["text"] for r in rows], torch.tensor([r["label"] for r in rows])
    groups: dict[str, list[str]] = {}
    group = "runs"
    for argument in arguments:
        if "=" in argument:
            group, argument = argument.split("=", 1)
        groups.setdefault(group, []).append(argument)
    probs = {}
    for name, runs in groups.items():
        for run in runs:
            try:
                probs[run] = teacher_probabilities(ClassifyTask, [run], texts, ["negative", "positive"], 1.0, 128,
                                                   progress=False)
            except ConfigError as error:
                sys.exit(f"{run}: not a finished classify run ({error})")
            print(f"{name:>10}  {run}  accuracy {(probs[run].argmax(1) == gold).float().mean():.4f}", flush=True)
    for name, runs in list(groups.items()) + [("all", list(probs))]:
        ensemble = sum(probs[r] for r in runs) / len(runs)
        print(f"ensemble of {name} ({len(runs)} runs): accuracy {(ensemble.argmax(1) == gold).float().mean():.4f}")
    if len(groups) > 1:  # every group one vote: a family of three seeds counts as much as a single other model
        ensemble = sum(sum(probs[r] for r in runs) / len(runs) for runs in groups.values()) / len(groups)
        print(f"ensemble of the {len(groups)} groups, each weighing the same: accuracy "
              f"{(ensemble.argmax(1) == gold).float().mean():.4f}")
    correct = torch.stack([p.argmax(1) == gold for p in probs.values()])  # runs x sentences
    n, right = len(probs), correct.sum(1)
    wrong = n - correct.sum(0)
    always = int((wrong == 0).sum())
    print(f"of {len(gold)} sentences: every run wrong {int((wrong == n).sum())}, every run right {always}, runs "
          f"disagree {int(((wrong > 0) & (wrong < n)).sum())}; a single run at 0.89 needs "
          f"{math.ceil(0.89 * len(gold)) - always} of the disagreed ones, these runs win "
          f"{int(right.min()) - always}-{int(right.max()) - always}")


if __name__ == "__main__":
    main(sys.argv[1:])
