"""LoRA and QLoRA SFT at real shapes on one GPU: tuneforge against peft + transformers, in one invocation.

Models: random-init Llama-3.2-1B and Llama-3.1-8B shapes (no download: speed and memory depend on shapes, not on
weight values), built in bf16 on the GPU. Work: LoRA r=16, alpha=32 on q/k/v/o/gate/up/down, AdamW (lr 2e-4),
clipping at 1.0, 4 packed rows x 2048 tokens a step, examples of 128-1024 tokens with the loss on every token but
each example's first. QLoRA: both sides quantise the same bf16 base to nf4 (double quantisation, bf16 compute)
with tuneforge.quant.quantize_model, so only the training path differs; no k-bit preparation on either side.

Sides, each in a fresh process (so each has its own peak-memory reading):
  ours       tuneforge: add_adapter + the SFT task's loss through the training loop's `accumulate`
             (packed rows without a mask: flash-attn varlen when installed, else sdpa from position_ids)
  ours_ew    the same with `train.gradient_checkpointing: elementwise` (recompute the cheap elementwise ops only)
  ours_ckptN the same with `gradient_checkpointing: true` on the first N blocks (`ours_ckpt`: every block)
  peft_sdpa  get_peft_model + model(input_ids, position_ids, labels).loss, sdpa (transformers builds the packed
             rows' block mask from position_ids)
  peft_fa2   the same with attn_implementation flash_attention_2, rows flattened into one (its varlen path);
             only when flash-attn imports
Both sides start from the same LoRA weights (ours writes them, peft reads them), see the same batches, and print
per-step losses; the table gives tokens/s, peak GPU memory (torch.cuda.max_memory_allocated, weights included),
MFU against the measured bf16 matmul peak, and the largest loss difference from ours.

    python benchmarks/gpu_scale.py                              # 1b and 8b, lora and qlora (~6 minutes on an H200)
    python benchmarks/gpu_scale.py --shapes 1b --modes lora --steps 4
    python benchmarks/gpu_scale.py --shapes 8b --modes qlora --sides ours,ours_ew,ours_ckpt12 --profile /tmp/prof
Without CUDA it prints why and exits 0.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SHAPES = {
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
R, ALPHA, LR, CLIP = 16, 32, 2e-4, 1.0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_rows(n_rows: int, length: int, vocab: int, seed: int = 0) -> list[dict]:
    """Packed rows of random tokens: examples of 128-1024 tokens until the row is full (the last one cut)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_rows):
        lens, left = [], length
        while left > 0:
            n = min(left, int(torch.randint(128, 1025, (1,), generator=gen)))
            lens.append(n)
            left -= n
        ids = torch.randint(0, vocab, (length,), generator=gen).tolist()
        labels, positions, start = list(ids), [], 0
        for n in lens:
            labels[start] = -100
            positions += list(range(n))
            start += n
        rows.append({"input_ids": ids, "labels": labels, "position_ids": positions, "seq_lens": lens})
    return rows


def build_base(shape: str, quantize: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, rope_theta=500000.0,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda"):  # built in bf16 on the GPU: no fp32 copy, no host memory
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    if quantize:
        from tuneforge.quant import quantize_model

        quantize_model(model, "nf4", compute_dtype="bfloat16", device="cuda")
    torch.cuda.empty_cache()
    return model


def run_side(args) -> dict:
    """Child process: one side, warm-up + timed steps; JSON with per-step losses, times and peak memory."""
    model = build_base(args.shape, args.mode == "qlora")
    rows = make_rows(args.rows * (args.warmup + args.steps), args.seq_len, model.config.vocab_size)
    steps = [rows[i * args.rows:(i + 1) * args.rows] for i in range(args.warmup + args.steps)]
    lora_file = Path(args.lora_file)
    checkpointing = contextlib.nullcontext()
    if args.side.startswith("ours"):
        from tuneforge.methods import add_adapter, trainable_parameters
        from tuneforge.models.fused_mlp import use_fused_mlp
        from tuneforge.models.norm_recompute import use_norm_recompute
        from tuneforge.train.activation_checkpointing import activation_checkpointing
        from tuneforge.train.loop import accumulate
        from tuneforge.train.optim import build_optimizer
        from tuneforge.train.tasks.sft import SFTTask
        from tuneforge.config.schema import TrainConfig
        from safetensors.torch import save_file

        torch.manual_seed(1)
        add_adapter(model, "lora", r=R, lora_alpha=ALPHA, target_modules=TARGETS)
        use_fused_mlp(model)
        use_norm_recompute(model)
        save_file({n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if "lora_" in n},
                  str(lora_file))
        task = SFTTask(0)
        batches = [{k: v.cuda() for k, v in task.collate(s).items()} for s in steps]
        optimizer = build_optimizer(model, TrainConfig(learning_rate=LR, max_grad_norm=CLIP))
        params = [p for _, p in trainable_parameters(model)]

        variant = args.side[len("ours"):]
        if variant == "_ew":
            checkpointing = activation_checkpointing(model, "elementwise")
        elif variant.startswith("_ckpt"):
            checkpointing = activation_checkpointing(model, True, int(variant[5:]) if variant[5:] else None)

        def step(batch):
            optimizer.zero_grad(set_to_none=True)
            loss_sum, targets = accumulate(model, task, [batch])
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            optimizer.step()
            return loss_sum / targets
    else:
        from peft import LoraConfig, get_peft_model
        from safetensors.torch import load_file

        if args.side == "peft_fa2":
            model.set_attn_implementation("flash_attention_2")
        model = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0))
        start = load_file(str(lora_file))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(start[name.replace("base_model.model.", "")].to(p.dtype))
        batches = []
        for s in steps:
            ref = common.reference_batch(s, 0)
            if args.side == "peft_fa2":  # transformers' varlen path takes one flattened row
                ref = {k: v.reshape(1, -1) for k, v in ref.items()}
            batches.append({k: v.cuda() for k, v in ref.items()})
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)

        def step(batch):
            optimizer.zero_grad(set_to_none=True)
            loss = model(**batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            optimizer.step()
            return float(loss.detach())
    model.train()
    losses, times = [], []
    with checkpointing:
        for i, batch in enumerate(batches):
            torch.cuda.synchronize()
            t = time.perf_counter()
            losses.append(float(step(batch)))
            torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
        if args.profile:  # one more step under the profiler: where the time goes, kernel by kernel
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step(batches[-1])
                torch.cuda.synchronize()
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
            (Path(args.profile) / f"{args.shape}-{args.mode}-{args.side}.txt").write_text(table)
    return {"losses": losses, "s_step": statistics.median(times),
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
            "attn": getattr(getattr(model, "config", None), "_attn_implementation", "?")}


def flops_per_step(shape: str, args) -> float:
    from transformers import LlamaConfig

    config = LlamaConfig(**SHAPES[shape])
    rows = make_rows(args.rows, args.seq_len, config.vocab_size)
    positions = args.rows * args.seq_len
    return common.step_flops(config, rows, R, positions, positions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="1b,8b")
    parser.add_argument("--modes", default="lora,qlora")
    parser.add_argument("--sides", default="ours,peft_sdpa,peft_fa2")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--profile", metavar="DIR", help="write each side's kernel-time table for one more step here")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--lora-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_scale: skipped, no CUDA device")
        return
    if args.side:
        print(json.dumps(run_side(args)))
        return
    import importlib.util

    sides = [s for s in args.sides.split(",") if s != "peft_fa2" or importlib.util.find_spec("flash_attn")]
    peak = common.matmul_peak_gflops(device="cuda", dtype=torch.bfloat16)
    print(f"{torch.cuda.get_device_name()}: bf16 matmul peak {peak / 1000:.0f} TFLOP/s; batch {args.rows} x "
          f"{args.seq_len}, {args.warmup} warm-up + {args.steps} timed steps; sides {', '.join(sides)}", flush=True)
    header = ["shape", "mode", "side", "attention", "tokens/s", "s/step", "peak GB", "MFU", "max |dloss| vs ours"]
    body = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            flops = flops_per_step(shape, args)
            for mode in args.modes.split(","):
                ours = None
                for side in sides:
                    cmd = [sys.executable, __file__, "--side", side, "--shape", shape, "--mode", mode,
                           "--lora-file", os.path.join(tmp, f"{shape}-{mode}.safetensors"),
                           "--steps", str(args.steps), "--warmup", str(args.warmup), "--rows", str(args.rows),
                           "--seq-len", str(args.seq_len)] + (["--profile", args.profile] if args.profile else [])
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode != 0:
                        body.append([shape, mode, side, "failed", done.stderr.strip().splitlines()[-1][:80]
                                     if done.stderr.strip() else f"exit {done.returncode}", "", "", "", ""])
                        print(done.stderr[-3000:], file=sys.stderr)
                        continue
                    res = json.loads(done.stdout.strip().splitlines()[-1])
                    ours = res if side == "ours" else ours
                    dloss = (max(abs(a - b) for a, b in zip(res["losses"], ours["losses"]))
                             if ours is not None else float("nan"))
                    body.append([shape, mode, side, res["attn"], f"{args.rows * args.seq_len / res['s_step']:.0f}",
                                 f"{res['s_step']:.3f}", f"{res['peak_gb']:.2f}",
                                 f"{100 * flops / res['s_step'] / 1e9 / peak:.0f}%", f"{dloss:.1e}"])
                    print(common.table(header, body[-1:]), flush=True)
    print()
    print(common.table(header, body))


if __name__ == "__main__":
    main()
