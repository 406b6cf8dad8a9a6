"""LoRA's low-rank path folded into the base matmul, with a hand-written backward.

The textbook layer computes h = W x + s * B (A x) as five kernels (two rank-r matmuls, a scale, an add, the base
matmul) and autograd adds three more in backward (scale, a rank-r matmul, the add of two input gradients). On a
CPU each elementwise pass over a (tokens x features) activation costs as much memory traffic as a small matmul,
so we let the matmul kernels do the adding: with z = x A^T (tokens x r) and g = dL/dh,

    forward   h  = addmm(x W^T + b, z, B^T, alpha=s)              (the add and the scale ride on the GEMM)
    backward  gB = s * g B                                          (tokens x r)
              dx = addmm(g W, gB, A)                                (one GEMM accumulates both paths)
              dA = gB^T x,   dB = s * g^T z,   db = sum_t g

The maths is LoRA's (Hu et al. 2021, https://arxiv.org/abs/2106.09685); only the order of the floating point
sums differs. The adds run in place on the fresh base product (`addmm_`): an out-of-place addmm first copies its
input into a new tensor, one activation-sized copy per adapted layer and direction. Saved for backward: x and
z, as autograd would save for the unfused layer.

LoRA dropout (x_lora = dropout(x) feeds the adapter only) is fused too, without keeping a dropped copy of x:
the forward draws a bool keep-mask with the very call `F.dropout` makes on a CPU (`bernoulli_(1 - p)` on the
default generator, same shape, so the same random stream and the same mask for the same generator state), forms
x_lora = x * (mask / (1 - p)) for the rank-r product z only, and saves x, z and the mask (1 byte per element
instead of dropout's float noise plus the float x_lora: 8 bytes). Backward rebuilds the same noise and x_lora
bit for bit: dA = gB^T x_lora, dx = g W + (gB A) * noise. The maths and the mask's distribution are nn.Dropout's
(what peft applies); replaying a generator state gives peft's mask exactly (tests/methods/test_fused_dropout.py).
While torch.compile traces, the plain dropout module runs instead and x_lora is passed in (the older path: the
adapter reads a separate tensor and autograd runs the dropout backward). A 4-bit bitsandbytes base is
dequantised in forward and again in backward (as bitsandbytes' own matmul does), so no dense copy of W is kept
between the two.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ..quant.layers import dequantized


def add_matmul(fresh: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """fresh + alpha * m1 @ m2, in place on `fresh` (a product the caller just made and owns): an out-of-place addmm
    would first copy it. Out of place while torch.compile traces (it functionalises anyway) or a dispatch mode
    watches the ops: selective checkpointing keeps matmul outputs and refuses to see one changed later."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return torch.addmm(fresh, m1, m2, alpha=alpha)
    return fresh.addmm_(m1, m2, alpha=alpha)


def keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """nn.Dropout's keep-mask for x as a bool tensor: the same generator call as F.dropout on a CPU (bernoulli_
    with 1 - p on the default generator over x's shape), so the same draws and the same mask."""
    return torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1 - p)


def dropout_noise(mask: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
    """mask / (1 - p) in `dtype`: F.dropout's noise tensor, bit for bit (its values are 0 and the rounded 1/(1-p))."""
    return mask.to(dtype).div_(1 - p)


def base_product(a: torch.Tensor, weight: torch.Tensor, transposed: bool = True) -> torch.Tensor:
    """a W^T (forward) or a W (backward's dx) for a frozen, possibly 4-bit W. A lower-precision W (the bf16 copy
    of `use_half_matmuls`) multiplies a rounded to its dtype, the kernel accumulating in fp32, and the product
    comes back in a's dtype: only the base GEMM changes precision, never the adapter or the activations."""
    w = dequantized(weight)
    w = w.t() if transposed else w
    if w.dtype == a.dtype:
        return a @ w
    return (a.to(w.dtype) @ w).to(a.dtype)


def linear_plus_lora(x2, weight, bias, xl2=None, lora_a=None, lora_b=None, scaling: float = 1.0):
    """(x2 W^T + b + s (xl2 A^T) B^T, z = xl2 A^T) for a frozen, possibly 4-bit W, the rank-r term added in place
    on the base product; without lora_a, (x2 W^T + b, None). The forward of both fused autograd functions."""
    w = dequantized(weight)
    if w.dtype != x2.dtype:
        out = base_product(x2, w)
        if bias is not None:
            out.add_(bias)
    else:
        out = torch.addmm(bias, x2, w.t()) if bias is not None else x2 @ w.t()
    if lora_a is None:
        return out, None
    z = xl2 @ lora_a.t()
    return add_matmul(out, z, lora_b.t(), scaling), z


class FusedLoraLinear(torch.autograd.Function):
    """h = x W^T + b + s (x_lora A^T) B^T for a frozen (possibly 4-bit) W; see the module docstring. x_lora: the
    adapter's own (already dropped) input, or None; p > 0: draw dropout's mask here and keep only the mask."""

    @staticmethod
    def forward(ctx, x, x_lora, weight, bias, lora_a, lora_b, scaling, p=0.0):
        # x_lora None: the adapter reads x itself (no dropout). Passing x twice would do the same, but
        # torch.compile cannot trace an autograd.Function given one tensor twice and breaks the graph there.
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        mask = None
        if p > 0:
            mask = keep_mask(x, p).view(x2.shape)
            xl2 = x2 * dropout_noise(mask, p, x.dtype)  # freed once z is made: backward rebuilds it
        else:
            xl2 = x2 if x_lora is None else x_lora.reshape(-1, shape[-1])
        out, z = linear_plus_lora(x2, weight, bias, xl2, lora_a, lora_b, scaling)
        ctx.same_input = x_lora is None and p == 0
        ctx.scaling, ctx.p = scaling, p
        ctx.save_for_backward(x2 if p > 0 else xl2, mask, z, weight, lora_a, lora_b)
        return out.view(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        xs, mask, z, weight, lora_a, lora_b = ctx.saved_tensors
        need_x, need_xl, _, need_bias, need_a, need_b = ctx.needs_input_grad[:6]
        g2 = grad.reshape(-1, grad.shape[-1])
        in_shape = grad.shape[:-1] + (xs.shape[-1],)
        g_b = (g2 @ lora_b).mul_(ctx.scaling) if (need_x or need_xl or need_a) else None
        dx = dxl = None
        noise = dropout_noise(mask, ctx.p, xs.dtype) if mask is not None else None
        if ctx.same_input and (need_x or need_xl):
            dx = add_matmul(base_product(g2, weight, transposed=False), g_b, lora_a).view(in_shape)
        elif noise is not None:
            if need_x:  # both paths read x: dx = g W + (gB A) * noise
                dx = (base_product(g2, weight, transposed=False)).addcmul_(g_b @ lora_a, noise).view(in_shape)
        else:
            if need_x:
                dx = (base_product(g2, weight, transposed=False)).view(in_shape)
            if need_xl:
                dxl = (g_b @ lora_a).view(in_shape)
        if need_a:  # with dropout, the forward's x_lora rebuilt: the same bits
            d_a = g_b.t() @ (xs * noise if noise is not None else xs)
        else:
            d_a = None
        d_b = (g2.t() @ z).mul_(ctx.scaling) if need_b else None
        d_bias = g2.sum(0) if need_bias else None
        return (dx, dxl, None, d_bias, d_a, d_b, None, None)[: len(ctx.needs_input_grad)]


class LoraAddmm(torch.autograd.Function):
    """h = result + s (x A^T) B^T on top of any base layer's output (the add rides on the GEMM)."""

    @staticmethod
    def forward(ctx, result, x, lora_a, lora_b, scaling):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        z = x2 @ lora_a.t()
        out = torch.addmm(result.reshape(-1, result.shape[-1]), z, lora_b.t(), alpha=scaling)
        ctx.scaling = scaling
        ctx.save_for_backward(x2, z, lora_a, lora_b)
        return out.view(result.shape)

    @staticmethod
    def backward(ctx, grad):
        x2, z, lora_a, lora_b = ctx.saved_tensors
        need_result, need_x, need_a, need_b, _ = ctx.needs_input_grad
        g2 = grad.reshape(-1, grad.shape[-1])
        g_b = (g2 @ lora_b).mul_(ctx.scaling) if (need_x or need_a) else None
        dx = (g_b @ lora_a).view(grad.shape[:-1] + (x2.shape[-1],)) if need_x else None
        d_a = g_b.t() @ x2 if need_a else None
        d_b = (g2.t() @ z).mul_(ctx.scaling) if need_b else None
        return (grad if need_result else None), dx, d_a, d_b, None


def fused_dropout_p(dropout: torch.nn.Module, x: torch.Tensor) -> float | None:
    """The probability the fused kernels draw dropout's mask with (0.0: no dropout), or None when the dropout
    module must run itself: a dropout other than plain nn.Dropout, or torch.compile tracing (it would see a
    random op inside an autograd.Function)."""
    if isinstance(dropout, torch.nn.Identity) or (isinstance(dropout, torch.nn.Dropout) and not dropout.training):
        return 0.0
    if type(dropout) is not torch.nn.Dropout or torch.compiler.is_compiling() or not x.is_floating_point():
        return None
    return float(dropout.p) if dropout.p > 0 else 0.0


def fusable_dtypes(x: torch.Tensor, *tensors: torch.Tensor) -> bool:
    """The fused kernels run in one dtype and outside autocast (autocast picks per-op dtypes of its own)."""
    if torch.is_autocast_enabled(x.device.type):
        return False
    return all(t.dtype == x.dtype for t in tensors)


def castable_factors(x: torch.Tensor, *factors: torch.Tensor) -> bool:
    """Adapter factors the fused kernels can take for x: in x's dtype, or fp32 factors on a bf16 base (the GPU
    setting: bf16 weights, fp32 adapters), which `compute_factors` casts to bf16 as autocast would. Not fp16:
    its gradients need the loss scaling the loop does not do."""
    return all(f.dtype == x.dtype or (f.dtype == torch.float32 and x.dtype == torch.bfloat16) for f in factors)


def compute_factors(x: torch.Tensor, *factors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The factors in x's dtype. Casting the rank-r factors (kilobytes) instead of x (an activation per layer and
    direction, as the unfused fp32 path does) lets the adapter ride on the base GEMM in bf16; the cast's backward
    hands fp32 gradients to the fp32 parameters, so the optimiser still updates fp32 masters."""
    return tuple(f if f.dtype == x.dtype else f.to(x.dtype) for f in factors)


class LowRankFactors(NamedTuple):
    """A frozen (possibly 4-bit) linear layer plus one low-rank term, as the fused kernels take them:
    out = x W^T + b + scaling * (dropout(x) A^T) B^T, dropout drawn with probability `drop` (0: none)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scaling: float
    drop: float


_HALF = "_tuneforge_half_weight"


def matmul_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The weight the fused kernels multiply by: the layer's bf16 copy under `use_half_matmuls`, else its own."""
    copy = layer.__dict__.get(_HALF)
    if copy is not None and copy[0] is layer.weight and copy[1] == layer.weight._version:
        return copy[2]
    return layer.weight


def use_half_matmuls(layers, dtype: torch.dtype = torch.bfloat16) -> int:
    """Give each frozen dense layer a `dtype` copy of its weight for the fused kernels' base GEMMs (on CPUs with
    AVX512-BF16 a bf16 GEMM runs about twice as fast as fp32); the fp32 weight stays for every other path
    (merging, saving, generation). The copy is ignored once the weight is replaced or changed in place. Returns
    how many layers got one; `drop_half_matmuls` removes them."""
    count = 0
    for layer in layers:
        w = layer.weight
        if w.requires_grad or not w.is_floating_point() or w.dtype == dtype or hasattr(w, "quant_state"):
            continue
        layer.__dict__[_HALF] = (w, w._version, w.detach().to(dtype))
        count += 1
    return count


def drop_half_matmuls(layers) -> None:
    for layer in layers:
        layer.__dict__.pop(_HALF, None)


class FusableLinear:
    """A layer that can hand its frozen weight and low-rank factors to a fused kernel (models/fused_mlp.py).
    Declared here, below methods/, and implemented by an adapter layer there: the fused MLP asks the layer
    instead of reading an adapter's internals."""

    def fused_factors(self, x: torch.Tensor) -> LowRankFactors | None:
        """The factors when the fused path computes exactly what the layer's own forward on x would; else None."""
        return None
