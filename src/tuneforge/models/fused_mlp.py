"""The SwiGLU MLP's second half as one autograd function that keeps less for backward.

A Llama-style MLP computes down(silu(gate) * up) with gate = gate_proj(x), up = up_proj(x). Autograd keeps four
(tokens x intermediate) tensors per layer for backward: gate (for silu), silu(gate) and up (for the product), and
the product (down_proj's input, which its LoRA gradient dA needs). `SwiGLUDown` keeps gate and up only and
recomputes the product in backward (two elementwise passes), a quarter of a layer's activations on SmolLM2
(measured: the MLP's 23 of 38 MB per layer at 1,000 tokens become 12). The forward runs the same ops as the
unfused layer (silu, mul, then the base matmul with the LoRA term added by addmm, as `fused_linear.FusedLoraLinear`
does), and the backward calls the same kernels (silu_backward, the mul's two products), so outputs and gradients
are bit-identical to the unfused path (tests/train/test_fused_mlp.py).

With LoRA dropout on down_proj, the adapter reads dropout(p): its bool keep-mask is drawn as nn.Dropout draws it
(`fused_linear.keep_mask`) and kept instead of a dropped float copy of p; backward rebuilds the dropped p from the
recomputed product and the mask.

It applies while gradients are on, to MLP classes known to compute exactly down(silu(gate) * up), when down_proj
is a frozen nn.Linear or a LoRA layer (frozen base) whose one active adapter takes the fused path;
anything else (a training down_proj weight, DoRA, mixed batches, autocast, other activations) runs the model's
own forward.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from .fused_linear import FusableLinear, add_matmul, base_product, dropout_noise, keep_mask, linear_plus_lora

# MLP classes whose forward is exactly down_proj(act_fn(gate_proj(x)) * up_proj(x)).
SWIGLU_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")
_FLAG = "_tuneforge_fused_mlp"


class SwiGLUDown(torch.autograd.Function):
    """out = p W^T + b + s (d(p) A^T) B^T with p = silu(gate) * up and d LoRA dropout (identity when drop is 0);
    saves gate, up, the rank-r z and dropout's bool mask, not p."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias, lora_a, lora_b, scaling, drop=0.0):
        p = F.silu(gate).mul_(up)  # in place on silu's fresh output: the same product, one buffer less
        p2 = p.reshape(-1, p.shape[-1])
        mask = keep_mask(p, drop).view(p2.shape) if lora_a is not None and drop > 0 else None
        xl2 = p2 * dropout_noise(mask, drop, p.dtype) if mask is not None else p2
        out, z = linear_plus_lora(p2, weight, bias, xl2, lora_a, lora_b, scaling)
        ctx.scaling, ctx.drop = scaling, drop
        ctx.save_for_backward(gate, up, weight, lora_a, lora_b, z, mask)
        return out.view(*p.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        gate, up, weight, lora_a, lora_b, z, mask = ctx.saved_tensors
        need_gate, need_up, _, need_bias, need_a, need_b = ctx.needs_input_grad[:6]
        g2 = grad.reshape(-1, grad.shape[-1])
        silu = F.silu(gate)
        d_a = d_b = None
        if lora_a is not None:
            g_b = (g2 @ lora_b).mul_(ctx.scaling)
            if mask is None:
                dp = add_matmul(base_product(g2, weight, transposed=False), g_b, lora_a)
            else:
                noise = dropout_noise(mask, ctx.drop, gate.dtype)
                dp = (base_product(g2, weight, transposed=False)).addcmul_(g_b @ lora_a, noise)
            if need_a:
                p2 = (silu * up).reshape(-1, gate.shape[-1])
                d_a = g_b.t() @ (p2 if mask is None else p2.mul_(noise))
            if need_b:
                d_b = (g2.t() @ z).mul_(ctx.scaling)
        else:
            dp = base_product(g2, weight, transposed=False)
        dp = dp.view(gate.shape)
        d_gate = None
        if need_gate:
            d_gate = dp * up
            d_gate = torch.ops.aten.silu_backward.grad_input(d_gate, gate, grad_input=d_gate)  # in place
        d_up = dp.mul_(silu) if need_up else None  # dp is ours and read for the last time
        d_bias = g2.sum(0) if need_bias else None
        return (d_gate, d_up, None, d_bias, d_a, d_b, None, None)[: len(ctx.needs_input_grad)]


def _down_parts(down: nn.Module, x: torch.Tensor):
    """(weight, bias, lora_a, lora_b, scaling, dropout p) when SwiGLUDown can stand in for `down(p)`, else None."""
    if down._forward_hooks or down._forward_pre_hooks or torch.is_autocast_enabled(x.device.type):
        return None
    if isinstance(down, FusableLinear):  # an adapter layer (LoRA) says whether and how it fuses
        factors = down.fused_factors(x)
        return None if factors is None or factors.weight.requires_grad else tuple(factors)
    if type(down) is nn.Linear and not down.weight.requires_grad:  # a training weight: no gradient for it here
        ok = down.weight.dtype == x.dtype and (down.bias is None or down.bias.dtype == x.dtype)
        return (down.weight, down.bias, None, None, 1.0, 0.0) if ok else None
    return None


def fused_mlp_forward(self, x):
    gate, up = self.gate_proj(x), self.up_proj(x)
    parts = _down_parts(self.down_proj, gate) if torch.is_grad_enabled() else None
    if parts is None:
        return self.down_proj(self.act_fn(gate) * up)
    return SwiGLUDown.apply(gate, up, *parts)


def use_fused_mlp(model: nn.Module) -> int:
    """Route the model's SwiGLU MLPs through `fused_mlp_forward` (idempotent); returns how many it covers."""
    count = 0
    for module in model.modules():
        act = getattr(module, "act_fn", None)
        silu = isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"  # transformers' own SiLU module
        if type(module).__name__ in SWIGLU_MLPS and silu:
            if not getattr(module, _FLAG, False):
                module.forward = types.MethodType(fused_mlp_forward, module)
                object.__setattr__(module, _FLAG, True)
            count += 1
    return count
