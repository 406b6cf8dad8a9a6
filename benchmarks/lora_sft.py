"""LoRA SFT speed and memory through `tuneforge train`, against HF peft + transformers on the same work, machine and
batches, in one invocation.

Work: LoRA r=16, alpha=32 on q/k/v/o/gate/up/down of SmolLM2-135M-Instruct; batches of 4 rows x 256 tokens,
each row packing whole chat-formatted Alpaca examples (CC BY-NC 4.0) with loss on the replies; AdamW (lr 2e-4,
constant), gradient clipping at 1.0.

Our side is the real command: a fresh process runs `tuneforge train CONFIG --no-resume` (the CLI entry point,
so `train()`, its data pipeline, `run_training` with its collator, progress bar, metrics.jsonl, clipping,
scheduler and final checkpoint). The benchmark only watches it through torch's global hooks: the first module
call marks the end of set-up (and hands the adapter's initial weights to the reference), and the post-hook of
every optimizer step reports the step's wall time and waits for its turn. A step's time is what the user's loop
spends from one optimizer update to the next: the previous step's scheduler, logging and progress bar, this
step's collation, forward, backward, clipping and update.

The reference is a second fresh process: the fastest honest way to use the two libraries, a plain PyTorch loop
over `get_peft_model(...)` calling `model(input_ids, position_ids, labels).loss` (transformers builds the
block-diagonal mask of the packed rows from position_ids itself), collating its rows inside the timed step too.
It gets the very rows our loop draws (tuneforge's own data pipeline and `DataOrder` with the run's seed) and our
adapter's initial weights, so without dropout the losses agree step by step (the last column); with dropout the
two draw different masks and the column only says how far apart the runs drift.

The two processes alternate step by step (one waits while the other runs), so load on a shared machine hits
both alike. Peak memory is each whole process's peak RSS (VmHWM: loading, data, training, final save), or on a
GPU torch's peak allocation. The fp32 matmul peak is measured several times in the same run (before, between
and after the variants, while both sides wait) and the best is used, so "% peak" cannot pass 100%.

    python benchmarks/lora_sft.py                           # rows: eager (no dropout), dropout (0.05)
    python benchmarks/lora_sft.py --variants eager,dropout,checkpointing,partial,selective,compile,qlora,padded
    python benchmarks/lora_sft.py --variants bf16,bf16-dropout,bf16-peft   # train.base_matmul_dtype: bfloat16
"""
from __future__ import annotations

import argparse
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

LR, CLIP, R, ALPHA, SEED = 2e-4, 1.0, 16, 32, 42
# variant -> (our train: keys, their setting, lora_dropout, quantization, label). Their setting: eager,
# checkpointing, compile or padded (one example per row, right-padded: what a user who does not pack collates).
VARIANTS = {
    "eager": ({}, "eager", 0.0, None, "eager, lora_dropout 0"),
    "dropout": ({}, "eager", 0.05, None, "eager, lora_dropout 0.05"),
    "checkpointing": ({"gradient_checkpointing": True}, "checkpointing", 0.0, None, "checkpointing, both sides"),
    "partial": ({"gradient_checkpointing": True}, "eager", 0.0, None, "first {n} blocks checkpointed vs their eager"),
    "selective": ({"gradient_checkpointing": "elementwise"}, "eager", 0.0, None, "selective vs their eager"),
    "compile": ({"compile": True}, "compile", 0.0, None, "torch.compile, both sides"),
    "qlora": ({}, "eager", 0.0, "nf4", "QLoRA nf4, both sides"),
    "padded": ({}, "padded", 0.0, None, "eager, ours packed vs theirs padded (same examples)"),
    "bf16": ({"base_matmul_dtype": "bfloat16"}, "eager", 0.0, None, "ours bf16 base matmuls, lora_dropout 0"),
    "bf16-dropout": ({"base_matmul_dtype": "bfloat16"}, "eager", 0.05, None,
                     "ours bf16 base matmuls, lora_dropout 0.05"),
    "bf16-peft": ({"base_matmul_dtype": "bfloat16"}, "eager", 0.0, None,
                  "bf16 base, both sides (theirs: bf16 weights), lora_dropout 0"),
}
# variants whose reference loads its base in another dtype than --dtype (peft's way to a bf16 base: bf16 weights,
# fp32 adapters by its autocast_adapter_dtype; our bf16 variants keep fp32 weights and multiply bf16 copies)
THEIR_DTYPE = {"bf16-peft": "bfloat16"}


def write_config(variant: str, args, out: Path) -> Path:
    """The run config a user would write for this work."""
    import yaml

    train_keys, _, dropout, quant, _ = VARIANTS[variant]
    model = {"name": common.MODEL, "dtype": args.dtype, "device": args.device}
    if quant:
        model.update(quantization=quant, compute_dtype=args.dtype)
    train = {"max_steps": args.warmup + args.steps, "micro_batch_size": 4, "learning_rate": LR, "weight_decay": 0.0,
             "lr_schedule": "constant", "max_grad_norm": CLIP, "seed": SEED, "log_every": 1, **train_keys}
    if variant == "partial":
        train["gradient_checkpointing_layers"] = args.checkpoint_layers
    config = {
        "model": model,
        "method": {"name": "lora", "r": R, "lora_alpha": ALPHA, "lora_dropout": dropout,
                   "target_modules": common.TARGETS},
        "task": "sft",
        "data": {"train": str(common.ALPACA / "train.jsonl"), "format": "alpaca", "max_length": args.seq_len,
                 "packing": True, "limit_train": args.records},
        "train": train,
        "output_dir": str(out / "run"),
    }
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---- the two sides, each in its own process ------------------------------------------------------------------------

class Channel:
    """The child's end of the step protocol: JSON lines to the parent on the original stdout, 'go' lines back on
    stdin. Everything else the process prints (progress bar, summary) goes to stderr, which the parent logs."""

    def __init__(self, clock):
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        self.clock = clock

    def send(self, **message) -> None:
        self.out.write(json.dumps(message) + "\n")

    def wait(self) -> None:
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("benchmark parent went away")


class StepProfile:
    """--profile: torch.profiler over the timed steps, summed by kind of work (per step, seconds). `host` is the
    step's time outside every profiled op: Python, hooks, collation, logging, progress bar."""

    KINDS = (("gemm", ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm")),
             ("attention", ("attention", "tuneforge::packed")),
             ("dropout rng", ("aten::bernoulli",)),
             ("optimizer + clip", ("aten::_foreach", "aten::_fused_adam", "Optimizer.")))

    def __init__(self, enabled: bool):
        self.enabled, self.prof, self.busy, self.wait = enabled, None, 0.0, 0.0

    def start(self) -> None:
        if self.enabled and self.prof is None:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()

    def waited(self, seconds: float) -> None:
        """Time our side spent waiting for its turn inside the optimizer step's profiled range (the post-hook)."""
        if self.prof is not None:
            self.wait += seconds

    def add(self, seconds: float) -> None:
        """Wall time of one profiled step (the waits for the other side between steps are not the step's)."""
        if self.prof is not None:
            self.busy += seconds

    def stop(self, steps: int) -> dict | None:
        if self.prof is None:
            return None
        wall = self.busy
        self.prof.__exit__(None, None, None)
        out = {kind: 0.0 for kind, _ in self.KINDS}
        out["other ops"] = 0.0
        for event in self.prof.key_averages():
            seconds = event.self_cpu_time_total / 1e6
            kind = next((k for k, keys in self.KINDS if any(key in event.key for key in keys)), "other ops")
            out[kind] += seconds
        out["optimizer + clip"] -= self.wait
        out["host"] = wall - sum(out.values())
        self.prof = None
        return {k: v / steps for k, v in out.items()}


def peak_mb(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else common.rss_mb("VmHWM")


def run_ours(args) -> None:
    """`tuneforge train CONFIG --no-resume`, watched through torch's global hooks."""
    from torch.nn.modules.module import register_module_forward_pre_hook
    from torch.optim.optimizer import register_optimizer_step_post_hook

    chan = Channel(time.process_time if args.clock == "cpu" else time.perf_counter)
    state = {"resumed": 0.0, "step": 0, "setup_mb": 0.0}
    profile = StepProfile(args.profile)

    def first_call(module, inputs):  # set-up is over: the loop's first forward (the model's base transformer)
        weights = {n[n.index("layers."):]: p.detach().cpu() for n, p in module.named_parameters() if "lora_" in n}
        if not weights:
            return
        handle.remove()
        torch.save(weights, Path(args.workdir) / "initial_lora.pt")
        state["setup_mb"] = common.rss_mb("VmRSS")
        chan.send(event="ready")
        chan.wait()
        state["resumed"], state["resumed_wall"] = chan.clock(), time.perf_counter()

    def after_step(optimizer, a, kw):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = chan.clock() - state["resumed"]
        profile.add(time.perf_counter() - state["resumed_wall"])
        if state["step"] == args.warmup + args.steps - 1:
            state["profile"] = profile.stop(args.steps)
        chan.send(event="step", step=state["step"], seconds=seconds, hwm_mb=common.rss_mb("VmHWM"))
        state["step"] += 1
        waiting = time.perf_counter()
        chan.wait()
        profile.waited(time.perf_counter() - waiting)
        if state["step"] == args.warmup:
            profile.start()
        state["resumed"], state["resumed_wall"] = chan.clock(), time.perf_counter()

    handle = register_module_forward_pre_hook(first_call)
    register_optimizer_step_post_hook(after_step)
    from tuneforge.cli.main import main

    try:
        main(["train", args.config, "--no-resume"])
    except SystemExit as done:
        if done.code not in (None, 0):
            raise
    records = [json.loads(line) for line in (Path(args.workdir) / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "lr" in r]
    tokens = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}] + steps, steps)]
    chan.send(event="done", losses=[r["loss"] for r in steps], tokens=tokens, peak_mb=peak_mb(args.device),
              setup_mb=state["setup_mb"], profile=state.get("profile"))


def run_theirs(args) -> None:
    """peft + transformers in a plain PyTorch loop over the rows our loop draws."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from tuneforge.models import load_tokenizer
    from tuneforge.config import resolve_config
    from tuneforge.train.loop import DataOrder
    from tuneforge.train.tasks.sft import SFTTask

    chan = Channel(time.process_time if args.clock == "cpu" else time.perf_counter)
    cfg = resolve_config(args.config)
    _, setting, dropout, quant, _ = VARIANTS[args.variant]
    tokenizer = load_tokenizer(cfg.model.name)
    rows, _ = SFTTask().prepare(cfg, tokenizer)
    order = DataOrder(len(rows), cfg.train.micro_batch_size, cfg.train.grad_accum_steps, cfg.train.seed)
    dtype = getattr(torch, THEIR_DTYPE.get(args.variant, args.dtype))
    extra = {}
    if quant:
        extra["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant,
                                                          bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(common.model_dir(), dtype=dtype, **extra).to(args.device)
    if setting == "checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=common.TARGETS,
                                             lora_dropout=dropout))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    forward = torch.compile(model) if setting == "compile" else model
    collate = common.padded_batch if setting == "padded" else common.reference_batch
    pad = tokenizer.pad_token_id
    setup_mb = common.rss_mb("VmRSS")
    profile = StepProfile(args.profile)
    chan.send(event="ready")
    epoch, index, losses = 0, 0, []
    for step in range(cfg.train.max_steps):
        chunks, epoch, index = order.step(epoch, index)
        step_rows = [rows[i] for i in chunks[0]]
        chan.wait()
        if step == args.warmup:
            profile.start()
        if step == 0:  # our adapter's initial weights, written by our side at its first forward
            initial = torch.load(Path(args.workdir) / "initial_lora.pt")
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_" in name:
                        p.copy_(initial[name[name.index("layers."):]])
        start, start_wall = chan.clock(), time.perf_counter()
        batch = {k: v.to(args.device) for k, v in collate(step_rows, pad).items()}
        optimizer.zero_grad(set_to_none=True)
        loss = forward(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        losses.append(float(loss.detach()))
        seconds = chan.clock() - start
        profile.add(time.perf_counter() - start_wall)
        if step == cfg.train.max_steps - 1:
            summary = profile.stop(args.steps)
        ref = common.reference_batch(step_rows, 0)
        labels = int((ref["labels"][:, 1:] != common.IGNORE).sum())
        positions = ref["input_ids"].numel()
        theirs_positions = common.padded_batch(step_rows, 0)["input_ids"].numel() if setting == "padded" else positions
        chan.send(event="step", step=step, seconds=seconds, hwm_mb=common.rss_mb("VmHWM"),
                  tokens=common.real_tokens(step_rows),
                  flops_ours=common.step_flops(model.config, step_rows, R, labels, positions),
                  flops_theirs=common.step_flops(model.config, step_rows, R, theirs_positions, theirs_positions))
    chan.wait()
    chan.send(event="done", losses=losses, peak_mb=peak_mb(args.device), setup_mb=setup_mb, profile=summary)


# ---- the parent: two children in lockstep ---------------------------------------------------------------------------

class Side:
    def __init__(self, name: str, args, variant: str, config: Path, workdir: Path):
        cmd = [sys.executable, __file__, "--side", name, "--config", str(config), "--workdir", str(workdir),
               "--variant", variant, "--device", args.device, "--dtype", args.dtype, "--clock", args.clock]
        cmd += ["--warmup", str(args.warmup), "--steps", str(args.steps)] + (["--profile"] if args.profile else [])
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        self.name, self.log = name, workdir / f"{name}.log"
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log.open("w"),
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def expect(self, event: str) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text()[-3000:]
            raise RuntimeError(f"{self.name} side exited ({self.proc.wait()}) before '{event}'; its log ends:\n{tail}")
        message = json.loads(line)
        if message["event"] != event:
            raise RuntimeError(f"{self.name} side sent {message['event']!r}, expected {event!r}")
        return message

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()


def run_variant(variant: str, args, peaks: list[float]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"lora_sft_{variant}_") as tmp:
        work = Path(tmp)
        config = write_config(variant, args, work)
        ours = Side("ours", args, variant, config, work)
        theirs = Side("theirs", args, variant, config, work)
        try:
            theirs.expect("ready")
            ours.expect("ready")
            peaks.append(measure_peak(args))  # both sides loaded and waiting
            steps = {"ours": [], "theirs": []}
            for _ in range(args.warmup + args.steps):
                for side in (ours, theirs):
                    side.go()
                    steps[side.name].append(side.expect("step"))
            peaks.append(measure_peak(args))
            done = {}
            for side in (ours, theirs):
                side.go()
                done[side.name] = side.expect("done")
                side.proc.wait()
        finally:
            for side in (ours, theirs):
                if side.proc.poll() is None:
                    side.proc.kill()
    return summarise(variant, args, steps, done)


def summarise(variant: str, args, steps: dict, done: dict) -> dict:
    timed = slice(args.warmup, None)
    ref = steps["theirs"][timed]
    tokens = [s["tokens"] for s in ref]
    if done["ours"]["tokens"][timed] != tokens:
        raise RuntimeError(f"the two sides saw different batches: {done['ours']['tokens']} vs {tokens}")
    out = {}
    for name in ("ours", "theirs"):
        seconds = [s["seconds"] for s in steps[name][timed]]
        flops = statistics.mean(s[f"flops_{name}"] for s in ref)
        out[name] = {"tok_s": statistics.median(k / t for k, t in zip(tokens, seconds)),
                     "s_step": statistics.median(seconds), "flops": flops, "peak_mb": done[name]["peak_mb"],
                     "setup_mb": done[name]["setup_mb"], "losses": done[name]["losses"],
                     "profile": done[name]["profile"], "mean_s": statistics.mean(seconds),
                     "step_peak_mb": steps[name][-1]["hwm_mb"]}
    out["dloss"] = max(abs(a - b) for a, b in zip(out["ours"]["losses"], out["theirs"]["losses"]))
    return out


def measure_peak(args) -> float:
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    return common.matmul_peak_gflops(clock=clock, device=args.device, dtype=getattr(torch, args.dtype))


def row(variant: str, args, result: dict, peak: float) -> list[str]:
    a, b = result["ours"], result["theirs"]
    label = VARIANTS[variant][4].format(n=args.checkpoint_layers)
    share = lambda side: f"{100 * side['flops'] / side['s_step'] / 1e9 / peak:.0f}%"  # noqa: E731
    return [label, f"{a['tok_s']:.0f}", f"{b['tok_s']:.0f}", f"{a['tok_s'] / b['tok_s']:.2f}x",
            f"{a['s_step']:.2f}", f"{b['s_step']:.2f}", f"{a['peak_mb'] / 1024:.2f}", f"{b['peak_mb'] / 1024:.2f}",
            f"{a['peak_mb'] / b['peak_mb']:.2f}x", share(a), share(b), f"{result['dloss']:.1e}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="eager,dropout", help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--records", type=int, default=400, help="Alpaca records the run packs its rows from")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="base weights (and QLoRA compute) dtype on both sides; adapters train in fp32")
    parser.add_argument("--checkpoint-layers", type=int, default=8,
                        help="partial variant: how many blocks (the first ones) our side recomputes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each side's process")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: each side's CPU time, a fairer ratio on a crowded machine with --threads 1")
    parser.add_argument("--profile", action="store_true",
                        help="torch.profiler over the timed steps of both sides: where each step's time goes")
    parser.add_argument("--side", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="eager", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side:
        return (run_ours if args.side == "ours" else run_theirs)(args)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    start_load = common.load_average()
    peaks = [measure_peak(args) for _ in range(2)]
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    memory = "peak GB = GPU memory allocated" if args.device.startswith("cuda") else "peak GB = whole-process peak RSS"
    print(f"`tuneforge train` vs peft + transformers: device {args.device} ({where}), {args.dtype} base, {memory}, "
          f"{args.clock} clock, {args.warmup} warm-up + {args.steps} timed steps, batch 4 x {args.seq_len}; "
          f"load average {start_load}", flush=True)
    results = {}
    for variant in variants:
        results[variant] = run_variant(variant, args, peaks)
        r = results[variant]
        print(f"  {variant}: s/step ours {r['ours']['s_step']:.2f} theirs {r['theirs']['s_step']:.2f}; peak GB ours "
              f"{r['ours']['peak_mb'] / 1024:.2f} theirs {r['theirs']['peak_mb'] / 1024:.2f}; max |dloss| "
              f"{r['dloss']:.1e}; peak GB by the last step's end ours {r['ours']['step_peak_mb'] / 1024:.2f} theirs "
              f"{r['theirs']['step_peak_mb'] / 1024:.2f}", flush=True)
    peaks.append(measure_peak(args))
    peak = max(peaks)
    header = ["variant", "ours tok/s", "theirs tok/s", "speed", "ours s/step", "theirs s/step", "ours peak GB",
              "theirs peak GB", "memory", "ours % peak", "theirs % peak", "max |dloss|"]
    print(f"\n{args.dtype} matmul peak: best {peak:.0f} GFLOP/s of {len(peaks)} measurements "
          f"({', '.join(f'{p:.0f}' for p in peaks)}); load average {start_load} at start, "
          f"{common.load_average()} at end\n")
    print(common.table(header, [row(v, args, results[v], peak) for v in variants]))
    print("\nset-up GB (whole-process RSS when the first step starts: interpreter, libraries, weights, data): "
          + "; ".join(f"{v} ours {results[v]['ours']['setup_mb'] / 1024:.2f} theirs "
                      f"{results[v]['theirs']['setup_mb'] / 1024:.2f}" for v in variants))
    half = [v for v in variants if VARIANTS[v][0].get("base_matmul_dtype") == "bfloat16"]
    if half:  # their bf16 rows' GEMMs can run faster than the fp32 peak: say how they stand against bf16's
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        best = max(common.matmul_peak_gflops(clock=clock, device=args.device, dtype=torch.bfloat16) for _ in range(3))
        print(f"\nbf16 matmul peak {best:.0f} GFLOP/s (best of 3, at the end); ours as a share of it: "
              + "; ".join(f"{v} {100 * results[v]['ours']['flops'] / results[v]['ours']['s_step'] / 1e9 / best:.0f}%"
                          for v in half))
    if args.profile:
        print(profile_table(variants, results, peak))


def profile_table(variants, results, peak: float) -> str:
    """Seconds per timed step by kind of work (torch.profiler, which slows both sides a little), and the GEMMs'
    own rate against the matmul peak (their FLOPs: the step's FLOP count less attention, which is small here)."""
    kinds = [k for k, _ in StepProfile.KINDS] + ["other ops", "host"]
    body = []
    for v in variants:
        for name in ("ours", "theirs"):
            prof, r = results[v][name]["profile"], results[v][name]
            gemm_rate = r["flops"] / prof["gemm"] / 1e9 if prof["gemm"] else float("nan")
            body.append([f"{v}, {name}", *(f"{prof[k]:.3f}" for k in kinds), f"{sum(prof.values()):.3f}",
                         f"{100 * gemm_rate / peak:.0f}%"])
    return "\n" + common.table(["side", *kinds, "profiled step s", "GEMM rate / peak"], body)


if __name__ == "__main__":
    main()
