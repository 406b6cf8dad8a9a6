"""Embedding fine-tuning for semantic search (the losses and their formulas are in embed_losses.py).

Two kinds of training data, chosen by `task.loss`:
- `mnrl` (in-batch negatives) on (anchor, positive) pairs: a .jsonl of {anchor, positive} records, or a
  BEIR qrels file (`qrels_train.jsonl`, with `queries_train.jsonl` and `corpus.jsonl` beside it), whose
  relevant (query, document) pairs are used.
- `cosent`, `angle` or `cosine` on scored sentence pairs ({sentence1, sentence2, score}, STS-B style; score /
  score_max is the target similarity).

The model is a bare encoder (`model.kind: encoder`); a sentence embedding is the mean of its token vectors (or
the [CLS] vector), compared by cosine. After training, `export` writes `sentence-transformer/` beside the
adapter: the adapter merged into the weights, in the layout `SentenceTransformer(dir)` loads, giving the same
embeddings (methods that cannot merge keep only the adapter, which `tuneforge index` and the evaluations load).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Literal, Union

import torch
from torch import nn

from ...data import read_records, require_fields, select_records
from ...data.beir import pairs_from_qrels
from ...data.padding import pad
from ...data.readers import line_of
from ...errors import ConfigError, DataError
from ...index.encoder import export_sentence_transformer
from ...index.mine import mine_hard_negatives
from ...io.model_card import read_facts
from ...io.text_files import write_jsonl
from ...registry import TASKS
from .base import BaseTask, batch_context
from .embed_losses import cosent, cosine_regression, multiple_negatives_ranking, pool


@dataclasses.dataclass
class EmbedConfig:
    loss: Literal["mnrl", "cosent", "angle", "cosine"] = "mnrl"
    """mnrl: in-batch negatives on (anchor, positive) pairs; cosent / angle (AnglE: CoSENT on an angle similarity) /
    cosine (MSE of the cosine against score / score_max): on pairs with a similarity score."""

    scale: float = 20.0
    """Similarity scale s (an inverse temperature) of the mnrl, cosent and angle losses."""

    pooling: Literal["mean", "cls"] = "mean"
    """How token vectors become one sentence vector (mean over real tokens, or the first token)."""

    anchor_field: str = "anchor"
    """mnrl records: the query / anchor text field."""

    positive_field: str = "positive"
    """mnrl records: the relevant / positive text field."""

    negative_field: str = "negative"
    """mnrl records, optional: hard negative text(s) for the anchor, one string or a list (the same count on every
    record; `tuneforge mine-negatives` writes them). Each becomes one more column of the similarity matrix."""

    sentence1_field: str = "sentence1"
    """Scored records: first sentence field."""

    sentence2_field: str = "sentence2"
    """Scored records: second sentence field."""

    score_field: str = "score"
    """Scored records: gold similarity field."""

    score_max: float = 5.0
    """Gold scores are divided by this to lie in [0, 1] (5 for STS-B)."""

    hard_negatives: int = 0
    """mnrl on a BEIR qrels file: mine this many hard negatives per (query, document) pair before training, from
    the starting model's ranking of the corpus (tuneforge.index.mine; saved in the run directory and reused on
    resume). 0: in-batch negatives only. For other data, mine with `tuneforge mine-negatives` and train on its
    file."""

    negatives_skip_top: int = 5
    """Mining: ranks left out at the top (likely relevant but unjudged documents)."""

    negatives_depth: int = 50
    """Mining: negatives are drawn from ranks negatives_skip_top+1 .. negatives_depth."""

    negatives_index: Union[str, None] = None
    """Mining: a `tuneforge index build` directory of the same corpus and model to reuse (built there when
    absent, e.g. by `tuneforge retrieval-eval --index`); None encodes the corpus in a temporary index."""

    query_max_length: Union[int, None] = 64
    """Token limit for anchors / queries (documents use data.max_length); None: data.max_length."""

    def validate(self) -> None:
        if self.scale <= 0:
            raise ConfigError("scale must be positive", key="scale")
        if self.score_max <= 0:
            raise ConfigError("score_max must be positive", key="score_max")
        if self.query_max_length is not None and self.query_max_length < 2:
            raise ConfigError("query_max_length must be at least 2", key="query_max_length")
        if self.hard_negatives < 0:
            raise ConfigError("hard_negatives must not be negative", key="hard_negatives")
        if self.hard_negatives and self.loss != "mnrl":
            raise ConfigError("hard_negatives applies to loss mnrl only", key="hard_negatives")
        if not 0 <= self.negatives_skip_top < self.negatives_depth:
            raise ConfigError("need 0 <= negatives_skip_top < negatives_depth", key="negatives_depth")


def _cut_rows(tokenizer, firsts: list[str], seconds: list[str], first_len: int, second_len: int) -> int:
    """How many pairs have a side longer than its limit (untruncated lengths, special tokens included)."""
    a = tokenizer(firsts)["input_ids"]
    b = tokenizer(seconds)["input_ids"]
    return sum(len(x) > first_len or len(y) > second_len for x, y in zip(a, b))


@TASKS.register("embed")
class EmbedTask(BaseTask):
    name = "embed"
    config_class = EmbedConfig

    def __init__(self):
        self.cfg = EmbedConfig()
        self.pad_token_id = 0
        self.report: dict[str, dict] = {}

    @property
    def scored(self) -> bool:
        return self.cfg.loss in ("cosent", "angle", "cosine")

    def read(self, path) -> list[dict]:
        """Records of a split; a BEIR qrels file becomes (query, relevant document) pairs."""
        records = read_records(path)
        if not self.scored and {"query_id", "doc_id"} <= set(records[0]):
            return pairs_from_qrels(path)
        return records

    def encode(self, records: list[dict], tokenizer, max_length: int, source, split: str = "train") -> list[dict]:
        c = self.cfg
        first_len = c.query_max_length or max_length
        if self.scored:
            require_fields(records, [c.sentence1_field, c.sentence2_field, c.score_field], source)
            first, second = c.sentence1_field, c.sentence2_field
            first_len = max_length
        else:
            require_fields(records, [c.anchor_field, c.positive_field], source)
            first, second = c.anchor_field, c.positive_field
        firsts, seconds = [str(r[first]) for r in records], [str(r[second]) for r in records]
        a = tokenizer(firsts, truncation=True, max_length=first_len)["input_ids"]
        b = tokenizer(seconds, truncation=True, max_length=max_length)["input_ids"]
        self.report[split] = {"records": len(records), "examples": len(records), "dropped": 0,
                              "truncated": _cut_rows(tokenizer, firsts, seconds, first_len, max_length)}
        groups: dict[str, int] = {}
        negatives = self._encode_negatives(records, tokenizer, max_length, source, groups) if (
            not self.scored and c.negative_field in records[0]) else None
        out = []
        for i, rec in enumerate(records):
            ex = {"a": a[i], "b": b[i]}
            if negatives is not None:
                ex["negatives"], ex["negative_groups"] = negatives[i]
            if self.scored:
                try:
                    ex["score"] = float(rec[c.score_field]) / c.score_max
                except (TypeError, ValueError):
                    raise DataError(f"score must be a number, got {rec[c.score_field]!r}", file=source,
                                    line=line_of(rec, i), key=c.score_field) from None
            else:
                key = str(rec.get("positive_id", rec[second]))
                ex["group"] = groups.setdefault(key, len(groups))
            out.append(ex)
        return out

    def _encode_negatives(self, records, tokenizer, max_length, source, groups) -> list[tuple[list, list]]:
        """Per record: (token ids of each negative, its group id: the same document shares a group with a
        positive, so it is never a negative for the row it is relevant to)."""
        field, per_row = self.cfg.negative_field, []
        for i, rec in enumerate(records):
            value = rec.get(field)
            texts = [value] if isinstance(value, str) else value
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
                raise DataError(f"{field} must be a non-empty text or list of texts", file=source,
                                line=line_of(rec, i), key=field)
            if per_row and len(texts) != len(per_row[0]):
                raise DataError(f"every record needs the same number of {field} texts: {len(per_row[0])} on the "
                                f"first, {len(texts)} here", file=source, line=line_of(rec, i), key=field)
            per_row.append(texts)
        flat = tokenizer([t for texts in per_row for t in texts], truncation=True, max_length=max_length)["input_ids"]
        out, k = [], len(per_row[0])
        for i, (rec, texts) in enumerate(zip(records, per_row)):
            ids = rec.get("negative_ids")  # mined files name each document; else its text is its identity
            keys = [str(x) for x in ids] if ids and len(ids) == k else texts
            out.append((flat[i * k:(i + 1) * k], [groups.setdefault(key, len(groups)) for key in keys]))
        return out

    def _training_records(self, run_cfg) -> list[dict]:
        """The train split's records; with hard_negatives, the mined triplets (mined once per run directory)."""
        from pathlib import Path

        c, train = self.cfg, Path(run_cfg.data.train)
        if not c.hard_negatives:
            return self.read(train)
        if not (train.name.startswith("qrels_") and (train.parent / "corpus.jsonl").exists()):
            raise ConfigError("hard_negatives mines from a BEIR qrels file (qrels_<split>.jsonl beside corpus.jsonl); "
                              "for other data run `tuneforge mine-negatives` and train on its file",
                              key="data.train")
        mined = Path(run_cfg.output_dir) / (f"hard_negatives-{c.hard_negatives}-ranks{c.negatives_skip_top + 1}-"
                                            f"{c.negatives_depth}-seed{run_cfg.train.seed}.jsonl")
        if not mined.exists():
            split = train.stem.split("_", 1)[1]
            records = mine_hard_negatives(run_cfg.model.name, train.parent, split, c.hard_negatives,
                                          c.negatives_skip_top, c.negatives_depth, index_dir=c.negatives_index,
                                          seed=run_cfg.train.seed)
            write_jsonl(mined, records)
            print(f"mined {c.hard_negatives} hard negative(s) for each of {len(records):,} pairs -> {mined}")
        return read_records(mined)

    def prepare(self, run_cfg, tokenizer) -> tuple[list, list]:
        self.cfg = run_cfg.task_config or EmbedConfig()
        data = run_cfg.data
        if data.train is None:
            raise ConfigError("embedding fine-tuning needs training data", key="data.train")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.report = {}
        records = select_records(self._training_records(run_cfg), data.limit_train, data.shuffle_seed)
        train = self.encode(records, tokenizer, data.max_length, data.train)
        evals = []
        if data.validation is not None:
            records = select_records(self.read(data.validation), data.limit_eval, data.shuffle_seed)
            evals = self.encode(records, tokenizer, data.max_length, data.validation, "validation")
        return train, evals

    def data_report(self) -> dict:
        """Records read and pairs with a side cut at the length limit, per split (see train/data_report.py): a
        cut document may lose the sentence that made it relevant, which no loss figure shows."""
        return dict(self.report)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Anchors / first sentences as input_ids, positives / second sentences as pair_input_ids: two forwards,
        each padded to its own longest row (queries are much shorter than documents)."""
        ids, mask = pad([ex["a"] for ex in examples], self.pad_token_id)
        pair_ids, pair_mask = pad([ex["b"] for ex in examples], self.pad_token_id)
        batch = {"input_ids": ids, "attention_mask": mask, "pair_input_ids": pair_ids,
                 "pair_attention_mask": pair_mask, "num_tokens": mask.sum() + pair_mask.sum()}
        if "score" in examples[0]:
            batch["scores"] = torch.tensor([ex["score"] for ex in examples], dtype=torch.float32)
        else:
            batch["groups"] = torch.tensor([ex["group"] for ex in examples])
        if "negatives" in examples[0]:
            neg_ids, neg_mask = pad([n for ex in examples for n in ex["negatives"]], self.pad_token_id)
            batch.update(negative_input_ids=neg_ids, negative_attention_mask=neg_mask,
                         negative_groups=torch.tensor([g for ex in examples for g in ex["negative_groups"]]),
                         num_tokens=batch["num_tokens"] + neg_mask.sum())
        return batch

    def num_targets(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0])

    def example_length(self, example: dict) -> int:
        """Tokens of every text of a row (anchor, document, hard negatives): the forwards it costs."""
        return len(example["a"]) + len(example["b"]) + sum(len(n) for n in example.get("negatives", ()))

    def embed(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        return pool(hidden, mask, self.cfg.pooling)

    def embed_pair(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(anchors, documents): documents are the positives, then any hard negatives (row-major)."""
        a = self.embed(model, batch["input_ids"], batch["attention_mask"])
        b = self.embed(model, batch["pair_input_ids"], batch["pair_attention_mask"])
        if "negative_input_ids" in batch:
            b = torch.cat([b, self.embed(model, batch["negative_input_ids"], batch["negative_attention_mask"])])
        return a, b

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor, batch: dict) -> torch.Tensor:
        if self.cfg.loss == "mnrl":
            groups = batch.get("groups")
            doc_groups = torch.cat([groups, batch["negative_groups"]]) if "negative_groups" in batch else None
            return multiple_negatives_ranking(a, b, self.cfg.scale, groups, doc_groups)
        if self.cfg.loss in ("cosent", "angle"):
            return cosent(a, b, batch["scores"], self.cfg.scale, "angle" if self.cfg.loss == "angle" else "cosine")
        return cosine_regression(a, b, batch["scores"])

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return self.pair_loss(*self.embed_pair(model, batch), batch)

    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        """eval_loss per row; mnrl: in-batch top-1 accuracy; scored: Spearman of cosine against gold score."""
        from scipy.stats import spearmanr

        total, rows, hits, cosines, gold = 0.0, 0, 0, [], []
        for batch in batches:
            with batch_context(model, batch):
                a, b = self.embed_pair(model, batch)
            total += float(self.pair_loss(a, b, batch))
            rows += a.shape[0]
            if self.scored:
                cosines += torch.nn.functional.cosine_similarity(a, b, dim=-1).tolist()
                gold += batch["scores"].tolist()
            else:
                sims = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T
                hits += int((sims.argmax(-1) == torch.arange(a.shape[0], device=a.device)).sum())
        if rows == 0:
            return {}
        metrics = {"eval_loss": total / rows}
        if self.scored:
            metrics["spearman"] = float(spearmanr(cosines, gold).statistic) if len(gold) > 1 else float("nan")
        else:
            metrics["in_batch_accuracy"] = hits / rows
        return metrics

    def export(self, model: nn.Module, tokenizer, run_cfg, output_dir):
        """Write `sentence-transformer/` (adapter merged) when every adapter can merge; else None."""
        return export_sentence_transformer(model, tokenizer, output_dir, pooling=self.cfg.pooling,
                                           max_seq_length=run_cfg.data.max_length,
                                           card=read_facts(Path(output_dir) / "adapter"))
