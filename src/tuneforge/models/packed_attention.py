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
lengths, 0-padded) and otherwise hands everything to transformers' sdpa. Callers keep passing the exact 4-D
block mask as well, so a model that does not forward the keyword still attends correctly, only slower. A block
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

import torch

PACKED_SDPA = "tuneforge_packed_sdpa"


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
        o, l = _flash(query[b : b + 1, :, s : s + n], key[b : b + 1, :, s : s + n],
                      value[b : b + 1, :, s : s + n], 0.0, True, scale=scaling)
        out[b, s : s + n].copy_(o[0].transpose(0, 1))
        lse[b, :, s : s + n] = l[0]
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
    if not usable:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    return _per_example(query, key, value, scaling, packed_seq_lens), None


def register() -> str:
    """Register PACKED_SDPA with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)
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
