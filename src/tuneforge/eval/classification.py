"""Evaluate a trained classifier (a `tuneforge train` run with `task: classify` or `task: image_classify`) on
labelled data (a file; for images also an image folder or a datasets source):
accuracy, macro-F1 and the confusion matrix (see tuneforge.train.tasks.classify for the definitions), each
with a bootstrap 95% interval over examples (eval/bootstrap.py). Several runs (the seeds of one recipe) are
reported as their mean; a baseline run (another recipe) adds the paired interval of the difference."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from . import bootstrap


def classifier_predictions(run_dir, data_file=None, batch_size: int | None = None,
                           limit: int | None = None) -> dict:
    """Load run_dir's base model + adapter and score `data_file` (default: the run's validation file).
    Returns eval_loss, accuracy, macro_f1, confusion_matrix, labels, num_examples, and gold / predicted
    (label indices, one per example in file order)."""
    from ..config import load_config
    from ..data import read_records, select_records
    from ..io import load_adapter
    from ..models import load_model_for, load_tokenizer
    from ..train.tasks.classify import ClassifyTask

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    if cfg.task == "image_classify":
        return _image_predictions(run_dir, cfg, data_file, batch_size, limit)
    if cfg.task != "classify":
        raise ConfigError(f"{run_dir} was trained with task {cfg.task!r}, not classify or image_classify",
                          key="task")
    data_file = data_file or cfg.data.validation
    if data_file is None:
        raise ConfigError("no data file given and the run has no validation file", key="data.validation")
    m = cfg.model
    model = load_model_for(m)
    load_adapter(model, run_dir / "adapter", allow_pickle=m.allow_pickle)
    tokenizer = load_tokenizer(m.name)
    task = ClassifyTask.for_run(cfg, tokenizer)
    if not task.labels:
        raise ConfigError(f"{run_dir / 'config.yaml'} records no labels", key="task.labels")
    records = select_records(read_records(data_file), limit)
    examples = task.encode(records, tokenizer, cfg.data.max_length, data_file)
    return _predictions(model, task, examples, cfg, batch_size)


def _image_predictions(run_dir: Path, cfg, data=None, batch_size: int | None = None, limit: int | None = None) -> dict:
    """classifier_predictions for image_classify: `data` is an image folder, a {image, label} file or a datasets
    source (default: the run's validation data), preprocessed as in training, never augmented."""
    from ..io import load_adapter
    from ..models import load_model_for
    from ..train.tasks.image_classify import ImageClassifyTask

    data = data or cfg.data.validation
    if data is None:
        raise ConfigError("no data given and the run has no validation data", key="data.validation")
    task = ImageClassifyTask()
    task.cfg = cfg.task_config
    task.labels = [str(x) for x in (task.cfg.labels if task.cfg is not None else None) or []]
    if not task.labels:
        raise ConfigError(f"{run_dir / 'config.yaml'} records no labels", key="task.labels")
    model = load_model_for(cfg.model)
    load_adapter(model, run_dir / "adapter", allow_pickle=cfg.model.allow_pickle)
    cfg.data.limit_eval = limit
    records, source = task.read(cfg, "validation", path=str(data))
    examples = task.encode(records, task.load_preprocessor(cfg), source, "validation")
    return _predictions(model, task, examples, cfg, batch_size)


def classification_statistics(gold, predicted, num_labels: int) -> dict[str, bootstrap.Statistic]:
    """accuracy and macro_f1 (fractions, as the classify task reports them) as bootstrap statistics."""
    return {"accuracy": bootstrap.mean_of([float(g == p) for g, p in zip(gold, predicted)]),
            "macro_f1": bootstrap.macro_f1_of(gold, predicted, num_labels)}


def evaluate_classifier(run_dir, data_file=None, batch_size: int | None = None, limit: int | None = None,
                        baseline=None, resamples: int = bootstrap.RESAMPLES, seed: int = bootstrap.SEED) -> dict:
    """Score run_dir (or a list of run dirs: seeds of one recipe) on `data_file` (default: the first run's
    validation file). Returns eval_loss, accuracy, macro_f1, confusion_matrix (of the first run), labels,
    num_examples and "intervals" (bootstrap 95%); `baseline` (a run dir or list, same labels and file) adds its
    figures and the paired interval of the difference."""
    runs = bootstrap.as_list(run_dir)
    if not runs:
        raise ConfigError("no run directory given", key="run_dir")
    first = classifier_predictions(runs[0], data_file, batch_size, limit)
    if data_file is None:
        from ..config import load_config

        data_file = load_config(Path(runs[0]) / "config.yaml").data.validation

    def statistics(scored: list[dict]) -> list[dict]:
        for s in scored:
            if s["labels"] != first["labels"] or len(s["gold"]) != len(first["gold"]):
                raise ConfigError(f"runs to compare must share labels and data: {first['labels']} vs {s['labels']}",
                                  key="baseline")
        return [classification_statistics(s["gold"], s["predicted"], len(s["labels"])) for s in scored]

    scored = [first] + [classifier_predictions(r, data_file, batch_size, limit) for r in runs[1:]]
    base = [classifier_predictions(r, data_file, batch_size, limit) for r in bootstrap.as_list(baseline)]
    report = bootstrap.report_runs(statistics(scored), len(first["gold"]), statistics(base), resamples, seed)
    extra = {k: first[k] for k in ("confusion_matrix", "labels", "num_examples")}
    losses = [s["eval_loss"] for s in scored]
    return {"eval_loss": sum(losses) / len(losses), **report, **extra}


def _predictions(model, task, examples: list, cfg, batch_size: int | None) -> dict:
    """One evaluation pass over every example: the task's metrics, the gold and predicted label ids."""
    from ..train.loop import evaluate

    if batch_size:
        cfg.train.micro_batch_size = batch_size
    cfg.train.eval_batches = None
    metrics = evaluate(model, task, examples, cfg.train)
    gold, predicted = task.last_predictions
    return {**metrics, "labels": task.labels, "num_examples": len(examples), "gold": gold, "predicted": predicted}
