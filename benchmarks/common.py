"""What the benchmark scripts share: Alpaca batches made the same way for both tools, memory and load readings,
the machine's measured fp32 matmul peak, and the FLOP count of a LoRA training step.

Data: Stanford Alpaca (CC BY-NC 4.0, research use only), the 3,998-row train split in ../shared/data/alpaca.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ALPACA = Path(os.environ.get("TUNEFORGE_BENCH_ALPACA", REPO.parent / "shared" / "data" / "alpaca"))  # env: from a worktree
# Any model name tuneforge accepts; TUNEFORGE_BENCH_MODEL points the benchmarks at another (e.g. a local copy of
# the same architecture on a machine without the packaged weights).
MODEL = os.environ.get("TUNEFORGE_BENCH_MODEL", "smollm2-135m-instruct")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IGNORE = -100


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def rss_mb(field: str = "VmHWM") -> float:
    """VmHWM (peak resident set) or VmRSS (current) of this process, in MB. A child inherits its parent's
    ru_maxrss on Linux, but VmHWM starts fresh in every exec'd process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def model_dir() -> str:
    """The plain safetensors directory our loader reads for the packaged model (so both tools read the same)."""
    from tuneforge.models.packaged import converted_gguf, resolve_model

    source = resolve_model(MODEL)
    return str(converted_gguf(source.location)) if source.is_gguf else source.location


def alpaca_examples(tokenizer, split: str = "train", limit: int | None = None, max_length: int = 256) -> list[dict]:
    """Chat-formatted Alpaca examples with labels on the reply only (our SFT pipeline, used by both sides)."""
    from tuneforge.data import build_sft_examples, read_records
    from tuneforge.config.data import DataConfig

    records = read_records(ALPACA / f"{split}.jsonl")
    if limit is not None:
        records = records[:limit]
    return build_sft_examples(records, tokenizer, DataConfig(format="alpaca", max_length=max_length))


def packed_rows(tokenizer, n_rows: int, max_length: int = 256) -> list[dict]:
    """n_rows rows of at most max_length tokens, each packing several whole Alpaca examples."""
    from tuneforge.data import pack_examples

    limit = 8
    while True:
        rows = pack_examples(alpaca_examples(tokenizer, limit=limit, max_length=max_length), max_length)
        if len(rows) > n_rows or limit >= 4000:
            return rows[:n_rows]
        limit *= 2


def reference_batch(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The same rows as transformers takes packed sequences without a flash kernel: no attention_mask, and
    position_ids that restart at 0 for each example, from which it builds the block-diagonal causal mask.
    The padding tail of a short row becomes one more 'example' whose labels are all ignored."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[b, :n] = torch.tensor(row["input_ids"])
        labels[b, :n] = torch.tensor(row["labels"])
        positions[b, :n] = torch.tensor(row["position_ids"])
        positions[b, n:] = torch.arange(width - n)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def padded_batch(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The examples packed in `rows`, one per row, right-padded to the longest of them with an attention_mask:
    how a peft + transformers user who does not pack collates (DataCollatorForSeq2Seq's default, padding to the
    longest in the batch). The same examples and label tokens as the packed rows, so the mean loss is the same."""
    from tuneforge.data import collate_causal

    examples = []
    for row in rows:
        start = 0
        for n in row.get("seq_lens", [len(row["input_ids"])]):
            examples.append({k: row[k][start:start + n] for k in ("input_ids", "labels")})
            start += n
    batch = collate_causal(examples, pad_token_id)
    del batch["position_ids"]  # left to transformers, as a user's batch would (0..n-1 either way)
    return batch


def real_tokens(rows: list[dict]) -> int:
    return sum(len(r["input_ids"]) for r in rows)


def matmul_peak_gflops(size: int = 2048, repeats: int = 5, clock=time.perf_counter, device: str = "cpu",
                       dtype: torch.dtype = torch.float32) -> float:
    """Best GEMM rate in `dtype`, in GFLOP/s: on a CPU with the current torch thread count; on CUDA with torch's
    default fp32 matmul precision (TF32 only if the process allowed it)."""
    if device.startswith("cuda"):
        size, clock = max(size, 8192), time.perf_counter
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = clock()
        torch.mm(a, b)
        sync()
        best = min(best, clock() - t)
    return 2 * size**3 / best / 1e9


def step_flops(config, rows: list[dict], r: int, head_positions: int, positions: int) -> float:
    """FLOPs of one LoRA step: forward, backward to the activations, and the LoRA weight gradients.

    Per computed position: every projection costs 2 * in * out forward and again backward (to its input);
    LoRA adds 2 * r * (in + out) forward, the same backward and the same for the A/B gradients. Attention
    costs 4 * n^2/2 * head_dim per head forward (QK^T and PV over each example's causal triangle) and twice
    that backward. The head costs 2 * d * vocab per position it runs at, forward and backward."""
    d, m, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = config.num_key_value_heads * head_dim
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, m), (d, m), (m, d)]
    layers = config.num_hidden_layers
    dense = 2 * sum(i * o for i, o in shapes)
    lora = 2 * r * sum(i + o for i, o in shapes)
    per_position = layers * (2 * dense + 3 * lora)
    triangle = sum(n * (n + 1) / 2 for row in rows for n in row.get("seq_lens", [len(row["input_ids"])]))
    attention = layers * heads * 3 * 4 * triangle * head_dim
    head = 2 * 2 * d * config.vocab_size * head_positions
    return positions * per_position + attention + head


def table(header: list[str], body: list[list[str]]) -> str:
    """A GitHub-markdown table."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])
