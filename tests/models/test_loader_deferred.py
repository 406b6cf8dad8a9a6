"""Rank-local loading (models/loader_deferred.py), without a process group: the rows each of N processes reads,
put back together, are the whole load's values bit for bit (dense, and nf4's packed codes and quantisation state);
placeholders hold no memory and show NaN; an adapter whose initialisation reads no base values comes out the same
on placeholders as on the loaded base (the premise of deferring the base past add_adapter)."""
import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Llama with biases (so 4-bit layers have dense biases), tied embeddings, cut into several shards; its
    vocabulary (260 rows) is split unevenly by 3 processes (87, 87, 86)."""
    from transformers import LlamaForCausalLM

    from tuneforge.models.tiny import tiny_llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(attention_bias=True))
    folder = tmp_path_factory.mktemp("deferred")
    model.save_pretrained(folder, max_shard_size="60KB")
    assert len(list(folder.glob("*.safetensors"))) > 1
    return folder


def _rows(rank: int, world: int):
    def rows(n: int):  # FSDP's cut (train/distributed.py `_read_shards`)
        size = -(-n // world)
        lo = min(rank * size, n)
        return lo, min(lo + size, n)

    return rows


def _state_tensors(state):
    out = [state.absmax, state.code]
    if state.nested:
        out += [state.offset, state.state2.absmax, state.state2.code]
    return out


@pytest.mark.parametrize("quantization", [None, "nf4"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_process_rows_put_together_are_the_whole_load(checkpoint, quantization, world):
    from tuneforge.models import load_model
    from tuneforge.models.loader_deferred import deferred_of, read_shards

    kw = dict(dtype="float32", device="cpu", quantization=quantization)
    whole = load_model(checkpoint, **kw)
    storage = torch.float32
    expected, states = {}, {}
    for name, p in whole.named_parameters():
        state = getattr(p, "quant_state", None)
        expected[name] = p.data.reshape(-1).view(storage).view(-1, 1) if state is not None else p.data
        if state is not None:
            states[name] = state
    pieces: dict[str, list[torch.Tensor]] = {}
    for rank in range(world):
        model = load_model(checkpoint, deferred=True, **kw)
        assert deferred_of(model) is not None
        for name, piece, state in read_shards(model, _rows(rank, world), storage):
            pieces.setdefault(name, []).append(piece)
            assert (state is not None) == (name in states), name
            if state is not None:
                assert state.shape == states[name].shape and state.dtype == states[name].dtype
                for ours, theirs in zip(_state_tensors(state), _state_tensors(states[name]), strict=True):
                    assert torch.equal(ours, theirs), name
    assert pieces.keys() == set(expected) - {"lm_head.weight"}  # the tied head is the embedding
    for name, parts in pieces.items():
        assert len(parts) == world
        assert _same_bits(torch.cat(parts), expected[name]), name


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (4-bit codes viewed as floats include NaN patterns, which never compare equal as floats)."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.contiguous().view(torch.uint8),
                                                                     b.contiguous().view(torch.uint8))


@pytest.mark.parametrize("quantization", [None, "nf4"])
def test_placeholders_hold_no_memory_and_show_nan(checkpoint, quantization):
    from tuneforge.models import load_model
    from tuneforge.models.loader_deferred import deferred_of, is_placeholder

    model = load_model(checkpoint, deferred=True, dtype="float32", device="cpu", quantization=quantization)
    held = [p for n, p in model.named_parameters() if n in deferred_of(model).entries]
    assert held and all(is_placeholder(p) and p.untyped_storage().nbytes() <= 4 for p in held)
    assert all(torch.isnan(p.data[(0,) * p.ndim]) for p in held if p.is_floating_point())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    whole = load_model(checkpoint, dtype="float32", device="cpu", quantization=quantization)
    assert dict((n, b) for n, b in whole.named_buffers()).keys() == dict(model.named_buffers()).keys()
    for (name, ours), (_, theirs) in zip(model.named_buffers(), whole.named_buffers(), strict=True):
        assert torch.equal(ours, theirs), name  # buffers (rotary frequencies) are real at once


@pytest.mark.parametrize("method", [{"name": "lora", "r": 4, "target_modules": "all-linear"}, {"name": "ia3"}])
@pytest.mark.parametrize("quantization", [None, "nf4"])
def test_an_adapter_on_placeholders_equals_one_on_the_loaded_base(checkpoint, method, quantization):
    from tuneforge.methods import add_adapter, make_method_config, mark_trainable
    from tuneforge.methods.api import init_reads_base
    from tuneforge.models import load_model

    cfg = make_method_config(method["name"], {k: v for k, v in method.items() if k != "name"})
    assert not init_reads_base(cfg)
    trained = []
    for deferred in (False, True):
        model = load_model(checkpoint, deferred=deferred, dtype="float32", device="cpu", quantization=quantization)
        torch.manual_seed(5)
        add_adapter(model, cfg)
        mark_trainable(model)
        trained.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    assert trained[0].keys() == trained[1].keys() and trained[0]
    for name, value in trained[0].items():
        assert torch.equal(value, trained[1][name]), name


def test_methods_that_read_the_base_at_initialisation_say_so():
    from tuneforge.methods import make_method_config
    from tuneforge.methods.api import init_reads_base

    assert init_reads_base(make_method_config("dora", {}))
    assert init_reads_base(make_method_config("pissa", {}))
    assert init_reads_base(make_method_config("lora", {"modules_to_save": ["lm_head"]}))  # copies of base modules
