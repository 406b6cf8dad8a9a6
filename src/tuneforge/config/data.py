"""What a run says about its data. Plain data only (paths, numbers, names), so the same dataclass feeds YAML,
CLI overrides and the docs; `tuneforge.config` reuses it as `RunConfig.data`. Each field's docstring is the
string right below it (the litgpt convention)."""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from .data_sets import resolve_data_path

FORMATS = ("auto", "alpaca", "chat", "openai", "sharegpt", "prompt_completion", "text", "template")
TRAIN_ON = ("assistant", "all")
MIXING = ("proportional", "temperature", "explicit")


def _check_template(format: str, prompt: str | None, target: str | None) -> None:
    if format == "template" and (prompt is None or target is None):
        raise ConfigError("format 'template' needs both prompt and target templates", key="prompt")
    if target is not None and prompt is None:
        raise ConfigError("target is set but prompt is not; a template record needs both", key="prompt")
    if prompt is not None and format not in ("auto", "template"):
        raise ConfigError(f"prompt/target templates apply to format 'template', not {format!r}", key="format")
    if prompt is not None and target is None:
        raise ConfigError("prompt is set but target is not; a template record needs both", key="target")


@dataclasses.dataclass
class DataSource:
    """One data set of a multi-task mixture, with its own layout, template and loss masking."""

    name: str
    """Short name, used in reports and per-task evaluation (scitldr, alpaca, ...)."""

    train: str | None = None
    """Training records of this data set."""

    validation: str | None = None
    """Held-out records of this data set (added to the run's validation set)."""

    format: str = "auto"
    """A record layout as data.format (alpaca, chat, openai, sharegpt, prompt_completion, text, template, auto)."""

    prompt: str | None = None
    """User-turn template with {field} placeholders, e.g. "Summarize in one sentence:\n{document}"."""

    target: str | None = None
    """Assistant-reply template, e.g. "{summary}"."""

    system_prompt: str | None = None
    """System message for this data set's conversations that have none."""

    train_on: str = "assistant"
    """assistant or all, as data.train_on."""

    limit_train: int | None = None
    """Use only this many of its training records (seeded subset) before mixing."""

    limit_eval: int | None = None
    """Use only this many of its validation records."""

    weight: float | None = None
    """Mixing weight, required with mixing: explicit (relative; need not sum to 1)."""

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("a mixture entry needs a name", key="name")
        if self.train is None:
            raise ConfigError(f"mixture entry {self.name!r} has no train file", key="train")
        self.train = resolve_data_path(self.train, key="train")
        self.validation = resolve_data_path(self.validation, key="validation")
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}", key="format")
        if self.train_on not in TRAIN_ON:
            raise ConfigError(f"unknown train_on {self.train_on!r}; choose one of {', '.join(TRAIN_ON)}",
                              key="train_on")
        _check_template(self.format, self.prompt, self.target)
        if self.weight is not None and self.weight <= 0:
            raise ConfigError("weight must be positive", key="weight")
        for key in ("limit_train", "limit_eval"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be a positive number of records (or null for all)", key=key)


@dataclasses.dataclass
class DataConfig:
    train: str | None = None
    """Training records: a .jsonl, .json (array), .csv or .parquet file, or a Hugging Face `datasets` source: a
    folder written by save_to_disk, a file set (a folder of data files, a glob such as data/*.parquet, an .arrow
    file) or a hub id (org/name, with split / revision); or a data set reference `NAME:SPLIT` (e.g. `alpaca:train`:
    $TUNEFORGE_DATA/alpaca/train.jsonl, else the repository's data/ slice)."""

    validation: str | None = None
    """Held-out records from the same kinds of source, used for evaluation; none means no eval set."""

    format: str = "auto"
    """Record layout: `alpaca` (instruction, input, output); `chat` or `openai` (messages: [{role, content}],
    OpenAI's fine-tuning format with tools, assistant tool_calls, role tool and per-message weight 0|1);
    `sharegpt` (conversations: [{from: human|gpt|system|tool, value}], with system and tools fields);
    `prompt_completion` ({prompt, completion}: loss on the completion; plain text without the chat template,
    message lists with it); `text` (raw text in text_field for continued pre-training: loss on every token, long
    texts cut into max_length pieces); `template` (any fields, through `prompt` and `target`); `auto` (template
    when prompt is set, else decided from the first record's keys)."""

    text_field: str = "text"
    """The record field holding the raw text of format `text`."""

    split: str = "train"
    """Split of a datasets source named by `train` (a DatasetDict folder or a hub id)."""

    validation_split: str = "validation"
    """Split of a datasets source named by `validation`."""

    revision: str | None = None
    """Hub dataset revision (branch, tag or commit) for a hub id."""

    streaming: bool = False
    """Read a datasets source lazily (`load_dataset(..., streaming=True)`): only as many records as the run's
    train.max_steps (required) needs are read, or limit_train records (the first ones, not a random subset)."""

    prompt: str | None = None
    """User-turn template for records of any layout: {field} names a record field ({{ and }} are literal braces),
    e.g. "Summarize in one sentence:\n{document}"."""

    target: str | None = None
    """Assistant-reply template, e.g. "{summary}" or "{target}"."""

    max_length: int = 512
    """Tokens per example (and per packed row); longer examples are cut at the end and counted as truncated."""

    warn_dropped_share: float = 0.05
    """Warn when more than this share of a split's records is dropped (nothing left to train once cut at
    max_length) or truncated; the counts are in the run summary either way. A split with every record dropped is
    an error."""

    packing: bool = True
    """Pack several short examples into one row of max_length tokens. Each example keeps its own positions and
    a block-diagonal causal mask, so the loss equals that of unpacked training; fewer pad tokens are computed."""

    train_on: str = "assistant"
    """Which tokens carry a loss: `assistant` (the replies, with their end-of-turn token) or `all` tokens."""

    system_prompt: str | None = None
    """System message put first in every conversation that has none of its own."""

    limit_train: int | None = None
    """Use only this many training records (a seeded random subset, kept in file order)."""

    limit_eval: int | None = None
    """Use only this many validation records (a seeded random subset, kept in file order)."""

    shuffle_seed: int = 0
    """Seed for picking the limit_train / limit_eval subsets (the training loop shuffles batches itself)."""

    mixture: list[DataSource] = dataclasses.field(default_factory=list)
    """Several data sets in one run (multi-task training), each with its own format, template and train_on;
    replaces train / validation. Validation sets are concatenated, so evaluation covers every task."""

    mixing: str = "proportional"
    """How a mixture is sampled (T5, Raffel et al. 2020, https://arxiv.org/abs/1910.10683, sec. 3.5.2):
    `proportional` r_m = n_m / sum n, `temperature` r_m proportional to n_m^(1/T), `explicit` r_m proportional
    to each entry's weight; n_m is the entry's size capped at mixing_cap."""

    mixing_temperature: float = 2.0
    """T of temperature mixing: 1 = proportional, larger flattens toward equal shares of every data set."""

    mixing_cap: int | None = None
    """Examples-proportional cap K: a data set counts as at most K examples when computing rates."""

    mixture_size: int | None = None
    """Training examples drawn per epoch from the mixture; null = the sum of the data sets' sizes. A data set
    asked for more examples than it has is repeated (whole passes, then a random remainder)."""

    def validate(self) -> None:
        """Raise ConfigError naming the key of the first bad value."""
        self.train = resolve_data_path(self.train, key="train")
        self.validation = resolve_data_path(self.validation, key="validation")
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}", key="format")
        if self.train_on not in TRAIN_ON:
            raise ConfigError(
                f"unknown train_on {self.train_on!r}; choose one of {', '.join(TRAIN_ON)}", key="train_on"
            )
        _check_template(self.format, self.prompt, self.target)
        self._validate_mixture()
        if not self.text_field:
            raise ConfigError("text_field must name a record field", key="text_field")
        if self.max_length < 2:
            raise ConfigError("max_length must be at least 2 tokens", key="max_length")
        if not 0.0 <= self.warn_dropped_share <= 1.0:
            raise ConfigError("warn_dropped_share must be in [0, 1]", key="warn_dropped_share")
        for key in ("limit_train", "limit_eval"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be a positive number of records (or null for all)", key=key)

    def _validate_mixture(self) -> None:
        if self.mixing not in MIXING:
            raise ConfigError(f"unknown mixing {self.mixing!r}; choose one of {', '.join(MIXING)}", key="mixing")
        if not self.mixture:
            return
        if self.train is not None or self.validation is not None:
            raise ConfigError("set either train/validation or mixture, not both", key="mixture")
        names = [source.name for source in self.mixture]
        if len(set(names)) != len(names):
            raise ConfigError(f"mixture names must be unique, got {names}", key="mixture")
        if self.mixing == "explicit" and any(source.weight is None for source in self.mixture):
            missing = [source.name for source in self.mixture if source.weight is None]
            raise ConfigError(f"mixing: explicit needs a weight on every entry; missing on {missing}", key="mixture")
        if self.mixing_temperature <= 0:
            raise ConfigError("mixing_temperature must be positive", key="mixing_temperature")
        for key in ("mixing_cap", "mixture_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be at least 1 (or null)", key=key)

    def for_source(self, source: DataSource) -> "DataConfig":
        """The plain (single data set) config of one mixture entry: its own files, layout and masking, the
        run's max_length, packing and seed."""
        return dataclasses.replace(
            self, train=source.train, validation=source.validation, format=source.format, prompt=source.prompt,
            target=source.target, system_prompt=source.system_prompt, train_on=source.train_on,
            limit_train=source.limit_train, limit_eval=source.limit_eval, mixture=[],
        )
