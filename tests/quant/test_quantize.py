"""4-bit / 8-bit base weights through bitsandbytes: which layers change, how much memory they keep, and that LoRA on
a 4-bit base equals HF peft's LoRA on the same 4-bit base (outputs and gradients)."""
import pytest
import torch

pytest.importorskip("bitsandbytes")

import tuneforge.methods as M  # noqa: E402
from tuneforge.errors import ConfigError  # noqa: E402
from tuneforge.io import load_adapter, save_adapter  # noqa: E402
from tuneforge.models import load_model  # noqa: E402
from tuneforge.models.tiny import tiny_llama  # noqa: E402
from tuneforge.quant import (  # noqa: E402
    dequantize_model,
    is_quantized,
    quantization_of,
    quantize_model,
    weight_bytes,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def inputs(seed=1):
    return torch.randint(0, 250, (2, 9), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind, layer", [("nf4", "Linear4bit"), ("fp4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_every_block_linear_is_quantised_and_the_head_stays_dense(kind, layer):
    model = tiny_llama(tie_word_embeddings=False)
    dense_bytes = weight_bytes(model)
    x = inputs()
    with torch.no_grad():
        reference = model(input_ids=x).logits
        quantize_model(model, kind)
        got = model(input_ids=x).logits
    names = [n for n, m in model.named_modules() if is_quantized(m)]
    assert len(names) == 7 * model.config.num_hidden_layers
    assert all(type(model.get_submodule(n)).__name__ == layer for n in names)
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.float32
    assert quantization_of(model).quantization == kind
    assert weight_bytes(model) < dense_bytes
    # quantisation error, not a broken model: the logits keep most of their direction
    assert torch.linalg.norm(got - reference) < 0.3 * torch.linalg.norm(reference)


def test_4bit_weights_hold_half_a_byte_per_value():
    model = quantize_model(tiny_llama(), "nf4", double_quant=True)
    for module in (m for m in model.modules() if is_quantized(m)):
        assert module.weight.numel() * module.weight.element_size() == module.in_features * module.out_features / 2
        state = module.weight.quant_state
        assert state.nested and state.absmax.dtype == torch.uint8  # double quantisation: 8-bit block constants


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError) as err:
        quantize_model(tiny_llama(), "int4")
    assert err.value.key == "quantization"
    model = tiny_llama()
    M.add_adapter(model, "lora", r=2, target_modules=["q_proj"])
    with pytest.raises(ConfigError, match="before adding adapters"):
        quantize_model(model, "nf4")


def test_load_model_quantises_a_local_model(tiny_base_dir):
    model = load_model(str(tiny_base_dir), device="cpu", quantization="nf4", compute_dtype="auto")
    assert quantization_of(model).compute_dtype == "float32"
    assert is_quantized(model.model.layers[0].mlp.down_proj)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_lora_on_a_quantised_base_equals_peft(tmp_path, kind):
    from peft import LoraConfig, get_peft_model

    theirs = quantize_model(tiny_llama(), kind)
    peft_model = get_peft_model(theirs, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                   init_lora_weights=False))
    peft_model.save_pretrained(tmp_path)
    ours = quantize_model(tiny_llama(), kind)
    load_adapter(ours, tmp_path, trainable=True)
    peft_model.train()
    ours.train()
    x = inputs()
    y_theirs, y_ours = peft_model(input_ids=x).logits, ours(input_ids=x).logits
    assert (y_theirs - y_ours).abs().max() < 1e-4
    y_theirs.pow(2).mean().backward()
    y_ours.pow(2).mean().backward()
    grads_theirs = {n.replace("base_model.model.", ""): p.grad for n, p in peft_model.named_parameters()
                    if p.grad is not None}
    grads_ours = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    assert grads_theirs.keys() == grads_ours.keys() and len(grads_ours) == 2 * len(TARGETS) * 2
    for name, grad in grads_ours.items():
        torch.testing.assert_close(grad, grads_theirs[name], rtol=1e-4, atol=1e-6, msg=name)


def test_dequantize_gives_dense_layers_with_the_quantised_values():
    model = quantize_model(tiny_llama(), "nf4")
    x = inputs()
    with torch.no_grad():
        quantised = model(input_ids=x).logits
        dequantize_model(model, torch.float32)
        dense = model(input_ids=x).logits
    assert not any(is_quantized(m) for m in model.modules()) and quantization_of(model) is None
    torch.testing.assert_close(dense, quantised, rtol=0, atol=1e-5)


def test_adapter_records_the_quantised_base(tmp_path):
    model = quantize_model(tiny_llama(), "fp4", double_quant=False)
    M.add_adapter(model, "lora", r=2, target_modules=["q_proj"])
    save_adapter(model, tmp_path / "a")
    from tuneforge.io.adapter_files import read_base_quantization

    assert read_base_quantization(tmp_path / "a") == {"quantization": "fp4", "double_quant": False,
                                                      "compute_dtype": "float32", "blocksize": 64}


def test_int8_dequantises_after_a_forward_moved_its_scales():
    """bitsandbytes moves an 8-bit layer's row scales from weight.SCB to layer.state.SCB at the first forward."""
    model = quantize_model(tiny_llama(), "int8")
    x = inputs()
    with torch.no_grad():
        quantised = model(input_ids=x).logits
        assert getattr(model.model.layers[0].mlp.down_proj.weight, "SCB", None) is None
        dequantize_model(model, torch.float32)
        dense = model(input_ids=x).logits
    assert not any(is_quantized(m) for m in model.modules())
    torch.testing.assert_close(dense, quantised, rtol=0, atol=5e-2)  # LLM.int8 rounds the activations too
