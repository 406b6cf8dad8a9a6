"""`tuneforge index build|add` and `tuneforge search`: a persisted faiss index over a corpus, and queries
against it. Thin calls of tuneforge.index.build_index / add_to_index / search."""
from __future__ import annotations

import typer

index_app = typer.Typer(help="Build or extend a vector index of a corpus for semantic search.", no_args_is_help=True)


@index_app.command("build")
def build_cmd(
    model: str = typer.Option(..., "--model", help="Encoder: packaged alias, model / sentence-transformers dir, "
                              "adapter dir or a `tuneforge train` output dir."),
    corpus: str = typer.Option(..., "--corpus", help="Documents: .jsonl of {doc_id, text, title?}."),
    out: str = typer.Option(..., "--out", help="Index directory to write (replaced only once complete)."),
    kind: str = typer.Option("flat", "--kind", help="flat (exact) or hnsw (approximate)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Texts per encoder forward pass."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Also load an encoder stored as pickles (pytorch_model.bin, adapter_model.bin): "
        "they can run code."),
) -> None:
    """Encode every document and write a new index."""
    from tuneforge.index import build_index

    index = build_index(model, corpus, out, kind=kind, batch_size=batch_size, allow_pickle=allow_pickle)
    typer.echo(f"indexed {len(index):,} documents ({index.dim}-d, {kind}) with {index.meta['model']} -> {out}")


@index_app.command("add")
def add_cmd(
    index: str = typer.Argument(..., help="Index directory made by `tuneforge index build`."),
    corpus: str = typer.Option(..., "--corpus", help="New documents: .jsonl of {doc_id, text, title?}."),
    batch_size: int = typer.Option(64, "--batch-size", help="Texts per encoder forward pass."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Also load an encoder stored as pickles (pytorch_model.bin, adapter_model.bin): "
        "they can run code."),
) -> None:
    """Encode new documents with the index's model and append them (ids must be new)."""
    from tuneforge.index import VectorIndex, add_to_index

    before = len(VectorIndex.load(index))
    updated = add_to_index(index, corpus, batch_size=batch_size, allow_pickle=allow_pickle)
    typer.echo(f"added {len(updated) - before:,} documents; {index} now holds {len(updated):,}")


def search_cmd(
    index: str = typer.Argument(..., help="Index directory made by `tuneforge index build`."),
    query: str = typer.Argument(..., help="Query text."),
    k: int = typer.Option(10, "-k", "--top-k", help="How many documents to show."),
    width: int = typer.Option(160, "--width", help="Characters of each document's text to show (0: all)."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Also load an encoder stored as pickles (pytorch_model.bin, adapter_model.bin): "
        "they can run code."),
) -> None:
    """Print the k documents closest to the query (cosine similarity), best first."""
    from tuneforge.index import search

    for rank, hit in enumerate(search(index, query, k=k, allow_pickle=allow_pickle), start=1):
        text = hit["text"] if width == 0 or len(hit["text"]) <= width else hit["text"][:width] + "..."
        typer.echo(f"{rank:3d}. {hit['score']:.4f}  {hit['doc_id']}  {text}")


def mine_negatives_cmd(
    model: str = typer.Option(..., "--model", help="Encoder that ranks the corpus (normally the one you will "
                              "fine-tune): alias, model dir or run dir."),
    data: str = typer.Option(..., "--data", help="BEIR-style directory: corpus.jsonl, queries_<split>.jsonl, "
                             "qrels_<split>.jsonl."),
    out: str = typer.Option(..., "--out", help="JSON Lines to write: {anchor, positive, negative: [...]}."),
    split: str = typer.Option("train", "--split", help="Which queries / judgements to mine for."),
    negatives: int = typer.Option(1, "--negatives", help="Mined negatives per (query, relevant document) pair."),
    skip_top: int = typer.Option(5, "--skip-top", help="Ranks left out at the top (likely unjudged positives)."),
    depth: int = typer.Option(50, "--depth", help="Negatives are drawn from ranks skip_top+1 .. depth."),
    index: str = typer.Option(None, "--index", help="Index of the corpus made with the same model, reused "
                              "(else the corpus is encoded, and saved here when the directory is new)."),
    seed: int = typer.Option(42, "--seed", help="Seed of the random draw among the candidate ranks."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Also load an encoder stored as pickles (pytorch_model.bin, adapter_model.bin): "
        "they can run code."),
) -> None:
    """Mine hard negatives for contrastive fine-tuning (task: embed, loss: mnrl)."""
    from pathlib import Path

    from tuneforge.io.text_files import write_jsonl
    from tuneforge.index.mine import mine_hard_negatives

    records = mine_hard_negatives(model, data, split=split, num_negatives=negatives, skip_top=skip_top,
                                  depth=depth, index_dir=index, seed=seed,
                                  allow_pickle=allow_pickle)
    write_jsonl(Path(out), records)
    typer.echo(f"wrote {len(records):,} (query, positive, {negatives} negative) records -> {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
    app.command("search")(search_cmd)
    app.command("mine-negatives")(mine_negatives_cmd)
