"""Load test of `tuneforge serve` on loopback: N chat requests, C at a time, spread over several adapters and the
base model; reports requests/s, tokens/s and p50/p95 latency, and checks that no reply leaked from another
adapter.

The server runs as `tuneforge serve` in a child process (127.0.0.1, a free port) with A random LoRA adapters
served through `--adapters`. Before the load, each model answers the prompt alone (one request at a time): its reference reply.
Under load every reply must come from its own model: decoding is greedy, so a reply equal to another model's
reference (and not its own) is cross-talk. Batching changes float rounding slightly, so a reply may rarely differ
from its own reference after a near-tie; those are counted apart ("drift"), not as cross-talk.

Bounded: at most --requests requests (<= 2000) and --max-seconds of wall time; every request has a timeout.

    python benchmarks/serve_load.py                                   # SmolLM2-135M, 4 adapters, 64 requests
    python benchmarks/serve_load.py --tiny --requests 48 --concurrency 12
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_mixed_adapters import make_adapters  # noqa: E402

PROMPT = "Write one sentence about the sea."


def start_server(base: str, adapters_dir: Path, data_dir: Path, max_batch: int, threads: int | None, log_path: Path):
    """`tuneforge serve` in a child process on 127.0.0.1 (so the load generator does not share its GIL)."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "tuneforge", "serve", "--base", base, "--base-name", "base", "--adapters",
           str(adapters_dir), "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port),
           "--max-batch-size", str(max_batch), "--log-level", "warning"]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the server did not start; see {log_path}")
        time.sleep(0.2)


async def ask(client, model: str, max_tokens: int) -> tuple[str, float, int]:
    start = time.perf_counter()
    r = await client.chat.completions.create(model=model, temperature=0, max_tokens=max_tokens,
                                             messages=[{"role": "user", "content": PROMPT}])
    return r.choices[0].message.content, time.perf_counter() - start, r.usage.completion_tokens


async def load(url: str, models: list[str], args) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=args.request_timeout)
    references = {m: (await ask(client, m, args.max_tokens))[0] for m in models}
    gate = asyncio.Semaphore(args.concurrency)
    results, errors = [], []

    async def one(i: int):
        model = models[i % len(models)]
        async with gate:
            try:
                text, seconds, tokens = await ask(client, model, args.max_tokens)
                results.append((model, text, seconds, tokens))
            except Exception as err:  # noqa: BLE001 - counted and reported
                errors.append(repr(err))

    start = time.perf_counter()
    tasks = [asyncio.create_task(one(i)) for i in range(args.requests)]
    done, pending = await asyncio.wait(tasks, timeout=args.max_seconds)
    for task in pending:
        task.cancel()
    wall = time.perf_counter() - start
    latencies = sorted(r[2] for r in results)
    crosstalk = sum(1 for m, text, _, _ in results
                    if text != references[m] and any(text == references[o] for o in models if o != m))
    drift = sum(1 for m, text, _, _ in results if text != references[m]) - crosstalk
    distinct = len(set(references.values()))
    return {"requests": args.requests, "completed": len(results), "errors": len(errors) + len(pending),
            "error_samples": errors[:3], "wall_s": wall, "requests_per_s": len(results) / wall,
            "tokens_per_s": sum(r[3] for r in results) / wall,
            "p50_s": statistics.median(latencies) if latencies else None,
            "p95_s": latencies[int(0.95 * (len(latencies) - 1))] if latencies else None,
            "crosstalk": crosstalk, "drift": drift, "distinct_reference_replies": distinct,
            "models": len(models), "concurrency": args.concurrency, "max_tokens": args.max_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama as the base (smoke run)")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--adapter-std", type=float, default=0.05, help="std of the random B factors")
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's)")
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--request-timeout", type=float, default=600)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.requests = min(args.requests, 2000)

    from tuneforge.models import load_model, tiny_llama, tiny_tokenizer

    root = Path(tempfile.mkdtemp(prefix="tf-serve-load-"))
    base = args.base
    if args.tiny:
        base = str(root / "tiny-base")
        tiny_llama().save_pretrained(base)
        tiny_tokenizer().save_pretrained(base)
    make_adapters(load_model(base, device="cpu"), args.adapters, args.rank, root / "adapters", args.adapter_std)
    proc, url = start_server(base, root / "adapters", root / "data", args.max_batch, args.threads,
                             root / "server.log")
    try:
        models = ["base"] + [f"adapter-{i}" for i in range(args.adapters)]
        report = asyncio.run(load(url, models, args))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    report["model"] = "tiny-llama" if args.tiny else args.base
    print(json.dumps(report, indent=1))
    print(f"{report['completed']}/{report['requests']} requests over {report['models']} models, "
          f"{report['concurrency']} at a time: {report['requests_per_s']:.2f} req/s, "
          f"{report['tokens_per_s']:.1f} tokens/s, p50 {report['p50_s']:.2f}s, p95 {report['p95_s']:.2f}s, "
          f"errors {report['errors']}, cross-talk {report['crosstalk']}, drift {report['drift']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if report["errors"] or report["crosstalk"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
