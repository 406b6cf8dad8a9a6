"""Text and classification metrics, computed by the libraries the field reports with, so our numbers compare
with papers': ROUGE by Google's rouge-score (Lin 2004, https://aclanthology.org/W04-1013), BLEU and chrF by
sacrebleu (Post 2018, https://arxiv.org/abs/1804.08771, which fixes tokenisation so BLEU is comparable),
accuracy and macro F1 by scikit-learn.

All scores are on a 0-100 scale except loss (mean nats per reference token). Multi-reference:
ROUGE takes, per example, the best F1 over its references (as SciTLDR reports it); BLEU and chrF use every
reference as sacrebleu does (corpus-level n-gram statistics).
"""
from __future__ import annotations

import re
import string

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: list[str], references: list[list[str]], types=ROUGE_TYPES) -> tuple[dict, list[dict]]:
    """(corpus means x 100, per-example scores x 100) of ROUGE F1 (stemmed), best over each example's
    references."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    per_example = []
    for pred, refs in zip(predictions, references):
        scores = [scorer.score(ref, pred) for ref in refs]
        per_example.append({t: 100.0 * max(s[t].fmeasure for s in scores) for t in types})
    n = max(1, len(per_example))
    return {t: sum(e[t] for e in per_example) / n for t in types}, per_example


def _reference_streams(references: list[list[str]]) -> list[list[str]]:
    """sacrebleu wants one stream per reference position; examples with fewer references get "" (skipped)."""
    width = max((len(refs) for refs in references), default=0)
    return [[refs[i] if i < len(refs) else "" for refs in references] for i in range(width)]


def bleu(predictions: list[str], references: list[list[str]]) -> tuple[float, list[float]]:
    """(corpus BLEU, per-example sentence BLEU); sacrebleu defaults (13a tokeniser, detokenised input)."""
    from sacrebleu.metrics import BLEU

    corpus = BLEU().corpus_score(predictions, _reference_streams(references)).score
    sentence = BLEU(effective_order=True)
    return corpus, [sentence.sentence_score(p, refs).score for p, refs in zip(predictions, references)]


def chrf(predictions: list[str], references: list[list[str]]) -> tuple[float, list[float]]:
    """(corpus chrF, per-example chrF) with sacrebleu's defaults (character 6-grams, beta 2)."""
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    corpus = metric.corpus_score(predictions, _reference_streams(references)).score
    return corpus, [metric.sentence_score(p, refs).score for p, refs in zip(predictions, references)]


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation (Rajpurkar et al. 2016): lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(predictions: list[str], references: list[list[str]]) -> tuple[float, list[float]]:
    """Share (x 100) of predictions equal to any reference after SQuAD normalisation."""
    hits = [100.0 * any(normalize_answer(p) == normalize_answer(r) for r in refs)
            for p, refs in zip(predictions, references)]
    return sum(hits) / max(1, len(hits)), hits


def classification(gold: list[int], predicted: list[int], labels: list[int]) -> dict[str, float]:
    """Accuracy and macro F1 (x 100) over the given label set (scikit-learn)."""
    try:
        from sklearn.metrics import accuracy_score, f1_score
    except ImportError as err:
        from ..errors import TuneforgeError

        raise TuneforgeError("accuracy/f1 need scikit-learn: pip install scikit-learn") from err
    return {
        "accuracy": 100.0 * accuracy_score(gold, predicted),
        "f1": 100.0 * f1_score(gold, predicted, labels=labels, average="macro", zero_division=0),
    }


def text_metrics(names: list[str], predictions: list[str], references: list[list[str]]) -> tuple[dict, list[dict]]:
    """The requested generation metrics: (corpus scores, per-example scores)."""
    corpus: dict[str, float] = {}
    per_example: list[dict] = [{} for _ in predictions]
    wanted_rouge = [n for n in names if n in ROUGE_TYPES]
    if wanted_rouge:
        scores, rows = rouge(predictions, references, wanted_rouge)
        corpus.update(scores)
        for row, scores_row in zip(per_example, rows):
            row.update(scores_row)
    for name, fn in (("bleu", bleu), ("chrf", chrf), ("exact_match", exact_match)):
        if name in names:
            corpus[name], values = fn(predictions, references)
            for row, value in zip(per_example, values):
                row[name] = value
    return corpus, per_example
