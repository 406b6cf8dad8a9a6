"""One weight-decay rule for every optimizer group, the one transformers' Trainer (and so a peft run) uses:
no decay for biases and norm weights, decay for everything else that trains."""
import pytest
from transformers import Trainer

import tuneforge.methods as M
from tuneforge.models import tiny_bert, tiny_llama


def decay_settings(model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["weight_decay"] for g in M.optimizer_groups(model, 1e-3, 0.1) for p in g["params"]}


def trainer_settings(model):
    decayed = set(Trainer.get_decay_parameter_names(None, model))
    return {n: 0.1 if n in decayed else 0.0 for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("make, method, fields", [
    (tiny_bert, "full", {}),                                                  # LayerNorm weights and biases
    (tiny_llama, "full", {}),                                                 # RMSNorm weights (no bias)
    (tiny_llama, "lora", {"r": 2, "target_modules": ["q_proj"], "bias": "all"}),
    (tiny_llama, "ia3", {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]}),
    (tiny_llama, "loraplus", {"r": 2, "target_modules": ["q_proj"], "bias": "lora_only"}),
    (tiny_bert, "bitfit", {}),
])
def test_groups_decay_what_a_trainer_decays(make, method, fields):
    model = make()
    M.add_adapter(model, method, **fields)
    M.mark_trainable(model)
    ours = decay_settings(model)
    assert ours == trainer_settings(model)
    assert set(ours) == {n for n, p in model.named_parameters() if p.requires_grad}  # each once, none left out


def test_norm_and_bias_names_are_kept_from_decay_and_scales_are_not():
    from tuneforge.methods.weight_decay import no_decay_names

    model = tiny_bert()
    M.add_adapter(model, "ia3", target_modules=["query"], feedforward_modules=[])
    kept = no_decay_names(model)
    assert "embeddings.LayerNorm.weight" in kept and "encoder.layer.0.attention.self.query.base_layer.bias" in kept
    assert not any("ia3_l" in n for n in kept)  # IA3's 1-D scales decay, as in a Trainer run of peft
