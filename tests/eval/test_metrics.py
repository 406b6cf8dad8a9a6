"""Metrics are the libraries' own numbers (rouge-score, sacrebleu, scikit-learn), with multi-reference handling."""
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tuneforge.eval.metrics import classification, exact_match, normalize_answer, rouge, text_metrics

PREDS = ["the cat sat on the mat", "a dog barked loudly"]
REFS = [["a cat sat on a mat", "the cat is on the mat"], ["the dog barked"]]


def test_rouge_takes_the_best_reference_per_example():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [max(scorer.score(r, p)["rougeL"].fmeasure for r in refs) for p, refs in zip(PREDS, REFS)]
    corpus, rows = rouge(PREDS, REFS, ["rougeL"])
    assert [r["rougeL"] for r in rows] == pytest.approx([100 * e for e in expected])
    assert corpus["rougeL"] == pytest.approx(50 * sum(expected))


def test_bleu_and_chrf_equal_sacrebleu_with_ragged_references():
    corpus, rows = text_metrics(["bleu", "chrf"], PREDS, REFS)
    streams = [["a cat sat on a mat", "the dog barked"], ["the cat is on the mat", ""]]
    assert corpus["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, streams).score)
    assert corpus["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDS, streams).score)
    single = sacrebleu.corpus_bleu(PREDS[1:], [["the dog barked"]]).score
    assert text_metrics(["bleu"], PREDS[1:], REFS[1:])[0]["bleu"] == pytest.approx(single)
    assert set(rows[0]) == {"bleu", "chrf"}


def test_exact_match_normalises_like_squad():
    assert normalize_answer("  The Answer, is: 42! ") == "answer is 42"
    score, hits = exact_match(["The answer is 42.", "no"], [["answer is 42"], ["yes", "maybe"]])
    assert hits == [100.0, 0.0] and score == 50.0


def test_classification_accuracy_and_macro_f1():
    from sklearn.metrics import f1_score

    gold, pred = [0, 0, 1, 1, 1], [0, 1, 1, 1, 0]
    scores = classification(gold, pred, [0, 1])
    assert scores["accuracy"] == pytest.approx(60.0)
    assert scores["f1"] == pytest.approx(100 * f1_score(gold, pred, average="macro"))
