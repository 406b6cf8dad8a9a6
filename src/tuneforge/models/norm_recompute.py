"""Recompute the blocks' norm outputs in backward instead of keeping them: the same bits, less memory.

In a pre-norm block, x = norm(h) feeds the projections (q/k/v after the first norm, gate/up after the second).
Autograd keeps h for the norm's own backward, and every adapted projection keeps x again for its weight
gradient (LoRA's dA = g_B^T x). x is a cheap elementwise function of h, so holding both doubles the residual
stream's share of the saved activations for nothing: on SmolLM2 with LoRA on every projection that is 1,152 of
the ~7.6k floats a layer keeps per token, about 15% (measured: 160 MB less peak at 4 x 256 tokens).

While a block runs forward, a `saved_tensors_hooks` pair replaces every saved tensor that is the output of one
of the block's norm modules by a recipe: the norm's input (already kept by the norm itself), the module, and
the view's geometry. In backward the first unpack runs the norm forward again on that input (the same kernels
on the same values, so bit-identical) and the consumers of the same output share the result. A norm input that
was modified in place since is detected (tensor version) and raises instead of computing something else.

Applied by `use_norm_recompute(model)` to the repeated blocks' RMSNorm/LayerNorm children; a block that runs
under checkpointing is unaffected (the checkpoint's own hooks take precedence inside it), and the compile path
leaves it off (the compiler's partitioner makes the same trade on its own).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import repeated_blocks

_FLAG = "_tuneforge_norm_recompute"


class _Recipe:
    __slots__ = ("module", "source", "version", "value")

    def __init__(self, module: nn.Module, source: torch.Tensor):
        self.module, self.source, self.version, self.value = module, source, source._version, None

    def output(self) -> torch.Tensor:
        if self.value is None:
            if self.source._version != self.version:
                raise RuntimeError("a norm's input was modified in place after its forward; cannot recompute "
                                   "its output for backward (set train.recompute_norms: false for this model)")
            with torch.no_grad():
                self.value = self.module.forward(self.source)
        return self.value


class _BlockHooks:
    """Per-block forward: note the norm outputs, and swap them for recipes when autograd saves them."""

    def __init__(self):
        self.outputs: dict[int, tuple[torch.Tensor, _Recipe]] = {}
        self.context = None

    def norm_output(self, module, args, output):
        # Only a norm whose output is its forward's alone (no other hooks) can be recomputed by calling forward.
        alone = len(module._forward_hooks) == 1 and not module._forward_pre_hooks
        if self.context is not None and alone and isinstance(output, torch.Tensor) and args and torch.is_grad_enabled():
            self.outputs[output.untyped_storage().data_ptr()] = (output, _Recipe(module, args[0]))

    def pack(self, tensor: torch.Tensor):
        hit = self.outputs.get(tensor.untyped_storage().data_ptr()) if tensor.device.type != "meta" else None
        if hit is None or hit[0].dtype != tensor.dtype:  # the noted output is alive, so its storage is this one
            return tensor
        return hit[1], tensor.size(), tensor.stride(), tensor.storage_offset()

    @staticmethod
    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        recipe, size, stride, offset = packed
        return recipe.output().as_strided(size, stride, offset)

    def enter(self, module, args, kwargs):
        # Autocast picks per-op dtypes that a recompute outside it would not: leave those runs as they are.
        if (torch.is_grad_enabled() and module.training and not torch.compiler.is_compiling()
                and not torch.is_autocast_enabled(next(module.parameters()).device.type)):
            self.context = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
            self.context.__enter__()

    def exit(self, module, args, kwargs, output):
        if self.context is not None:
            context, self.context = self.context, None
            context.__exit__(None, None, None)
        self.outputs.clear()  # the recipes live on in what autograd saved, and no longer than that


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def use_norm_recompute(model: nn.Module) -> int:
    """Hook every repeated block whose children include norms (see the module docstring); returns how many blocks
    were hooked (0: no repeated blocks or no norms; calling again hooks nothing new)."""
    blocks = repeated_blocks(model)
    count = 0
    for block in blocks if blocks is not None else ():
        norms = [m for m in block.children() if _is_norm(m)]
        if not norms or getattr(block, _FLAG, None) is not None:
            continue
        hooks = _BlockHooks()
        handles = [block.register_forward_pre_hook(hooks.enter, with_kwargs=True),
                   block.register_forward_hook(hooks.exit, with_kwargs=True, always_call=True)]
        handles += [norm.register_forward_hook(hooks.norm_output) for norm in norms]
        setattr(block, _FLAG, handles)
        count += 1
    return count


def stop_norm_recompute(model: nn.Module) -> None:
    """Remove the hooks use_norm_recompute added."""
    for module in model.modules():
        for handle in getattr(module, _FLAG, None) or ():
            handle.remove()
        if hasattr(module, _FLAG):
            delattr(module, _FLAG)
