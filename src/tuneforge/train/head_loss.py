"""Summed cross-entropy of a linear output head, computed chunk by chunk with its gradient in the same pass.

For hidden states h_t (one per target token, already gathered), head weight W (vocab x d), bias b and targets y_t:

    loss = sum_t [ log sum_v exp(l_tv) - l_ty ],   l_t = W h_t + b
    dL/dh_t = (p_t - e_y) W = (E_t W) / S_t - W[y_t]       with E_tv = exp(l_tv - m_t), S_t = sum_v E_tv

Why: autograd's cross_entropy keeps the (tokens x vocab) fp32 logits, writes log_softmax as a second copy, and in
backward allocates a zero one-hot, a third buffer for the softmax gradient, then multiplies by W. Here each chunk
of `chunk_size` rows reuses one logits buffer: max, exp in place, row sums, one GEMM for dL/dh, and the softmax
division and the one-hot both move onto the small (chunk x d) result. Backward only scales the saved gradients
by the incoming scalar. This is the "fused linear cross-entropy" of Liger-Kernel (Hsu et al. 2024,
https://arxiv.org/abs/2410.10989) and Cut Cross-Entropy (Wijmans et al. 2024, https://arxiv.org/abs/2411.09009)
written with plain torch ops, so it runs on CPU and GPU alike.
"""
from __future__ import annotations

import torch


class LinearCrossEntropy(torch.autograd.Function):
    """loss = sum_t CE(W h_t + b, y_t) with dL/dh (and dL/dW, dL/db when they train) computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size):
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        n, vocab = hidden.shape[0], weight.shape[0]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if want_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        step = max(1, min(chunk_size, n))
        buffer = hidden.new_empty((step, vocab), dtype=weight.dtype)
        for start in range(0, n, step):
            h, y = hidden[start : start + step], targets[start : start + step]
            logits = torch.mm(h, weight.t(), out=buffer[: h.shape[0]])
            if bias is not None:
                logits.add_(bias)
            logits = logits.float()  # a no-op for fp32 heads; half-precision heads get an fp32 softmax
            row_max = logits.amax(1, keepdim=True)
            picked = logits.gather(1, y[:, None])
            exp = logits.sub_(row_max).exp_()
            sums = exp.sum(1, keepdim=True)
            total += (sums.log() + row_max - picked).sum()
            if not (want_h or want_w or want_b):
                continue
            inv = sums.reciprocal()
            exp_w = exp.to(weight.dtype)
            if want_h:
                rows = torch.mm(exp_w, weight, out=grad_h[start : start + h.shape[0]])
                rows.mul_(inv.to(rows.dtype)).sub_(weight[y])
            if want_w:
                grad_w.addmm_(exp_w.t().float(), (h.float() * inv))
                grad_w.index_add_(0, y, -h.float())
            if want_b:
                grad_b.add_((exp * inv).sum(0)).index_add_(0, y, -torch.ones_like(y, dtype=torch.float32))
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        return (
            None if grad_h is None else grad_h * grad.to(grad_h.dtype),
            None if grad_w is None else (grad_w * grad).to(w_dtype),
            None if grad_b is None else (grad_b * grad).to(b_dtype),
            None,
            None,
        )


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """Summed CE of `hidden @ weight.T + bias` against `targets` (all valid: filter ignored positions first)."""
    if hidden.shape[0] == 0:
        return hidden.sum(dtype=torch.float32) * 0.0
    return LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size)
