"""`tuneforge compare`: many adaptation methods on one task under one budget, as one table and one plot.

For each method of the config (see compare_config.py) this trains with `tuneforge.train.train` (same data,
epochs and seed for all) and records: the eval metric, trainable parameters (count and % of the model's total,
the same count `tuneforge train --dry-run` prints), wall time of training plus evaluation, peak resident memory
of that run, and the size of the saved adapter directory. A `fitted` method (a classifier fitted on frozen
embeddings) is fitted through its own `fit`/`predict` instead of the training loop.

Peak memory: on Linux the process's high-water mark (VmHWM) is reset before each method (`/proc/self/clear_refs`)
and read after it, so each row has its own peak without a subprocess; on CUDA it is torch's peak allocation.
Rows are written as soon as each method finishes (results.csv / results.md / metric_vs_params.png), so a long
comparison that is interrupted keeps what it measured; running it again reuses the rows whose config is unchanged.

`jobs` > 1 trains that many methods at once, each in its own (spawned) process with cores // jobs threads: on a
small CPU, small models use threads poorly and two one-thread processes finish a list sooner than one two-thread
process. Each row's wall time and peak memory are then its own process's, measured while the others run.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from ..errors import ConfigError, TuneforgeError
from ..io.adapter_files import write_adapter_files
from ..methods import method_for
from .compare_config import CompareConfig, MethodEntry, load_compare_config
from .compare_report import write_reports

RESULT_FILE = "result.json"


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_mib() -> float | None:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _train_row(entry: MethodEntry, log) -> dict:
    from ..train.api import train

    cfg = copy.deepcopy(entry.run_config)  # train() may fill in the method (a head to save); keep the entry as written
    with contextlib.redirect_stdout(log):
        info = train(cfg, dry_run=True)
        result = train(cfg, progress=False, resume=False)
    shutil.rmtree(Path(cfg.output_dir) / "checkpoints", ignore_errors=True)  # optimizer states: not the adapter
    return {"trainable": info["trainable"], "total": info["total"], "wall_time_s": result.wall_time_s,
            "metrics": result.eval_metrics, "adapter_bytes": _dir_bytes(Path(cfg.output_dir) / "adapter"),
            "examples": _example_scores(cfg)}


def _example_scores(cfg) -> dict | None:
    """Per-example validation outputs of a trained run, for bootstrap intervals (paired between methods):
    classify -> gold / predicted label indices; embed on scored pairs -> cosine / gold score. None for tasks
    without a per-example metric here."""
    from ..data import read_records, select_records

    data = cfg.data
    if data.validation is None:
        return None
    if cfg.task in ("classify", "image_classify"):
        from .classification import classifier_predictions

        scored = classifier_predictions(cfg.output_dir)
        return {"kind": "classify", "gold": scored["gold"], "predicted": scored["predicted"],
                "num_labels": len(scored["labels"])}
    settings = cfg.task_config
    if cfg.task == "embed" and getattr(settings, "loss", None) in ("cosent", "angle", "cosine"):
        from .sts import sts_cosines

        records = select_records(read_records(data.validation), data.limit_eval, data.shuffle_seed)
        cosines = sts_cosines(cfg.output_dir, records, settings.sentence1_field, settings.sentence2_field)
        return {"kind": "scored", "cosine": [float(c) for c in cosines],
                "gold": [float(r[settings.score_field]) for r in records]}
    return None


def _features_row(entry: MethodEntry, log) -> dict:
    """Embed with the frozen backbone, fit the method's classifier, score the validation split."""
    from ..models import load_model_for, load_tokenizer
    from ..train.tasks.classify import classification_metrics, labelled_texts

    cfg = entry.run_config
    if cfg.task == "image_classify":
        return _image_features_row(entry)
    if cfg.task != "classify":
        raise ConfigError(f"method {type(cfg.method).method!r} fits a classifier; it needs task classify or "
                          "image_classify", key="task")
    settings = cfg.method
    if "max_length" in getattr(settings, "__dataclass_fields__", {}):  # same truncation as the trained methods
        settings = settings.replace(max_length=cfg.data.max_length)
    method = method_for(settings)
    out = Path(cfg.output_dir)
    started = time.perf_counter()
    model = load_model_for(cfg.model, kind="encoder")
    tokenizer = load_tokenizer(cfg.model.name)
    labels, (train_texts, train_y), (eval_texts, eval_y) = labelled_texts(cfg)
    with contextlib.redirect_stdout(log):
        classifier = method.fit(model, tokenizer, train_texts, train_y, cache_dir=out / "features", cfg=settings)
        predicted = method.predict(model, tokenizer, eval_texts, classifier, cache_dir=out / "features")
    wall = time.perf_counter() - started
    write_adapter_files(out / "adapter", *classifier.to_files(cfg.model.name))
    shutil.rmtree(out / "features", ignore_errors=True)
    trainable = sum(t.numel() for t in classifier.weights + classifier.biases)
    total = sum(p.numel() for p in model.parameters()) + trainable
    return {"trainable": trainable, "total": total, "wall_time_s": wall,
            "metrics": classification_metrics(eval_y, predicted, len(labels)),
            "adapter_bytes": _dir_bytes(out / "adapter"),
            "examples": {"kind": "classify", "gold": list(eval_y), "predicted": [int(p) for p in predicted],
                         "num_labels": len(labels)}}


def _image_features_row(entry: MethodEntry) -> dict:
    """feature_based on images: the frozen model's head inputs for the training images (never augmented), the
    classifier fitted on them, the validation images scored."""
    from ..methods import method_for
    from ..models import load_model_for
    from ..train.tasks.classify import classification_metrics
    from ..train.tasks.image_classify import ImageClassifyTask

    cfg = copy.deepcopy(entry.run_config)
    method, out = method_for(cfg.method), Path(cfg.output_dir)
    started = time.perf_counter()
    m = cfg.model
    model = load_model_for(m)
    task = ImageClassifyTask()
    train_examples, eval_examples = task.prepare(cfg, task.load_preprocessor(cfg))
    if not eval_examples:
        raise ConfigError("this path needs validation data", key="data.validation")

    def batches(examples):
        size = cfg.train.micro_batch_size
        return (torch.stack([ex["pixel_values"] for ex in examples[i:i + size]]) for i in range(0, len(examples), size))

    classifier = method.fit_images(model, batches(train_examples), [ex["label"] for ex in train_examples], cfg.method)
    predicted = method.predict_images(model, batches(eval_examples), classifier)
    wall = time.perf_counter() - started
    write_adapter_files(out / "adapter", *classifier.to_files(m.name))
    trainable = sum(t.numel() for t in classifier.weights + classifier.biases)
    total = sum(p.numel() for p in model.parameters()) + trainable
    gold = [ex["label"] for ex in eval_examples]
    return {"trainable": trainable, "total": total, "wall_time_s": wall,
            "metrics": classification_metrics(gold, predicted, len(task.labels)),
            "adapter_bytes": _dir_bytes(out / "adapter"),
            "examples": {"kind": "classify", "gold": gold, "predicted": [int(p) for p in predicted],
                         "num_labels": len(task.labels)}}


def _fingerprint(entry: MethodEntry) -> str:
    return json.dumps(entry.spec, sort_keys=True, default=str)


def run_method(entry: MethodEntry, metric: str, reuse: bool = True) -> dict:
    """Train / fit one method and return its row (cached in its run dir as result.json)."""
    out = Path(entry.run_config.output_dir)
    cached = out / RESULT_FILE
    if reuse and cached.exists():
        row = json.loads(cached.read_text())
        if row.get("fingerprint") == _fingerprint(entry):
            return row
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(entry.run_config.train.seed)
    _reset_peak()
    with open(out / "compare.log", "w") as log:
        fields = (_features_row if method_for(entry.run_config.method).fitted else _train_row)(entry, log)
    metrics = fields.pop("metrics")
    if metric not in metrics:
        raise ConfigError(f"the task reports {', '.join(k for k in metrics if k != 'confusion_matrix')}, "
                          f"not {metric!r}", key="metric")
    row = {"label": entry.label, "method": type(entry.run_config.method).method, "metric": metrics[metric],
           **fields, "peak_mib": _peak_mib(), "metrics": metrics, "fingerprint": _fingerprint(entry)}
    cached.write_text(json.dumps(row, indent=2, default=str))
    return row


def _finished_rows(cc: CompareConfig) -> list[dict]:
    """Rows of every method in the config whose cached result matches its current config, in config order."""
    rows = []
    for entry in cc.entries:
        path = Path(entry.run_config.output_dir) / RESULT_FILE
        if path.exists():
            row = json.loads(path.read_text())
            if row.get("fingerprint") == _fingerprint(entry):
                rows.append(row)
    return rows


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_parallel(entries, metric: str, reuse: bool, jobs: int, finished, failed, echo) -> None:
    """Run methods `jobs` at a time in spawned processes; report each as it finishes, in finishing order."""
    import concurrent.futures as futures
    import multiprocessing
    import os

    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init,
                                     initargs=(threads,)) as pool:
        pending = {}
        for n, entry in enumerate(entries, start=1):
            echo(f"[{n}/{len(entries)}] {entry.label} queued")
            pending[pool.submit(run_method, entry, metric, reuse)] = entry
        for done in futures.as_completed(pending):
            entry = pending[done]
            try:
                finished(entry, done.result())
            except TuneforgeError as err:
                for other in pending:
                    other.cancel()
                raise failed(entry, err) from err


def compare_seeds(config_path, seeds, overrides=(), only: list[str] | None = None, reuse: bool = True,
                  echo=print, jobs: int | None = None, resamples: int = 1000, bootstrap_seed: int = 0) -> dict:
    """Run the whole comparison once per seed (`train.seed`, output folders OUTPUT_DIR/seed-<seed>) and write
    OUTPUT_DIR/seeds.md / seeds.json: each method's metric as mean +- std over the seeds, per seed, the bootstrap
    interval of the seed-mean and the paired interval of its difference to the best method (seed-means on the
    same validation examples). Returns {"methods": [...], "per_seed": {seed: compare() result}, "paths"}."""
    from ..train.seeds import parse_seeds, seed_dir
    from .compare_report import write_seed_reports

    seeds = parse_seeds(seeds)
    base = load_compare_config(config_path, overrides)
    per_seed = {}
    for seed in seeds:
        echo(f"== seed {seed}")
        per_seed[seed] = compare(config_path, [*overrides, f"train.seed={seed}",
                                               f"output_dir={seed_dir(base.output_dir, seed)}"],
                                 only=only, reuse=reuse, echo=echo, jobs=jobs, resamples=resamples,
                                 bootstrap_seed=bootstrap_seed)
    methods, paths = write_seed_reports({s: r["rows"] for s, r in per_seed.items()}, base, resamples,
                                        bootstrap_seed)
    for kind, path in paths.items():
        echo(f"{kind:9s} {path}")
    return {"methods": methods, "per_seed": per_seed, "paths": paths}


def compare(config_or_path, overrides=(), only: list[str] | None = None, reuse: bool = True,
            echo=print, jobs: int | None = None, resamples: int = 1000, bootstrap_seed: int = 0) -> dict:
    """Run every method of a compare config (or those labelled in `only`), `jobs` at a time (default: the config's
    `jobs`), write the reports (each metric with a bootstrap 95% interval over the validation examples and the
    paired interval of its difference to the best method, `resamples` draws), and
    return {"rows": [...], "csv", "markdown", "plot"} paths and rows (in config order)."""
    cc: CompareConfig = (config_or_path if isinstance(config_or_path, CompareConfig)
                         else load_compare_config(config_or_path, overrides))
    entries = cc.entries
    if only:
        unknown = sorted(set(only) - {e.label for e in entries})
        if unknown:
            raise ConfigError(f"no method labelled {', '.join(unknown)}; labels: "
                              f"{', '.join(e.label for e in entries)}", key="only")
        entries = [e for e in entries if e.label in only]
    jobs = cc.jobs if jobs is None else jobs
    if jobs < 1:
        raise ConfigError("jobs must be at least 1", key="jobs")
    cc = dataclasses.replace(cc, jobs=jobs, resamples=resamples, bootstrap_seed=bootstrap_seed)
    cached_before = {row["label"] for row in _finished_rows(cc)} if reuse else set()
    started = time.perf_counter()
    rows, paths = [], {}

    def finished(entry: MethodEntry, row: dict) -> None:
        nonlocal paths
        rows.append(row)
        share = 100.0 * row["trainable"] / max(1, row["total"])
        echo(f"    {entry.label}: {cc.metric} {row['metric']:.4f}  trainable {row['trainable']:,} ({share:.3g}%)  "
             f"{row['wall_time_s']:.1f}s")
        paths = write_reports(_finished_rows(cc), cc)

    def failed(entry: MethodEntry, err: Exception) -> TuneforgeError:
        return TuneforgeError(f"method {entry.label!r}: {err} (see {entry.run_config.output_dir}/compare.log)")

    if jobs == 1 or len(entries) == 1:
        for n, entry in enumerate(entries, start=1):
            echo(f"[{n}/{len(entries)}] {entry.label} ...")
            try:
                finished(entry, run_method(entry, cc.metric, reuse))
            except TuneforgeError as err:
                raise failed(entry, err) from err
    else:
        _run_parallel(entries, cc.metric, reuse, jobs, finished, failed, echo)
    order = {e.label: i for i, e in enumerate(entries)}
    rows.sort(key=lambda row: order[row["label"]])
    total = time.perf_counter() - started
    echo(f"all {len(entries)} methods in {total:.0f}s of wall time" + (f" ({jobs} at a time)" if jobs > 1 else ""))
    if len(entries) == len(cc.entries) and not cached_before:  # every method trained by this run
        paths = write_reports(_finished_rows(cc), dataclasses.replace(cc, total_wall_s=total))
    for kind in ("markdown", "csv", "plot"):
        echo(f"{kind:9s} {paths[kind]}")
    return {"rows": rows, **paths}
