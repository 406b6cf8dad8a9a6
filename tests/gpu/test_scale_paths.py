"""The scale paths only a GPU takes (issue #18): quantising onto the GPU while streaming, packed rows through
flash-attn's varlen kernel and through FlexAttention, and compiled blocks routed to a kernel inductor compiles.
Skipped without CUDA (CI has none); `pytest tests/gpu` on a GPU machine (benchmarks/gpu_check.sh runs it)."""
import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PAD = 259


def _rows():
    from tuneforge.data import pack_examples

    gen = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(9):
        n = int(torch.randint(5, 30, (1,), generator=gen))
        ids = torch.randint(0, 256, (n,), generator=gen).tolist()
        examples.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    return examples, pack_examples(examples, 64)


def _loss(model, task, batches):
    model.zero_grad(set_to_none=True)
    total = sum(task.loss_sum(model, {k: v.cuda() if torch.is_tensor(v) else v for k, v in b.items()})
                for b in batches)
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _tiny(attn: str, dtype=torch.bfloat16):
    from tuneforge.models.tiny import tiny_llama

    model = tiny_llama(seed=0).to("cuda", dtype)
    model.set_attn_implementation(attn)
    for name, p in model.named_parameters():
        p.requires_grad_("q_proj" in name or "v_proj" in name)
    return model


@pytest.mark.parametrize("attn", [
    "sdpa", "flex_attention",
    pytest.param("flash_attention_2", marks=pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None,
                                                                reason="flash-attn not installed")),
])
def test_packed_rows_equal_examples_alone_on_the_gpu(attn):
    from tuneforge.train.tasks.sft import SFTTask

    examples, rows = _rows()
    task = SFTTask(PAD, packed_attention=False)
    packed_model, alone_model = _tiny(attn), _tiny("sdpa")
    batch = task.collate(rows)
    assert "attention_mask" not in batch
    loss, grads = _loss(packed_model, task, [batch])
    ref_loss, ref_grads = _loss(alone_model, task, [task.collate([ex]) for ex in examples])
    # bf16: 8 mantissa bits; sums over <= 64 keys and 64 hidden units -> a few percent per gradient entry
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=0)
    for name, grad in grads.items():
        scale = float(ref_grads[name].abs().max())
        torch.testing.assert_close(grad, ref_grads[name], rtol=5e-2, atol=5e-2 * scale, msg=name)


def test_streamed_quantisation_onto_the_gpu_equals_quantising_a_dense_load(tmp_path, monkeypatch):
    pytest.importorskip("bitsandbytes")
    from transformers import LlamaForCausalLM

    from tuneforge.models import load_model
    from tuneforge.models.tiny import tiny_llama_config

    LlamaForCausalLM(tiny_llama_config()).to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="60KB")
    lean = load_model(tmp_path, dtype="bfloat16", device="cuda", quantization="nf4")
    monkeypatch.setattr("tuneforge.models.lean_load.load_quantized_streaming", lambda *a, **k: None)
    dense = load_model(tmp_path, dtype="bfloat16", device="cuda", quantization="nf4")
    dense_state = dense.state_dict()
    for name, value in lean.state_dict().items():
        # bitsandbytes packs each weight's quant-state description (JSON bytes) into a host tensor on both paths
        on_gpu = value.device.type == "cuda" or name.endswith(("bitsandbytes__nf4", "bitsandbytes__fp4"))
        assert on_gpu and value.device == dense_state[name].device and torch.equal(value, dense_state[name]), name


def test_rank_local_rows_quantised_on_the_gpu_equal_a_one_process_gpu_load(tmp_path):
    """Rank-local loading (models/loader_deferred.py) quantises each 4-bit weight where the model computes, here
    on CUDA; the rows 2 processes keep, put together, are the codes and state of a one-process load on the GPU."""
    pytest.importorskip("bitsandbytes")
    from transformers import LlamaForCausalLM

    from tuneforge.models import load_model
    from tuneforge.models.loader_deferred import read_shards
    from tuneforge.models.tiny import tiny_llama_config

    LlamaForCausalLM(tiny_llama_config()).to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="60KB")
    kw = dict(dtype="bfloat16", device="cuda", quantization="nf4")
    whole = dict(load_model(tmp_path, **kw).named_parameters())
    parts: dict[str, list] = {}
    for rank in range(2):
        model = load_model(tmp_path, deferred=True, **kw)

        def rows(n, rank=rank):
            size = -(-n // 2)
            return min(rank * size, n), min(rank * size + size, n)

        for name, piece, state in read_shards(model, rows, torch.bfloat16):
            parts.setdefault(name, []).append(piece)
            if state is not None:
                assert state.absmax.device.type == "cuda"
                assert torch.equal(state.absmax, whole[name].quant_state.absmax), name
    for name, pieces in parts.items():
        ref = whole[name].data
        if getattr(whole[name], "quant_state", None) is not None:
            ref = ref.reshape(-1).view(torch.bfloat16).view(-1, 1)
        got = torch.cat(pieces).to(ref.device)
        assert torch.equal(got.view(torch.uint8), ref.contiguous().view(torch.uint8)), name


def test_compiled_blocks_avoid_the_efficient_attention_backward():
    """docs/performance.md: inductor failed compiling sdpa's memory-efficient backward. attention_for_compile
    routes the blocks to flash_attention_2 or flex_attention; a compiled step then runs and matches eager."""
    from tuneforge.train.compile import attention_for_compile, compile_blocks
    from tuneforge.train.tasks.sft import SFTTask

    _, rows = _rows()
    task = SFTTask(PAD)
    eager = _tiny("sdpa")
    compiled = _tiny("sdpa")
    assert attention_for_compile(compiled) in ("flash_attention_2", "flex_attention")
    compile_blocks(compiled)
    batch = task.collate(rows)
    loss, grads = _loss(compiled, task, [batch])
    ref_loss, ref_grads = _loss(eager, task, [batch])
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=0)
    for name, grad in grads.items():
        scale = float(ref_grads[name].abs().max())
        torch.testing.assert_close(grad, ref_grads[name], rtol=5e-2, atol=5e-2 * scale, msg=name)
