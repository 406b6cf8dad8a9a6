"""Non-finite numbers: every float config key refuses inf/nan with file, line and key; a run that meets a
non-finite loss or gradient norm stops with a clear error before the update, keeps its last good checkpoint and
saves no adapter; the CLI exits non-zero."""
import math

import pytest
import torch

from tuneforge.config import load_config
from tuneforge.errors import ConfigError, NonFiniteLoss
from tuneforge.train import api, run_training
from tuneforge.train.tasks.sft import SFTTask

from .common import PAD, make_cfg, make_examples, make_model
from .runs import patch_loaders, run_config


@pytest.mark.parametrize("section,key,value,line", [
    ("train", "learning_rate", ".inf", 3), ("train", "max_grad_norm", ".nan", 3), ("train", "warmup_ratio", "-.inf", 3),
    ("method", "lora_dropout", ".nan", 4), ("data", "warn_dropped_share", ".inf", 3), ("eval", "temperature", ".inf", 3),
])
def test_every_float_key_must_be_finite(tmp_path, section, key, value, line):
    path = tmp_path / "run.yaml"
    extra = "  name: lora\n" if section == "method" else ""
    path.write_text(f"output_dir: out\n{section}:\n{extra}  {key}: {value}\n")
    with pytest.raises(ConfigError, match="expected a finite number") as err:
        load_config(path)
    assert (err.value.file, err.value.line, err.value.key) == (str(path), line, f"{section}.{key}")


def test_finite_check_covers_overrides_strings_and_task_settings(tmp_path):
    for override in ("train.learning_rate=Infinity", "train.learning_rate=nan", "train.weight_decay=-inf"):
        with pytest.raises(ConfigError, match="expected a finite number") as err:
            load_config(None, [override])
        assert err.value.file == f"--set {override}"
    with pytest.raises(ConfigError, match="expected a finite number") as err:
        load_config(None, ["task.name=dpo", "task.beta=.inf"])
    assert err.value.key == "task.beta"


class NaNAt(SFTTask):
    """The loss of every micro-batch from the `at`-th training forward on is nan (what an exploding run meets)."""

    def __init__(self, at: int):
        super().__init__(PAD)
        self.calls, self.at = 0, at

    def loss_sum(self, model, batch):
        loss = super().loss_sum(model, batch)
        if model.training:
            self.calls += 1
            if self.calls >= self.at:
                return loss * math.nan
        return loss


def test_a_nan_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(tmp_path):
    model = make_model()
    with pytest.raises(NonFiniteLoss, match=r"step 4: the training loss is nan .* the last good checkpoint is "
                                            rf"{tmp_path / 'checkpoints' / 'step-2'}"):
        run_training(model, NaNAt(4), make_examples(16), [], make_cfg(max_steps=6, save_every=2), tmp_path,
                     progress=False)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-2"]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the nan step updated nothing


def test_an_infinite_learning_rate_in_python_config_stops_the_run(tmp_path, monkeypatch):
    """TrainConfig built in Python skips the YAML check; the loop's check still stops it (inf lr -> nan weights
    after one step -> nan loss at the next), and no adapter is saved."""
    patch_loaders(monkeypatch)
    config = run_config(tmp_path, max_steps=4)
    config["train"]["lr_schedule"] = "constant"
    cfg = api.resolve_config(config)
    cfg.train.learning_rate = math.inf
    with pytest.raises(NonFiniteLoss, match="step 2: the training loss is nan"):
        api.train(cfg, progress=False)
    assert not (tmp_path / "run" / "adapter").exists()


def test_cli_exits_non_zero_on_a_non_finite_loss(tmp_path, monkeypatch):
    from tuneforge.cli.main import main

    monkeypatch.setattr(api, "train", lambda *a, **k: (_ for _ in ()).throw(NonFiniteLoss("step 3: nan")))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path / "run.yaml")])
    assert exit_info.value.code == 2


def test_no_checkpoint_ever_holds_non_finite_weights(tmp_path):
    """An infinite learning rate set in Python: step 1's loss is finite but its update is not; the checkpoint of
    step 1 is refused (so the newest checkpoint is never a NaN one) and nothing is saved."""
    model = make_model()
    with pytest.raises(NonFiniteLoss, match="step 1: the trained weights are not finite .* no checkpoint was saved"):
        run_training(model, SFTTask(PAD), make_examples(8), [], make_cfg(max_steps=3, save_every=1,
                                                                        learning_rate=math.inf), tmp_path,
                     progress=False)
    assert list((tmp_path / "checkpoints").glob("step-*")) == []


def test_ppo_and_grpo_stop_on_a_non_finite_loss(tmp_path):
    from tuneforge.config.schema import TrainConfig
    from tuneforge.models.tiny import tiny_tokenizer
    from tuneforge.train import grpo, ppo
    from tuneforge.train.tasks.ppo import PPOConfig

    from .test_grpo import lowercase_share, policy, prompts, tiny_cfg

    tok = tiny_tokenizer()
    cfg = tiny_cfg(num_iterations=1)
    model = policy()
    batch = grpo.make_samples(model, tok, prompts(tok)[:2], [("lowercase_share", lowercase_share)], cfg, 8)
    batch["advantages"] = torch.full_like(batch["advantages"], math.nan)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    with pytest.raises(NonFiniteLoss, match="step 3: the training loss is nan"):
        grpo.grpo_update(model, optimizer, scheduler, params, batch, cfg, TrainConfig(micro_batch_size=8), 3,
                         tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, params))

    train_cfg = TrainConfig(max_steps=2, micro_batch_size=4, learning_rate=math.inf, lr_schedule="constant",
                            save_every=1)
    with pytest.raises(NonFiniteLoss, match="not finite"):
        ppo.run_ppo(policy(), tok, PPOConfig(rollout_batch_size=4, max_new_tokens=4, ppo_epochs=1),
                    train_cfg, prompts(tok)[:4], [], tmp_path / "ppo", reward=lowercase_share, progress=False)
    assert list((tmp_path / "ppo" / "checkpoints").glob("step-*")) == []
