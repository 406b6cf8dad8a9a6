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
z, as autograd would save for the unfused layer. When LoRA dropout is
active, the adapter reads a different tensor (x_lora = dropout(x)) and its input gradient is returned
separately, so autograd runs the dropout backward. A 4-bit bitsandbytes base is dequantised in forward and again
in backward (as bitsandbytes' own matmul does), so no dense copy of W is kept between the two.
"""
from __future__ import annotations

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


def linear_plus_lora(x2, weight, bias, xl2=None, lora_a=None, lora_b=None, scaling: float = 1.0):
    """(x2 W^T + b + s (xl2 A^T) B^T, z = xl2 A^T) for a frozen, possibly 4-bit W, the rank-r term added in place
    on the base product; without lora_a, (x2 W^T + b, None). The forward of both fused autograd functions."""
    w = dequantized(weight)
    out = torch.addmm(bias, x2, w.t()) if bias is not None else x2 @ w.t()
    if lora_a is None:
        return out, None
    z = xl2 @ lora_a.t()
    return add_matmul(out, z, lora_b.t(), scaling), z


class FusedLoraLinear(torch.autograd.Function):
    """h = x W^T + b + s (x_lora A^T) B^T for a frozen (possibly 4-bit) W; see the module docstring."""

    @staticmethod
    def forward(ctx, x, x_lora, weight, bias, lora_a, lora_b, scaling):
        # x_lora None: the adapter reads x itself (no dropout). Passing x twice would do the same, but
        # torch.compile cannot trace an autograd.Function given one tensor twice and breaks the graph there.
        x_lora = x if x_lora is None else x_lora
        shape = x.shape
        x2, xl2 = x.reshape(-1, shape[-1]), x_lora.reshape(-1, shape[-1])
        out, z = linear_plus_lora(x2, weight, bias, xl2, lora_a, lora_b, scaling)
        ctx.same_input = x_lora is x
        ctx.scaling = scaling
        ctx.save_for_backward(xl2, z, weight, lora_a, lora_b)
        return out.view(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        xl2, z, weight, lora_a, lora_b = ctx.saved_tensors
        need_x, need_xl, _, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        g2 = grad.reshape(-1, grad.shape[-1])
        in_shape = grad.shape[:-1] + (xl2.shape[-1],)
        g_b = (g2 @ lora_b).mul_(ctx.scaling) if (need_x or need_xl or need_a) else None
        dx = dxl = None
        if ctx.same_input and (need_x or need_xl):
            dx = add_matmul(g2 @ dequantized(weight), g_b, lora_a).view(in_shape)
        else:
            if need_x:
                dx = (g2 @ dequantized(weight)).view(in_shape)
            if need_xl:
                dxl = (g_b @ lora_a).view(in_shape)
        d_a = g_b.t() @ xl2 if need_a else None
        d_b = (g2.t() @ z).mul_(ctx.scaling) if need_b else None
        d_bias = g2.sum(0) if need_bias else None
        return dx, dxl, None, d_bias, d_a, d_b, None


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


def fusable_dtypes(x: torch.Tensor, *tensors: torch.Tensor) -> bool:
    """The fused kernels run in one dtype and outside autocast (autocast picks per-op dtypes of its own)."""
    if torch.is_autocast_enabled(x.device.type):
        return False
    return all(t.dtype == x.dtype for t in tensors)
