"""One split of a DataConfig -> tokenized examples (or records): a single source, or a multi-task mixture whose
entries are each loaded the single-source way and then sampled (mixing.py holds the rates)."""
from __future__ import annotations

import itertools
import random

from ..errors import ConfigError
from .formatting import build_sft_examples
from .mixing import draw, mixing_rates, mixture_counts
from .sources import read_source


def load_examples(cfg, tokenizer, split: str = "train", *, stats: dict | None = None,
                  budget_rows: int | None = None) -> list[dict]:
    """Read, subset and tokenize one split ("train" or "validation") of a DataConfig; [] when the split has no
    source (no validation set). What a task's `prepare` calls. A streamed source (data.streaming) is read until
    its examples fill `budget_rows` rows of max_length (plus a margin for packing gaps), or limit_train records."""
    if cfg.mixture:
        return load_mixture(cfg, tokenizer, split, stats=stats)
    path = cfg.train if split == "train" else cfg.validation
    if path is None:
        if split == "train":
            raise ConfigError("no training data: set data.train to a data file or a Hugging Face dataset",
                              key="data.train")
        return []
    limit = cfg.limit_train if split == "train" else cfg.limit_eval
    records, source = read_source(path, **source_options(cfg, split), limit=limit, seed=cfg.shuffle_seed)
    budget = {}
    if cfg.streaming and split == "train" and limit is None and budget_rows is not None:
        budget = ({"budget_tokens": int(budget_rows * cfg.max_length * 1.1)} if cfg.packing
                  else {"budget_examples": budget_rows})
    return build_sft_examples(records, tokenizer, cfg, source=source, stats=stats, **budget)


def load_records(cfg, split: str = "train") -> tuple[list, object]:
    """(records, source) of one split of a DataConfig from any source `read_source` reads, as a list (its
    limit_train / limit_eval subset; a stream's first limit records, or all of it): for tasks that read
    records rather than SFT examples (classify)."""
    path = cfg.train if split == "train" else cfg.validation
    limit = cfg.limit_train if split == "train" else cfg.limit_eval
    records, source = read_source(path, **source_options(cfg, split), limit=limit, seed=cfg.shuffle_seed)
    return (records if isinstance(records, list) else list(itertools.islice(records, limit))), source


def source_options(cfg, split: str) -> dict:
    """read_source's keyword arguments for a split of a DataConfig."""
    return {"split": cfg.split if split == "train" else cfg.validation_split, "revision": cfg.revision,
            "streaming": cfg.streaming}


def load_mixture(cfg, tokenizer, split: str = "train", *, stats: dict | None = None) -> list[dict]:
    """Tokenized examples of a mixture config (cfg.mixture non-empty), each tagged with its `source`.

    train: the sampled epoch (order: data set by data set; the training loop shuffles). validation: every
    entry's validation examples, concatenated. `stats` receives per-source sizes and counts, and the records read,
    dropped and truncated over all data sets (`kept`: examples left before sampling)."""
    per_source, counted = [], {"records": 0, "dropped": 0, "truncated": 0}
    for source in cfg.mixture:
        source_stats: dict = {}
        examples = load_examples(cfg.for_source(source), tokenizer, split, stats=source_stats)
        per_source.append([dict(ex, source=source.name) for ex in examples])
        for key in counted:
            counted[key] += source_stats.get(key, 0)
    sizes = [len(examples) for examples in per_source]
    if stats is not None:  # what reading cost: records dropped or cut in the data sets themselves
        stats.update(counted, kept=sum(sizes))
    if split != "train":
        out = [ex for examples in per_source for ex in examples]
        if stats is not None:
            stats.update(sources={s.name: n for s, n in zip(cfg.mixture, sizes)}, examples=len(out))
        return out
    rates = mixing_rates(sizes, cfg.mixing, weights=[s.weight for s in cfg.mixture],
                         temperature=cfg.mixing_temperature, cap=cfg.mixing_cap)
    total = cfg.mixture_size if cfg.mixture_size is not None else sum(sizes)
    counts = mixture_counts(rates, total)
    rng = random.Random(cfg.shuffle_seed)
    out = []
    for examples, count in zip(per_source, counts):
        out.extend(draw(examples, count, rng))
    if stats is not None:
        stats.update(sources={s.name: n for s, n in zip(cfg.mixture, sizes)},
                     rates={s.name: r for s, r in zip(cfg.mixture, rates)},
                     counts={s.name: c for s, c in zip(cfg.mixture, counts)}, examples=len(out))
    return out
