"""Norm outputs recomputed in backward (models/norm_recompute.py): the same loss and gradients bit for bit, less
kept for backward, and a clear error rather than wrong gradients when a norm's input changed in place."""
import pytest
import torch

import tuneforge.methods as M
from tuneforge.data import pack_examples
from tuneforge.models.fused_mlp import use_fused_mlp
from tuneforge.models.norm_recompute import stop_norm_recompute, use_norm_recompute
from tuneforge.models.tiny import tiny_llama
from tuneforge.train.activation_checkpointing import activation_checkpointing as _checkpointing
from tuneforge.train.tasks.sft import SFTTask

from .common import PAD, make_examples


def _model(recompute: bool, method="lora", **options):
    torch.manual_seed(0)
    model = tiny_llama(seed=2)
    M.add_adapter(model, method, **options)
    use_fused_mlp(model)
    if recompute:
        assert use_norm_recompute(model) == len(model.model.layers)
        assert use_norm_recompute(model) == 0  # idempotent
    return model.train()


def _loss_and_grads(model, batch):
    loss = SFTTask(PAD).loss_sum(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method,options", [("lora", {"r": 4, "target_modules": "all-linear",
                                                       "init_lora_weights": False}),
                                             ("ia3", {}), ("full", {})])
def test_same_gradients_bit_for_bit(method, options):
    batch = SFTTask(PAD).collate(pack_examples(make_examples(6, seed=3), 48))
    reference = _loss_and_grads(_model(False, method, **options), batch)
    loss, grads = _loss_and_grads(_model(True, method, **options), batch)
    assert torch.equal(loss, reference[0])
    assert grads.keys() == reference[1].keys() and grads
    for name, grad in grads.items():
        assert torch.equal(grad, reference[1][name]), name


def _norm_outputs_alive_after_forward(model, batch) -> int:
    """How many of the blocks' norm outputs (seen as q_proj's and gate_proj's inputs) are still alive once the
    forward has run, i.e. kept for backward."""
    import weakref

    refs = []
    readers = [m for block in model.model.layers for m in (block.self_attn.q_proj, block.mlp.gate_proj)]
    handles = [r.register_forward_pre_hook(lambda m, args: refs.append(weakref.ref(args[0]))) for r in readers]
    try:
        loss = SFTTask(PAD).loss_sum(model, batch)
    finally:
        for h in handles:
            h.remove()
    assert len(refs) == len(readers) and loss.requires_grad
    return sum(r() is not None for r in refs)


def test_keeps_less_for_backward_and_coexists_with_checkpointing():
    batch = SFTTask(PAD).collate(pack_examples(make_examples(6, seed=3), 48))
    lora = {"r": 4, "target_modules": "all-linear"}
    layers = len(_model(False, **lora).model.layers)
    assert _norm_outputs_alive_after_forward(_model(False, **lora), batch) == 2 * layers
    assert _norm_outputs_alive_after_forward(_model(True, **lora), batch) == 0
    reference = _loss_and_grads(_model(False, **lora), batch)
    model = _model(True, **lora)
    with _checkpointing(model, True, 1):  # block 0 recomputes under checkpointing, block 1 under our hooks
        loss, grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(loss, reference[0], rtol=1e-6, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[1][name], rtol=1e-5, atol=1e-7, msg=name)


def test_in_place_change_of_a_norm_input_raises():
    model = _model(True, r=4, target_modules=["q_proj"])
    batch = SFTTask(PAD).collate(make_examples(2, seed=4))
    sources = []
    block = model.model.layers[1]  # its input is the first norm's input (a hook on the norm would turn us off)
    handle = block.register_forward_pre_hook(lambda m, args, kwargs: sources.append(
        args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    try:
        loss = SFTTask(PAD).loss_sum(model, batch)
    finally:
        handle.remove()
    with torch.no_grad():
        sources[0].add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def test_stop_removes_the_hooks():
    model = _model(True, r=4, target_modules="all-linear")
    stop_norm_recompute(model)
    assert all(not block._forward_pre_hooks for block in model.model.layers)
    assert use_norm_recompute(model) == len(model.model.layers)
