import math

import pytest
import torch

from tuneforge.errors import ConfigError
from tuneforge.train.optim import build_optimizer, build_scheduler, param_groups

from .common import make_cfg, make_model


def lrs(kind, total=20, **cfg):
    model = make_model()
    c = make_cfg(lr_schedule=kind, learning_rate=1.0, **cfg)
    opt = build_optimizer(model, c)
    sched = build_scheduler(opt, c, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def hf_multiplier(k, warmup, total, kind):
    """Hugging Face's schedules (transformers.optimization), written out: warm-up k / W, then the decay."""
    if k < warmup:
        return k / max(1, warmup)
    if kind == "constant":
        return 1.0
    p = (k - warmup) / max(1, total - warmup)
    return max(0.0, 1 - p) if kind == "linear" else 0.5 * (1 + math.cos(math.pi * p))


def test_warmup_then_cosine():
    got = lrs("cosine", warmup_steps=4)
    assert got[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])  # HF's warm-up: step 0 has lr 0
    decay = got[4:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert got[4 + 8] == pytest.approx(0.5, abs=1e-9)  # halfway through the 16 decay steps
    assert got == pytest.approx([hf_multiplier(k, 4, 20, "cosine") for k in range(20)])  # every value, the last too


def test_linear_and_constant_and_ratio():
    linear = lrs("linear", warmup_ratio=0.1)  # ceil(0.1 * 20) = 2 warm-up steps
    assert linear[:2] == pytest.approx([0.0, 0.5])
    assert linear[2:] == pytest.approx([1 - k / 18 for k in range(18)])
    assert lrs("constant", warmup_steps=2) == pytest.approx([0.0, 0.5] + [1.0] * 18)
    assert lrs("cosine")[0] == 1.0  # no warm-up: the first step uses the full lr


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_same_curve_as_transformers_get_scheduler(kind):
    """The schedule is transformers' own: the same config gives the same curve as an HF Trainer run."""
    from transformers import get_scheduler

    got = lrs(kind, total=12, warmup_steps=3)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_scheduler({"constant": "constant_with_warmup"}.get(kind, kind), opt, num_warmup_steps=3,
                       num_training_steps=12)
    want = []
    for _ in range(12):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        hf.step()
    assert got == want
    assert got == pytest.approx([hf_multiplier(k, 3, 12, kind) for k in range(12)])


def test_unknown_schedule():
    model = make_model()
    c = make_cfg(lr_schedule="cosine")
    c.lr_schedule = "exponential"
    with pytest.raises(ConfigError, match="lr_schedule"):
        build_scheduler(build_optimizer(model, c), c, 10)


def test_no_decay_for_the_norm_weight():
    model = make_model()
    groups = param_groups(model, 1e-3, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for p in group["params"]:
            assert p.requires_grad
            assert group["weight_decay"] == (0.0 if names[id(p)] == "model.norm.weight" else 0.1), names[id(p)]
    counted = sum(len(g["params"]) for g in groups)
    assert counted == sum(1 for p in model.parameters() if p.requires_grad)


def test_scheduler_state_round_trips(tmp_path):
    model = make_model()
    c = make_cfg(warmup_steps=3)
    opt = build_optimizer(model, c)
    sched = build_scheduler(opt, c, 10)
    for _ in range(4):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    opt2 = build_optimizer(model, c)
    sched2 = build_scheduler(opt2, c, 10)
    sched2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert sched2.last_epoch == 4
    assert sched2.get_last_lr() == sched.get_last_lr()
