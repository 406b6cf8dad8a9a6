"""save_best / early stopping with mode "auto" decide by whole words of the metric's name."""
import pytest

from tuneforge.config.hooks import metric_mode


@pytest.mark.parametrize("metric", ["eval_loss", "eval_perplexity", "eval_wer", "cer", "eval_error_rate"])
def test_losses_and_error_rates_fall(metric):
    assert metric_mode(metric, "auto") == "min"


@pytest.mark.parametrize("metric", ["eval_accuracy", "eval_lowercase_share", "eval_answer_rate", "eval_spearman"])
def test_everything_else_rises(metric):
    assert metric_mode(metric, "auto") == "max"  # "lowercase" and "answer" hold "wer" but are not error rates


def test_an_explicit_mode_wins():
    assert metric_mode("eval_loss", "max") == "max"
