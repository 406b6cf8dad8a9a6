"""STS-B Spearman of weight interpolations between the untouched and a fine-tuned sentence encoder (WiSE-FT,
Wortsman et al. 2022, https://arxiv.org/abs/2109.01903): theta(alpha) = (1 - alpha) theta_untouched + alpha
theta_fine-tuned. Asks whether the gain the fine-tune leaves on the table is one of over-shooting (an
interpolation would then beat both ends).

    python benchmarks/stsb_wise_ft.py --model runs/stsb-2ep/seed-42 --data stsb:validation --alphas 1,0.8,0.6,0.5
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import spearmanr

from tuneforge.config.data_sets import resolve_data_path
from tuneforge.data import read_records
from tuneforge.index import SentenceEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="fine-tuned encoder: run / sentence-transformers directory")
    parser.add_argument("--base", default="all-minilm-l6-v2")
    parser.add_argument("--data", default="stsb:validation")
    parser.add_argument("--alphas", default="1,0.8,0.6,0.5")
    args = parser.parse_args()
    records = read_records(resolve_data_path(args.data, key="data"))
    gold = [float(r["score"]) for r in records]
    encoder = SentenceEncoder.load(args.base)
    untouched = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    tuned = SentenceEncoder.load(args.model).model.state_dict()
    for alpha in map(float, args.alphas.split(",")):
        encoder.model.load_state_dict({k: (1 - alpha) * v + alpha * tuned[k] if v.is_floating_point() else tuned[k]
                                       for k, v in untouched.items()})
        with torch.no_grad():
            a = encoder.encode([r["sentence1"] for r in records])
            b = encoder.encode([r["sentence2"] for r in records])
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        print(f"alpha {alpha:.2f}  spearman {spearmanr(cos, gold).statistic:.4f}", flush=True)


if __name__ == "__main__":
    main()
