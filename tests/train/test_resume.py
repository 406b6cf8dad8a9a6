"""Exact resume: a run stopped after 5 steps and resumed in a fresh model / task / optimizer computes the same
losses for steps 6-10 as one uninterrupted run, with dropout on and gradient accumulation."""
import pytest
import torch

from tuneforge.train import run_training
from tuneforge.train.tasks.sft import SFTTask

from .common import PAD, make_cfg, make_examples, make_model

TRAIN = make_examples(22, seed=11)  # 22 / (2 x 2) -> 6 steps per epoch: steps 6-10 cross an epoch boundary
EVAL = make_examples(4, seed=12)


def fresh():
    return make_model(attention_dropout=0.1), SFTTask(PAD)


def step_losses(result):
    return {r["step"]: r["loss"] for r in result.history if "loss" in r}


def trained_params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run(out, resume=True, **cfg):
    model, task = fresh()
    cfg = make_cfg(grad_accum_steps=2, **cfg)
    return run_training(model, task, TRAIN, EVAL, cfg, out, resume=resume, progress=False), model


def assert_same_tail(straight, resumed, model_a, model_b):
    a, b = step_losses(straight), step_losses(resumed)
    assert sorted(b) == list(range(1, 11))  # the resumed history carries steps 1-5 from the checkpoint
    assert [a[s] for s in range(6, 11)] == [b[s] for s in range(6, 11)]  # bit-identical, not approximately
    for name, value in trained_params(model_a).items():
        assert torch.equal(value, trained_params(model_b)[name]), name


def test_resume_with_max_steps(tmp_path):
    """Stop with max_steps=5, resume with max_steps=10 (a schedule that does not depend on the run length)."""
    straight, model_a = run(tmp_path / "a", max_steps=10, lr_schedule="constant", warmup_steps=3, weight_decay=0.1)
    first, _ = run(tmp_path / "b", max_steps=5, lr_schedule="constant", warmup_steps=3, weight_decay=0.1)
    assert first.steps == 5 and (tmp_path / "b" / "checkpoints" / "step-5").is_dir()
    resumed, model_b = run(tmp_path / "b", max_steps=10, lr_schedule="constant", warmup_steps=3, weight_decay=0.1)
    assert resumed.steps == 10
    assert_same_tail(straight, resumed, model_a, model_b)
    # dropout really draws from the generators: two training-mode passes over the same batch differ
    model, task = fresh()
    batch = task.collate(TRAIN[:2])
    model.train()
    assert task.loss_sum(model, batch).item() != task.loss_sum(model, batch).item()


class Interrupting(SFTTask):
    """Raises KeyboardInterrupt (what Ctrl-C does) in the middle of a step."""

    def __init__(self, after_calls):
        super().__init__(PAD)
        self.calls, self.after = 0, after_calls

    def loss_sum(self, model, batch):
        if model.training:
            self.calls += 1
            if self.calls > self.after:
                raise KeyboardInterrupt
        return super().loss_sum(model, batch)


def test_ctrl_c_saves_and_resumes_exactly(tmp_path):
    """Cosine schedule over 10 steps, interrupted in the second micro-batch of step 7 (step 6 ends the epoch with
    one micro-batch): the checkpoint holds the state after step 6, not the half-done step 7, and the resumed run
    matches the straight one."""
    cfg = dict(max_steps=10, lr_schedule="cosine", warmup_steps=2, eval_every=4)
    straight, model_a = run(tmp_path / "a", **cfg)
    model, _ = fresh()
    with pytest.raises(KeyboardInterrupt):
        run_training(model, Interrupting(after_calls=12), TRAIN, EVAL, make_cfg(grad_accum_steps=2, **cfg),
                     tmp_path / "b", progress=False)
    assert [p.name for p in sorted((tmp_path / "b" / "checkpoints").iterdir())] == ["step-6"]
    resumed, model_b = run(tmp_path / "b", **cfg)
    assert_same_tail(straight, resumed, model_a, model_b)
    assert resumed.eval_metrics == straight.eval_metrics
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(straight.history)  # no duplicated or lost lines across the interruption


def test_no_resume_starts_over(tmp_path):
    run(tmp_path, max_steps=3)
    again, _ = run(tmp_path, resume=False, max_steps=2)
    assert again.steps == 2
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-2"]


def test_finished_run_is_not_repeated(tmp_path):
    done, _ = run(tmp_path, max_steps=3)
    again, _ = run(tmp_path, max_steps=3)
    assert again.steps == 3 and again.train_loss == done.train_loss and again.eval_metrics == done.eval_metrics
    assert again.history == done.history


def test_ctrl_c_inside_an_update_waits_for_its_end():
    import signal

    from tuneforge.train.interrupts import Interrupts as _Interrupts

    # a process started in the background (CI) inherits SIGINT ignored; this test needs Python's handler
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _check_interrupts(_Interrupts)
    finally:
        signal.signal(signal.SIGINT, inherited)


def _check_interrupts(_Interrupts):
    import os
    import signal

    order = []
    with pytest.raises(KeyboardInterrupt), _Interrupts() as guard:
        with guard.critical():
            os.kill(os.getpid(), signal.SIGINT)
            order.append("update finished")
        order.append("not reached")
    assert order == ["update finished"] and not guard.torn
    with pytest.raises(KeyboardInterrupt), _Interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs between bytecodes
            pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
