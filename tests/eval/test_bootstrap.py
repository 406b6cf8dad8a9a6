"""Bootstrap intervals (eval/bootstrap.py): each statistic against a direct computation on the same resamples
(scipy, scikit-learn, sacrebleu), and the properties a reader relies on: the interval holds the point estimate,
narrows as examples grow, a paired interval of a system with itself is exactly [0, 0], and several runs (seeds)
combine as their mean."""
import numpy as np
import pytest

from tuneforge.eval import bootstrap as b


def test_same_seed_same_draw_and_bad_sizes_are_errors():
    assert np.array_equal(b.bootstrap_indices(20, 50, seed=3), b.bootstrap_indices(20, 50, seed=3))
    assert not np.array_equal(b.bootstrap_indices(20, 50, seed=3), b.bootstrap_indices(20, 50, seed=4))
    with pytest.raises(ValueError):
        b.bootstrap_indices(0)
    with pytest.raises(ValueError):
        b.bootstrap_indices(5, 0)


def test_accuracy_interval_holds_the_point_and_narrows_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 1600):
        hits = (rng.random(n) < 0.8).astype(float)
        s = b.summary(b.mean_of(hits), n)
        assert s["value"] == pytest.approx(hits.mean())
        assert s["low"] <= s["value"] <= s["high"]
        widths.append(s["high"] - s["low"])
    # the standard error shrinks as 1/sqrt(n): 16x the examples -> about a quarter of the width
    assert widths[1] < widths[0] / 2


def test_mean_interval_matches_the_normal_approximation_for_a_large_sample():
    """For a mean of n = 2,000 Bernoulli(0.7) draws the percentile interval is close to mean +- 1.96 se; with 2,000
    resamples the percentiles themselves vary by about se/10, so 0.2 se is a safe margin."""
    rng = np.random.default_rng(1)
    hits = (rng.random(2000) < 0.7).astype(float)
    se = hits.std() / np.sqrt(hits.size)
    low, high = b.interval(b.mean_of(hits), hits.size, resamples=2000)
    assert low == pytest.approx(hits.mean() - 1.96 * se, abs=0.2 * se)
    assert high == pytest.approx(hits.mean() + 1.96 * se, abs=0.2 * se)


def test_paired_interval_of_identical_systems_is_zero():
    rng = np.random.default_rng(2)
    x, y = rng.random(300), rng.random(300)
    for statistic in (b.mean_of(x), b.spearman_of(x, y), b.macro_f1_of((x > 0.5).astype(int),
                                                                       (y > 0.5).astype(int), 2)):
        assert b.paired_interval(statistic, statistic, 300) == (0.0, 0.0)


def test_paired_interval_is_narrower_than_unpaired_when_examples_share_difficulty():
    rng = np.random.default_rng(3)
    difficulty = rng.random(500)
    a = (difficulty < 0.85).astype(float)  # system a gets right every example b gets right, and some more
    c = (difficulty < 0.80).astype(float)
    d = b.paired_summary(b.mean_of(a), b.mean_of(c), 500)
    assert d["value"] == pytest.approx(a.mean() - c.mean())
    assert 0 < d["low"] <= d["value"] <= d["high"]
    low_a, high_a = b.interval(b.mean_of(a), 500)
    assert d["high"] - d["low"] < high_a - low_a


def test_spearman_and_pearson_equal_scipy_on_each_resample():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(4)
    x = rng.random(60)
    y = np.round(x + rng.random(60), 1)  # rounded: ties, which spearmanr ranks by their average
    idx = b.bootstrap_indices(60, 25, seed=0)
    assert np.allclose(b.spearman_of(x, y)(idx), [spearmanr(x[r], y[r]).statistic for r in idx])
    assert np.allclose(b.pearson_of(x, y)(idx), [pearsonr(x[r], y[r]).statistic for r in idx])


def test_macro_f1_equals_scikit_learn_on_each_resample():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(5)
    gold, pred = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    idx = b.bootstrap_indices(40, 25, seed=0)
    expected = [f1_score(gold[r], pred[r], labels=[0, 1, 2], average="macro", zero_division=0) for r in idx]
    assert np.allclose(b.macro_f1_of(gold, pred, 3)(idx), expected)


@pytest.mark.parametrize("name", ["bleu", "chrf"])
def test_corpus_bleu_and_chrf_are_recomputed_per_resample(name):
    """Summing sentence statistics over a resample equals sacrebleu's corpus score of the resampled corpus."""
    from sacrebleu.metrics import BLEU, CHRF

    from tuneforge.eval.metrics import bleu, chrf

    preds = ["the cat sat on the mat", "a dog runs in the park", "hello there world", "the quick brown fox"]
    refs = [["the cat is on the mat"], ["a dog is running in a park", "the dog runs"], ["hello world there"],
            ["a quick brown fox jumps"]]
    metric, direct = (BLEU(), bleu) if name == "bleu" else (CHRF(), chrf)
    statistic = b.sacrebleu_of(metric, preds, refs)
    assert b.point(statistic, 4) == pytest.approx(direct(preds, refs)[0])
    idx = b.bootstrap_indices(4, 10, seed=1)
    expected = [direct([preds[i] for i in r], [refs[i] for i in r])[0] for r in idx]
    assert np.allclose(statistic(idx), expected)


def test_ratio_is_the_token_weighted_mean():
    nll, tokens = np.array([2.0, 9.0, 1.0]), np.array([1, 3, 1])
    idx = np.array([[0, 1, 1], [2, 2, 0]])
    assert np.allclose(b.ratio_of(nll, tokens)(idx), [20.0 / 7, 4.0 / 3])


def test_report_runs_means_over_seeds_and_pairs_against_a_baseline():
    rng = np.random.default_rng(6)
    runs = [{"accuracy": b.mean_of((rng.random(200) < p).astype(float))} for p in (0.8, 0.82, 0.84)]
    base = [{"accuracy": b.mean_of((rng.random(200) < 0.5).astype(float))}]
    report = b.report_runs(runs, 200, base, resamples=200)
    values = [r["accuracy"] for r in report["runs"]]
    assert report["accuracy"] == pytest.approx(np.mean(values))
    assert report["std"]["accuracy"] == pytest.approx(np.std(values, ddof=1))
    low, high = report["intervals"]["accuracy"]
    assert low <= report["accuracy"] <= high
    diff = report["difference"]["accuracy"]
    assert diff["value"] == pytest.approx(report["accuracy"] - report["baseline"]["accuracy"])
    assert diff["low"] > 0  # 0.82 vs 0.5 on 200 examples: far apart
    assert b.report_runs(runs[:1], 200, runs[:1], resamples=50)["difference"]["accuracy"] == {
        "value": 0.0, "low": 0.0, "high": 0.0}
    assert any("difference" in line for line in b.report_lines(report))


def test_mean_std_uses_the_sample_deviation():
    assert b.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert b.mean_std([5.0]) == (5.0, 0.0)
