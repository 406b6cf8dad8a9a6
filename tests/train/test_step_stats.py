"""The log window: sums over steps, averaged per target and per second, stored in checkpoints as a list."""
import math

from tuneforge.train.step_stats import StepStats


def test_window_averages_over_all_targets_and_seconds_of_its_steps():
    window = StepStats() + StepStats(6.0, 3, 100, 0.5) + StepStats(2.0, 1, 60, 0.3)
    assert window == StepStats(8.0, 4, 160, 0.8)
    assert window.loss == 8.0 / 4
    assert (StepStats(3.0, 1) + StepStats(1.0, 3)).loss == 1.0  # per target: 4 / 4, where the step mean is 1.67
    assert window.tokens_per_s == 160 / 0.8


def test_empty_window_and_checkpoint_form():
    assert math.isnan(StepStats().loss) and StepStats().tokens_per_s == 0.0
    stats = StepStats(1.5, 2, 30, 0.25)
    assert stats.to_list() == [1.5, 2, 30, 0.25]
    assert StepStats.from_list(stats.to_list()) == stats
