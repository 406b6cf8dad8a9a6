"""The paths a GPU takes on its own: device and dtype selection, LoRA against peft on CUDA, training end to end,
QLoRA on bitsandbytes' CUDA kernels, its merge, and the paged 8-bit optimizer. Skipped without CUDA (CI has
none); run with `pytest tests/gpu` on a GPU machine."""
import json

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RECORDS = [{"instruction": f"Say {w}", "input": "", "output": f"{w} {w}!"} for w in ("hi", "yes", "no", "ok")]


def test_auto_picks_cuda_and_bf16(tiny_base_dir):
    from tuneforge.models import load_model, resolve_device, resolve_dtype

    assert resolve_device("auto").type == "cuda"
    assert resolve_dtype("auto") == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    model = load_model(tiny_base_dir, device="auto", dtype="auto")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert model.dtype == resolve_dtype("auto")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_equals_peft_on_cuda(tmp_path, dtype):
    from peft import LoraConfig, get_peft_model

    from tuneforge.io import load_adapter
    from tuneforge.models.tiny import tiny_llama

    peft_model = get_peft_model(tiny_llama().to("cuda", dtype),
                                LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    peft_model.save_pretrained(tmp_path)
    ours = tiny_llama().to("cuda", dtype)
    load_adapter(ours, tmp_path, trainable=True)
    assert {p.dtype for p in ours.parameters() if p.requires_grad} == {torch.float32}
    ids = torch.randint(0, 200, (2, 16), device="cuda")
    y_theirs, y_ours = peft_model(input_ids=ids).logits, ours(input_ids=ids).logits
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(y_ours, y_theirs, **tol)
    y_theirs.float().pow(2).mean().backward()
    y_ours.float().pow(2).mean().backward()
    theirs = {n.replace("base_model.model.", ""): p.grad for n, p in peft_model.named_parameters() if p.grad is not None}
    ours_grads = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert ours_grads.keys() == theirs.keys()
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, theirs[name], rtol=5e-2 if dtype == torch.bfloat16 else 1e-3,
                                   atol=1e-3 if dtype == torch.bfloat16 else 1e-6, msg=name)


def _config(tmp_path, base_dir, **model):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return {
        "model": {"name": str(base_dir), "device": "auto", "dtype": "auto", **model},
        "method": {"name": "lora", "r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        "data": {"train": str(data), "validation": str(data), "max_length": 64, "packing": True},
        "train": {"max_steps": 4, "micro_batch_size": 2, "learning_rate": 5e-2, "save_every": 2},
        "output_dir": str(tmp_path / "run"),
    }


def test_train_on_cuda_in_bf16_then_resume(tmp_path, tiny_base_dir):
    from tuneforge.train.api import train

    config = _config(tmp_path, tiny_base_dir)
    config["train"]["lr_schedule"] = "constant"  # a schedule over max_steps would refuse the longer resume
    first = train(config, progress=False)
    assert first.steps == 4 and first.train_loss is not None and first.eval_metrics
    losses = [r["loss"] for r in first.history if "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    config["train"]["max_steps"] = 6
    again = train(config, progress=False)  # resumes from the step-4 checkpoint
    assert again.steps == 6


def test_full_fine_tuning_on_cuda_keeps_fp32_master_weights(tmp_path, tiny_base_dir, capsys):
    """dtype auto loads bf16 on the GPU; the trained base weights run in fp32 under bf16 autocast
    (train/precision.py) and are bf16 again in what is saved after."""
    from tuneforge.train.api import train

    config = _config(tmp_path, tiny_base_dir)
    config["method"] = {"name": "full"}
    config["train"]["learning_rate"] = 1e-4
    result = train(config, progress=False)
    assert result.steps == 4 and result.train_loss is not None
    if torch.cuda.is_bf16_supported():
        assert "fp32 master weights" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8"])
def test_quantised_base_runs_on_bitsandbytes_cuda_kernels(kind):
    pytest.importorskip("bitsandbytes")
    from tuneforge.models.tiny import tiny_llama
    from tuneforge.quant import dequantize_model, is_quantized, quantize_model

    model = quantize_model(tiny_llama(), kind, device="cuda").to("cuda")  # as load_model does
    layer = model.model.layers[0].mlp.down_proj
    assert is_quantized(layer) and layer.weight.device.type == "cuda"
    if kind != "int8":
        assert layer.weight.dtype == torch.uint8 and layer.weight.numel() * 2 == layer.in_features * layer.out_features
    ids = torch.randint(0, 200, (2, 16), device="cuda")
    with torch.no_grad():
        quantised = model(input_ids=ids).logits
        dequantize_model(model, torch.float32)
        dense = model(input_ids=ids).logits
    tol = 1e-4 if kind != "int8" else 5e-2  # int8 matmul rounds activations too (LLM.int8)
    torch.testing.assert_close(dense, quantised, rtol=0, atol=tol)


def test_qlora_trains_with_paged_8bit_adamw_and_merges(tmp_path, tiny_base_dir):
    pytest.importorskip("bitsandbytes")
    from tuneforge.io import load_adapter
    from tuneforge.methods import merge_adapters
    from tuneforge.models import load_model
    from tuneforge.quant import dequantize_model
    from tuneforge.train.api import train

    config = _config(tmp_path, tiny_base_dir, quantization="nf4", double_quant=True)
    config["train"]["optimizer"] = "paged_adamw_8bit"
    result = train(config, progress=False)
    assert result.steps == 4
    adapter = tmp_path / "run" / "adapter"
    quantised = load_model(tiny_base_dir, device="cuda", dtype="float32", quantization="nf4")
    load_adapter(quantised, adapter)
    ids = torch.randint(0, 200, (2, 16), device="cuda")
    with torch.no_grad():
        expected = quantised(input_ids=ids).logits
        dequantize_model(quantised, torch.float32)
        merge_adapters(quantised)
        merged = quantised(input_ids=ids).logits
    torch.testing.assert_close(merged, expected, rtol=0, atol=1e-3)


def test_fused_mlp_matches_the_model_mlp_on_cuda():
    import copy

    import tuneforge.methods as M
    from tuneforge.models.fused_mlp import use_fused_mlp
    from tuneforge.models.tiny import tiny_llama

    model = tiny_llama().to("cuda")
    M.add_adapter(model, "lora", r=4, target_modules=TARGETS, init_lora_weights=False)
    model.train()
    fused = copy.deepcopy(model)
    assert use_fused_mlp(fused) == model.config.num_hidden_layers
    ids = torch.randint(0, 200, (2, 24), device="cuda")
    grads = []
    for m in (model, fused):
        m(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)
