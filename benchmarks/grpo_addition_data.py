"""Write the seeded addition task of configs/grpo_smollm2_addition.yaml: every pair 1 <= a, b <= 15 as
{"prompt": "What is a + b?", "answer": a + b}, shuffled with seed 0: the first 48 are the test prompts (reported,
never used to choose anything), the next 24 the validation prompts (evaluated during training; save_best chooses
the checkpoint on them), the other 153 the training prompts. No pair is in two files. Generated, no license needed.

    python benchmarks/grpo_addition_data.py [out_dir]      (default configs/data/addition)
"""
import json
import random
import sys
from pathlib import Path


def main(out: str = "configs/data/addition", seed: int = 0, test: int = 48, validation: int = 24) -> None:
    pairs = [(a, b) for a in range(1, 16) for b in range(1, 16)]
    random.Random(seed).shuffle(pairs)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    parts = (("test", pairs[:test]), ("validation", pairs[test : test + validation]),
             ("train", pairs[test + validation :]))
    for name, part in parts:
        rows = [{"prompt": f"What is {a} + {b}?", "answer": a + b} for a, b in part]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{root / name}.jsonl: {len(rows)} prompts")


if __name__ == "__main__":
    main(*sys.argv[1:2])
