"""train.head_learning_rate and train.layer_lr_decay: which rate each parameter's AdamW group gets, and that the
first AdamW step then moves each parameter by its own rate."""
import pytest
import torch

from tuneforge.config.schema import TrainConfig
from tuneforge.errors import ConfigError
from tuneforge.methods import add_adapter, make_method_config, mark_trainable
from tuneforge.models.tiny import tiny_bert
from tuneforge.train.optim import build_optimizer, build_scheduler, param_groups

from .common import make_cfg, make_model

LR, HEAD_LR, DECAY = 1e-3, 2e-2, 0.5


def bert(method="full", **fields):
    model = tiny_bert(num_labels=2)  # 2 blocks: encoder.layer.0 and encoder.layer.1
    add_adapter(model, make_method_config(method, fields))
    mark_trainable(model)
    return model


def rates(model, groups) -> dict[str, float]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in groups:
        for p in group["params"]:
            assert names[id(p)] not in out, "a parameter in two groups"
            out[names[id(p)]] = group["lr"]
    assert set(out) == {n for n, p in model.named_parameters() if p.requires_grad}  # every trainable one, once
    return out


def want_rate(name: str, head_lr, decay) -> float:
    """The documented rule for a 2-block model: block i -> d^(2 - i), embeddings -> d^3, the rest -> 1."""
    if head_lr is not None and name.startswith("classifier."):
        return head_lr
    d = 1.0 if decay is None else decay
    if name.startswith("bert.embeddings."):
        return LR * d ** 3
    for i in (0, 1):
        if name.startswith(f"bert.encoder.layer.{i}."):
            return LR * d ** (2 - i)
    return LR  # pooler, and the head when it has no rate of its own


@pytest.mark.parametrize("head_lr,decay", [(HEAD_LR, None), (None, DECAY), (HEAD_LR, DECAY)])
def test_each_parameter_gets_its_rate(head_lr, decay):
    model = bert()
    got = rates(model, param_groups(model, LR, 0.1, head_lr, decay))
    assert got == {n: pytest.approx(want_rate(n, head_lr, decay), rel=1e-12) for n in got}


def test_off_by_default_and_decay_one_is_one_rate():
    model = bert()
    assert set(rates(model, param_groups(model, LR, 0.1)).values()) == {LR}
    assert set(rates(model, param_groups(model, LR, 0.1, None, 1.0)).values()) == {LR}


def test_weight_decay_split_is_kept():
    model = bert()
    names = {id(p): n for n, p in model.named_parameters()}
    for group in param_groups(model, LR, 0.1, HEAD_LR, DECAY):
        for p in group["params"]:
            no_decay = names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)]
            assert group["weight_decay"] == (0.0 if no_decay else 0.1), names[id(p)]


def test_adapter_head_copy_gets_the_head_rate():
    """With LoRA the trained head is the adapter's copy (classifier.modules_to_save.default.*)."""
    model = bert("lora", target_modules=["query", "value"], modules_to_save=["classifier"])
    got = rates(model, param_groups(model, LR, 0.0, HEAD_LR, DECAY))
    heads = [n for n in got if n.startswith("classifier.modules_to_save.")]
    assert heads and all(got[n] == HEAD_LR for n in heads)
    assert got["bert.encoder.layer.0.attention.self.query.lora_A.default.weight"] == pytest.approx(LR * DECAY ** 2)


def test_first_adamw_step_moves_each_parameter_by_its_rate():
    """Adam's first step is lr * m / (sqrt(v) + eps) with m = g, v = g^2 after bias correction: lr * g / (|g| + eps).
    Where |g| > 1e-4 that is lr to within eps / |g| = 1e-4. In float64, so that rounding the new weight (fp32: an
    ulp of 1.0 is 1.2e-7, 1e-3 of a 1e-4 step) is far below that too."""
    model = bert().double()
    cfg = make_cfg(learning_rate=LR, head_learning_rate=HEAD_LR, layer_lr_decay=DECAY, weight_decay=0.0)
    opt = build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 200, (4, 9), generator=torch.Generator().manual_seed(0))
    model.train()
    model(input_ids=ids, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
    opt.step()
    checked = 0
    for n, p in model.named_parameters():
        if p.grad is None:
            continue
        big = p.grad.abs() > 1e-4
        moved = (p.detach() - before[n]).abs()[big]
        checked += int(big.sum())
        assert moved == pytest.approx(torch.full_like(moved, want_rate(n, HEAD_LR, DECAY)), rel=2e-4), n
    assert checked > 1000


def test_schedule_scales_every_group_alike():
    model = bert()
    cfg = make_cfg(learning_rate=LR, head_learning_rate=HEAD_LR, layer_lr_decay=DECAY, warmup_steps=2,
                   lr_schedule="linear")
    opt = build_optimizer(model, cfg)
    base = [g["lr"] for g in opt.param_groups]
    sched = build_scheduler(opt, cfg, 10)
    for k in range(1, 6):
        opt.step()
        sched.step()
        m = k / 2 if k < 2 else 1 - (k - 2) / 8  # HF linear: warm-up k / W, then 1 - p
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([b * m for b in base], rel=1e-12)


def test_clear_errors():
    with pytest.raises(ConfigError, match="head_learning_rate"):
        param_groups(make_model(), LR, 0.0, HEAD_LR)  # a language model with no task head trained
    with pytest.raises(ConfigError, match="layer_lr_decay"):
        param_groups(torch.nn.Sequential(torch.nn.Linear(2, 2)), LR, 0.0, None, DECAY)  # no numbered blocks
    for bad in (dict(head_learning_rate=0.0), dict(layer_lr_decay=0.0), dict(layer_lr_decay=1.5)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainConfig(**bad).validate()
