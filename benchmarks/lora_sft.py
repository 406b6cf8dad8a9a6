"""LoRA SFT speed and memory: tuneforge against HF peft + transformers, on the same model, batches, LoRA config and
machine, in one invocation.

Work: LoRA r=16, alpha=32 on q/k/v/o/gate/up/down of SmolLM2-135M-Instruct; batches of 4 rows x 256 tokens,
each row packing whole chat-formatted Alpaca examples (CC BY-NC 4.0) with loss on the replies; AdamW (lr 2e-4),
gradient clipping at 1.0. The reference is the fastest honest way to use the two libraries: a plain PyTorch loop
over `get_peft_model(...)` calling `model(input_ids, position_ids, labels).loss`, with transformers building the
block-diagonal mask of the packed rows from position_ids itself. Both sides start from the same adapter weights
and see the same batches, so their losses must agree step by step (the last column).

Timing alternates the two sides step by step in one process (warm-up steps first), so load on a shared machine
hits both alike; each variant runs in its own process, so one variant cannot slow the next. Peak RSS comes from a
fresh child process per side (VmHWM), run one after another.

    python benchmarks/lora_sft.py                  # eager, selective, checkpointing, partial, compile, qlora, padded
    python benchmarks/lora_sft.py --variants eager --steps 10 --warmup 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import common  # noqa: E402

# variant -> (our setting, their setting); peft + transformers have no selective checkpointing, so our selective
# row is compared with their eager one (the fastest they offer at full memory), and so is our partial row
# (checkpointing only the first --checkpoint-layers blocks: the memory/speed dial between eager and checkpointing).
# padded: the same examples each step, packed on our side and padded to the longest on theirs (what a user of the
# two libraries gets without packing): the one row that measures packing itself; every other row packs both sides.
VARIANTS = {
    "eager": ("eager", "eager"),
    "selective": ("selective", "eager"),
    "checkpointing": ("checkpointing", "checkpointing"),
    "partial": ("partial", "eager"),
    "compile": ("compile", "compile"),
    "qlora": ("eager", "eager"),
    "padded": ("eager", "padded"),
}
LR, CLIP, R, ALPHA = 2e-4, 1.0, 16, 32


class Ours:
    """tuneforge: load_model + add_adapter + the SFT task's loss through the training loop's own backward."""

    def __init__(self, variant: str, rows_per_step: list[list[dict]], device: str, quantization: str | None = None,
                 dtype: str = "float32", checkpoint_layers: int | None = None):
        from tuneforge.methods import add_adapter, trainable_parameters
        from tuneforge.models import load_model, load_tokenizer
        from tuneforge.models.fused_mlp import use_fused_mlp
        from tuneforge.train.loop import _checkpointing
        from tuneforge.train.optim import build_optimizer
        from tuneforge.train.tasks.sft import SFTTask
        from tuneforge.config.schema import TrainConfig

        tokenizer = load_tokenizer(common.MODEL)
        quant = {"quantization": quantization} if quantization else {}
        self.model = load_model(common.MODEL, device=device, dtype=dtype, **quant)
        torch.manual_seed(0)
        add_adapter(self.model, "lora", r=R, lora_alpha=ALPHA, target_modules=common.TARGETS)
        use_fused_mlp(self.model)  # as train() does after adding the adapter
        if variant != "compile":  # as train() does unless it compiles
            from tuneforge.models.norm_recompute import use_norm_recompute

            use_norm_recompute(self.model)
        self.model.train()
        self.task = SFTTask(tokenizer.pad_token_id)
        self.batches = [_to(self.task.collate(rows), device) for rows in rows_per_step]
        cfg = TrainConfig(learning_rate=LR, weight_decay=0.0, max_grad_norm=CLIP)
        self.optimizer = build_optimizer(self.model, cfg)
        self.params = [p for _, p in trainable_parameters(self.model)]
        mode = {"checkpointing": True, "partial": True, "selective": "elementwise"}.get(variant, False)
        self._ckpt = _checkpointing(self.model, mode, checkpoint_layers if variant == "partial" else None)
        self._ckpt.__enter__()
        if variant == "compile":
            from tuneforge.train.compile import compile_blocks

            compile_blocks(self.model)

    def lora_weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.model.named_parameters() if "lora_" in n}

    def close(self) -> None:
        """Leave the checkpointing context (at interpreter exit transformers could no longer import its parts)."""
        self._ckpt.__exit__(None, None, None)

    def step(self, i: int) -> float:
        from tuneforge.train.loop import accumulate

        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, targets = accumulate(self.model, self.task, [self.batches[i]])
        torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        self.optimizer.step()
        return loss_sum / targets


class Theirs:
    """HF peft + transformers in a plain PyTorch loop (their documented usage, no Trainer overhead)."""

    def __init__(self, variant: str, rows_per_step: list[list[dict]], device: str, pad_token_id: int,
                 quantization: str | None = None, dtype: str = "float32"):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        extra = {}
        if quantization:
            extra["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=quantization, bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=getattr(torch, dtype))
        model = AutoModelForCausalLM.from_pretrained(common.model_dir(), dtype=getattr(torch, dtype), **extra).to(device)
        if variant == "checkpointing":
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=common.TARGETS, lora_dropout=0.0)
        self.model = get_peft_model(model, cfg)
        self.model.train()
        collate = common.padded_batch if variant == "padded" else common.reference_batch
        self.batches = [_to(collate(rows, pad_token_id), device) for rows in rows_per_step]
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=LR, weight_decay=0.0)
        self.forward = torch.compile(self.model) if variant == "compile" else self.model

    def load_lora(self, weights: dict[str, torch.Tensor]) -> None:
        """Start from our adapter's initial weights (both tools name them ...lora_A.default.weight)."""
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if "lora_" in name:
                    key = name.replace("base_model.model.", "")
                    p.copy_(weights[key])

    def step(self, i: int) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.forward(**self.batches[i], use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        self.optimizer.step()
        return float(loss.detach())


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(side: str, variant: str, rows_per_step, device: str, pad_token_id: int, dtype: str = "float32",
          checkpoint_layers: int | None = None):
    quantization = "nf4" if variant == "qlora" else None
    ours, theirs = VARIANTS[variant]
    if side == "ours":
        return Ours(ours, rows_per_step, device, quantization, dtype, checkpoint_layers)
    if side == "ours_lora":  # the dense LoRA that QLoRA is compared against
        return Ours(ours, rows_per_step, device, dtype=dtype)
    return Theirs(theirs, rows_per_step, device, pad_token_id, quantization, dtype)


def probe(args) -> None:
    """Child process: build one side, run warm-up + a few steps, print its memory as JSON."""
    from tuneforge.models import load_tokenizer

    tokenizer = load_tokenizer(common.MODEL)
    steps = args.warmup + 2
    rows = common.packed_rows(tokenizer, 4 * steps, args.seq_len)
    rows_per_step = [rows[4 * i: 4 * i + 4] for i in range(steps)]
    before = common.rss_mb("VmRSS")
    side = build(args.probe, args.variant, rows_per_step, args.device, tokenizer.pad_token_id, args.dtype,
                 args.checkpoint_layers)
    loaded = common.rss_mb("VmRSS")
    for i in range(steps):
        side.step(i)
    from tuneforge.quant import weight_bytes

    weights = weight_bytes(side.model) / 2**20  # parameters, buffers and quantisation constants (tied: once)
    # On a GPU the memory that limits batch and model size is the device's: report torch's peak allocation.
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else common.rss_mb("VmHWM")
    getattr(side, "close", lambda: None)()
    print(json.dumps({"peak_mb": peak, "loaded_mb": loaded - before, "weights_mb": weights}))


def measure_memory(side: str, args) -> dict:
    cmd = [sys.executable, __file__, "--probe", side, "--variant", args.variant, "--warmup", str(args.warmup),
           "--seq-len", str(args.seq_len), "--device", args.device, "--dtype", args.dtype,
           "--checkpoint-layers", str(args.checkpoint_layers)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_variant(variant: str, args, tokenizer, peak_gflops: float) -> list[str]:
    steps = args.warmup + args.steps
    rows = common.packed_rows(tokenizer, 4 * steps, args.seq_len)
    rows_per_step = [rows[4 * i: 4 * i + 4] for i in range(steps)]
    names = ("ours", "ours_lora") if variant == "qlora" else ("ours", "theirs")
    sides = {n: build(n, variant, rows_per_step, args.device, tokenizer.pad_token_id, args.dtype, args.checkpoint_layers)
             for n in names}
    if "theirs" in sides:
        sides["theirs"].load_lora(sides["ours"].lora_weights())
    times = {n: [] for n in names}
    losses = {n: [] for n in names}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for i in range(steps):
        for n, side in sides.items():
            _sync(args.device)
            t = clock()
            losses[n].append(side.step(i))
            _sync(args.device)
            if i >= args.warmup:
                times[n].append(clock() - t)
    tokens = [common.real_tokens(r) for r in rows_per_step[args.warmup:]]
    config = sides["ours"].model.config
    out = {}
    for n in names:
        per_step = statistics.median(times[n])
        total_flops = 0.0
        for r in rows_per_step[args.warmup:]:
            ref = common.reference_batch(r, 0)
            labels = int((ref["labels"][:, 1:] != common.IGNORE).sum())
            if n == "theirs" and variant == "padded":  # they compute every padded position
                positions = common.padded_batch(r, 0)["input_ids"].numel()
            else:
                positions = ref["input_ids"].numel()
            head = positions if n == "theirs" else labels
            total_flops += common.step_flops(config, r, R, head, positions)
        out[n] = {"tok_s": statistics.median([k / t for k, t in zip(tokens, times[n])]), "s_step": per_step,
                  "mfu": total_flops / len(tokens) / per_step / 1e9 / peak_gflops}
    for side in sides.values():
        getattr(side, "close", lambda: None)()
    del sides
    if args.skip_memory:
        mem = {n: {"peak_mb": float("nan"), "weights_mb": float("nan")} for n in names}
    else:
        mem = {n: measure_memory(n, argparse.Namespace(**{**vars(args), "variant": variant})) for n in names}
    a, b = names
    dloss = max(abs(x - y) for x, y in zip(losses[a], losses[b]))
    label = {"qlora": "QLoRA nf4 vs our dense LoRA", "selective": "selective vs their eager",
             "partial": f"first {args.checkpoint_layers} blocks checkpointed vs their eager",
             "padded": "eager, ours packed vs theirs padded (same examples)"}.get(variant, variant)
    return [label, f"{out[a]['tok_s']:.0f}", f"{out[b]['tok_s']:.0f}", f"{out[a]['tok_s'] / out[b]['tok_s']:.2f}x",
            f"{out[a]['s_step']:.2f}", f"{out[b]['s_step']:.2f}",
            f"{mem[a]['peak_mb'] / 1024:.2f}", f"{mem[b]['peak_mb'] / 1024:.2f}",
            f"{mem[a]['peak_mb'] / mem[b]['peak_mb']:.2f}x",
            f"{100 * out[a]['mfu']:.0f}%", f"{100 * out[b]['mfu']:.0f}%",
            f"{mem[a]['weights_mb']:.0f} / {mem[b]['weights_mb']:.0f}", f"{dloss:.1e}"]


def _variant_in_child(variant: str, peak: float) -> list[str]:
    """One variant in a fresh process with this invocation's other options: variants that ran earlier in the same
    process change later ones (measured: an eager row run after the compiled ones had the reference 26% slower
    and ours 7% slower than when run first)."""
    argv = sys.argv[1:]
    rest, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--variants":
            skip = True
        elif not arg.startswith("--variants="):
            rest.append(arg)
    cmd = [sys.executable, __file__, "--variants", variant, "--row-json", "--peak-gflops", str(peak), *rest]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="base weights (and QLoRA compute) dtype on both sides; adapters train in fp32")
    parser.add_argument("--checkpoint-layers", type=int, default=8,
                        help="partial variant: how many blocks (the first ones) our side recomputes")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-memory", action="store_true", help="timing only (no child processes)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time, a fair ratio on a crowded machine with --threads 1")
    parser.add_argument("--row-json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peak-gflops", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="eager", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        return probe(args)
    from tuneforge.models import load_tokenizer

    tokenizer = load_tokenizer(common.MODEL)
    start_load = common.load_average()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    peak = args.peak_gflops or common.matmul_peak_gflops(clock=clock, device=args.device,
                                                         dtype=getattr(torch, args.dtype))
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    memory = "peak GB = GPU memory allocated" if args.device.startswith("cuda") else "peak GB = process peak RSS"
    print(f"device {args.device} ({where}), {args.dtype} base, {memory}, {args.clock} clock, "
          f"{args.dtype} matmul peak {peak:.0f} GFLOP/s, "
          f"{args.warmup} warm-up + {args.steps} timed steps, batch 4 x {args.seq_len}; load average {start_load}")
    header = ["variant", "ours tok/s", "theirs tok/s", "speed", "ours s/step", "theirs s/step", "ours peak GB",
              "theirs peak GB", "memory", "ours % peak", "theirs % peak", "weights MB (ours / theirs)", "max |dloss|"]
    body = []
    variants = args.variants.split(",")
    for variant in variants:
        row = run_variant(variant, args, tokenizer, peak) if len(variants) == 1 else _variant_in_child(variant, peak)
        body.append(row)
        if args.row_json:
            print(json.dumps(row))
        else:
            print(common.table(header, body[-1:]), flush=True)
    if args.row_json:
        return
    print(f"\nload average: {start_load} at start, {common.load_average()} at end\n")
    print(common.table(header, body))


if __name__ == "__main__":
    main()
