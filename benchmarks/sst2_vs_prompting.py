"""Is a trained classifier better than prompting the model? The paired bootstrap 95% interval of (accuracy of
the classifier runs, mean over seeds) minus (accuracy of each prompted system) on the same validation sentences.
The prompted systems' per-sentence predictions are what `tuneforge eval` writes for a `choice` task
(configs/eval_sst2_prompting.yaml -> runs/eval-sst2-prompting/eval/predictions/*.jsonl).

    python benchmarks/sst2_vs_prompting.py runs/sst2-smollm2-full/seed-4{2,3,4} \\
        runs/eval-sst2-prompting/eval/predictions

Arguments: one or more classify run folders, then the predictions folder. The runs are scored on their own
validation file (the configs' sst2:validation; set TUNEFORGE_DATA as for training), which must be the file the
prompts were scored on, sentence for sentence.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from tuneforge.errors import ConfigError
from tuneforge.eval.bootstrap import mean_of, paired_interval
from tuneforge.eval.classification import classifier_predictions


def main(arguments: list[str]) -> None:
    if len(arguments) < 2 or not Path(arguments[-1]).is_dir():
        sys.exit(__doc__)
    runs, predictions = arguments[:-1], Path(arguments[-1])
    hits = []
    for run in runs:
        try:
            scored = classifier_predictions(run)
        except (ConfigError, FileNotFoundError) as error:
            sys.exit(f"{run}: not a finished classify run ({error})")
        hits.append(np.asarray(scored["gold"]) == np.asarray(scored["predicted"]))
        print(f"{run}: accuracy {hits[-1].mean():.4f}", flush=True)
    tuned = np.mean(hits, axis=0)  # per sentence: the share of seeds that get it right
    files = sorted(predictions.glob("*.jsonl"))
    if not files:
        sys.exit(f"{predictions}: no *.jsonl predictions (run `tuneforge eval` on a choice task first)")
    for file in files:
        rows = sorted((json.loads(line) for line in file.read_text().splitlines() if line.strip()),
                      key=lambda row: row["line"])
        if len(rows) != len(tuned):
            sys.exit(f"{file}: {len(rows)} predictions, but the runs scored {len(tuned)} sentences; score the whole "
                     "validation split (eval.num_samples at least its size)")
        prompted = np.array([row["prediction"] == row["gold"] for row in rows], dtype=np.float64)
        low, high = paired_interval(mean_of(tuned), mean_of(prompted), len(prompted))
        print(f"{file.stem}: prompted {prompted.mean():.4f}, trained {tuned.mean():.4f} (mean of {len(runs)}), "
              f"gain {tuned.mean() - prompted.mean():+.4f} [95% CI {low:+.4f}, {high:+.4f}]")


if __name__ == "__main__":
    main(sys.argv[1:])
