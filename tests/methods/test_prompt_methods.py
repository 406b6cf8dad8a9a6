"""Prompt tuning and prefix tuning equal HF peft (logits, gradients, generation), their files cross both ways,
and the backbone hooks serve every way tasks call the model (backbone + head, classification, generate)."""
import pytest
import torch
from peft import PeftModel, get_peft_model
from peft import PrefixTuningConfig as PeftPrefix
from peft import PromptTuningConfig as PeftPrompt

import tuneforge.methods as M
from tuneforge.errors import AdapterMismatch, ConfigError
from tuneforge.io import load_adapter, save_adapter
from tuneforge.models.tiny import tiny_bert, tiny_llama, tiny_tokenizer

NV = 5


def inputs(seed=1, batch=2, length=9):
    ids = torch.randint(0, 250, (batch, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    return ids, mask


def peft_model(kind, build=tiny_llama, task_type="CAUSAL_LM", **fields):
    cls = PeftPrompt if kind == "prompt_tuning" else PeftPrefix
    return get_peft_model(build(), cls(task_type=task_type, num_virtual_tokens=NV, **fields))


def ours_like(pm, kind, build=tiny_llama, **fields):
    """Our adapter holding exactly peft's weights."""
    ours = build()
    M.add_adapter(ours, kind, num_virtual_tokens=NV, **fields)
    holder = getattr(ours.base_model, "prompt_encoder" if kind == "prompt_tuning" else "prefix_encoder")
    holder["default"].load_state_dict(pm.prompt_encoder["default"].state_dict())
    return ours


def grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


KINDS = [("prompt_tuning", {}), ("prefix_tuning", {}), ("prefix_tuning", {"prefix_projection": True,
                                                                          "encoder_hidden_size": 16})]
KIND_IDS = ["prompt", "prefix", "prefix-mlp"]


@pytest.mark.parametrize("kind,fields", KINDS, ids=KIND_IDS)
def test_logits_and_gradients_equal_peft(kind, fields):
    pm = peft_model(kind, **fields)
    ours = ours_like(pm, kind, **fields)
    ids, mask = inputs()
    y_peft = pm(input_ids=ids, attention_mask=mask).logits
    if kind == "prompt_tuning":
        y_peft = y_peft[:, NV:]  # peft returns the virtual positions too
    y_ours = ours(input_ids=ids, attention_mask=mask).logits
    assert y_ours.shape == (2, 9, ours.config.vocab_size)
    real = mask.bool()
    assert (y_peft - y_ours)[real].abs().max() < 1e-5
    weights = torch.randn(y_ours.shape, generator=torch.Generator().manual_seed(0)) * real[..., None]
    (y_peft * weights).sum().backward()
    (y_ours * weights).sum().backward()
    holder = getattr(ours.base_model, "prompt_encoder" if kind == "prompt_tuning" else "prefix_encoder")
    g_peft, g_ours = grads(pm.prompt_encoder["default"]), grads(holder["default"])
    assert g_peft.keys() == g_ours.keys() and g_peft
    for k in g_peft:
        assert (g_peft[k] - g_ours[k]).abs().max() < 1e-5, k
    assert M.count_parameters(ours)[0] == sum(p.numel() for p in pm.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind,fields", KINDS, ids=KIND_IDS)
def test_files_cross_both_ways(kind, fields, tmp_path):
    ids, mask = inputs()
    ours = tiny_llama()
    M.add_adapter(ours, kind, num_virtual_tokens=NV, **fields)
    save_adapter(ours, tmp_path / "ours")
    pm = PeftModel.from_pretrained(tiny_llama(), tmp_path / "ours")
    y_peft = pm(input_ids=ids, attention_mask=mask).logits
    y_peft = y_peft[:, NV:] if kind == "prompt_tuning" else y_peft
    y_ours = ours(input_ids=ids, attention_mask=mask).logits
    assert (y_peft - y_ours)[mask.bool()].abs().max() < 1e-5

    peft_trained = peft_model(kind, **fields)
    peft_trained.save_pretrained(tmp_path / "peft")
    mine = tiny_llama()
    load_adapter(mine, tmp_path / "peft")
    y_peft = peft_trained(input_ids=ids, attention_mask=mask).logits
    y_peft = y_peft[:, NV:] if kind == "prompt_tuning" else y_peft
    assert (y_peft - mine(input_ids=ids, attention_mask=mask).logits)[mask.bool()].abs().max() < 1e-5


@pytest.mark.parametrize("kind,fields", KINDS, ids=KIND_IDS)
def test_generate_equals_peft_and_a_cache_free_greedy_loop(kind, fields):
    pm = peft_model(kind, **fields)
    ours = ours_like(pm, kind, **fields)
    ids, mask = inputs()
    out = ours.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False))
    seq, m = ids, mask
    for _ in range(4):  # every step recomputes the whole sequence, prompt included, without a cache
        nxt = ours(input_ids=seq, attention_mask=m, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning"])
def test_sft_path_backbone_then_head_equals_full_logits(kind):
    """The SFT task calls model.model(input_ids, attention_mask, position_ids) and applies lm_head itself."""
    model = tiny_llama()
    M.add_adapter(model, kind, num_virtual_tokens=NV)
    ids, _ = inputs()
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding, as collate_causal
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    assert hidden.shape == (2, 9, model.config.hidden_size)
    full = model(input_ids=ids, attention_mask=mask).logits
    assert (model.lm_head(hidden) - full)[mask.bool()].abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning"])
def test_mixed_batch_with_different_lengths_and_a_base_row_equals_separate_runs(kind):
    model, base = tiny_llama(), tiny_llama()
    M.add_adapter(model, kind, "a", num_virtual_tokens=3)
    M.add_adapter(model, kind, "b", num_virtual_tokens=6)
    ids, mask = inputs(batch=3)
    mask[2, :2] = 0
    separate = []
    for name in ("a", "b"):
        M.set_active_adapters(model, name)
        separate.append(model(input_ids=ids, attention_mask=mask).logits)
    separate.append(base(input_ids=ids, attention_mask=mask).logits)
    with M.mixed_batch(model, ["a", "b", None]):
        mixed = model(input_ids=ids, attention_mask=mask).logits
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    for row in range(3):
        real = mask[row].bool()
        assert (mixed[row][real] - separate[row][row][real]).abs().max() < 1e-5, row
    M.set_active_adapters(model, "b")
    alone = model.generate(input_ids=ids[1:2], attention_mask=mask[1:2], max_new_tokens=3, do_sample=False)
    assert torch.equal(generated[1:2], alone)
    with M.disable_adapters(model):
        assert (model(input_ids=ids, attention_mask=mask).logits - separate[2])[mask.bool()].abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning"])
def test_two_active_adapters_concatenate_their_virtual_tokens(kind):
    model = tiny_llama()
    M.add_adapter(model, kind, "a", num_virtual_tokens=2)
    M.add_adapter(model, kind, "b", num_virtual_tokens=3)
    M.set_active_adapters(model, ["a", "b"])
    ids, mask = inputs()
    both = model(input_ids=ids, attention_mask=mask).logits
    holder = getattr(model.model, "prompt_encoder" if kind == "prompt_tuning" else "prefix_encoder")
    joined = tiny_llama()
    M.add_adapter(joined, kind, num_virtual_tokens=5)
    target = getattr(joined.model, "prompt_encoder" if kind == "prompt_tuning" else "prefix_encoder")["default"]
    with torch.no_grad():
        target.embedding.weight.copy_(torch.cat([holder["a"].embedding.weight, holder["b"].embedding.weight]))
    assert (joined(input_ids=ids, attention_mask=mask).logits - both)[mask.bool()].abs().max() < 1e-5


def test_prompt_tuning_on_bert_classification_equals_peft_and_trains_the_head(tmp_path):
    """Classification calls model(input_ids, attention_mask): the pooled first position is a virtual token, as peft."""
    build = lambda: tiny_bert(num_labels=3)  # noqa: E731
    pm = peft_model("prompt_tuning", build=build, task_type="SEQ_CLS", modules_to_save=["classifier"])
    ours = ours_like(pm, "prompt_tuning", build=build, modules_to_save=["classifier"])
    with torch.no_grad():
        ours.classifier.modules_to_save["default"].load_state_dict(pm.classifier.modules_to_save["default"].state_dict())
    ids, mask = inputs()
    tt = torch.zeros_like(ids)
    assert (pm(input_ids=ids, attention_mask=mask).logits - ours(input_ids=ids, attention_mask=mask,
                                                                  token_type_ids=tt).logits).abs().max() < 1e-5
    assert M.count_parameters(ours)[0] == sum(p.numel() for p in pm.parameters() if p.requires_grad)
    save_adapter(ours, tmp_path)
    fresh = build()
    load_adapter(fresh, tmp_path)
    assert (fresh(input_ids=ids, attention_mask=mask).logits - ours(input_ids=ids, attention_mask=mask).logits
            ).abs().max() < 1e-5


def test_prefix_tuning_on_bert_equals_peft():
    pm = peft_model("prefix_tuning", build=tiny_bert, task_type="FEATURE_EXTRACTION")
    ours = ours_like(pm, "prefix_tuning", build=tiny_bert)
    ids, mask = inputs()
    y_peft = pm(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (y_peft - ours(input_ids=ids, attention_mask=mask).last_hidden_state).abs().max() < 1e-5


def test_sample_vocab_and_text_inits_match_peft(tmp_path):
    tok_dir = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(tok_dir)
    text = dict(prompt_tuning_init="TEXT", prompt_tuning_init_text="Say yes", tokenizer_name_or_path=str(tok_dir))
    for fields in ({"prompt_tuning_init": "SAMPLE_VOCAB"}, text):
        theirs, ours = tiny_llama(), tiny_llama()
        torch.manual_seed(7)
        pm = get_peft_model(theirs, PeftPrompt(task_type="CAUSAL_LM", num_virtual_tokens=NV, **fields))
        torch.manual_seed(7)
        M.add_adapter(ours, "prompt_tuning", num_virtual_tokens=NV, **fields)
        prompt = ours.model.prompt_encoder["default"].embedding.weight
        assert torch.equal(prompt, pm.prompt_encoder["default"].embedding.weight), fields
        vocab = ours.model.embed_tokens.weight
        assert all((vocab == row).all(-1).any() for row in prompt)  # every row is a vocabulary embedding
    ids = tiny_tokenizer()("Say yes")["input_ids"]
    assert torch.equal(prompt, vocab[(ids * NV)[:NV]])  # the text's tokens, repeated to NV


def test_packed_rows_gradient_checkpointing_and_mixing_methods_are_refused():
    model = tiny_llama()
    M.add_adapter(model, "prompt_tuning", num_virtual_tokens=2)
    ids, _ = inputs()
    packed = torch.zeros(2, 1, 9, 9)
    with pytest.raises(ConfigError, match="packing") as err:
        model(input_ids=ids, attention_mask=packed)
    assert err.value.key == "data.packing"
    with pytest.raises(ConfigError, match="another virtual-token method"):
        M.add_adapter(model, "prefix_tuning", "p", num_virtual_tokens=2)
    with pytest.raises(ConfigError, match="another hooked method"):
        M.add_adapter(model, "loreft", "r")
    assert list(M.list_adapters(model)) == ["default"]
    prefix = tiny_llama()
    M.add_adapter(prefix, "prefix_tuning", num_virtual_tokens=2)
    prefix.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    prefix.train()
    with pytest.raises(ConfigError) as err:
        prefix(input_ids=ids, use_cache=False)
    assert err.value.key == "train.gradient_checkpointing"


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning"])
def test_delete_restores_the_base_model(kind):
    model, base = tiny_llama(), tiny_llama()
    M.add_adapter(model, kind, num_virtual_tokens=NV)
    M.delete_adapter(model, "default")
    ids, mask = inputs()
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, base(input_ids=ids, attention_mask=mask).logits)
    assert not model._forward_pre_hooks and not model.model._forward_pre_hooks and not model.model._forward_hooks
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in base.named_parameters()}


def test_config_validation_and_mismatched_files(tmp_path):
    with pytest.raises(ConfigError) as err:
        M.make_method_config("prompt_tuning", {"prompt_tuning_init": "TEXT", "tokenizer_name_or_path": "x"})
    assert err.value.key == "prompt_tuning_init_text"
    with pytest.raises(ConfigError) as err:
        M.make_method_config("prefix_tuning", {"init_weights": "ones"})
    assert err.value.key == "init_weights"
    small = tiny_llama()
    M.add_adapter(small, "prefix_tuning", num_virtual_tokens=2)
    save_adapter(small, tmp_path)
    for other in (tiny_llama(num_hidden_layers=3), tiny_llama(hidden_size=32, intermediate_size=64)):
        with pytest.raises(AdapterMismatch, match="another base"):
            load_adapter(other, tmp_path)
        assert M.list_adapters(other) == {} and not hasattr(other.model, "prefix_encoder")


def test_prompt_and_prefix_configs_share_virtual_token_fields_and_keep_their_keys():
    import dataclasses

    from tuneforge.methods._virtual_tokens import VirtualTokenConfig
    from tuneforge.methods.prefix_tuning import PrefixTuningConfig
    from tuneforge.methods.prompt_tuning import PromptTuningConfig

    shared = {"num_virtual_tokens", "token_dim", "num_layers", "num_attention_heads", "num_transformer_submodules",
              "inference_mode", "modules_to_save"}
    assert {f.name for f in dataclasses.fields(VirtualTokenConfig)} == shared
    assert {f.name for f in dataclasses.fields(PromptTuningConfig)} == shared | {
        "prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path"}
    assert {f.name for f in dataclasses.fields(PrefixTuningConfig)} == shared | {
        "prefix_projection", "encoder_hidden_size", "init_weights"}
    for cls in (PromptTuningConfig, PrefixTuningConfig):  # the shared checks run for both
        with pytest.raises(ConfigError, match="num_virtual_tokens"):
            cls(num_virtual_tokens=0).validate()
