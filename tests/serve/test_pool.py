"""The adapter pool: one mixed batch gives every row what its adapter alone gives, and what the merged model
gives; adapters load on demand and the least recently used are evicted beyond the budget."""
from __future__ import annotations

import pytest
import torch

from tuneforge.errors import ConfigError
from tuneforge.io import load_adapter
from tuneforge.methods import list_adapters, merge_adapters, mixed_batch
from tuneforge.models import tiny_llama
from tuneforge.serve.pool import AdapterPool, check_servable

from .conftest import make_adapter


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    return {name: make_adapter(root / name, seed) for seed, name in enumerate(("a", "b", "c"), start=1)}


def left_padded(rows: list[list[int]], pad: int = 259):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


@torch.no_grad()
def alone(adapter_dir, tokens: list[int], merged: bool) -> torch.Tensor:
    model = tiny_llama()
    if adapter_dir is not None:
        load_adapter(model, adapter_dir)
        if merged:
            merge_adapters(model)
    return model(torch.tensor([tokens])).logits[0]


@torch.no_grad()
def test_mixed_batch_rows_equal_each_adapter_alone_and_merged(adapter_dirs):
    model = tiny_llama()
    pool = AdapterPool(model, budget_bytes=2**30)
    slots = pool.ensure(adapter_dirs)
    names = ["a", "b", None, "c", "a", "c"]
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (9, 5, 7, 12, 3, 8)]
    ids, mask, positions = left_padded(rows)
    with mixed_batch(model, [slots[n] if n else None for n in names]):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    base = alone(None, rows[0], merged=False)
    for i, (name, tokens) in enumerate(zip(names, rows)):
        got = logits[i, -len(tokens):]
        path = adapter_dirs[name] if name else None
        torch.testing.assert_close(got, alone(path, tokens, merged=False), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got, alone(path, tokens, merged=True), atol=1e-4, rtol=1e-4)
        if name is not None:  # the adapters really change the output, so equality above means something
            assert (alone(path, rows[0], merged=False) - base).abs().max() > 1e-3
    outside = model(torch.tensor([rows[0]])).logits[0]  # after the batch the model is the plain base again
    torch.testing.assert_close(outside, base)


def test_adapters_load_on_demand_and_lru_eviction_respects_the_budget(adapter_dirs):
    model = tiny_llama()
    pool = AdapterPool(model, budget_bytes=2**30)
    pool.ensure({"a": adapter_dirs["a"]})
    one = pool.used_bytes
    assert one > 0 and pool.loads == 1
    pool.budget_bytes = 2 * one  # room for two adapters
    pool.ensure({"b": adapter_dirs["b"]})
    pool.ensure({"a": adapter_dirs["a"]})  # a becomes the most recently used
    assert pool.hits == 1
    pool.ensure({"c": adapter_dirs["c"]})
    assert list(pool.loaded) == ["a", "c"] and pool.evictions == 1
    assert sorted(list_adapters(model)) == sorted(e.slot for e in pool.loaded.values())
    slots = pool.ensure(adapter_dirs)  # one batch may need more than the budget: its adapters all stay
    assert set(slots) == {"a", "b", "c"} and pool.used_bytes == 3 * one


def test_evicted_adapter_reloads_with_the_same_output(adapter_dirs):
    model = tiny_llama()
    pool = AdapterPool(model, budget_bytes=1)
    tokens = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        with mixed_batch(model, [pool.ensure({"a": adapter_dirs["a"]})["a"]]):
            first = model(tokens).logits
        pool.ensure({"b": adapter_dirs["b"]})
        assert "a" not in pool.loaded
        with mixed_batch(model, [pool.ensure({"a": adapter_dirs["a"]})["a"]]):
            again = model(tokens).logits
    torch.testing.assert_close(first, again)


@pytest.mark.parametrize("method", ["full", "bitfit", "pissa"])
def test_methods_that_change_base_weights_cannot_share_a_served_base(method):
    with pytest.raises(ConfigError, match="cannot share a served base"):
        check_servable(method)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "vera"])
def test_adapter_methods_can_share_a_served_base(method):
    check_servable(method)
