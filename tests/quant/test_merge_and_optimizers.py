"""QLoRA end to end on the tiny model: train on a 4-bit base with 8-bit AdamW, merge into the dequantised base, and
check the merged model against quantised base + adapter; merging never writes into 4-bit weights."""
import json

import pytest
import torch

pytest.importorskip("bitsandbytes")

import tuneforge.methods as M  # noqa: E402
from tuneforge.errors import NotMergeable  # noqa: E402
from tuneforge.models.tiny import tiny_llama  # noqa: E402
from tuneforge.quant import quantize_model  # noqa: E402

# Merged = dequant(Q(W)) + s B A in fp32 against dequant(Q(W)) x + s B A x: only the order of float sums differs.
MERGE_ATOL = 1e-4

RECORDS = [{"instruction": f"Say {w}", "input": "", "output": f"{w} {w}!"} for w in ("hi", "yes", "no", "ok")]


def test_merge_refuses_quantised_weights_and_leaves_them_untouched():
    model = quantize_model(tiny_llama(), "nf4")
    M.add_adapter(model, "lora", r=2, target_modules=["q_proj"], init_lora_weights=False)
    layer = model.model.layers[0].self_attn.q_proj
    packed = layer.base_layer.weight.data.clone()
    with pytest.raises(NotMergeable, match="dequantise the model first"):
        M.merge_adapters(model)
    with pytest.raises(NotMergeable):
        M.unload(model, merge=True)
    assert torch.equal(layer.base_layer.weight.data, packed) and not layer.merged_adapters


@pytest.fixture
def qlora_run(tmp_path, tiny_base_dir):
    from tuneforge.train.api import train

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    config = {
        "model": {"name": str(tiny_base_dir), "device": "cpu", "quantization": "nf4", "double_quant": True},
        "method": {"name": "lora", "r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        "data": {"train": str(data), "validation": str(data), "max_length": 64, "packing": True},
        "train": {"max_steps": 3, "micro_batch_size": 2, "learning_rate": 5e-2, "optimizer": "adamw_8bit"},
        "output_dir": str(tmp_path / "run"),
    }
    result = train(config, progress=False)
    return result, tmp_path / "run" / "adapter", tiny_base_dir


def test_qlora_trains_and_merges_into_the_dequantised_base(qlora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from tuneforge.cli.main import main
    from tuneforge.io import load_adapter
    from tuneforge.models import load_model

    result, adapter, base_dir = qlora_run
    assert result.steps == 3 and (adapter / "base_quantization.json").is_file()
    out = tmp_path / "merged"
    with pytest.raises(SystemExit) as done:
        main(["merge", "--adapter", str(adapter), "--out", str(out)])
    assert done.value.code in (0, None)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    quantised = load_model(str(base_dir), device="cpu", quantization="nf4")
    load_adapter(quantised, adapter)
    x = torch.randint(0, 250, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = quantised(input_ids=x).logits, merged(input_ids=x).logits
        dense_base = AutoModelForCausalLM.from_pretrained(base_dir).eval()(input_ids=x).logits
    assert (got - expected).abs().max() < MERGE_ATOL
    assert (dense_base - expected).abs().max() > 100 * MERGE_ATOL  # the adapter (and Q(W)) changed something


@pytest.mark.parametrize("name, cls", [("adamw_8bit", "AdamW8bit"), ("paged_adamw_8bit", "PagedAdamW8bit")])
def test_8bit_optimizers_step_and_round_trip_their_state(name, cls):
    from tuneforge.config.schema import TrainConfig
    from tuneforge.train.optim import build_optimizer

    model = tiny_llama()
    M.add_adapter(model, "lora", r=64, target_modules=["gate_proj"], init_lora_weights=False)  # A: 64 x 64
    optimizer = build_optimizer(model, TrainConfig(learning_rate=1e-2, optimizer=name))
    assert type(optimizer).__name__ == cls
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model(input_ids=torch.randint(0, 250, (2, 9))).logits.pow(2).mean().backward()
    optimizer.step()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    state = optimizer.state_dict()
    again = build_optimizer(model, TrainConfig(learning_rate=1e-2, optimizer=name))
    again.load_state_dict(state)
    big = next(p for p in model.parameters() if p.requires_grad and p.numel() >= 4096)
    assert again.state[big]["state1"].dtype == torch.uint8  # 8-bit moments where the tensor is large enough
