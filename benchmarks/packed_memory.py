"""Memory of one packed forward + backward against the row length: linear without an L x L mask.

A small random Llama (hidden 256, 4 layers, 4 heads, LoRA-free: every weight trains, fp32, CPU) runs the SFT
task's loss and backward on one packed row of L tokens (examples of 512 tokens), each length in a fresh process.
Reported: the peak resident memory the step adds over the process just before it (VmHWM after resetting it through
/proc/self/clear_refs, minus VmRSS), and that per 1k tokens: flat per-token cost means linear growth.
Rows:
  no mask     what tuneforge does now: the collator gives example lengths, attention runs per example
  dense mask  what it did before: a (1, 1, L, L) additive fp32 mask for the row (models/packed_attention.py's
              block_causal_mask, still used for model types that cannot read example lengths)

    python benchmarks/packed_memory.py                         # 4k, 8k, 16k (dense mask: 4k and 8k only)
    python benchmarks/packed_memory.py --lengths 4096,8192,16384,32768 --dense-lengths 4096,8192,16384
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

EXAMPLE = 512


def child(length: int, mode: str) -> dict:
    import torch

    from tuneforge.models import packed_attention
    from tuneforge.models.tiny import tiny_llama
    from tuneforge.train.tasks.sft import SFTTask

    torch.manual_seed(0)
    model = tiny_llama(seed=0, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=max(length, 4096))
    model.config._attn_implementation = "sdpa"
    if mode == "dense":  # the model type is treated as one that cannot read lengths: it gets the L x L mask
        packed_attention.PACKED_MODEL_TYPES = frozenset()
    lens = [EXAMPLE] * (length // EXAMPLE) + ([length % EXAMPLE] if length % EXAMPLE else [])
    ids = torch.randint(0, 256, (length,)).tolist()
    labels = list(ids)
    start = 0
    for n in lens:
        labels[start] = -100
        start += n
    task = SFTTask(259)
    batch = task.collate([{"input_ids": ids, "labels": labels, "seq_lens": lens}])
    task.loss_sum(model, task.collate([{"input_ids": ids[:64], "labels": labels[:64], "seq_lens": [64]}])).backward()
    model.zero_grad(set_to_none=True)  # a first small step: one-time allocations out of the way
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = common.rss_mb("VmRSS")
    task.loss_sum(model, batch).backward()
    return {"length": length, "mode": mode, "added_mb": common.rss_mb("VmHWM") - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="4096,8192,16384")
    parser.add_argument("--dense-lengths", default="4096,8192")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1])))
        return
    runs = [(int(n), "none") for n in args.lengths.split(",")]
    runs += [(int(n), "dense") for n in args.dense_lengths.split(",") if n]
    body = []
    for length, mode in runs:
        out = subprocess.run([sys.executable, __file__, "--child", str(length), mode], capture_output=True,
                             text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{mode} at {length} tokens failed:\n{out.stderr[-3000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        body.append([{"none": "no mask", "dense": "dense mask"}[mode], f"{length:,}", f"{res['added_mb']:.0f}",
                     f"{res['added_mb'] / (length / 1024):.1f}"])
        print(common.table(["attention", "tokens", "peak added MB", "MB per 1k tokens"], body[-1:]), flush=True)
    print()
    print(common.table(["attention", "tokens", "peak added MB", "MB per 1k tokens"], body))


if __name__ == "__main__":
    main()
