"""Peak host memory of loading a Llama-shaped checkpoint with quantization nf4: what loading adds to a process.

Writes a checkpoint of random weights as sharded bf16 safetensors (never the whole model in memory: one shard of
random tensors at a time), then, each in a fresh process:
  baseline  imports torch, transformers (and the Llama model code), bitsandbytes and tuneforge; reads VmHWM
  api       the same, then tuneforge.models.load_model(dir, quantization=nf4, dtype=bfloat16, device=cpu)
  cli       the same through `tuneforge train CONFIG --dry-run` (load + LoRA on all projections + parameter count)
and reports each run's peak RSS (VmHWM) minus the baseline's, against the checkpoint's bf16 size.
The bound tuneforge keeps (issue #18): added peak <= 0.4 x the bf16 checkpoint. The floor is what the loaded model
itself takes: the dense bf16 embeddings plus ~0.52 bytes a parameter for the nf4 body (4 bits + double-quantised
absmax constants); for the 1.07B shape that is ~0.33x.

    python benchmarks/load_memory.py                    # 1.07B TinyLlama shape, SmolLM2's vocabulary (2.1 GB)
    python benchmarks/load_memory.py --preset test      # 365M parameters, what tests/models/test_lean_load.py runs
    python benchmarks/load_memory.py --json out.json    # also write the figures as JSON
    python benchmarks/load_memory.py --shard            # 2 processes (gloo), train.shard: true, QLoRA nf4
    python benchmarks/load_memory.py --shard --quantization none --preset test   # LoRA over a bf16 base

--shard measures what a sharded QLoRA run's processes hold (issue #18): 2 processes load the checkpoint (nf4,
LoRA r=8 on all projections, train.shard: true) and shard it with FSDP2 as `tuneforge train` does, each in a fresh
process, reporting each process's peak RSS over the baseline (a process that imported the same and joined the
process group), once per path:
  whole       every process loads the whole base (quantised while loading), then shards it (before rank-local
              loading, and still the path for methods whose initialisation reads the base)
  rank_local  placeholders, then each process reads and quantises tensor by tensor, keeping only its shard
              (models/loader_deferred.py): what `tuneforge train` does now
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRESETS = {
    # TinyLlama-1.1B's body with SmolLM2's 49,152-token vocabulary and tied embeddings: 1.07B parameters
    "1b": dict(vocab_size=49152, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),
    # 365M parameters, 0.73 GB: big enough that fixed costs (~40 MB: bitsandbytes' first call, module objects,
    # one dense tensor in flight) stay well under the bound (0.37x at half this size, 0.36x at 1B), small enough
    # for a test; a small vocabulary, so the quantised body dominates as it does at 8B
    "test": dict(vocab_size=2048, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                 num_attention_heads=16, num_key_value_heads=4),
}
SHARD_BYTES = 500 * 10**6
IMPORTS = ("import torch, transformers, bitsandbytes, tuneforge, tuneforge.models, tuneforge.train.api\n"
           "from transformers.models.llama import modeling_llama\n")
PEAK = ("from pathlib import Path\n"
        "hwm = [l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM:')][0]\n"
        "print('VMHWM_KB', int(hwm.split()[1]), flush=True)\n")


def write_checkpoint(folder: Path, shape: dict) -> tuple[int, int]:
    """Random-weight bf16 safetensors shards of a LlamaForCausalLM with `shape`; (parameters, bytes)."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, tie_word_embeddings=True, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, dtype="bfloat16")
    with init_empty_weights():
        skeleton = LlamaForCausalLM(config)
    names = [(n, p.shape) for n, p in skeleton.named_parameters() if n != "lm_head.weight"]
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    shards, current, size, total = [], {}, 0, 0

    def flush():
        nonlocal current, size
        if current:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(current, str(folder / name), metadata={"format": "pt"})
            shards.append((name, list(current)))
            current, size = {}, 0

    params = 0
    for name, shape_ in names:
        if name.endswith("norm.weight"):
            tensor = torch.ones(shape_, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(shape_, generator=gen) * 0.02).to(torch.bfloat16)
        current[name] = tensor
        size += tensor.numel() * 2
        total += tensor.numel() * 2
        params += tensor.numel()
        if size >= SHARD_BYTES:
            flush()
    flush()
    weight_map = {t: name for name, tensors in shards for t in tensors}
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(folder)
    return params, total


def _child(code: str) -> int:
    """Run `code` in a fresh interpreter; its VmHWM in bytes."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"child failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    line = [x for x in out.stdout.splitlines() if x.startswith("VMHWM_KB")][-1]
    return int(line.split()[1]) * 1024


def measure(folder: Path, dry_run: bool = True) -> dict:
    """Peak RSS of the baseline, the API load and (dry_run) the CLI dry run, each in a fresh process."""
    base = _child(IMPORTS + PEAK)
    api = _child(IMPORTS + (
        "from tuneforge.models import load_model\n"
        f"m = load_model({str(folder)!r}, dtype='bfloat16', device='cpu', quantization='nf4')\n"
        "assert sum(1 for x in m.modules() if type(x).__name__ == 'Linear4bit') > 0\n") + PEAK)
    result = {"baseline_peak": base, "api_peak": api, "api_added": api - base}
    if dry_run:
        config = folder / "dry_run.yaml"
        config.write_text(json.dumps({
            "model": {"name": str(folder), "dtype": "bfloat16", "device": "cpu", "quantization": "nf4"},
            "method": {"name": "lora", "r": 8, "target_modules": "all-linear"},
            "output_dir": str(folder / "run"),
        }))
        cli = _child(IMPORTS + (
            "import sys\nfrom tuneforge.cli.main import main\n"
            f"sys.argv = ['tuneforge', 'train', {str(config)!r}, '--dry-run']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n") + PEAK)
        result.update(cli_peak=cli, cli_added=cli - base)
    return result


SHARD_CHILD = """
import json, os, sys, time
import torch
from pathlib import Path
from tuneforge.config import resolve_config
from tuneforge.methods import add_adapter, mark_trainable
from tuneforge.models.from_config import load_model_for
from tuneforge.train import api, launcher
from tuneforge.train.distributed import Parallel
from tuneforge.train.optim import build_optimizer
torch.set_num_threads(1)
launcher.init_from_env("cpu")
mode, config = sys.argv[1], json.loads(sys.argv[2])
def held():
    return sum((p.to_local() if hasattr(p, "to_local") else p).untyped_storage().nbytes()
               for p in model.parameters() if not p.requires_grad)
if mode != "baseline":
    cfg = resolve_config(config)
    start = time.perf_counter()
    model = api._load_model(cfg) if mode == "rank_local" else load_model_for(cfg.model)
    add_adapter(model, cfg.method)
    mark_trainable(model)
    loaded = held()
    Parallel.current().setup(model, build_optimizer(model, cfg.train), cfg.train)
    print("FIGURES", json.dumps({"loaded_bytes": loaded, "shard_bytes": held(),
                                 "seconds": time.perf_counter() - start}), flush=True)
torch.distributed.barrier()
launcher.shutdown()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_shard(folder: Path, world: int = 2, quantization: str | None = "nf4") -> dict:
    """Per process: peak RSS added over the baseline, base bytes held after loading and after sharding, seconds,
    for the `whole` and `rank_local` paths (module docstring), each a fresh group of `world` processes."""
    config = {
        "model": {"name": str(folder), "dtype": "bfloat16", "device": "cpu", "quantization": quantization},
        "method": {"name": "lora", "r": 8, "target_modules": "all-linear"},
        "train": {"shard": True},
        "output_dir": str(folder / "run"),
    }
    out = {}
    for mode in ("baseline", "whole", "rank_local"):
        port = _free_port()
        procs = []
        for rank in range(world):
            env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
                   "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)}
            code = IMPORTS + SHARD_CHILD + PEAK
            procs.append(subprocess.Popen([sys.executable, "-c", code, mode, json.dumps(config)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        ranks = []
        for proc in procs:
            stdout, stderr = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"{mode} process failed:\n{stdout[-2000:]}\n{stderr[-4000:]}")
            lines = stdout.splitlines()
            peak = int([x for x in lines if x.startswith("VMHWM_KB")][-1].split()[1]) * 1024
            figures = [json.loads(x.split(" ", 1)[1]) for x in lines if x.startswith("FIGURES")]
            ranks.append({"peak": peak, **(figures[-1] if figures else {})})
        out[mode] = ranks
    base = max(r["peak"] for r in out["baseline"])
    for mode in ("whole", "rank_local"):
        for r in out[mode]:
            r["added"] = r["peak"] - base
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    parser.add_argument("--dir", help="write (or reuse) the checkpoint here instead of a temporary folder")
    parser.add_argument("--no-cli", action="store_true", help="skip the `tuneforge train --dry-run` measurement")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--shard", action="store_true",
                        help="per-process peak RSS of a 2-process sharded QLoRA load, whole vs rank-local")
    parser.add_argument("--quantization", choices=["nf4", "none"], default="nf4",
                        help="with --shard: nf4 (QLoRA) or none (LoRA over the bf16 base)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-load-") as tmp:
        folder = Path(args.dir) if args.dir else Path(tmp) / "ckpt"
        params, size = write_checkpoint(folder, PRESETS[args.preset])
        figures = {"preset": args.preset, "parameters": params, "checkpoint_bytes": size}
        if args.shard:
            quantization = None if args.quantization == "none" else args.quantization
            figures["shard"] = measure_shard(folder, quantization=quantization)
            figures["quantization"] = quantization
        else:
            figures.update(measure(folder, dry_run=not args.no_cli))
    gb = 1e9
    if args.shard:
        print(f"checkpoint: {params / 1e9:.3f}B parameters, {size / gb:.2f} GB bf16 safetensors; 2 processes, "
              f"{figures['quantization'] or 'bf16'} base + LoRA r=8, train.shard: true")
        print(f"baseline peak RSS (imports + process group): {max(r['peak'] for r in figures['shard']['baseline']) / gb:.2f} GB")
        for mode in ("whole", "rank_local"):
            for rank, r in enumerate(figures["shard"][mode]):
                print(f"{mode:10s} process {rank}: peak RSS added {r['added'] / gb:.2f} GB "
                      f"({r['added'] / size:.2f}x the bf16 checkpoint); base bytes held after loading "
                      f"{r['loaded_bytes'] / gb:.3f} GB, after sharding {r['shard_bytes'] / gb:.3f} GB; "
                      f"{r['seconds']:.0f} s")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))
        return
    print(f"checkpoint: {params / 1e9:.3f}B parameters, {size / gb:.2f} GB bf16 safetensors")
    print(f"baseline peak RSS (imports only): {figures['baseline_peak'] / gb:.2f} GB")
    for kind in ("api", "cli"):
        if f"{kind}_added" in figures:
            added = figures[f"{kind}_added"]
            figures[f"{kind}_ratio"] = added / size
            label = "load_model(quantization=nf4)" if kind == "api" else "tuneforge train --dry-run"
            print(f"{label:30s} adds {added / gb:.2f} GB peak RSS = {added / size:.2f}x the bf16 checkpoint")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
