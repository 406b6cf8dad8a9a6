"""Selective checkpointing (keep matmul/attention outputs, recompute the rest) gives the same loss and gradients as
no checkpointing and as full checkpointing, with LoRA's fused layers inside the recomputed blocks."""
import pytest
import torch

import tuneforge.methods as M
from tuneforge.data import pack_examples
from tuneforge.models.tiny import tiny_llama
from tuneforge.train.activation_checkpointing import activation_checkpointing as _checkpointing
from tuneforge.train.tasks.sft import SFTTask

from .common import PAD, make_examples


def run(mode, batch, layers=None):
    torch.manual_seed(0)
    model = tiny_llama(seed=2)
    M.add_adapter(model, "lora", r=4, target_modules="all-linear", init_lora_weights=False)
    model.train()
    with _checkpointing(model, mode, layers):
        loss = SFTTask(PAD).loss_sum(model, batch)
        loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("packed", [False, True])
def test_selective_equals_none_and_full(packed):
    examples = make_examples(6, seed=3)
    batch = SFTTask(PAD).collate(pack_examples(examples, 48) if packed else examples)
    reference = run(False, batch)
    for mode in (True, "elementwise"):
        loss, grads = run(mode, batch)
        torch.testing.assert_close(loss, reference[0], rtol=1e-5, atol=1e-5)
        assert grads.keys() == reference[1].keys() and grads
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference[1][name], rtol=1e-4, atol=1e-6, msg=f"{mode}: {name}")


def test_checkpointing_only_the_first_blocks():
    """gradient_checkpointing_layers: the first N blocks recompute, the rest keep their activations; same maths."""
    batch = SFTTask(PAD).collate(pack_examples(make_examples(6, seed=3), 48))
    reference = run(False, batch)
    model = tiny_llama(seed=2)
    M.add_adapter(model, "lora", r=4, target_modules="all-linear")
    with _checkpointing(model, True, 1):
        flags = [block.gradient_checkpointing for block in model.model.layers]
        assert not getattr(model, "_require_grads_hooks", None)  # no input gradient for the first block
    assert len(flags) > 1 and flags == [True] + [False] * (len(flags) - 1)
    assert not any(block.gradient_checkpointing for block in model.model.layers)  # switched off after the run
    loss, grads = run(True, batch, layers=1)
    torch.testing.assert_close(loss, reference[0], rtol=1e-5, atol=1e-5)
    assert grads.keys() == reference[1].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_checkpoint_layers_needs_checkpointing():
    from tuneforge.config.schema import TrainConfig
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match="gradient_checkpointing_layers"):
        TrainConfig(gradient_checkpointing_layers=4).validate()
    TrainConfig(gradient_checkpointing=True, gradient_checkpointing_layers=4).validate()
