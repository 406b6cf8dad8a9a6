"""train.ema_decay: the saved weights are the warmed-up exponential moving average of the live weights after each
update (train/ema.py), the live trajectory is the one a run without the average takes, and a resumed run keeps the
same average."""
import pytest
import torch
from safetensors.torch import load_file

from tuneforge.config.schema import TrainConfig
from tuneforge.errors import ConfigError
from tuneforge.train import run_training
from tuneforge.train.callbacks import check_own_loop
from tuneforge.train.ema import ema_decay_at
from tuneforge.train.tasks.sft import SFTTask

from .common import PAD, make_cfg, make_examples, make_model

TRAIN = make_examples(12, seed=21)
EVAL = make_examples(4, seed=22)


def run(out, **cfg):
    model = make_model(attention_dropout=0.1)
    cfg = make_cfg(**{"lr_schedule": "constant", **cfg})
    return run_training(model, SFTTask(PAD), TRAIN, EVAL, cfg, out, progress=False), model


def trained(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_saved_weights_are_the_warmed_up_average_of_the_live_steps(tmp_path):
    """s_1 = theta_1, s_t = d_t s_{t-1} + (1 - d_t) theta_t with d_t = min(0.3, (1 + t)/(10 + t)) (capped from
    t = 3 on), rebuilt in float64 from the live weights every checkpoint keeps. The loop's fp32 lerp rounds each of
    the 6 updates by about one ulp of weights below 1 (6e-8): 1e-6 absolute is far above that and far below the
    weights' step-to-step change, which the last assertion shows."""
    steps = 6
    result, model = run(tmp_path / "ema", max_steps=steps, save_every=1, keep_last=steps, ema_decay=0.3, eval_every=3)
    live = [load_file(str(tmp_path / "ema" / "checkpoints" / f"step-{t}" / "trainable.safetensors"))
            for t in range(1, steps + 1)]
    want = {n: v.double() for n, v in live[0].items()}
    for t in range(2, steps + 1):
        d = ema_decay_at(0.3, t)
        want = {n: d * want[n] + (1 - d) * live[t - 1][n].double() for n in want}
    assert [round(ema_decay_at(0.3, t), 4) for t in (1, 2, 3)] == [0.1818, 0.25, 0.3]
    got = trained(model)
    for name, value in want.items():
        torch.testing.assert_close(got[name].double(), value, atol=1e-6, rtol=0)
    assert max(float((live[-1][n] - live[-2][n]).abs().max()) for n in want) > 1e-3
    # the live trajectory is the one a run without the average takes, bit for bit
    _, plain = run(tmp_path / "plain", max_steps=steps, eval_every=3)
    for name, value in trained(plain).items():
        assert torch.equal(value, live[-1][name]), name
    # evaluations score the average and log the live weights beside it
    evals = [r for r in result.history if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3, 6] and all("live_eval_loss" in r for r in evals)
    assert evals[-1]["eval_loss"] != evals[-1]["live_eval_loss"]
    assert result.eval_metrics["eval_loss"] == evals[-1]["eval_loss"]


def test_resumed_run_keeps_the_same_average(tmp_path):
    straight, model_a = run(tmp_path / "a", max_steps=8, ema_decay=0.5)
    run(tmp_path / "b", max_steps=4, ema_decay=0.5)
    resumed, model_b = run(tmp_path / "b", max_steps=8, ema_decay=0.5)
    assert resumed.steps == 8
    for name, value in trained(model_a).items():
        assert torch.equal(value, trained(model_b)[name]), name


@pytest.mark.parametrize("bad", [0, 1, -0.5, 1.5])
def test_ema_decay_outside_the_open_unit_interval_is_refused(bad):
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=bad).validate()


def test_own_loop_tasks_refuse_ema():
    with pytest.raises(ConfigError, match="ema_decay"):
        check_own_loop(TrainConfig(ema_decay=0.99), "ppo")
