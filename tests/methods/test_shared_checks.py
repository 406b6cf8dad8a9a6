"""The same checks for every method in the case table (see cases.py)."""
import pytest
import torch

import tuneforge.methods as M
from tuneforge.errors import NotMergeable
from tuneforge.io import load_adapter, save_adapter
from tuneforge.registry import METHODS

from .cases import CASES


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 250, (2, 10), generator=g)}


def run(model, b):
    o = model(**b)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def forward(model, b):
    with M.batch_context(model, b):
        return run(model, b)


def perturb(model, name="default", seed=0):
    """Move an adapter away from its identity init so differences become visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in M.trainable_parameters(model, name):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


ids = [c.id for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_trainable_count_matches_formula(case):
    model = case.build()
    expected = case.expected_trainable(model) if case.expected_trainable else None
    M.add_adapter(model, case.method, **case.fields)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in trainable)
    assert n == M.count_parameters(model)[0] > 0
    if expected is not None:
        assert n == expected


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_fresh_adapter_is_identity_where_the_init_says_so(case):
    base, model = case.build(), case.build()
    M.add_adapter(model, case.method, **case.fields)
    model.eval()
    b = batch()
    diff = (forward(model, b) - run(base, b)).abs().max()
    if case.identity_init:
        assert diff < 1e-5
    else:
        assert diff > 0


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_save_then_load_into_fresh_model_gives_same_outputs(case, tmp_path):
    model = case.build()
    M.add_adapter(model, case.method, **case.fields)
    perturb(model)
    model.eval()
    b = batch()
    y = forward(model, b)
    save_adapter(model, tmp_path)
    fresh = case.build()
    load_adapter(fresh, tmp_path)
    fresh.eval()
    assert (forward(fresh, b) - y).abs().max() < 1e-5


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_merge_unmerge_unload(case):
    model = case.build()
    M.add_adapter(model, case.method, **case.fields)
    perturb(model)
    model.eval()
    b = batch()
    y = forward(model, b).detach()
    if not METHODS.get(case.method).mergeable:
        with pytest.raises(NotMergeable):
            M.merge_adapters(model)
        return
    M.merge_adapters(model)
    assert (forward(model, b) - y).abs().max() < 1e-4
    M.unmerge_adapters(model)
    assert (forward(model, b) - y).abs().max() < 1e-4
    plain = M.unload(model)
    assert (run(plain, b) - y).abs().max() < 1e-4


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_one_step_changes_only_adapter_parameters(case):
    model = case.build()
    M.add_adapter(model, case.method, **case.fields)
    perturb(model)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    b = batch()
    y = forward(model, b).float()
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    (y * weights).sum().backward()
    opt.step()
    M.on_optimizer_step(model)
    names = {n for n, _ in M.trainable_parameters(model)}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    extra = getattr(METHODS.get(case.method), "updates_base_weights", False)
    assert changed, "nothing trained"
    if not extra:
        assert changed <= names, changed - names


@pytest.mark.parametrize("case", [c for c in CASES if c.mixed_batch], ids=[c.id for c in CASES if c.mixed_batch])
def test_two_adapters_coexist_switch_and_mix(case):
    model = case.build()
    M.add_adapter(model, case.method, "a", **case.fields)
    perturb(model, "a", seed=1)
    M.add_adapter(model, case.method, "b", **case.fields)
    perturb(model, "b", seed=2)
    model.eval()
    b = batch()
    M.set_active_adapters(model, "a")
    y_a = forward(model, b).detach()
    M.set_active_adapters(model, "b")
    y_b = forward(model, b).detach()
    assert (y_a - y_b).abs().max() > 1e-4
    with M.mixed_batch(model, ["a", "b"]):
        y = forward(model, b)
    assert (y[0] - y_a[0]).abs().max() < 1e-5
    assert (y[1] - y_b[1]).abs().max() < 1e-5
