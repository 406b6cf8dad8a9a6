"""What a run leaves behind: metrics.jsonl lines with the documented fields, a loss plot, a TrainResult."""
import json

from tuneforge.train import run_training
from tuneforge.train.loop import DataOrder

from .common import make_cfg, make_examples, make_model

TRAIN_FIELDS = {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"}


def test_metrics_and_plot(tmp_path, sft_task):
    train, evals = make_examples(16, seed=6), make_examples(6, seed=7)
    cfg = make_cfg(max_steps=6, eval_every=3, eval_batches=2, log_every=2)
    result = run_training(make_model(), sft_task, train, evals, cfg, tmp_path, progress=True)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if "loss" in r]
    eval_lines = [r for r in lines if "eval_loss" in r]
    assert [r["step"] for r in train_lines] == [2, 4, 6]
    assert all(set(r) == TRAIN_FIELDS for r in train_lines)
    assert [r["step"] for r in eval_lines] == [3, 6]
    assert all({"eval_loss", "perplexity", "step", "epoch", "elapsed_s"} <= set(r) for r in eval_lines)
    seen = DataOrder(len(train), 2, 1, cfg.seed).permutation(0)[:12]  # 6 steps x 2 examples of epoch 0
    tokens = sum(len(train[i]["input_ids"]) for i in seen)
    assert train_lines[-1]["tokens"] == tokens
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in train_lines)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.plot_path == tmp_path / "loss.png" and result.metrics_path == tmp_path / "metrics.jsonl"
    assert result.steps == 6 and result.eval_metrics.keys() == {"eval_loss", "perplexity"}
    assert result.tokens_per_s > 0 and result.wall_time_s > 0


def test_epochs_without_max_steps(tmp_path, sft_task):
    cfg = make_cfg(epochs=2, micro_batch_size=3, grad_accum_steps=2)
    result = run_training(make_model(), sft_task, make_examples(10, seed=8), [], cfg, tmp_path, progress=False)
    assert result.steps == 4  # ceil(ceil(10 / 3) / 2) = 2 steps per epoch
    assert result.history[-1]["epoch"] == 2.0
    assert result.eval_metrics == {}


def test_gradient_checkpointing_and_bf16(tmp_path, sft_task):
    """Checkpointing recomputes the same forward (same first loss), is switched off again afterwards, and bf16
    autocast trains to a finite loss."""
    examples = make_examples(8, seed=9)
    plain = run_training(make_model(), sft_task, examples, [], make_cfg(max_steps=2), tmp_path / "a", progress=False)
    model, seen = make_model(), []
    spy = type(sft_task)(sft_task.pad_token_id)
    spy.loss_sum = lambda m, b: seen.append(m.is_activation_checkpointing) or sft_task.loss_sum(m, b)
    ckpt = run_training(model, spy, examples, [], make_cfg(max_steps=2, gradient_checkpointing=True),
                        tmp_path / "b", progress=False)
    assert seen and all(seen)
    assert ckpt.history[0]["loss"] == plain.history[0]["loss"]
    assert not model.is_activation_checkpointing and model.config.use_cache
    bf16 = run_training(make_model(), sft_task, examples, [], make_cfg(max_steps=2, bf16=True), tmp_path / "c",
                        progress=False)
    assert abs(bf16.history[0]["loss"] - plain.history[0]["loss"]) < 0.05
