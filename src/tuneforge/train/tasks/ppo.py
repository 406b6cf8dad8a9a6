"""RLHF with PPO, as a task: its settings, its prompts and its reward. The training itself (rollouts, then
several PPO epochs over them) is not one loss per batch, so the task runs it (`run`, see `tuneforge.train.ppo`)
instead of the shared loop.

Prompts: records of data.train (data.validation for the held-out reward), field `prompt_field`, optionally cut to
their first `prompt_words` words (review openings from a sentiment set), rendered like the preference tasks
(`template`). An empty prompt, or one longer than max_prompt_length tokens, is skipped and counted.

The reward, one of:
    reward_adapter   a reward model trained with `task: reward` on this same base model. It is attached as a
                     second adapter with its scalar head, so policy, reference (adapters disabled) and reward
                     model share the one copy of the base weights, and the policy's tokens are scored as they
                     are (no decode and re-tokenise).
    reward_function  "package.module:function" or "path/to/file.py:function", called as
                     fn(prompts: list[str], responses: list[str]) -> list[float] (any scorer: a program, a
                     classifier of another family with its own tokenizer, a test).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from pathlib import Path
from typing import Callable, Literal, Union

from ...data.formatting import split_opening
from ...errors import ConfigError, DataError
from ...registry import TASKS
from .base import BaseTask


@dataclasses.dataclass
class PPOConfig:
    reward_adapter: Union[str, None] = None
    """Directory of a reward adapter trained with `task: reward` on the same base model (the `adapter/` of
    that run)."""

    reward_function: Union[str, None] = None
    """A Python reward instead: "module:function" or "file.py:function", fn(prompts, responses) -> floats."""

    prompt_field: str = "prompt"
    """Record field holding the prompt text."""

    prompt_words: Union[int, None] = None
    """Keep only the first N words of each prompt (e.g. review openings); None keeps it whole."""

    template: Literal["chat", "raw"] = "chat"
    """chat: the prompt is a user turn of the chat template; raw: the policy continues the plain text."""

    max_prompt_length: int = 64
    """Prompts longer than this many tokens are skipped (and counted)."""

    rollout_batch_size: int = 16
    """Prompts per PPO step: responses are sampled for these, scored, then trained on ppo_epochs times."""

    max_new_tokens: int = 24
    """Longest sampled response, in tokens."""

    temperature: float = 1.0
    """Sampling temperature of the rollouts (the log-probabilities are those of the same tempered policy)."""

    ppo_epochs: int = 4
    """Passes over each batch of rollouts, in minibatches of train.micro_batch_size x train.grad_accum_steps."""

    cliprange: float = 0.2
    """PPO's epsilon: the probability ratio is clipped to [1 - eps, 1 + eps] in the surrogate objective."""

    cliprange_value: float = 0.2
    """Clip of the value prediction around its rollout value in the value loss."""

    vf_coef: float = 0.1
    """Weight of the value loss next to the policy loss."""

    gamma: float = 1.0
    """Discount of future rewards within a response."""

    lam: float = 0.95
    """GAE's lambda: 0 = one-step TD advantages, 1 = Monte-Carlo returns minus the value."""

    kl_coef: float = 0.05
    """Starting weight of the per-token KL penalty against the reference (the base model)."""

    kl_control: Literal["adaptive", "fixed"] = "adaptive"
    """adaptive moves kl_coef so the KL tracks target_kl (Ziegler et al. 2019); fixed keeps it."""

    target_kl: float = 6.0
    """KL (nats per response) the adaptive controller aims for."""

    kl_horizon: int = 10000
    """Adaptive controller's horizon in rollouts: larger changes kl_coef more slowly."""

    def validate(self) -> None:
        if self.reward_adapter is not None and self.reward_function is not None:
            raise ConfigError("set one of reward_adapter and reward_function, not both", key="reward_function")
        positive = ("max_prompt_length", "rollout_batch_size", "max_new_tokens", "ppo_epochs", "kl_horizon")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1", key=key)
        if self.prompt_words is not None and self.prompt_words < 1:
            raise ConfigError("prompt_words must be at least 1 (or null)", key="prompt_words")
        for key in ("temperature", "cliprange", "cliprange_value", "target_kl"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive", key=key)
        if self.vf_coef < 0 or self.kl_coef < 0:
            raise ConfigError("vf_coef and kl_coef must not be negative", key="vf_coef" if self.vf_coef < 0 else "kl_coef")
        for key in ("gamma", "lam"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key} must be in [0, 1]", key=key)


def load_prompts(path, cfg: PPOConfig, tokenizer, limit: int | None, seed: int) -> tuple[list[dict], str]:
    """`[{"text", "ids"}]` for one prompt file and a one-line summary of what was kept and skipped."""
    from ...data import read_records, select_records
    from ...data.preferences import encode_prompt
    from ...data.readers import line_of

    records = select_records(read_records(path), limit, seed)
    prompts, too_long, empty = [], [], []
    for i, record in enumerate(records):
        line = line_of(record, i)
        if cfg.prompt_field not in record or not isinstance(record[cfg.prompt_field], str):
            raise DataError(f"needs a text field '{cfg.prompt_field}' (set task.prompt_field)", file=path, line=line,
                            key=cfg.prompt_field)
        text = record[cfg.prompt_field].strip()
        if cfg.prompt_words is not None:
            text = split_opening(text, cfg.prompt_words)[0]
        ids = encode_prompt(tokenizer, text, cfg.template) if text else []
        if not text or not ids:
            empty.append(line)
        elif len(ids) > cfg.max_prompt_length:
            too_long.append(line)
        else:
            prompts.append({"text": text, "ids": ids})
    note = f"{path}: kept {len(prompts)} of {len(records)} prompts"
    for lines, why in ((empty, "empty"), (too_long, f"longer than max_prompt_length={cfg.max_prompt_length}")):
        if lines:
            note += f"; skipped {len(lines)} {why} (line {', '.join(map(str, lines[:5]))}{', ...' if len(lines) > 5 else ''})"
    if not prompts:
        raise DataError(f"no usable prompts: {note}", file=path)
    return prompts, note


def load_reward_function(spec: str) -> Callable:
    """The callable named by "module:function" or "file.py:function"."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"reward_function {spec!r} must look like 'module:function'", key="task.reward_function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            if loader_spec is None or not path.is_file():
                raise ImportError(f"no file {path}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        fn = getattr(module, attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot load reward_function {spec!r}: {err}", key="task.reward_function") from None
    if not callable(fn):
        raise ConfigError(f"reward_function {spec!r} is not callable", key="task.reward_function")
    return fn


@TASKS.register("ppo")
class PPOTask(BaseTask):
    """RLHF with PPO on a LoRA-style adapter; see `tuneforge.train.ppo` for the algorithm."""

    name = "ppo"
    config_class = PPOConfig

    def __init__(self):
        self.notes: list[str] = []

    def data_notes(self) -> list[str]:
        return list(self.notes)

    def run(self, model, tokenizer, run_cfg, output_dir, *, resume: bool = True, progress: bool = True,
            reward: Callable | None = None):
        """Load the prompts, resolve the reward and train (reward overrides the configured one)."""
        from ..ppo import run_ppo

        cfg = run_cfg.task_config or PPOConfig()
        if reward is None and cfg.reward_adapter is None and cfg.reward_function is None:
            raise ConfigError("PPO needs a reward: set task.reward_adapter or task.reward_function", key="task")
        data = run_cfg.data
        if data.train is None:
            raise ConfigError("PPO needs a file of prompts", key="data.train")
        train, note = load_prompts(data.train, cfg, tokenizer, data.limit_train, data.shuffle_seed)
        self.notes = [note]
        evals = []
        if data.validation is not None:
            evals, note = load_prompts(data.validation, cfg, tokenizer, data.limit_eval, data.shuffle_seed)
            self.notes.append(note)
        for line in self.notes:
            print(line)
        if reward is None and cfg.reward_function is not None:
            reward = load_reward_function(cfg.reward_function)
        return run_ppo(model, tokenizer, cfg, run_cfg.train, train, evals, output_dir, reward=reward,
                       reward_adapter=cfg.reward_adapter, resume=resume, progress=progress)
