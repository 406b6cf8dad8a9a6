import pytest
import torch

from tuneforge.cli.main import main
from tuneforge.errors import TuneforgeError
from tuneforge.eval.generation import generate, generate_with
from tuneforge.models import tiny_llama, tiny_tokenizer

PROMPTS = ["hi", "a longer prompt, so the batch needs padding"]


@pytest.fixture
def peft_adapter(tmp_path, tiny_base_dir):
    """A LoRA adapter written by HF peft for the tiny base, with non-zero B so it changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    path = tmp_path / "adapter"
    peft_model.save_pretrained(path)
    return path, peft_model.eval()


def test_batched_generation_equals_one_by_one(tiny_tok):
    model = tiny_llama(seed=3, tie_word_embeddings=False)
    batched = generate_with(model, tiny_tok, PROMPTS, max_new_tokens=6, chat=False)
    single = [generate_with(model, tiny_tok, p, max_new_tokens=6, chat=False)[0] for p in PROMPTS]
    assert batched == single
    assert tiny_tok.padding_side == "right"  # restored


def test_returns_only_new_text_and_stops_at_eos(tiny_model, tiny_tok):
    eos = tiny_tok.eos_token_id

    def always_eos(module, args, logits):
        logits[..., eos] = 1e4
        return logits

    handle = tiny_model.lm_head.register_forward_hook(always_eos)
    try:
        assert generate_with(tiny_model, tiny_tok, PROMPTS, max_new_tokens=8) == ["", ""]
    finally:
        handle.remove()
    replies = generate_with(tiny_model, tiny_tok, ["hello"], max_new_tokens=3, chat=False)
    assert "hello" not in replies[0]


def test_generate_loads_base_and_adapter(tiny_base_dir, peft_adapter, tiny_tok):
    adapter_dir, peft_model = peft_adapter
    ours = generate(tiny_base_dir, adapter_dir, prompts=PROMPTS, max_new_tokens=5, device="cpu")
    theirs = generate_with(peft_model, tiny_tok, PROMPTS, max_new_tokens=5)
    assert ours == theirs


def test_cli_generate_prints_the_reply(tiny_base_dir, capsys):
    expected = generate_with(tiny_llama(), tiny_tokenizer(), ["hello"], max_new_tokens=4)[0]
    with pytest.raises(SystemExit) as info:
        main(["generate", "--base", str(tiny_base_dir), "--prompt", "hello", "--max-new-tokens", "4"])
    assert info.value.code in (0, None)
    assert capsys.readouterr().out.strip() == expected.strip()


def test_merge_matches_peft_logits(tmp_path, tiny_base_dir, peft_adapter):
    from transformers import AutoModelForCausalLM

    from tuneforge.io.merge import merge

    adapter_dir, peft_model = peft_adapter
    out = merge(tiny_base_dir, adapter_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[5, 17, 99, 3, 250, 42]])
    with torch.no_grad():
        expected, got = peft_model(ids).logits, merged(ids).logits
    base_logits = AutoModelForCausalLM.from_pretrained(tiny_base_dir)(ids).logits
    assert not torch.allclose(expected, base_logits, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not any("lora" in k for k in merged.state_dict())
    assert (out / "tokenizer_config.json").is_file()


def test_merge_refuses_to_overwrite_unless_forced(tmp_path, tiny_base_dir, peft_adapter, capsys):
    from tuneforge.io.merge import merge

    adapter_dir, _ = peft_adapter
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(TuneforgeError, match="--force"):
        merge(tiny_base_dir, adapter_dir, out)
    assert (out / "keep.txt").exists()
    with pytest.raises(SystemExit) as info:
        main(["merge", "--base", str(tiny_base_dir), "--adapter", str(adapter_dir), "--out", str(out), "--force"])
    assert info.value.code in (0, None) and "merged model written" in capsys.readouterr().out
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()
