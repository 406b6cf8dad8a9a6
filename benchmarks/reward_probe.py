"""How much preference signal a frozen base model carries: a linear probe on HH-RLHF pairs.

A reward model is the base model plus a scalar head trained with the Bradley-Terry loss; with the base frozen,
that is logistic regression on the difference of the two sides' features. This script extracts, from the frozen
SmolLM2-135M-Instruct, the last-token state and the mean over reply tokens at layers 6/12/18/24/30 (plus the log
reply length), for the first N train pairs and the 300 validation pairs (the reward config's formatting: chat
template, 64 prompt tokens, max_length 192), fits L2-regularised logistic regression on train (C chosen by 2-fold
cross-validation on train only) and reports validation pairwise accuracy. It bounds what a small reward model
can reach on this data: if no linear read-out of any layer separates the pairs, LoRA on 2,000 pairs is unlikely
to. Data: Anthropic HH-RLHF (MIT). About 15 minutes on 2 CPU cores for N = 1000.

    python benchmarks/reward_probe.py 1000
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tuneforge.data.preferences import build_pairs
from tuneforge.models import load_model, load_tokenizer

HH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh_rlhf"
LAYERS = [6, 12, 18, 24, 30]


def feats(model, tok, split, n):
    rows = [json.loads(line) for line in open(HH / f"{split}.jsonl")][:n]
    pairs, _ = build_pairs(rows, tok, template="chat", max_length=192, max_prompt_length=64)
    out = []
    t = time.time()
    for p in pairs:
        sides = []
        for key in ("chosen_ids", "rejected_ids"):
            ids = p["prompt_ids"] + p[key]
            with torch.no_grad():
                hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            start = len(p["prompt_ids"])
            f = {}
            for layer in LAYERS:
                h = hs[layer][0]
                f[f"last{layer}"] = h[-1].numpy()
                f[f"mean{layer}"] = h[start:].mean(0).numpy()
            f["len"] = np.array([np.log(len(p[key]))])
            sides.append(f)
        out.append(sides)
    print(split, len(out), f"{time.time() - t:.0f}s", flush=True)
    return out


def xy(data, key):
    d = np.stack([c[key] - r[key] for c, r in data])
    return np.concatenate([d, -d]), np.concatenate([np.ones(len(d)), np.zeros(len(d))])


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    torch.set_num_threads(2)
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct", device="cpu").eval()
    tr, va = feats(model, tok, "train", n), feats(model, tok, "validation", 300)
    for key in ["len"] + [f"{k}{layer}" for layer in LAYERS for k in ("last", "mean")]:
        Xtr, ytr = xy(tr, key)
        Xva, yva = xy(va, key)
        best = None
        half = len(tr)
        idx = np.arange(half)
        a, b = idx[: half // 2], idx[half // 2 :]
        for C in (0.001, 0.01, 0.1, 1.0):
            accs = []
            for f1, f2 in ((a, b), (b, a)):
                fit_rows, test_rows = np.r_[f1, f1 + half], np.r_[f2, f2 + half]
                sc = StandardScaler(with_mean=False).fit(Xtr[fit_rows])
                m = LogisticRegression(C=C, max_iter=2000, fit_intercept=False)
                m.fit(sc.transform(Xtr[fit_rows]), ytr[fit_rows])
                accs.append(m.score(sc.transform(Xtr[test_rows]), ytr[test_rows]))
            if best is None or np.mean(accs) > best[0]:
                best = (np.mean(accs), C)
        sc = StandardScaler(with_mean=False).fit(Xtr)
        m = LogisticRegression(C=best[1], max_iter=2000, fit_intercept=False).fit(sc.transform(Xtr), ytr)
        print(f"{key:8s} C={best[1]:<6} cv={best[0]:.3f} val={m.score(sc.transform(Xva), yva):.3f}", flush=True)


if __name__ == "__main__":
    main()
