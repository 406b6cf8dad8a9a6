"""The generation engine: requests for different adapters batched together give the same greedy replies as
each adapter alone; rows stop on their own (stop strings, max_tokens); streamed pieces add up to the reply."""
from __future__ import annotations

import threading

import pytest

from tuneforge.eval.generation import generate_with
from tuneforge.io import load_adapter
from tuneforge.models import tiny_llama, tiny_tokenizer
from tuneforge.serve.engine import GenerationEngine, GenerationRequest
from tuneforge.serve.pool import AdapterPool

from .conftest import make_adapter


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    return {name: make_adapter(root / name, seed) for seed, name in enumerate(("a", "b"), start=1)}


@pytest.fixture
def engine():
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    engine = GenerationEngine(model, tokenizer, AdapterPool(model, 2**30), max_batch_size=8, batch_wait_s=0.2)
    engine.start()
    yield engine
    engine.stop()


def run_all(engine, requests: list[GenerationRequest], timeout: float = 120) -> list[dict]:
    results, pieces, done = [None] * len(requests), [[] for _ in requests], threading.Event()
    for i, r in enumerate(requests):
        def finished(info, i=i):
            results[i] = {**info, "streamed": "".join(pieces[i])}
            if all(x is not None for x in results):
                done.set()
        r.on_delta, r.on_done = pieces[i].append, finished
    for r in requests:
        engine.submit(r)
    assert done.wait(timeout), "the engine did not answer"
    return results


def reference(adapter_dir, prompt: str, max_new_tokens: int) -> str:
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    if adapter_dir is not None:
        load_adapter(model, adapter_dir)
    return generate_with(model, tokenizer, prompt, chat=False, max_new_tokens=max_new_tokens)[0]


def test_mixed_batch_replies_equal_each_adapter_alone(engine, adapter_dirs):
    tok = engine.tokenizer
    plan = [("a", "hello there"), ("b", "hello there"), (None, "a longer prompt for the base"), ("a", "xyz"),
            ("b", "the quick brown fox")]
    requests = [GenerationRequest(prompt_ids=tok(p)["input_ids"], max_tokens=12, model_id=name,
                                  adapter=adapter_dirs.get(name), temperature=0) for name, p in plan]
    results = run_all(engine, requests)
    assert engine.batches == 1  # all five rows went through one generate call
    for (name, prompt), result in zip(plan, results):
        assert result["text"].strip() == reference(adapter_dirs.get(name), prompt, 12)
        assert result["streamed"] == result["text"]
    assert results[0]["text"] != results[1]["text"]  # different adapters, different replies


def test_rows_stop_on_their_own_stop_string_and_token_limit(engine):
    tok = engine.tokenizer
    ids = tok("hello there")["input_ids"]
    [full] = run_all(engine, [GenerationRequest(prompt_ids=ids, max_tokens=12, temperature=0)])
    assert full["finish_reason"] == "length" and full["completion_tokens"] == 12
    stop = full["text"][4:6]
    cut, short = run_all(engine, [
        GenerationRequest(prompt_ids=ids, max_tokens=12, temperature=0, stop=[stop]),
        GenerationRequest(prompt_ids=ids, max_tokens=3, temperature=0),
    ])
    assert cut["finish_reason"] == "stop" and cut["text"] == full["text"][: full["text"].index(stop)]
    assert cut["streamed"] == cut["text"]  # the held-back start of the stop string was never streamed
    assert short["finish_reason"] == "length" and short["completion_tokens"] == 3
    assert full["text"].startswith(short["text"])


def test_sampling_and_greedy_requests_go_to_separate_batches(engine):
    ids = engine.tokenizer("hi")["input_ids"]
    results = run_all(engine, [GenerationRequest(prompt_ids=ids, max_tokens=4, temperature=0),
                               GenerationRequest(prompt_ids=ids, max_tokens=4, temperature=0.7, top_p=0.9)])
    assert engine.batches == 2 and all(r["completion_tokens"] == 4 for r in results)


def test_a_cancelled_request_is_not_answered_and_frees_its_row(engine):
    ids = engine.tokenizer("hi")["input_ids"]
    cancelled = GenerationRequest(prompt_ids=ids, max_tokens=50, temperature=0)
    cancelled.cancelled.set()
    answered = []
    cancelled.on_done = answered.append
    [other] = run_all(engine, [GenerationRequest(prompt_ids=ids, max_tokens=2, temperature=0)])
    engine.submit(cancelled)
    [after] = run_all(engine, [GenerationRequest(prompt_ids=ids, max_tokens=2, temperature=0)])
    assert answered == [] and other["text"] == after["text"]


def test_a_broken_adapter_fails_its_requests_and_the_engine_keeps_serving(engine, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{not json")
    ids = engine.tokenizer("hi")["input_ids"]
    [bad] = run_all(engine, [GenerationRequest(prompt_ids=ids, max_tokens=2, model_id="broken",
                                               adapter=tmp_path, temperature=0)])
    assert "error" in bad and "adapter" in bad["error"]
    [good] = run_all(engine, [GenerationRequest(prompt_ids=ids, max_tokens=2, temperature=0)])
    assert good["completion_tokens"] == 2


def servable_methods() -> list[str]:
    import tuneforge.methods  # noqa: F401 - registers every method
    from tuneforge.errors import ConfigError
    from tuneforge.registry import METHODS
    from tuneforge.serve.pool import check_servable

    names = []
    for name in METHODS.names():
        try:
            check_servable(name)
            names.append(name)
        except ConfigError:
            pass
    return names


@pytest.mark.parametrize("method", servable_methods())
def test_every_servable_method_mixed_with_a_base_row_equals_its_adapter_alone(engine, method, tmp_path):
    """Each method the pool accepts, with random (non-identity) weights, in one batch with a base-model row."""
    import torch

    from tuneforge.io import save_adapter
    from tuneforge.methods import add_adapter

    model = tiny_llama()
    torch.manual_seed(1)
    add_adapter(model, method)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    adapter = save_adapter(model, tmp_path / method)
    tok = engine.tokenizer
    adapted, base = run_all(engine, [
        GenerationRequest(prompt_ids=tok("hello there")["input_ids"], max_tokens=6, model_id=method,
                          adapter=adapter, temperature=0),
        GenerationRequest(prompt_ids=tok("a longer prompt here")["input_ids"], max_tokens=6, temperature=0),
    ])
    assert engine.batches == 1
    assert adapted["text"].strip() == reference(adapter, "hello there", 6)
    assert base["text"].strip() == reference(None, "a longer prompt here", 6)
