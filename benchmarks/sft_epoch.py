"""One epoch of LoRA SFT, end to end: tuneforge's `train()` (packed rows, its fast paths) against TRL's SFTTrainer
with its defaults, on the same model, records, LoRA config and learning rate. Prints wall time and the final
eval loss of each.

Work: SmolLM2-135M-Instruct, LoRA r=16 / alpha=32 on q/k/v/o/gate/up/down, 400 Stanford Alpaca records
(CC BY-NC 4.0, research use) for one epoch, learning rate 2e-4 with a linear decay and no warm-up (TRL's
schedule), sequences up to 512 tokens, loss on the replies only. TRL gets the records as conversational
prompt/completion pairs (so it applies the same chat template and trains on completions only) and keeps its
defaults otherwise: batch 8, padding to the longest example, gradient checkpointing and bf16 autocast on.
The "trl-fast" row turns the last two off, the settings that are fastest on a CPU. tuneforge packs rows of 512
tokens, one row per optimizer step (88 steps; `--ours-rows-per-step 2` gives about as many tokens per step as TRL's
8 examples, 44 steps).

Times run from the records to a trained model, loading the model included; CPU seconds (this process) are the
fairer ratio on a crowded machine when run with --threads 1. The eval loss is computed the same way for every model after training: summed cross-entropy over the reply
tokens of 64 held-out validation records divided by their number (the same tokens for all).

    python benchmarks/sft_epoch.py
    python benchmarks/sft_epoch.py --examples 400 --runs ours,trl,trl-fast   # trl: ~3 hours on a 2-core CPU
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LR, R, ALPHA, MAX_LEN, SEED = 2e-4, 16, 32, 512, 0


def records(split: str, n: int) -> list[dict]:
    from tuneforge.data import read_records
    from tuneforge.data.formatting import select_records

    return select_records(read_records(common.ALPACA / f"{split}.jsonl"), n, SEED)


def eval_loss(model, tokenizer, val_records: list[dict], device: str = "cpu") -> float:
    """Token-weighted reply cross-entropy over the validation records (full logits; any causal LM)."""
    from tuneforge.data import build_sft_examples
    from tuneforge.config.data import DataConfig
    from tuneforge.train.tasks.sft import SFTTask

    examples = build_sft_examples(val_records, tokenizer, DataConfig(format="alpaca", max_length=MAX_LEN))
    task = SFTTask(tokenizer.pad_token_id, fused_head=False)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), 8):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                     for k, v in task.collate(examples[start : start + 8]).items()}
            total += float(task.loss_sum(model, batch))
            count += task.num_targets(batch)
    return total / count


def run_ours(n: int, n_eval: int, out: Path, device: str = "cpu", rows_per_step: int = 2) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, trained model) from config to saved adapter, model loading included."""
    from tuneforge.train.api import train

    config = {
        "model": {"name": common.MODEL, "device": device},
        "method": {"name": "lora", "r": R, "lora_alpha": ALPHA, "target_modules": common.TARGETS},
        "task": "sft",
        "data": {"train": str(common.ALPACA / "train.jsonl"), "validation": str(common.ALPACA / "validation.jsonl"),
                 "format": "alpaca", "max_length": MAX_LEN, "packing": True, "limit_train": n,
                 "limit_eval": n_eval, "shuffle_seed": SEED},
        "train": {"epochs": 1, "micro_batch_size": rows_per_step, "learning_rate": LR, "lr_schedule": "linear",
                  "eval_batches": 1, "seed": SEED},
        "output_dir": str(out),
    }
    start, cpu = time.perf_counter(), time.process_time()
    train(config, progress=False, resume=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    from tuneforge.io import load_adapter
    from tuneforge.models import load_model

    model = load_model(common.MODEL, device=device, dtype="float32")
    load_adapter(model, out / "adapter")
    return wall, cpu, model


def run_trl(n: int, out: Path, fast: bool, device: str = "cpu") -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, trained model) from records to a trained model, model loading included."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tuneforge.data.formatting import to_messages
    from tuneforge.models import load_tokenizer

    rows = []
    for record in records("train", n):
        messages = to_messages(record, "alpaca")
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    start, cpu = time.perf_counter(), time.process_time()
    model = AutoModelForCausalLM.from_pretrained(common.model_dir(), dtype=torch.float32)
    extra = {"bf16": False, "gradient_checkpointing": False} if fast else {}
    args = SFTConfig(output_dir=str(out), num_train_epochs=1, learning_rate=LR, lr_scheduler_type="linear",
                     max_length=MAX_LEN, report_to=[], save_strategy="no", seed=SEED, use_cpu=device == "cpu", **extra)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=load_tokenizer(common.MODEL),
                         peft_config=LoraConfig(r=R, lora_alpha=ALPHA, target_modules=common.TARGETS,
                                                lora_dropout=0.0))
    trainer.train()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu, trainer.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--eval-examples", type=int, default=64)
    parser.add_argument("--runs", default=None,
                        help="comma-separated: ours, trl (its full defaults), trl-fast. Default: ours,trl on a "
                             "GPU; ours,trl-fast on a CPU, where TRL's defaults (bf16 autocast + checkpointing) "
                             "take about 3 hours for this epoch on 2 cores")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda: ours loads in bf16 (dtype auto) with fp32 adapters; TRL keeps its bf16 autocast")
    parser.add_argument("--ours-rows-per-step", type=int, default=1,
                        help="packed rows of 512 tokens per optimizer step on our side: 1 (88 steps over 400 "
                             "records) or 2 (about TRL's tokens per step, 44 steps)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.runs is None:
        args.runs = "ours,trl-fast" if args.device == "cpu" else "ours,trl"
    if args.threads:
        torch.set_num_threads(args.threads)
    from tuneforge.models import load_tokenizer

    tokenizer = load_tokenizer(common.MODEL)
    val = records("validation", args.eval_examples)
    start_load = common.load_average()
    print(f"{args.examples} train / {args.eval_examples} eval records, device {args.device}, "
          f"{torch.get_num_threads()} threads; "
          f"load average {start_load}", flush=True)
    body = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs.split(","):
            run_load = common.load_average()
            if name == "ours":
                wall, cpu, model = run_ours(args.examples, args.eval_examples, Path(tmp) / name, args.device,
                                            args.ours_rows_per_step)
            else:
                wall, cpu, model = run_trl(args.examples, Path(tmp) / name, name == "trl-fast", args.device)
            model = model.to(device=args.device, dtype=torch.float32)
            loss = eval_loss(model, tokenizer, val, args.device)
            body.append([name, f"{wall:.0f}", f"{cpu:.0f}", f"{loss:.4f}", run_load])
            print(common.table(["run", "wall s", "CPU s", "eval loss", "load average"], body[-1:]), flush=True)
            del model
    ours = next((row for row in body if row[0] == "ours"), None)
    for row in body:
        row += [f"{float(row[i]) / float(ours[i]):.2f}x" if ours else "" for i in (1, 2)]
    print(f"\nload average: {start_load} at start, {common.load_average()} at end\n")
    print(common.table(["run", "wall s", "CPU s", "eval loss", "load average at start", "wall / ours",
                        "CPU / ours"], body))


if __name__ == "__main__":
    main()
