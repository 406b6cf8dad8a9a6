"""GRPO with programmatic rewards, as a task: its settings, its prompts (with the fields the rewards check) and
its rewards. The training (sample G completions per prompt, score, update) runs in `tuneforge.train.grpo`.

Prompts: records of data.train (data.validation for the accuracy and reward evaluated during training, which
train.save_best chooses on; task.test_prompts for held-out figures that chose nothing), field `prompt_field`,
rendered like the preference tasks (`template`). Every other field of the record (e.g. `answer`) is handed to
the rewards. A prompt longer than max_prompt_length tokens is an error before training (a cut arithmetic question
has a different answer), naming the file and line; an empty prompt is skipped and counted.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Union

from ...errors import ConfigError, DataError
from ...registry import TASKS
from .base import BaseTask

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


@dataclasses.dataclass
class GRPOConfig:
    rewards: list[Union[str, dict]] = dataclasses.field(default_factory=lambda: ["numeric_match"])
    """Reward functions, summed with reward_weights: a built-in's name (exact_match, numeric_match, format,
    length_penalty, text_similarity, string_check), a mapping {name: built-in, option: value} or
    'module:function' / 'file.py:function' called as fn(prompts, completions, **record_fields)."""

    reward_weights: Union[list[float], None] = None
    """One weight per reward (default: all 1)."""

    prompt_field: str = "prompt"
    """Record field holding the prompt text; the record's other fields go to the rewards."""

    template: Literal["chat", "raw"] = "chat"
    """chat: the prompt is a user turn of the chat template; raw: the policy continues the plain text."""

    max_prompt_length: int = 128
    """A prompt longer than this many tokens stops the run before training (file and line named)."""

    num_generations: int = 8
    """G: completions sampled per prompt; advantages are normalised within each prompt's group (at least 2)."""

    prompts_per_step: int = 4
    """Prompts per GRPO step, so each step scores prompts_per_step x num_generations completions."""

    max_new_tokens: int = 32
    """Longest completion, in tokens."""

    temperature: float = 1.0
    """Sampling temperature; the log-probabilities are those of the same tempered distribution (as TRL)."""

    top_p: float = 1.0
    """Nucleus sampling for the completions (1 = off)."""

    beta: float = 0.04
    """Weight of the KL to the reference (the base with adapters disabled); 0 skips the reference pass."""

    epsilon: float = 0.2
    """Clip range of the importance ratio: [1 - epsilon, 1 + epsilon_high]."""

    epsilon_high: Union[float, None] = None
    """Upper clip (DAPO's clip-higher); None = epsilon."""

    loss_type: Literal["grpo", "dapo", "dr_grpo"] = "grpo"
    """grpo: mean over completions of each one's token mean; dapo: mean over all completion tokens of the step;
    dr_grpo: sum over tokens / (completions x max_new_tokens), a constant."""

    scale_rewards: bool = True
    """Divide each group's centred rewards by its std (GRPO); false = only centre them (Dr. GRPO)."""

    num_iterations: int = 1
    """Optimizer steps on each batch of samples (mu in the GRPO paper); > 1 reuses them with the clipped ratio."""

    drop_uniform_groups: bool = False
    """Train only on the groups whose rewards differ (the others have every advantage 0: no policy gradient), and
    take no optimizer step when none is left, so AdamW's momentum and weight decay do not move the weights on
    steps without a gradient (DAPO's dynamic-sampling filter, without its resampling). With beta > 0 the dropped
    groups' KL term is dropped too."""

    test_prompts: Union[str, None] = None
    """A prompt file scored (greedy) only before training and at the end, on the weights the run returns (the
    best on data.validation with train.save_best): held-out figures that chose nothing (test_reward, test_<name>)."""

    def validate(self) -> None:
        from ..grpo_rewards import build_rewards

        if self.num_generations < 2:
            raise ConfigError("num_generations must be at least 2: advantages compare completions of one prompt",
                              key="num_generations")
        for key in ("max_prompt_length", "prompts_per_step", "max_new_tokens", "num_iterations"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1", key=key)
        if self.temperature <= 0:
            raise ConfigError("temperature must be positive", key="temperature")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p must be in (0, 1]", key="top_p")
        if self.beta < 0:
            raise ConfigError("beta must not be negative", key="beta")
        if not 0 < self.epsilon < 1 or (self.epsilon_high is not None and self.epsilon_high <= 0):
            raise ConfigError("epsilon must be in (0, 1) and epsilon_high positive", key="epsilon")
        if not self.rewards:
            raise ConfigError("GRPO needs at least one reward", key="rewards")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ConfigError(f"reward_weights has {len(self.reward_weights)} weights for {len(self.rewards)} rewards",
                              key="reward_weights")
        build_rewards(self.rewards)  # unknown built-ins, bad options and unloadable functions fail now

    @property
    def weights(self) -> list[float]:
        return list(self.reward_weights) if self.reward_weights is not None else [1.0] * len(self.rewards)


def load_grpo_prompts(path, cfg: GRPOConfig, tokenizer, limit: int | None, seed: int) -> tuple[list[dict], str]:
    """`[{"text", "ids", "line", "fields"}]` for one prompt file and a one-line summary."""
    from ...data import read_records, select_records
    from ...data.preferences import encode_prompt
    from ...data.readers import line_of

    records = select_records(read_records(path), limit, seed)
    prompts, empty = [], []
    for i, record in enumerate(records):
        line = line_of(record, i)
        value = record.get(cfg.prompt_field)
        if isinstance(value, list):  # chat messages (OpenAI's reinforcement rows): rendered up to the reply
            text, ids = _encode_messages(value, tokenizer, cfg, path, line)
        elif isinstance(value, str):
            text = value.strip()
            ids = encode_prompt(tokenizer, text, cfg.template) if text else []
        else:
            raise DataError(f"needs a text field '{cfg.prompt_field}' (or a list of chat messages; set "
                            "task.prompt_field)", file=path, line=line, key=cfg.prompt_field)
        if not ids:
            empty.append(line)
            continue
        if len(ids) > cfg.max_prompt_length:
            raise DataError(f"prompt is {len(ids)} tokens, longer than task.max_prompt_length={cfg.max_prompt_length} "
                            "(raise it, or shorten the prompt: a cut prompt asks a different question)", file=path,
                            line=line, key=cfg.prompt_field)
        fields = {k: v for k, v in dict(record).items() if k != cfg.prompt_field}
        prompts.append({"text": text, "ids": ids, "line": line, "fields": fields})
    note = f"{path}: kept {len(prompts)} of {len(records)} prompts"
    if empty:
        note += f"; skipped {len(empty)} empty (line {', '.join(map(str, empty[:5]))}{', ...' if len(empty) > 5 else ''})"
    if not prompts:
        raise DataError(f"no usable prompts: {note}", file=path)
    return prompts, note


def _encode_messages(messages: list, tokenizer, cfg: GRPOConfig, path, line) -> tuple[str, list[int]]:
    """(the last user message, the ids of the whole conversation rendered up to the assistant's reply)."""
    ok = all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
             for m in messages)
    if not ok or cfg.template != "chat":
        why = "messages need a role and text content" if not ok else "chat messages need task.template: chat"
        raise DataError(why, file=path, line=line, key=cfg.prompt_field)
    if not messages:
        return "", []
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    users = [m["content"] for m in messages if m["role"] == "user"]
    return (users[-1] if users else messages[-1]["content"]), tokenizer.encode(text, add_special_tokens=False)


def check_context(cfg: GRPOConfig, model, prompts: list[dict]) -> None:
    """Prompt + completion must fit the model's context (position embeddings): an error before training."""
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    longest = max(len(p["ids"]) for p in prompts)
    if limit is not None and longest + cfg.max_new_tokens > limit:
        raise ConfigError(f"the longest prompt ({longest} tokens) + max_new_tokens ({cfg.max_new_tokens}) exceeds the "
                          f"model's context of {limit} tokens", key="task.max_new_tokens")


@TASKS.register("grpo")
class GRPOTask(BaseTask):
    """GRPO on a LoRA-style adapter; see `tuneforge.train.grpo` for the algorithm."""

    name = "grpo"
    config_class = GRPOConfig

    def __init__(self):
        self.notes: list[str] = []

    def data_notes(self) -> list[str]:
        return list(self.notes)

    def run(self, model, tokenizer, run_cfg, output_dir, *, resume: bool = True, progress: bool = True):
        from ..grpo import run_grpo
        from ..grpo_rewards import build_rewards

        cfg = run_cfg.task_config or GRPOConfig()
        data = run_cfg.data
        if data.train is None:
            raise ConfigError("GRPO needs a file of prompts", key="data.train")
        train, note = load_grpo_prompts(data.train, cfg, tokenizer, data.limit_train, data.shuffle_seed)
        self.notes = [note]
        evals, tests = [], []
        if data.validation is not None:
            evals, note = load_grpo_prompts(data.validation, cfg, tokenizer, data.limit_eval, data.shuffle_seed)
            self.notes.append(note)
        if cfg.test_prompts is not None:
            tests, note = load_grpo_prompts(cfg.test_prompts, cfg, tokenizer, None, data.shuffle_seed)
            self.notes.append(note)
        for line in self.notes:
            print(line)
        check_context(cfg, model, train + evals + tests)
        return run_grpo(model, tokenizer, cfg, run_cfg.train, train, evals, output_dir, test_prompts=tests,
                        rewards=build_rewards(cfg.rewards), resume=resume, progress=progress)
