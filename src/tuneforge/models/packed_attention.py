"""Attention over packed rows one example at a time, instead of one masked (L x L) attention per row.

A packed row holds several examples, each attending causally to itself only. Given the block-diagonal mask, sdpa
computes every (query, key) pair of the row and masks most of them away: for a 256-token row of ~110-token
examples that is 65k pairs for ~13k useful ones, and a masked call cannot use the kernels' causal shortcut.
Run per example with `is_causal=True` instead (what flash-attention's varlen kernels do on GPUs, written here
with plain sdpa calls): the same softmax over the same keys, so the result equals the masked attention up to the
order of float sums, at about a fifth of the work. Padding at the end of a row gets zeros (its labels are
ignored, and nothing attends to it).

The function registers with transformers' AttentionInterface under PACKED_SDPA and is a superset of "sdpa": it
takes the packed path only when the call carries `packed_seq_lens` (a (rows, max examples) tensor of example
lengths, 0-padded) and otherwise hands everything to transformers' sdpa. Packed rows come without any mask
(data/collate.py); `packed_inputs` picks, per model, how its attention learns where examples end:
  - PACKED_SDPA (CPU, sdpa): `packed_seq_lens` reaches each attention call as a keyword, and inside
    `packed_rows()` the mask function registered for PACKED_SDPA builds nothing (no L x L tensor at all);
  - flash_attention_2 (CUDA, flash-attn installed; chosen for attn_implementation auto): the rows are flattened
    into one sequence and `cu_seq_lens_q/k` + `max_length_q/k` select flash-attn's varlen kernel;
  - sdpa on a GPU without flash-attn, eager, flex_attention: `position_ids` restart at each example and
    transformers derives the packed-sequence mask from them (a BlockMask for flex_attention, a boolean L x L
    mask built once per forward for sdpa / eager);
  - a model type outside PACKED_MODEL_TYPES gets the exact additive block mask (block_causal_mask), as before. A block
compiled by torch.compile calls the same kernels through two torch.library operators (`tuneforge::packed_attention`
and its backward), which Dynamo passes through as opaque nodes: a Python loop over data-dependent example lengths
would break the block's graph (measured: slower than the masked call), an operator does not (4.06 against 4.23 s
a step in benchmarks/lora_sft.py's compile variant).

CPU only: on a GPU the loop's many small kernel launches (and the host sync that reads the lengths) cost more
than the masked pairs, and a GPU runs the whole masked row in one memory-efficient kernel. Measured on an H200
(benchmarks/lora_sft.py, SmolLM2-135M, 4 x 256 tokens): the per-example path made our step 2x slower than
peft's in fp32 and 6x in bf16.
"""
from __future__ import annotations

import contextlib
import importlib.util

import torch

PACKED_SDPA = "tuneforge_packed_sdpa"
# model types whose decoder passes position_ids and extra keywords to every attention call and builds its masks
# with transformers.masking_utils (which reads packed sequences from position_ids)
PACKED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "olmo", "olmo2"})
_STATE = {"packed": False}


def packed_seq_lens(seq_lens: list[list[int]]) -> torch.Tensor:
    """Per-row example lengths as a (rows, max examples) long tensor, 0-padded (a tensor, so a compiled block
    sees one symbolic input rather than a new constant per batch)."""
    width = max(len(lens) for lens in seq_lens)
    return torch.tensor([list(lens) + [0] * (width - len(lens)) for lens in seq_lens], dtype=torch.long)


def _spans(seq_lens: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, start, length) of every example in the packed rows."""
    spans = []
    for row, lens in enumerate(seq_lens.tolist()):
        start = 0
        for n in lens:
            if n > 0:
                spans.append((row, start, n))
                start += n
    return spans


def _row_ends(spans: list[tuple[int, int, int]], rows: int) -> list[int]:
    """Where each row's examples end (its padding starts)."""
    ends = [0] * rows
    for b, s, n in spans:
        ends[b] = max(ends[b], s + n)
    return ends


def _attend(query, key, value, scaling: float, spans) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): every example's causal attention written into one (rows, length, heads, dim) buffer, and its
    log-sum-exp (what the backward kernel needs) into one (rows, heads, length) buffer; padding rows get zeros."""
    rows, heads, length, dim = query.shape
    out = query.new_empty((rows, length, heads, dim))
    lse = query.new_empty((rows, heads, length), dtype=torch.float32)  # padding's entries are never read
    for b, s, n in spans:
        o, o_lse = _flash(query[b : b + 1, :, s : s + n], key[b : b + 1, :, s : s + n],
                          value[b : b + 1, :, s : s + n], 0.0, True, scale=scaling)
        out[b, s : s + n].copy_(o[0].transpose(0, 1))
        lse[b, :, s : s + n] = o_lse[0]
    for b, end in enumerate(_row_ends(spans, rows)):
        out[b, end:] = 0  # only the padding: the examples' slots were all written above
    return out, lse


def _attend_backward(grad, query, key, value, out, lse, scaling: float, spans):
    """(dq, dk, dv) from the flash backward kernel, one example at a time; zeros at the padding."""
    dq, dk, dv = torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)
    for b, end in enumerate(_row_ends(spans, query.shape[0])):
        for d in (dq, dk, dv):
            d[b, :, end:] = 0
    for b, s, n in spans:
        part = (slice(b, b + 1), slice(None), slice(s, s + n))
        gq, gk, gv = _flash_backward(grad[b : b + 1, s : s + n].transpose(1, 2), query[part], key[part],
                                     value[part], out[b : b + 1, s : s + n].transpose(1, 2),
                                     lse[part], 0.0, True, scale=scaling)
        dq[part], dk[part], dv[part] = gq, gk, gv
    return dq, dk, dv


class PackedAttention(torch.autograd.Function):
    """Causal attention per example, written straight into one (rows, length, heads, dim) output.

    Calling sdpa per example under autograd keeps every example's output for its backward, then `cat` copies
    them into one tensor and the caller's reshape copies that again into the layout o_proj reads: three copies
    of the attention output per layer, two of them kept until backward. Here the CPU flash kernel's output and
    log-sum-exp go straight into their slots of one buffer, which is both what backward needs and (reshaped, no
    copy) o_proj's input: one copy kept, no cat. The kernels are the ones sdpa runs, forward and backward.
    """

    @staticmethod
    def forward(ctx, query, key, value, scaling, spans):
        out, lse = _attend(query, key, value, scaling, spans)
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.scaling, ctx.spans = scaling, spans
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, out, lse = ctx.saved_tensors
        return (*_attend_backward(grad, query, key, value, out, lse, ctx.scaling, ctx.spans), None, None)


# The same two kernels as custom operators, for decoder blocks compiled by torch.compile: Dynamo cannot trace a
# loop over data-dependent example lengths, but it passes an opaque operator with a shape function through
# without a graph break, so inductor still fuses the block's elementwise work around it.
@torch.library.custom_op("tuneforge::packed_attention", mutates_args=())
def packed_attention_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, seq_lens: torch.Tensor,
                        scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _attend(query, key, value, scaling, _spans(seq_lens))


@packed_attention_op.register_fake
def _(query, key, value, seq_lens, scaling):
    rows, heads, length, dim = query.shape
    return query.new_empty((rows, length, heads, dim)), query.new_empty((rows, heads, length), dtype=torch.float32)


@torch.library.custom_op("tuneforge::packed_attention_backward", mutates_args=())
def packed_attention_backward_op(grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 out: torch.Tensor, lse: torch.Tensor, seq_lens: torch.Tensor,
                                 scaling: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _attend_backward(grad, query, key, value, out, lse, scaling, _spans(seq_lens))


@packed_attention_backward_op.register_fake
def _(grad, query, key, value, out, lse, seq_lens, scaling):
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def _setup_context(ctx, inputs, output):
    query, key, value, seq_lens, scaling = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, out, lse, seq_lens)
    ctx.scaling = scaling


def _backward(ctx, grad, grad_lse):
    query, key, value, out, lse, seq_lens = ctx.saved_tensors
    return (*packed_attention_backward_op(grad, query, key, value, out, lse, seq_lens, ctx.scaling), None, None)


packed_attention_op.register_autograd(_backward, setup_context=_setup_context)


_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _per_example(query, key, value, scaling, seq_lens: torch.Tensor) -> torch.Tensor:
    """(rows, length, heads, dim), as transformers' attention functions return; padding gets zeros."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if torch.compiler.is_compiling():
        return packed_attention_op(query, key, value, seq_lens, float(scaling))[0]
    return PackedAttention.apply(query, key, value, float(scaling), _spans(seq_lens))


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        is_causal=None, packed_seq_lens: torch.Tensor | None = None, **kwargs):
    """transformers attention-function signature; see the module docstring."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # Under autocast sdpa casts q/k/v to one dtype itself; the flash kernels PackedAttention calls would not.
    usable = (packed_seq_lens is not None and query.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
              and dropout == 0.0
              and query.shape[2] == key.shape[2]
              and packed_seq_lens.shape[0] == query.shape[0] and not kwargs.get("output_attentions"))
    if usable:
        return _per_example(query, key, value, scaling, packed_seq_lens), None
    if attention_mask is None and packed_seq_lens is not None:
        # autocast, dropout or GQA: the exact mask, built for this call only (also when a checkpointed block
        # recomputes this call in backward, after packed_rows() has ended)
        attention_mask = block_causal_mask(packed_seq_lens, query.shape[2], torch.bool, query.device)
    elif attention_mask is None and _STATE["packed"]:
        raise RuntimeError(f"{type(module).__name__} does not pass packed_seq_lens to its attention, so packed "
                           "rows would attend across examples; set data.packing: false for this model")
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def block_causal_mask(seq_lens: torch.Tensor, width: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """(rows, 1, width, width): True / 0 where query i may attend to key j (same example, j <= i), False / the
    dtype's minimum elsewhere; a padding position attends only to itself, so no softmax row is empty. O(L^2):
    only for models that take no other way of telling examples apart."""
    doc = _document_ids(seq_lens, width).to(device)
    pos = torch.arange(width, device=device)
    allowed = (doc[:, :, None] == doc[:, None, :]) & (pos[None, :, None] >= pos[None, None, :])
    if dtype == torch.bool:
        return allowed[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def _document_ids(seq_lens: torch.Tensor, width: int) -> torch.Tensor:
    """(rows, width) example index of every position; each padding position gets an index of its own."""
    out = torch.empty((seq_lens.shape[0], width), dtype=torch.long)
    for row, lens in enumerate(seq_lens.tolist()):
        lens = [n for n in lens if n > 0]
        ids = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens, dtype=torch.long))
        pad = width - ids.numel()
        out[row] = torch.cat([ids, torch.arange(len(lens), len(lens) + pad)])
    return out


def _packed_mask(*args, **kwargs):
    """PACKED_SDPA's mask function: nothing inside packed_rows() (the attention knows the examples), else sdpa's."""
    from transformers.masking_utils import sdpa_mask

    if _STATE["packed"]:
        return None
    return sdpa_mask(*args, **kwargs)


@contextlib.contextmanager
def packed_rows():
    """While a packed batch runs through a PACKED_SDPA model: no L x L mask is built for it."""
    previous = _STATE["packed"]
    _STATE["packed"] = True
    try:
        yield
    finally:
        _STATE["packed"] = previous


def packed_backend(model, per_example: bool = True) -> str:
    """How this model attends within packed rows (see the module docstring); may switch its implementation:
    sdpa on CPU -> PACKED_SDPA (when per_example), sdpa on CUDA with attn_implementation auto -> flash_attention_2
    when flash-attn is installed and the model computes in bf16/fp16. Returns the backend: PACKED_SDPA,
    flash_attention_2, sdpa, eager, flex_attention, or "mask" (the model needs block_causal_mask)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PACKED_MODEL_TYPES:
        return "mask"
    impl = getattr(config, "_attn_implementation", None)
    param = next(model.parameters())
    if impl == "sdpa" and param.device.type == "cpu" and per_example and use_packed_attention(model):
        return PACKED_SDPA
    if (impl == "sdpa" and param.device.type == "cuda" and getattr(model, "_tuneforge_attn", "auto") == "auto"
            and importlib.util.find_spec("flash_attn") is not None
            and getattr(model, "dtype", param.dtype) in (torch.bfloat16, torch.float16)):
        model.set_attn_implementation("flash_attention_2")
        return "flash_attention_2"
    if impl in (PACKED_SDPA, "flash_attention_2", "sdpa", "eager", "flex_attention"):
        return impl
    return "mask"


def packed_inputs(model, batch: dict, per_example: bool = True) -> tuple[dict, torch.Tensor, str]:
    """(model keyword inputs, labels, backend) for a packed batch (input_ids, labels, position_ids, seq_lens).
    With flash_attention_2 the rows are flattened into one sequence (labels too: the first token of every
    example, hence of every row, is ignored, so no loss crosses a row boundary)."""
    backend = packed_backend(model, per_example)
    ids, labels, pos, lens = batch["input_ids"], batch["labels"], batch["position_ids"], batch["seq_lens"]
    if backend == "flash_attention_2":
        width, spans = ids.shape[1], []
        for row in lens.tolist():
            row = [n for n in row if n > 0]
            spans += row + ([width - sum(row)] if sum(row) < width else [])  # a row's padding: one span
        cu = torch.tensor([0] + spans, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(ids.device)
        longest = max(spans)
        inputs = {"input_ids": ids.reshape(1, -1), "position_ids": pos.reshape(1, -1), "cu_seq_lens_q": cu,
                  "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
        return inputs, labels.reshape(1, -1), backend
    inputs = {"input_ids": ids, "position_ids": pos}
    if backend == PACKED_SDPA:
        inputs["packed_seq_lens"] = lens
    elif backend == "mask":
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        inputs["attention_mask"] = block_causal_mask(lens, ids.shape[1], dtype, ids.device)
    return inputs, labels, backend


def register() -> str:
    """Register PACKED_SDPA with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
    AttentionMaskInterface.register(PACKED_SDPA, _packed_mask)
    return PACKED_SDPA


def use_packed_attention(model) -> bool:
    """Switch a model that runs transformers' sdpa to PACKED_SDPA (identical for every call that carries no
    packed_seq_lens); True when the model runs it now."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current == PACKED_SDPA:
        return True
    if current != "sdpa":
        return False
    register()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(PACKED_SDPA)
    else:
        config._attn_implementation = PACKED_SDPA
    return getattr(config, "_attn_implementation", None) == PACKED_SDPA
