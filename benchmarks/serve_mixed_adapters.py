"""Many adapters on one base against one merged adapter: generation throughput of mixed batches, and the latency
of switching adapters through the pool. What `tuneforge serve` runs, minus HTTP.

Work: K random LoRA adapters (rank 16, alpha 32, every linear projection) for the base model; a batch of B
requests with P-token prompts (random ids, the same for every side), each generating exactly G tokens (end of
turn suppressed with min_new_tokens, so every side does the same work). Greedy decoding, fp32.

Sides, timed alternately in one process so load on a shared machine hits them alike (median of the repeats).
Both wall-clock throughput and throughput per CPU-second of this process are shown: on a machine shared with
other work, CPU time (with --threads 1) is the steadier measure of what each side costs.
    merged   one adapter merged into a copy of the base (plain transformers model): the fastest a single fine-tune
             can be served, and the baseline of the ratio column
    mixed-K  K distinct adapters loaded in the pool, rows spread round-robin over them, generate inside
             mixed_batch (one forward pass per token for all rows)

With --with-loop, each mixed side is also run through the generic per-adapter loop of a mixed batch (the batched
LoRA path of methods/_mixed_lora.py switched off): the "loop-K" rows.

Switch latency: `pool.ensure` for an adapter already in the cache (a hit: a dictionary move), and for one evicted
to disk (a cold load: read safetensors, inject into the layers), plus the time to the first token of a one-row
request right after switching to another cached adapter.

    python benchmarks/serve_mixed_adapters.py                     # SmolLM2-135M, K = 1, 4, 8, 16
    python benchmarks/serve_mixed_adapters.py --tiny --repeats 1  # smoke run on a tiny random Llama
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapters(model, count: int, rank: int, root: Path, b_std: float = 0.01) -> dict[str, Path]:
    """count random LoRA adapters saved in peft's format (A and B both random, so none is the identity)."""
    from tuneforge.io import save_adapter
    from tuneforge.methods import add_adapter, delete_adapter

    paths = {}
    for i in range(count):
        torch.manual_seed(1000 + i)
        add_adapter(model, "lora", "tmp", r=rank, lora_alpha=2 * rank, target_modules=TARGETS,
                    init_lora_weights="gaussian")
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lora_B.tmp." in name:
                    p.normal_(0, b_std)
        paths[f"adapter-{i}"] = save_adapter(model, root / f"adapter-{i}", adapter_name="tmp")
        delete_adapter(model, "tmp")
    return paths


def generate(model, ids, mask, new_tokens: int, rows=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to generate exactly new_tokens per row (inside a mixed batch
    when rows are given)."""
    from transformers import GenerationConfig

    from tuneforge.methods import mixed_batch

    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=0, eos_token_id=model.config.eos_token_id)
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.no_grad():
        if rows is None:
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        else:
            with mixed_batch(model, rows):
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert out.shape[1] == ids.shape[1] + new_tokens
    return elapsed, cpu


@contextmanager
def per_adapter_loop():
    """Switch the batched LoRA path off, so mixed batches take AdapterLayer's generic per-adapter loop."""
    from tuneforge.methods.lora import LoraLinear

    batched = LoraLinear.mixed_adapters_forward
    LoraLinear.mixed_adapters_forward = lambda self, x, result, rows: None
    try:
        yield
    finally:
        LoraLinear.mixed_adapters_forward = batched


def switch_latency(pool, paths: dict[str, Path], model, ids) -> dict:
    """Cache hit and cold load of pool.ensure, and time to first token after a switch between cached adapters."""
    names = list(paths)[:2]
    hits, colds, first_tokens = [], [], []
    for _ in range(5):
        for name in names:
            pool.ensure({n: paths[n] for n in names})
            start = time.perf_counter()
            slots = pool.ensure({name: paths[name]})
            hits.append(time.perf_counter() - start)
            first_tokens.append(generate(model, ids[:1], torch.ones_like(ids[:1]), 1, [slots[name]])[0])
        pool.evict(names[0])
        start = time.perf_counter()
        pool.ensure({names[0]: paths[names[0]]})
        colds.append(time.perf_counter() - start)
    return {"cache_hit_ms": 1e3 * statistics.median(hits), "cold_load_ms": 1e3 * statistics.median(colds),
            "first_token_after_switch_ms": 1e3 * statistics.median(first_tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of --base (smoke run)")
    parser.add_argument("--counts", default="1,4,8,16", help="numbers of distinct adapters per mixed batch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--with-loop", action="store_true", help="also time the generic per-adapter loop")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from tuneforge.methods import merge_adapters, unload
    from tuneforge.io import load_adapter
    from tuneforge.models import load_model, tiny_llama
    from tuneforge.serve.pool import AdapterPool

    counts = [int(c) for c in args.counts.split(",")]
    model = tiny_llama() if args.tiny else load_model(args.base, device="cpu")
    root = Path(tempfile.mkdtemp(prefix="tf-bench-adapters-"))
    paths = make_adapters(model, max(counts), args.rank, root)
    merged = copy.deepcopy(model)
    load_adapter(merged, paths["adapter-0"])
    merge_adapters(merged)
    merged = unload(merged)
    pool = AdapterPool(model, budget_bytes=2**34)
    slots = pool.ensure(paths)

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size - 10, (args.batch_size, args.prompt_tokens), generator=gen)
    mask = torch.ones_like(ids)
    sides = {"merged": None}
    for k in counts:
        sides[f"mixed-{k}"] = [slots[f"adapter-{i % k}"] for i in range(args.batch_size)]
    if args.with_loop:
        sides.update({f"loop-{k}": sides[f"mixed-{k}"] for k in counts})
    generate(merged, ids, mask, 2)  # warm-up of both models
    generate(model, ids, mask, 2, sides[f"mixed-{counts[0]}"])
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, rows in sides.items():
            with per_adapter_loop() if name.startswith("loop-") else nullcontext():
                times[name].append(generate(merged if rows is None else model, ids, mask, args.new_tokens, rows))
    tokens = args.batch_size * args.new_tokens
    rate = {name: (tokens / statistics.median(w for w, _ in m), tokens / statistics.median(c for _, c in m))
            for name, m in times.items()}
    results = {"model": "tiny-llama" if args.tiny else args.base, "batch_size": args.batch_size,
               "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "rank": args.rank,
               "repeats": args.repeats, "threads": torch.get_num_threads(), "sides": {}}
    print(f"{args.batch_size} rows x {args.new_tokens} new tokens, {args.prompt_tokens}-token prompts, LoRA r={args.rank}, "
          f"median of {args.repeats} repeats, {torch.get_num_threads()} threads")
    print(f"{'side':10s} {'tokens/s':>9s} {'ratio':>6s} {'tokens/CPU-s':>13s} {'ratio':>6s}")
    for name, (wall_rate, cpu_rate) in rate.items():
        wall_ratio, cpu_ratio = wall_rate / rate["merged"][0], cpu_rate / rate["merged"][1]
        results["sides"][name] = {"tokens_per_s": wall_rate, "ratio_to_merged": wall_ratio,
                                  "tokens_per_cpu_s": cpu_rate, "cpu_ratio_to_merged": cpu_ratio,
                                  "wall_and_cpu_seconds": times[name]}
        print(f"{name:10s} {wall_rate:9.1f} {wall_ratio:5.2f}x {cpu_rate:13.1f} {cpu_ratio:5.2f}x")
    latency = switch_latency(pool, paths, model, ids)
    results["switch"] = latency
    print(f"adapter switch: cache hit {latency['cache_hit_ms']:.3f} ms, cold load from disk "
          f"{latency['cold_load_ms']:.1f} ms, first token after a switch {latency['first_token_after_switch_ms']:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
