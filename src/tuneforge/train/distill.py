"""Knowledge distillation into a classifier (`task.distill`): trained teacher runs label word-span crops of the
training records, and the student trains on the records (their gold labels) plus the crops (the teachers' mean
probabilities):

    crops     contiguous word spans of every training text, shorter than it (SST's phrases are such spans)
    targets   p(crop) = mean over teachers of softmax(z_teacher(crop) / T)   (weighted: teacher_weights)
    loss      gold records: cross-entropy (label smoothing as configured); crops: -sum_c p_c log softmax(z / T)_c T^2

Why crops and not only soft targets on the training records: teachers fit their own training records (the
soft targets there are nearly one-hot, so distilling on them alone teaches nothing new), while on spans they
never saw they pass on what they learnt about which words carry the sentiment. On SST-2 with
all-MiniLM-L6-v2 the crops are what helps: gold labels copied onto the same crops do not
(benchmarks/results/issue24/sst2_distill_screen_*).

Each teacher's labelling is cached in output_dir/distill_targets.pt with the settings that made it, so a resumed
run labels nothing again, the seeds of a `--seeds` run (output_dir/seed-N) share one labelling, and a teacher
added to others (or weighted anew, task.distill.teacher_weights) is the only one that labels; changed crops or
temperature, or a teacher trained again into its folder, label anew.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from ..errors import ConfigError
from .pseudo_labels import predict_proba

CACHE = "distill_targets.pt"


def word_crops(texts: list[str], per_record: int, min_words: int, seed: int) -> tuple[list[str], list[int]]:
    """(crops, index of the text each came from): `per_record` draws per text of a contiguous word span of
    min_words to len(words) - 1 words, uniform length then uniform start; a span equal to a text or to an earlier
    crop is dropped, so there may be fewer."""
    rng = random.Random(seed)
    seen, crops, sources = set(texts), [], []
    for index, text in enumerate(texts):
        words = text.split()
        if len(words) <= min_words:
            continue
        for _ in range(per_record):
            length = rng.randint(min_words, len(words) - 1)
            start = rng.randint(0, len(words) - length)
            span = " ".join(words[start:start + length])
            if span not in seen:
                seen.add(span)
                crops.append(span)
                sources.append(index)
    return crops, sources


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def teacher_probabilities(task_class, teachers: list[str], texts: list[str], labels: list[str], temperature: float,
                          batch_size: int, progress: bool = True) -> torch.Tensor:
    """(len(texts), classes): the mean over teacher runs of their softened class probabilities. Each teacher is
    loaded as it was trained (its own model, tokenizer, pooling and max_length) and must declare `labels`."""
    return weighted_mean([_one_teacher(task_class, folder, texts, labels, temperature, batch_size, progress)
                          for folder in teachers], None)


def weighted_mean(probs: list[torch.Tensor], weights: list[float] | None) -> torch.Tensor:
    """sum_t w_t p_t / sum_t w_t (equal weights when None)."""
    weights = [1.0] * len(probs) if weights is None else [float(w) for w in weights]
    return sum(w * p for w, p in zip(weights, probs)) / sum(weights)


def _one_teacher(task_class, folder: str, texts: list[str], labels: list[str], temperature: float, batch_size: int,
                 progress: bool) -> torch.Tensor:
    from ..config import load_config
    from ..io import load_adapter
    from ..models import load_model_for, load_tokenizer

    cfg = load_config(Path(folder) / "config.yaml")
    if cfg.task != "classify":
        raise ConfigError(f"teacher {folder} was trained with task {cfg.task!r}; a teacher must be a classify "
                          f"run", key="task.distill.teachers")
    teacher_labels = [str(x) for x in (cfg.task_config.labels or [])]
    if teacher_labels != list(labels):
        raise ConfigError(f"teacher {folder} has labels {teacher_labels}, the student {list(labels)}: the "
                          f"head outputs must mean the same classes in the same order",
                          key="task.distill.teachers")
    model = load_model_for(cfg.model)
    load_adapter(model, Path(folder) / "adapter", allow_pickle=cfg.model.allow_pickle)
    model.to(_device())
    tokenizer = load_tokenizer(cfg.model.name)
    task = task_class.for_run(cfg, tokenizer)
    examples = task._tokenize([{task.cfg.text_field: t} for t in texts], [-1] * len(texts), tokenizer,
                              cfg.data.max_length, "distill")
    return predict_proba(model, task, examples, batch_size, progress=progress, temperature=temperature,
                         desc=f"teacher {Path(folder).name} labels crops")


def _fingerprint(settings, texts: list[str]) -> str:
    """The settings every teacher's labelling depends on besides the teacher itself."""
    return json.dumps({"crops_per_record": settings.crops_per_record, "min_words": settings.min_words,
                       "seed": settings.seed, "temperature": settings.temperature, "texts": len(texts)},
                      sort_keys=True)


def _old_fingerprint(settings, texts: list[str]) -> str:
    """The key of a cache written before per-teacher labellings (session 19 and earlier): equal weights only."""
    return json.dumps({"teachers": [str(Path(t).resolve()) for t in settings.teachers],
                       "crops_per_record": settings.crops_per_record, "min_words": settings.min_words,
                       "seed": settings.seed, "temperature": settings.temperature, "texts": len(texts)},
                      sort_keys=True)


def distill_targets(task_class, settings, train_texts: list[str], labels: list[str], output_dir,
                    progress: bool = True) -> tuple[list[str], torch.Tensor]:
    """(crops, their target probabilities) for `settings` (a DistillConfig). Each teacher's labelling of the
    crops is cached on its own (output_dir, or a sibling seed's folder): a teacher labels once, whatever other
    teachers or weights a later run pairs it with; a teacher trained again into its folder labels anew."""
    crops, _ = word_crops(train_texts, settings.crops_per_record, settings.min_words, settings.seed)
    if not crops:
        raise ConfigError(f"no crops: every training text has {settings.min_words} words or fewer; lower "
                          f"min_words", key="task.distill.min_words")
    key = _fingerprint(settings, train_texts)
    cache = Path(output_dir) / CACHE if output_dir else None
    names = [str(Path(t).resolve()) for t in settings.teachers]
    stamps = {name: _stamp(t) for name, t in zip(names, settings.teachers)}
    found: dict[str, dict] = {}
    for candidate in _caches(cache):
        saved = torch.load(candidate, weights_only=True)
        if saved.get("crops") != crops:
            continue
        if "per_teacher" not in saved:  # an earlier run's cache: the equal-weight mean of these very teachers
            retrained = any(now is not None and now != then
                            for now, then in zip(stamps.values(), saved.get("stamps", list(stamps.values()))))
            if saved.get("key") == _old_fingerprint(settings, train_texts) and not retrained \
                    and settings.teacher_weights is None:
                if candidate != cache:
                    _write_cache(cache, saved)
                return crops, saved["probs"]
            continue
        if saved.get("key") != key:
            continue
        for name, entry in saved["per_teacher"].items():
            if name in stamps and name not in found and stamps[name] in (None, entry["stamp"]):
                found[name] = entry
    missing = [t for name, t in zip(names, settings.teachers) if name not in found]
    if missing:
        settings.check_teachers(missing)
    for name, folder in zip(names, settings.teachers):
        if name not in found:
            found[name] = {"stamp": stamps[name],
                           "probs": _one_teacher(task_class, folder, crops, labels, settings.temperature,
                                                 settings.batch_size, progress)}
    probs = weighted_mean([found[name]["probs"] for name in names], settings.teacher_weights)
    if cache is not None and (missing or not cache.is_file()):
        _write_cache(cache, {"key": key, "crops": crops, "probs": probs,
                             "per_teacher": {name: found[name] for name in names}})
    return crops, probs


def _stamp(folder) -> str | None:
    """Names, sizes and modification times of a teacher's adapter files (None when it is gone): a teacher trained
    again into the same folder makes a cached labelling stale; a teacher removed after labelling does not."""
    adapter = Path(folder) / "adapter"
    if not adapter.is_dir():
        return None
    return json.dumps(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in adapter.iterdir()
                             if f.is_file()))


def _caches(cache: Path | None) -> list[Path]:
    """Where labelled crops may already be: the run's own folder, then (a run of `--seeds`, output_dir/seed-N)
    its sibling seeds' folders, which label the same crops with the same teachers: a 3-seed run labels once."""
    if cache is None:
        return []
    found = [cache] if cache.is_file() else []
    if cache.parent.name.startswith("seed-"):
        found += [p for p in sorted(cache.parent.parent.glob(f"seed-*/{CACHE}")) if p != cache]
    return found


def _write_cache(cache: Path, saved: dict) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, cache.with_suffix(".tmp"))
    cache.with_suffix(".tmp").replace(cache)


def soft_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """sum over rows of -sum_c targets_c log softmax(logits / T)_c, times T^2 (so gradients keep their scale as
    T changes; Hinton et al. 2015). With one-hot targets and T = 1: the cross-entropy."""
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(targets.to(log_probs.dtype) * log_probs).sum() * temperature ** 2
