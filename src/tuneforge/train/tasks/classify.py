"""Sequence classification: cross-entropy of a classifier head over a pooled representation of the text.

    loss_sum = sum_i -log softmax(W pool(h(x_i)) + b)[y_i]
    with task.label_smoothing e (training only; eval_loss stays the plain cross-entropy):
    loss_sum = sum_i [(1 - e) (-log p_i[y_i]) + e mean_c (-log p_i[c])]      (Szegedy et al. 2016; torch's rule)
    with task.distill, the teachers' word-span crops j of the training texts add (train/distill.py):
    loss_sum += sum_j -sum_c q_j[c] log softmax(z_j / T)[c] * T^2        (q_j: the teachers' mean probabilities)

The pooling (`task.pooling`) is by default the one the checkpoint was trained with: a sentence-transformers
encoder (all-MiniLM-L6-v2) the mean of its last hidden states over real tokens, as its Pooling module does;
any other model its own (transformers' *ForSequenceClassification: an encoder's [CLS] pooler output, a decoder
LM's last non-padding token; load the model with `kind: sequence-classification`). The head (dropout + linear
`classifier`) is the model's own either way. MiniLM's [CLS] pooler was never trained for sentence meaning, so
pooling it costs accuracy (#24). The head is new and random, so whatever method adapts the backbone, the head
must train and be saved with the adapter: `configure_method` puts it in the method's `modules_to_save` (as peft
does for SEQ_CLS) when the method has that setting and the user left it empty.

Metrics: accuracy, macro-F1 (the unweighted mean of per-class F1, so a minority class counts as much as a
majority one) and the confusion matrix (rows = true label, columns = predicted), computed with scikit-learn.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...data.padding import pad
from ...errors import ConfigError, DataError
from ...registry import TASKS
from ..distill import distill_targets, soft_cross_entropy_sum
from ..distill_config import DistillConfig
from ..self_training_config import SelfTrainingConfig
from .base import BaseTask, batch_context

HEAD_MODULES = ("classifier", "score")
POOLINGS = ("auto", "model", "mean", "cls")


def resolve_pooling(pooling: str, model_name, model_kind: str) -> str:
    """`auto` -> `mean` / `cls` when model_name is a sentence-transformers checkpoint, else `model`."""
    if pooling != "auto":
        return pooling
    if model_kind != "sequence-classification":
        return "model"
    from ...models.sentence_pooling import sentence_pooling

    return sentence_pooling(model_name) or "model"


def pooled_logits(model: nn.Module, inputs: dict, pooling: str) -> torch.Tensor:
    """Logits of a *ForSequenceClassification encoder over its own backbone's states pooled by `pooling`
    (mean over real tokens, or the first token), through the model's dropout and `classifier`. Virtual tokens
    (prompt tuning) are stripped from the backbone's output by their hook, so the mask still lines up."""
    from .embed_losses import pool

    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Module) or not hasattr(model, "base_model"):
        raise ConfigError(f"pooling {pooling!r} needs a model whose head is one `classifier` on a vector (BERT-style "
                          f"encoders); {type(model).__name__} has none: use pooling: model", key="task.pooling")
    hidden = model.base_model(**inputs).last_hidden_state
    pooled = pool(hidden, inputs["attention_mask"], pooling)
    dropout = getattr(model, "dropout", None)
    return head(dropout(pooled) if isinstance(dropout, nn.Module) else pooled)


@dataclasses.dataclass
class ClassifyConfig:
    text_field: str = "text"
    """Record field holding the text to classify."""

    text_pair_field: Union[str, None] = None
    """Optional second text (NLI premise/hypothesis, paraphrase pairs), encoded as a sentence pair."""

    label_field: str = "label"
    """Record field holding the label: a label name, or an integer index into `labels`."""

    labels: Union[list[str], None] = None
    """The declared label set, in head-output order. None: the distinct values of the training labels, sorted.
    A record whose label is outside the set is an error naming its file and line."""

    pooling: str = "auto"
    """How the token states become the vector the head classifies. auto: `mean` for a sentence-transformers
    checkpoint trained with mean pooling (all-MiniLM-L6-v2), else `model`; model: the model's own
    (encoder [CLS] pooler, decoder last token); mean: mean over real tokens of the last hidden states; cls: the
    first token's last hidden state. A trained run records the resolved choice in its config.yaml."""

    label_smoothing: float = 0.0
    """Training target: 1 - e on the true label plus e spread evenly over all labels (Szegedy et al. 2016,
    https://arxiv.org/abs/1512.00567), a brake on over-confident logits on a small training set. 0: plain
    cross-entropy. The eval_loss is always the plain cross-entropy."""

    self_training: Union[SelfTrainingConfig, None] = None
    """Self-training on pseudo-labels of unlabelled records (`{unlabeled: FILE, threshold, rounds, balance,
    max_per_round, reinit, limit}`): see train/self_training.py and docs/self_training.md."""

    distill: Union[DistillConfig, None] = None
    """Knowledge distillation from trained classify runs (`{teachers: [RUN, ...], crops_per_record, min_words,
    temperature}`): the training records keep their labels and word-span crops of them train on the teachers'
    mean probabilities; see train/distill.py and docs/encoders.md."""

    def validate(self) -> None:
        if self.distill is not None and self.self_training is not None:
            raise ConfigError("distill and self_training cannot be combined in one run: distil first, then "
                              "self-train from the distilled run's data, or the reverse", key="distill")
        if self.distill is not None and self.text_pair_field:
            raise ConfigError("distill crops single texts; a text pair (text_pair_field) has no crops that keep "
                              "its meaning", key="distill")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}", key="pooling")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}", key="label_smoothing")
        if self.labels is not None:
            if not isinstance(self.labels, list) or len(self.labels) < 2:
                raise ConfigError("labels must be a list of at least two label names", key="labels")
            if len(set(map(str, self.labels))) != len(self.labels):
                raise ConfigError("labels must not repeat", key="labels")


def label_index(value, labels: list[str], source, line) -> int:
    """A record's label as an index into `labels`: a name from the set, or an in-range integer index."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        if str(int(value)) in labels:
            return labels.index(str(int(value)))
        if 0 <= int(value) < len(labels):
            return int(value)
    elif str(value) in labels:
        return labels.index(str(value))
    raise DataError(f"label {value!r} is not in the declared label set {labels}", file=source, line=line,
                    key="label")


def infer_labels(records: list[dict], field: str) -> list[str]:
    values = {r[field] for r in records if field in r}
    if all(isinstance(v, (int, bool)) for v in values):
        return [str(v) for v in sorted(values)]
    return sorted(map(str, values))


def classification_metrics(labels: list[int], preds: list[int], num_labels: int) -> dict:
    """accuracy, macro_f1 and confusion_matrix (nested lists, rows = true class) via scikit-learn."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    classes = list(range(num_labels))
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, labels=classes, average="macro", zero_division=0)),
        "confusion_matrix": confusion_matrix(labels, preds, labels=classes).tolist(),
    }


def labelled_texts(run_cfg) -> tuple[list[str], tuple[list[str], list[int]], tuple[list[str], list[int]]]:
    """(label names, (train texts, label ids), (validation texts, label ids)) of a classify run config, for
    paths that need raw text rather than token ids (a classifier on frozen embeddings). A text pair is joined
    by a newline."""
    from ...data import require_fields
    from ...data.loading import load_records
    from ...data.readers import line_of

    cfg, data = run_cfg.task_config or ClassifyConfig(), run_cfg.data
    fields = [cfg.text_field, cfg.label_field] + ([cfg.text_pair_field] if cfg.text_pair_field else [])
    splits, labels = [], None
    for split, path in (("train", data.train), ("validation", data.validation)):
        if path is None:
            raise ConfigError("this path needs both a train and a validation file", key="data.validation")
        records, path = load_records(data, split)
        require_fields(records, fields, path)
        labels = labels or ([str(x) for x in cfg.labels] if cfg.labels else infer_labels(records, cfg.label_field))
        texts = [str(r[cfg.text_field]) + (f"\n{r[cfg.text_pair_field]}" if cfg.text_pair_field else "")
                 for r in records]
        ids = [label_index(r[cfg.label_field], labels, path, line_of(r, i)) for i, r in enumerate(records)]
        splits.append((texts, ids))
    return labels, splits[0], splits[1]


@TASKS.register("classify")
class ClassifyTask(BaseTask):
    """Text (or text-pair) classification with a sequence-classification model."""

    name = "classify"
    self_trains = True
    config_class = ClassifyConfig

    def __init__(self):
        self.cfg = ClassifyConfig()
        self.labels: list[str] = []
        self.pad_token_id = 0
        self.report: dict = {}
        self.pooling = "model"
        self.last_predictions: tuple[list[int], list[int]] = ([], [])
        """(gold, predicted) label indices of the latest evaluate(), for per-example intervals."""

    @classmethod
    def for_run(cls, run_cfg, tokenizer) -> "ClassifyTask":
        """The task set up as a finished run was trained (its labels, pooling and pad id), to score texts with its
        model: classify-eval and distillation's teachers. A run from before #24 records pooling "auto": its
        model's own pooling, as it was trained then."""
        task = cls()
        task.cfg = run_cfg.task_config or ClassifyConfig()
        task.pooling = task.cfg.pooling if task.cfg.pooling != "auto" else "model"
        task.labels = [str(x) for x in task.cfg.labels or []]
        task.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return task

    def configure_method(self, method_cfg, model):
        """Train and save the new head with the adapter: fill an empty `modules_to_save` with the head's name."""
        heads = [name for name in HEAD_MODULES if isinstance(getattr(model, name, None), nn.Module)]
        if heads and method_cfg.can_save_modules() and method_cfg.modules_to_save is None:
            return method_cfg.replace(modules_to_save=heads)
        return method_cfg

    def encode(self, records: list[dict], tokenizer, max_length: int, source=None, split: str = "train") -> list[dict]:
        """Records -> {"input_ids", ("token_type_ids"), "label"}; label errors name file and line. Rows cut at
        max_length are counted per split for the run's data report (`data_report()`)."""
        from ...data import require_fields
        from ...data.readers import line_of

        cfg = self.cfg
        fields = [cfg.text_field, cfg.label_field] + ([cfg.text_pair_field] if cfg.text_pair_field else [])
        require_fields(records, fields, source)
        labels = [label_index(r[cfg.label_field], self.labels, source, line_of(r, i)) for i, r in enumerate(records)]
        return self._tokenize(records, labels, tokenizer, max_length, split)

    def _tokenize(self, records: list[dict], labels: list[int], tokenizer, max_length: int, split: str) -> list[dict]:
        cfg = self.cfg
        texts = [str(r[cfg.text_field]) for r in records]
        pairs = [str(r[cfg.text_pair_field]) for r in records] if cfg.text_pair_field else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        full = tokenizer(texts, pairs)["input_ids"]  # untruncated lengths: how many rows lost their end
        self.report[split] = {"records": len(records), "examples": len(records), "dropped": 0,
                              "truncated": sum(len(ids) > max_length for ids in full)}
        out = []
        for i, label in enumerate(labels):
            ex = {"input_ids": enc["input_ids"][i], "label": label}
            if "token_type_ids" in enc:
                ex["token_type_ids"] = enc["token_type_ids"][i]
            out.append(ex)
        return out

    def encode_unlabeled(self, records: list[dict], tokenizer, run_cfg, source=None
                         ) -> tuple[list[dict], list[int | None]]:
        """Self-training's pool: (examples with label -1, hidden label ids or None). A record may carry a label
        (kept only to measure the pseudo-labels); one outside the task's label set is an error naming its file and
        line, raised before anything trains."""
        from ...data import require_fields
        from ...data.readers import line_of

        cfg = self.cfg
        require_fields(records, [cfg.text_field] + ([cfg.text_pair_field] if cfg.text_pair_field else []), source)
        hidden: list[int | None] = []
        for i, r in enumerate(records):
            value = r.get(cfg.label_field)
            if value is None or value == "":  # no label (an empty CSV cell): nothing to measure against
                hidden.append(None)
                continue
            try:
                hidden.append(label_index(value, self.labels, source, line_of(r, i)))
            except DataError as err:
                raise DataError(f"the unlabelled record carries label {value!r}, which the task does not declare "
                                f"(labels: {self.labels}); remove the labels, or declare it in task.labels",
                                file=err.file, line=err.line, key=cfg.label_field) from None
        return self._tokenize(records, [-1] * len(records), tokenizer, run_cfg.data.max_length, "unlabeled"), hidden

    def example_key(self, example: dict) -> tuple:
        """What the model sees of an example: self-training leaves pool records equal to a labelled one out."""
        return tuple(example["input_ids"]), tuple(example.get("token_type_ids", ()))

    def prepare(self, run_cfg, tokenizer) -> tuple[list, list]:
        from ...data.loading import load_records

        self.cfg = run_cfg.task_config or ClassifyConfig()
        data = run_cfg.data
        if data.train is None:
            raise ConfigError("classification needs training data", key="data.train")
        self.cfg = dataclasses.replace(self.cfg, pooling=resolve_pooling(self.cfg.pooling, run_cfg.model.name,
                                                                         run_cfg.model.kind))
        self.pooling = self.cfg.pooling
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        train_records, train_source = load_records(data, "train")
        self.labels = [str(x) for x in self.cfg.labels] if self.cfg.labels else infer_labels(
            train_records, self.cfg.label_field)
        # record the resolved label set, so the run's config.yaml says what each head output means
        self.cfg = dataclasses.replace(self.cfg, labels=list(self.labels))
        run_cfg.task_config = self.cfg
        expected = run_cfg.model.num_labels or 2
        if len(self.labels) != expected:
            raise ConfigError(f"the task has {len(self.labels)} labels {self.labels}, but the model head has "
                              f"{expected} outputs; set model.num_labels: {len(self.labels)}", key="model.num_labels")
        self.report = {}
        train = self.encode(train_records, tokenizer, data.max_length, train_source)
        if self.cfg.distill is not None:
            train += self._distill_examples(train_records, tokenizer, run_cfg)
        evals = []
        if data.validation is not None:
            records, source = load_records(data, "validation")
            evals = self.encode(records, tokenizer, data.max_length, source, "validation")
        return train, evals

    def _distill_examples(self, train_records: list[dict], tokenizer, run_cfg) -> list[dict]:
        """Word-span crops of the training texts with the teachers' probabilities under "soft" (and their argmax
        under "label", for the length grouping and the data report)."""
        settings = self.cfg.distill
        texts = [str(r[self.cfg.text_field]) for r in train_records]
        crops, probs = distill_targets(type(self), settings, texts, self.labels, run_cfg.output_dir)
        examples = self._tokenize([{self.cfg.text_field: c} for c in crops], probs.argmax(-1).tolist(), tokenizer,
                                  run_cfg.data.max_length, "distill")
        for example, row in zip(examples, probs.tolist()):
            example["soft"] = row
        return examples

    def data_report(self) -> dict:
        """Records read and truncated per split (classification drops none; see train/data_report.py)."""
        return dict(self.report)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Right-padded rows; a decoder's classifier finds the last real token by the pad id."""
        ids, mask = pad([ex["input_ids"] for ex in examples], self.pad_token_id)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([ex["label"] for ex in examples])}
        if any("soft" in ex for ex in examples):  # distillation: crops train on the teachers' probabilities
            width = len(next(ex["soft"] for ex in examples if "soft" in ex))
            batch["soft_rows"] = torch.tensor(["soft" in ex for ex in examples])
            batch["soft_targets"] = torch.tensor([ex.get("soft", [0.0] * width) for ex in examples])
        if "token_type_ids" in examples[0]:
            types = [ex.get("token_type_ids") or [0] * len(ex["input_ids"]) for ex in examples]
            batch["token_type_ids"] = pad(types, 0)[0]
        return batch

    def num_targets(self, batch: dict) -> int:
        return int(batch["labels"].shape[0])

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        if self.pooling in ("mean", "cls"):
            return pooled_logits(model, inputs, self.pooling).float()
        return model(**inputs).logits.float()

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        logits = self.logits(model, batch)
        soft = batch.get("soft_rows")
        if soft is None:
            return F.cross_entropy(logits, batch["labels"], reduction="sum",
                                   label_smoothing=float(self.cfg.label_smoothing))
        gold = ~soft
        loss = soft_cross_entropy_sum(logits[soft], batch["soft_targets"][soft], float(self.cfg.distill.temperature))
        if gold.any():
            loss = loss + F.cross_entropy(logits[gold], batch["labels"][gold], reduction="sum",
                                          label_smoothing=float(self.cfg.label_smoothing))
        return loss

    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        total, labels, preds = 0.0, [], []
        for batch in batches:
            with batch_context(model, batch):
                logits = self.logits(model, batch)
            total += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
            labels += batch["labels"].tolist()
            preds += logits.argmax(-1).tolist()
        self.last_predictions = (labels, preds)
        if not labels:
            return {}
        num = max(len(self.labels), int(logits.shape[-1]))
        return {"eval_loss": total / len(labels), **classification_metrics(labels, preds, num)}
