"""Evaluation verbs for encoders and classifiers (the generation harness is `tuneforge eval`):
`tuneforge retrieval-eval`, `tuneforge sts-eval`, `tuneforge classify-eval`. Thin calls of the functions in
tuneforge.eval.retrieval / .sts / .classification."""
from __future__ import annotations

import json
from typing import Optional

import typer


def _print(metrics: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    for key, value in metrics.items():
        if key == "confusion_matrix":
            typer.echo("confusion_matrix (rows = true label, columns = predicted):")
            for row in value:
                typer.echo("  " + " ".join(f"{v:6d}" for v in row))
        else:
            typer.echo(f"{key:18s} {value:.4f}" if isinstance(value, float) else f"{key:18s} {value}")


def retrieval_eval_cmd(
    model: str = typer.Option(..., "--model", help="Encoder: alias, model / adapter / run directory."),
    data: str = typer.Option(..., "--data", help="BEIR-style directory (corpus.jsonl, queries_*, qrels_*)."),
    split: str = typer.Option("validation", "--split", help="Which queries_/qrels_ split to score."),
    index: Optional[str] = typer.Option(None, "--index", help="Keep (or reuse) the corpus index here."),
    batch_size: int = typer.Option(64, "--batch-size", help="Texts per encoder forward pass."),
    max_docs: Optional[int] = typer.Option(None, "--max-docs", help="Rank only the judged documents plus a seeded "
                                           "sample of the others, this many in all (a quick, optimistic check)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """nDCG@10, MRR@10 and Recall@100 of ranking the whole corpus for every query (trec_eval)."""
    from tuneforge.eval.retrieval import evaluate_retrieval

    _print(evaluate_retrieval(model, data, split, index_dir=index, batch_size=batch_size, max_docs=max_docs), as_json)


def sts_eval_cmd(
    model: str = typer.Option(..., "--model", help="Encoder: alias, model / adapter / run directory."),
    data: str = typer.Option(..., "--data", help=".jsonl of {sentence1, sentence2, score}."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Spearman (and Pearson) correlation of embedding cosine with the gold similarity scores."""
    from tuneforge.eval.sts import evaluate_sts

    _print(evaluate_sts(model, data), as_json)


def classify_eval_cmd(
    run_dir: str = typer.Argument(..., help="Output directory of a `tuneforge train` run with task classify or "
                                  "image_classify."),
    data: Optional[str] = typer.Option(None, "--data", help="Labelled file, or an image folder (default: the run's "
                                       "validation data)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Accuracy, macro-F1 and the confusion matrix of a trained classifier."""
    from tuneforge.eval.classification import evaluate_classifier

    _print(evaluate_classifier(run_dir, data), as_json)


def register(app: typer.Typer) -> None:
    app.command("retrieval-eval")(retrieval_eval_cmd)
    app.command("sts-eval")(sts_eval_cmd)
    app.command("classify-eval")(classify_eval_cmd)
