"""train.callbacks, early stopping, save_best and NEFTune (train/callbacks.py, train/neftune.py), on the tiny Llama."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.config import load_config
from tuneforge.errors import ConfigError
from tuneforge.config.hooks import EarlyStoppingConfig
from tuneforge.train import run_training
from tuneforge.train.neftune import neftune, noise_scale

from . import hook_callbacks
from .common import make_cfg, make_examples, make_model


class ScriptedEval:
    """The SFT task whose evaluations report the given metric values in turn (training is unchanged)."""

    def __init__(self, task, name, values):
        self.task, self.name, self.values, self.evals = task, name, list(values), 0

    def __getattr__(self, attr):
        return getattr(self.task, attr)

    def evaluate(self, model, batches):
        for _ in batches:
            pass
        value = self.values[min(self.evals, len(self.values) - 1)]
        self.evals += 1
        return {self.name: value}


def test_callbacks_see_every_step_eval_and_save(tmp_path, sft_task):
    hook_callbacks.CALLS.clear()
    cfg = make_cfg(max_steps=4, eval_every=2, save_every=2, keep_last=5,
                   callbacks=["tests.train.hook_callbacks:Recorder"])
    run_training(make_model(), sft_task, make_examples(8), make_examples(2, seed=1), cfg, tmp_path, progress=False)
    calls = hook_callbacks.CALLS
    logs = ["epoch", "grad_norm", "loss", "lr", "tokens_per_s"]
    assert [c for c in calls if c[0] == "step"] == [("step", s, logs) for s in (1, 2, 3, 4)]
    assert [c for c in calls if c[0] == "eval"] == [("eval", s, ["eval_loss", "perplexity"]) for s in (2, 4)]
    assert [c for c in calls if c[0] == "save"] == [("save", 2, True), ("save", 4, True)]
    assert calls.index(("save", 2, True)) > calls.index(("eval", 2, ["eval_loss", "perplexity"]))


def test_callback_returning_true_stops_training(tmp_path, sft_task):
    cfg = make_cfg(max_steps=6, callbacks=["tests.train.hook_callbacks:StopAtTwo"])
    result = run_training(make_model(), sft_task, make_examples(16), [], cfg, tmp_path, progress=False)
    assert result.steps == 2 and result.checkpoint_dir.name == "step-2"


@pytest.mark.parametrize("name, values, mode, stop_at", [
    ("eval_loss", [1.0, 0.9, 0.95, 0.97, 0.5], "auto", 4),   # best at eval 2, two worse ones after it
    ("accuracy", [0.5, 0.6, 0.6, 0.55, 0.9], "auto", 4),     # max by name; equal is no improvement
    ("eval_loss", [1.0, 1.1, 1.2, 0.1, 0.1, 2.0], "max", 5),  # explicit mode wins over the name
])
def test_early_stopping_after_patience_evaluations(tmp_path, sft_task, name, values, mode, stop_at):
    es = EarlyStoppingConfig(metric=name, patience=2, mode=mode)
    cfg = make_cfg(max_steps=10, eval_every=1, early_stopping=es)
    task = ScriptedEval(sft_task, name, values)
    result = run_training(make_model(), task, make_examples(24), make_examples(2, seed=1), cfg, tmp_path,
                          progress=False)
    assert result.steps == stop_at and task.evals == stop_at  # no second evaluation of the last step
    assert result.eval_metrics == {name: values[stop_at - 1]}
    again = run_training(make_model(), ScriptedEval(sft_task, name, values), make_examples(24),
                         make_examples(2, seed=1), cfg, tmp_path, progress=False)
    assert again.steps == stop_at  # a stopped run started again stays stopped


def test_early_stopping_names_a_missing_metric(tmp_path, sft_task):
    cfg = make_cfg(max_steps=3, eval_every=1, early_stopping=EarlyStoppingConfig(metric="accuracy"))
    with pytest.raises(Exception, match="no metric 'accuracy'; it reports: eval_loss, perplexity"):
        run_training(make_model(), sft_task, make_examples(8), make_examples(2), cfg, tmp_path, progress=False)


def test_save_best_restores_the_best_evaluation_weights(tmp_path, sft_task):
    """Evaluations after steps 1, 2, 3 report 3.0, 1.0, 2.0: the model ends with its step-2 weights, which with a
    constant learning rate are exactly those of a 2-step run (same data order, same arithmetic)."""
    cfg = make_cfg(max_steps=3, eval_every=1, lr_schedule="constant", save_best="eval_loss")
    model = make_model()
    result = run_training(model, ScriptedEval(sft_task, "eval_loss", [3.0, 1.0, 2.0]), make_examples(12),
                          make_examples(2, seed=1), cfg, tmp_path / "a", progress=False)
    best = json.loads((tmp_path / "a" / "best" / "best.json").read_text())
    assert (best["metric"], best["step"], best["value"]) == ("eval_loss", 2, 1.0)
    assert result.eval_metrics == {"eval_loss": 1.0} and result.steps == 3
    reference = make_model()
    run_training(reference, sft_task, make_examples(12), [], make_cfg(max_steps=2, lr_schedule="constant"),
                 tmp_path / "b", progress=False)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    expected = {n: p for n, p in reference.named_parameters() if p.requires_grad}
    assert all(torch.equal(trained[n], expected[n]) for n in expected)
    last = load_file(str(result.checkpoint_dir / "trainable.safetensors"))  # the resumable step-3 state is kept
    assert result.checkpoint_dir.name == "step-3" and not all(torch.equal(last[n], trained[n]) for n in last)


def test_save_best_mode_max(tmp_path, sft_task):
    cfg = make_cfg(max_steps=3, eval_every=1, save_best="accuracy")
    result = run_training(make_model(), ScriptedEval(sft_task, "accuracy", [0.2, 0.9, 0.5]), make_examples(12),
                          make_examples(2, seed=1), cfg, tmp_path, progress=False)
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 2
    assert result.eval_metrics == {"accuracy": 0.9}


def test_neftune_noise_follows_the_formula_in_training_only():
    """Noise = out - clean is U(-s, s) with s = alpha / sqrt(L d). With n = B L d draws: max|u| < s(1 - 0.005) has
    probability (0.995)^n < 1e-17, and the sample variance of U(-s, s) (s^2/3, kurtosis 9/5) has relative standard
    error sqrt(0.8 / n) ~ 1%, so 5% is 5 standard errors."""
    torch.manual_seed(0)
    model = make_model()
    emb = model.get_input_embeddings()
    ids = torch.randint(0, 256, (4, 32))
    clean = emb(ids).detach()
    alpha = 5.0
    with neftune(model, alpha):
        model.train()
        noisy = emb(ids).detach()
        model.eval()
        assert torch.equal(emb(ids), clean)  # no noise outside training
    assert torch.equal(emb(ids), clean)  # the hook is gone
    length, dim = ids.shape[1], clean.shape[-1]
    s = noise_scale(alpha, length, dim)
    assert s == alpha / math.sqrt(length * dim)
    noise = (noisy - clean).double()
    rounding = 4 * torch.finfo(torch.float32).eps * clean.abs().max().item()  # out + u is rounded to fp32
    assert noise.abs().max() <= s + rounding
    assert noise.abs().max() >= s * (1 - 0.005) - rounding
    assert abs(noise.var(unbiased=False).item() / (s * s / 3) - 1) < 0.05
    assert abs(noise.mean().item()) < 5 * s / math.sqrt(3 * noise.numel())


def test_neftune_matches_transformers_hook():
    from transformers.integrations.neftune import neftune_post_forward_hook

    model = make_model()
    emb = model.get_input_embeddings()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with neftune(model, 5.0):
        model.train()
        torch.manual_seed(3)
        ours = emb(ids)
    emb.neftune_noise_alpha = 5.0
    handle = emb.register_forward_hook(neftune_post_forward_hook)
    torch.manual_seed(3)
    theirs = emb(ids)
    handle.remove()
    # same random stream; transformers rounds s to float32 (relative 2^-24 of |noise|), which can move out + noise
    # by one float32 ulp of |out| (~1.2e-7 relative): rtol 1e-6 covers both
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_neftune_changes_training_not_evaluation(tmp_path, sft_task):
    train, evals = make_examples(8), make_examples(4, seed=1)
    plain = run_training(make_model(), sft_task, train, evals, make_cfg(max_steps=1), tmp_path / "a", progress=False)
    model = make_model()
    noisy = run_training(model, sft_task, train, evals, make_cfg(max_steps=1, neftune_noise_alpha=5.0),
                         tmp_path / "b", progress=False)
    assert noisy.history[0]["loss"] != plain.history[0]["loss"]
    assert not model.get_input_embeddings()._forward_hooks


CONFIG = """\
model:
  name: tiny
data:
  train: t.jsonl
train:
  eval_every: 5
"""


@pytest.mark.parametrize("extra, line, key, message", [
    ("  report_to: [tensorbord]\n", 7, "train.report_to", "did you mean 'tensorboard'"),
    ("  report_to: [mlflow, mlflow]\n", 7, "train.report_to", "twice"),
    ("  callbacks: ['no_such_module_xyz:Hook']\n", 7, "train.callbacks", "cannot import module"),
    ("  callbacks: ['tests.train.hook_callbacks']\n", 7, "train.callbacks", "module:Class"),
    ("  callbacks: ['tests.train.hook_callbacks:Missing']\n", 7, "train.callbacks", "has no 'Missing'"),
    ("  early_stopping: {metric: eval_loss, patience: 0}\n", 7, "train.early_stopping.patience", "at least 1"),
    ("  early_stopping: {metric: eval_loss, mode: biggest}\n", 7, "train.early_stopping.mode", "'min'"),
    ("  neftune_noise_alpha: -1\n", 7, "train.neftune_noise_alpha", "positive"),
    ("  mlflow_tracking_uri: file:/tmp/x\n", 7, "train.mlflow_tracking_uri", "not in report_to"),
    ("  wandb: {projct: x}\n", 7, "train.wandb.projct", "did you mean 'project'"),
])
def test_hook_keys_are_validated_with_file_line_key(tmp_path, extra, line, key, message):
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG + extra)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert (info.value.file, info.value.line, info.value.key) == (str(path), line, key)


def test_early_stopping_and_save_best_need_eval_every(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG.replace("  eval_every: 5\n", "  save_best: eval_loss\n"))
    with pytest.raises(ConfigError, match="needs eval_every") as info:
        load_config(path)
    assert info.value.key == "train.save_best" and info.value.line == 6
    path.write_text(CONFIG.replace("  eval_every: 5\n", "  early_stopping: {metric: eval_loss}\n"))
    with pytest.raises(ConfigError, match="needs eval_every"):
        load_config(path)
    path.write_text(CONFIG + "  early_stopping: {metric: accuracy, patience: 2}\n  save_best: accuracy\n"
                    "  neftune_noise_alpha: 5\n  callbacks: ['tests.train.hook_callbacks:Recorder']\n")
    cfg = load_config(path).train
    assert cfg.early_stopping.patience == 2 and cfg.save_best == "accuracy" and cfg.neftune_noise_alpha == 5.0


def test_tasks_with_their_own_loop_refuse_neftune_instead_of_dropping_it():
    from tuneforge.train.callbacks import check_own_loop

    check_own_loop(make_cfg(), "ppo")  # nothing set: fine
    check_own_loop(make_cfg(report_to=["tensorboard"], save_best="eval_reward"), "grpo")  # own_loop.py runs them
    with pytest.raises(ConfigError, match="neftune_noise_alpha is not supported") as info:
        check_own_loop(make_cfg(neftune_noise_alpha=5.0), "ppo")
    assert info.value.key == "train.neftune_noise_alpha"
