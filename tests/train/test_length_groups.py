"""Length-grouped data order (train.group_by_length): still one random pass per epoch, micro-batches of like
length from one window, less padding, and an exact resume."""
import random

import pytest
import torch

from tuneforge.config.schema import TrainConfig
from tuneforge.errors import ConfigError
from tuneforge.train import run_training
from tuneforge.train.length_groups import grouped_order
from tuneforge.train.loop import DataOrder
from tuneforge.train.tasks.embed import EmbedTask
from tuneforge.train.tasks.sft import SFTTask

from .common import PAD, make_cfg, make_examples, make_model

_RNG = random.Random(3)
LENGTHS = [_RNG.randint(1, 64) for _ in range(203)]  # 203 = 6 windows of 4 x 8 + a partial window


def padded(order: list[int], batch: int) -> int:
    return sum(max(LENGTHS[i] for i in order[s:s + batch]) * len(order[s:s + batch])
               for s in range(0, len(order), batch))


def test_grouped_order_is_a_permutation_of_like_length_batches_from_one_window():
    perm = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(0)).tolist()
    order = grouped_order(perm, LENGTHS, batch=8, window=4, generator=torch.Generator().manual_seed(1))
    assert sorted(order) == list(range(len(LENGTHS)))
    windows = [set(perm[s:s + 32]) for s in range(0, len(perm), 32)]
    batches = [order[s:s + 8] for s in range(0, len(order), 8)]
    assert len(batches[-1]) == 203 % 8 and set(batches[-1]) <= windows[-1]  # the partial batch stays last
    for b in batches:
        home = [w for w in windows if b[0] in w][0]
        assert set(b) <= home  # every micro-batch comes from one window of the epoch's draw
        in_window = sorted((LENGTHS[i] for i in home), reverse=True)
        assert sorted((LENGTHS[i] for i in b), reverse=True) in [in_window[k:k + len(b)]
                                                                 for k in range(0, len(in_window), 8)]
    assert padded(order, 8) < padded(perm, 8)
    # the batches' order is drawn too: not the windows one after another
    assert [w for b in batches[:-1] for w, win in enumerate(windows) if b[0] in win] != sorted(
        w for b in batches[:-1] for w, win in enumerate(windows) if b[0] in win)
    again = grouped_order(perm, LENGTHS, batch=8, window=4, generator=torch.Generator().manual_seed(1))
    assert again == order


def test_data_order_groups_each_epoch_differently_and_keeps_the_step_slices():
    plain = DataOrder(len(LENGTHS), 8, 2, seed=5)
    grouped = DataOrder(len(LENGTHS), 8, 2, seed=5, lengths=LENGTHS, group_window=4)
    assert grouped.steps_per_epoch == plain.steps_per_epoch
    e0, e1 = grouped.permutation(0), grouped.permutation(1)
    assert sorted(e0) == sorted(e1) == list(range(len(LENGTHS))) and e0 != e1
    assert padded(e0, 8) < padded(plain.permutation(0), 8)
    chunks, epoch, index = grouped.step(0, 16)
    assert chunks == [e0[16:24], e0[24:32]] and (epoch, index) == (0, 32)
    with pytest.raises(ValueError):
        DataOrder(len(LENGTHS), 8, 1, seed=5, lengths=LENGTHS[:-1], group_window=4)


def test_config_rejects_a_negative_window():
    with pytest.raises(ConfigError, match="group_by_length"):
        TrainConfig(group_by_length=-1).validate()
    TrainConfig(group_by_length=8).validate()


def test_embed_rows_cost_every_text():
    assert EmbedTask().example_length({"a": [1, 2], "b": [3, 4, 5], "negatives": [[6], [7, 8]]}) == 8
    assert SFTTask(PAD).example_length({"input_ids": [1, 2, 3], "labels": [1, 2, 3]}) == 3


TRAIN = make_examples(22, seed=11, lo=3, hi=30)
EVAL = make_examples(4, seed=12)


def losses(result):
    return {r["step"]: r["loss"] for r in result.history if "loss" in r}


def run(out, **cfg):
    model = make_model(attention_dropout=0.1)
    return run_training(model, SFTTask(PAD), TRAIN, EVAL, make_cfg(grad_accum_steps=2, lr_schedule="constant", **cfg),
                        out, resume=True, progress=False)


def test_grouped_run_resumes_exactly_and_refuses_another_grouping(tmp_path):
    straight = run(tmp_path / "a", max_steps=10, group_by_length=3)
    run(tmp_path / "b", max_steps=5, group_by_length=3)
    resumed = run(tmp_path / "b", max_steps=10, group_by_length=3)
    a, b = losses(straight), losses(resumed)
    assert [a[s] for s in range(6, 11)] == [b[s] for s in range(6, 11)]  # bit-identical across the epoch boundary
    assert losses(run(tmp_path / "c", max_steps=10)) != a  # the grouping did change what the steps saw
    with pytest.raises(ConfigError, match="group_by_length"):
        run(tmp_path / "b", max_steps=12, group_by_length=0)


class NoLengths(SFTTask):
    def example_length(self, example):
        return None


def test_a_task_without_lengths_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="group_by_length"):
        run_training(make_model(), NoLengths(PAD), TRAIN, EVAL, make_cfg(max_steps=1, group_by_length=2),
                     tmp_path / "d", progress=False)
