"""A mixed batch of LoRA adapters in three kernels, whatever the number of adapters (for serving many fine-tunes
from one base model).

Row i of the batch uses adapter a_i, or none. The generic per-adapter loop of `AdapterLayer` costs about eight
kernels per adapter per layer (gather the rows, A, B, scale, add, scatter back), which at decode time, where each
kernel is tiny, makes 8 adapters several times slower than one. Instead every row goes through all K adapters
of the batch at once and a mask keeps each row's own:

    Z = X A_cat^T           A_cat = [A_1; ...; A_K]                 (sum_k r_k  x  in)
    Z = Z * M               M[i, cols of k] = s_k if a_i = k else 0  (s_k = lora_alpha / r, LoRA's scaling)
    H = W X + Z B_cat^T     B_cat = [B_1, ..., B_K]                 (out  x  sum_k r_k)

Exact (masked columns add zero), and it costs sum_k r_k (in + out) multiply-adds per token: for K = 8 adapters of
rank 8 on a 576-wide projection about a fifth of the base matmul. That is cheap for decoding (one token per row),
where every kernel is small. For prompts (many tokens per row) it wastes K - 1 of every K adapter products, so
there each row's own factors are gathered and applied with two batched matmuls (the BGMV form):

    Z_i = X_i A_{a_i}^T s_{a_i},   H_i = W X_i + Z_i B_{a_i}^T      (bmm over the rows i)

which costs r (in + out) per token plus a copy of r (in + out) weights per row. On a CPU the gather wins from
about 8 tokens per row and 4 adapters (measured: benchmarks/serve_mixed_adapters.py), when all ranks are equal.
Both are the dense-matmul forms of the kernels of punica (Chen et al. 2023, https://arxiv.org/abs/2310.18547)
and S-LoRA (Sheng et al. 2023, https://arxiv.org/abs/2311.03285). LoRA: Hu et al. 2021,
https://arxiv.org/abs/2106.09685.

Only for inference: with gradients on (a mixed batch in training) or dropout active, the loop is used, so
autograd sees the textbook graph. The stacked factors are cached per layer for the last set of adapters and
rebuilt when that set or any factor changes (a parameter's version counter moves on every in-place update). All of
this is checked once when a mixed batch starts (each `mixed_batch` block: one `generate` call), not at every
forward: a decoding step then pays three kernels and no bookkeeping. Change adapter weights outside the block.
"""
from __future__ import annotations

import torch

BASE_ROWS = (None, "__base__")
GATHER_MIN_TOKENS, GATHER_MIN_ADAPTERS = 8, 4  # where the per-row gather beats the masked stack (see above)


class _Stack:
    """One layer's factors of a set of adapters, stacked."""

    def __init__(self, layer, names: tuple[str, ...]):
        self.names = names
        self.params = [(layer.lora_A[n].weight, layer.lora_B[n].weight) for n in names]
        self.versions = self._versions()
        with torch.no_grad():
            self.a_cat = torch.cat([a for a, _ in self.params], dim=0)
            self.b_cat = torch.cat([b for _, b in self.params], dim=1)
        self.columns, start = {}, 0
        for n in names:
            self.columns[n] = (start, start + layer.r[n], layer.scaling[n])
            start += layer.r[n]
        ranks = {layer.r[n] for n in names}
        if len(ranks) == 1:  # (K, r, in) and (K, out, r) views of the same storage, for the gather
            k, r = len(names), ranks.pop()
            self.a_each = self.a_cat.view(k, r, -1)
            self.b_each = self.b_cat.view(-1, k, r).permute(1, 0, 2)
        else:
            self.a_each = self.b_each = None

    def _versions(self) -> tuple[int, ...]:
        return tuple(t._version for pair in self.params for t in pair)

    def fresh(self, layer, names: tuple[str, ...]) -> bool:
        """Same adapters, same parameter objects, no in-place update since the factors were stacked."""
        return (names == self.names and self._versions() == self.versions
                and all(a is layer.lora_A[n].weight and b is layer.lora_B[n].weight
                        for n, (a, b) in zip(names, self.params)))


class _Batch:
    """What one layer needs for the rows of one mixed batch: the stack and the per-row mask / index / scaling."""

    def __init__(self, layer, rows: list, previous: "_Batch | None"):
        self.rows = rows
        self.names = tuple(sorted({r for r in rows if r not in BASE_ROWS and layer.has_adapter(r)}))
        self.trainable = any(layer.lora_A[n].weight.requires_grad or layer.lora_B[n].weight.requires_grad
                             for n in self.names)
        self.dropout = any(not isinstance(layer.lora_dropout[n], torch.nn.Identity) for n in self.names)
        self.layer, self.masks = layer, {}
        self._stack = previous._stack if previous is not None else None  # reused if still fresh, see stack()
        self._checked = False

    def stack(self) -> _Stack:
        """The stacked factors, built (or the previous batch's checked) on first use only, so training never
        stacks anything."""
        if not self._checked:
            if self._stack is None or not self._stack.fresh(self.layer, self.names):
                self._stack = _Stack(self.layer, self.names)
            self._checked = True
        return self._stack

    def row_tensors(self, x: torch.Tensor):
        """(mask, index, scales): the mask is (batch, 1, ..., sum r), each row's adapter scaling on its own
        columns; index and scales are each row's adapter and scaling for the gather (0 for a base row)."""
        key = (x.ndim, x.device, x.dtype)
        if key not in self.masks:
            stack = self.stack()
            mask = torch.zeros(len(self.rows), stack.a_cat.shape[0], dtype=x.dtype)
            index, scales = [0] * len(self.rows), [0.0] * len(self.rows)
            for i, name in enumerate(self.rows):
                if name in stack.columns:
                    lo, hi, scaling = stack.columns[name]
                    mask[i, lo:hi] = scaling
                    index[i], scales[i] = stack.names.index(name), scaling
            self.masks[key] = (mask.view(len(self.rows), *([1] * (x.ndim - 2)), -1).to(x.device),
                               torch.tensor(index, device=x.device),
                               torch.tensor(scales, dtype=x.dtype, device=x.device).view(-1, 1, 1))
        return self.masks[key]


def mixed_lora_forward(layer, x: torch.Tensor, result: torch.Tensor, rows: list) -> torch.Tensor | None:
    """`result` (the base layer's output) plus each row's own LoRA update, or None where this path does not
    apply (the caller then runs the per-adapter loop). `rows` is the mixed batch's own list: a new block, a new
    list, and everything cached for the previous one is checked again."""
    batch = layer.__dict__.get("_mixed_lora")
    if batch is None or batch.rows is not rows:
        batch = _Batch(layer, rows, batch)
        object.__setattr__(layer, "_mixed_lora", batch)  # a plain attribute: never a buffer, never saved
    if not batch.names:
        return result
    if (batch.trainable and torch.is_grad_enabled()) or (batch.dropout and layer.training):
        return None
    stack = batch.stack()
    if not (x.dtype == stack.a_cat.dtype == result.dtype):
        return None
    mask, index, scales = batch.row_tensors(x)
    if x.ndim == 3 and x.shape[1] >= GATHER_MIN_TOKENS and len(stack.names) >= GATHER_MIN_ADAPTERS and (
            stack.a_each is not None):
        z = torch.bmm(x, stack.a_each[index].transpose(1, 2)).mul_(scales)
        return result.baddbmm_(z, stack.b_each[index].transpose(1, 2))
    z = (x @ stack.a_cat.t()).mul_(mask)
    out = result.reshape(-1, result.shape[-1]).addmm_(z.reshape(-1, z.shape[-1]), stack.b_cat.t())
    return out.view(result.shape)
