"""Evaluation verbs for encoders and classifiers (the generation harness is `tuneforge eval`):
`tuneforge retrieval-eval`, `tuneforge sts-eval`, `tuneforge classify-eval`. Thin calls of the functions in
tuneforge.eval.retrieval / .sts / .classification. Each metric comes with a bootstrap 95% interval; a repeated
--model (or several run directories) reports the mean over those runs (seeds), and --baseline the paired
interval of the difference."""
from __future__ import annotations

import json
from typing import List, Optional

import typer

RESAMPLES = typer.Option(1000, "--resamples", help="Bootstrap resamples for the 95% intervals.")
SEED = typer.Option(0, "--bootstrap-seed", help="Seed of the bootstrap draw.")


def _print(metrics: dict, as_json: bool) -> None:
    from tuneforge.eval.bootstrap import report_lines

    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    for line in report_lines(metrics):
        typer.echo(line)
    shown = set(metrics["intervals"]) | {"intervals", "runs", "std", "baseline", "difference", "bootstrap"}
    for key, value in metrics.items():
        if key in shown:
            continue
        if key == "confusion_matrix":
            typer.echo("confusion_matrix (rows = true label, columns = predicted):")
            for row in value:
                typer.echo("  " + " ".join(f"{v:6d}" for v in row))
        else:
            typer.echo(f"{key:18s} {value:.4f}" if isinstance(value, float) else f"{key:18s} {value}")


def retrieval_eval_cmd(
    model: List[str] = typer.Option(..., "--model", help="Encoder: alias, model / adapter / run directory. "
                                    "Repeat for the seeds of one recipe (their mean is reported)."),
    data: str = typer.Option(..., "--data", help="BEIR-style directory (corpus.jsonl, queries_*, qrels_*)."),
    split: str = typer.Option("validation", "--split", help="Which queries_/qrels_ split to score."),
    baseline: Optional[List[str]] = typer.Option(None, "--baseline", help="Encoder(s) to compare with: adds the "
                                                 "paired bootstrap interval of the difference (repeatable)."),
    index: Optional[List[str]] = typer.Option(None, "--index", help="Keep (or reuse) the corpus index of the "
                                              "first --model here; repeat for the next models, in order."),
    baseline_index: Optional[List[str]] = typer.Option(None, "--baseline-index", help="Keep (or reuse) the "
                                                       "corpus index of the first --baseline here (repeatable)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Texts per encoder forward pass."),
    max_docs: Optional[int] = typer.Option(None, "--max-docs", help="Rank only the judged documents plus a seeded "
                                           "sample of the others, this many in all (a quick, optimistic check)."),
    resamples: int = RESAMPLES,
    bootstrap_seed: int = SEED,
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """nDCG@10, MRR@10 and Recall@100 of ranking the whole corpus for every query (trec_eval), with intervals."""
    from tuneforge.eval.retrieval import evaluate_retrieval

    _print(evaluate_retrieval(model if len(model) > 1 else model[0], data, split, index_dir=index or None,
                              batch_size=batch_size, max_docs=max_docs, baseline=baseline or None,
                              resamples=resamples, seed=bootstrap_seed, baseline_index_dir=baseline_index or None),
           as_json)


def sts_eval_cmd(
    model: List[str] = typer.Option(..., "--model", help="Encoder: alias, model / adapter / run directory. "
                                    "Repeat for the seeds of one recipe (their mean is reported)."),
    data: str = typer.Option(..., "--data", help=".jsonl of {sentence1, sentence2, score}."),
    baseline: Optional[List[str]] = typer.Option(None, "--baseline", help="Encoder(s) to compare with: adds the "
                                                 "paired bootstrap interval of the difference (repeatable)."),
    resamples: int = RESAMPLES,
    bootstrap_seed: int = SEED,
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Spearman (and Pearson) correlation of embedding cosine with the gold similarity scores, with intervals."""
    from tuneforge.eval.sts import evaluate_sts

    _print(evaluate_sts(model if len(model) > 1 else model[0], data, baseline=baseline or None,
                        resamples=resamples, seed=bootstrap_seed), as_json)


def classify_eval_cmd(
    run_dirs: List[str] = typer.Argument(..., help="Output directory of a `tuneforge train` run with task "
                                         "classify or image_classify; several (the seeds of one recipe) report "
                                         "their mean."),
    data: Optional[str] = typer.Option(None, "--data", help="Labelled file, or an image folder (default: the run's "
                                       "validation data)."),
    baseline: Optional[List[str]] = typer.Option(None, "--baseline", help="Run directory to compare with: adds "
                                                 "the paired bootstrap interval of the difference. Repeat the option "
                                                 "for several (--baseline A --baseline B): a path after A alone is "
                                                 "read as one more run to score."),
    resamples: int = RESAMPLES,
    bootstrap_seed: int = SEED,
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Accuracy, macro-F1 (with intervals) and the confusion matrix of a trained classifier."""
    from tuneforge.eval.classification import evaluate_classifier

    _print(evaluate_classifier(run_dirs if len(run_dirs) > 1 else run_dirs[0], data, baseline=baseline or None,
                               resamples=resamples, seed=bootstrap_seed), as_json)


def register(app: typer.Typer) -> None:
    app.command("retrieval-eval")(retrieval_eval_cmd)
    app.command("sts-eval")(sts_eval_cmd)
    app.command("classify-eval")(classify_eval_cmd)
