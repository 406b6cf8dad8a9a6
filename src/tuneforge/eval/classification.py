"""Evaluate a trained classifier (a `tuneforge train` run with `task: classify`) on a labelled file:
accuracy, macro-F1 and the confusion matrix (see tuneforge.train.tasks.classify for the definitions)."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def evaluate_classifier(run_dir, data_file=None, batch_size: int | None = None, limit: int | None = None) -> dict:
    """Load run_dir's base model + adapter and score `data_file` (default: the run's validation file).
    Returns eval_loss, accuracy, macro_f1, confusion_matrix, labels and num_examples."""
    from ..config import load_config
    from ..data import read_records, select_records
    from ..io import load_adapter
    from ..models import load_model_for, load_tokenizer
    from ..train.loop import evaluate
    from ..train.tasks.classify import ClassifyConfig, ClassifyTask

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    if cfg.task != "classify":
        raise ConfigError(f"{run_dir} was trained with task {cfg.task!r}, not classify", key="task")
    data_file = data_file or cfg.data.validation
    if data_file is None:
        raise ConfigError("no data file given and the run has no validation file", key="data.validation")
    m = cfg.model
    model = load_model_for(m)
    load_adapter(model, run_dir / "adapter", allow_pickle=m.allow_pickle)
    tokenizer = load_tokenizer(m.name)
    task = ClassifyTask()
    task.cfg = cfg.task_config or ClassifyConfig()
    task.labels = [str(x) for x in task.cfg.labels or []]
    if not task.labels:
        raise ConfigError(f"{run_dir / 'config.yaml'} records no labels", key="task.labels")
    task.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    records = select_records(read_records(data_file), limit)
    examples = task.encode(records, tokenizer, cfg.data.max_length, data_file)
    if batch_size:
        cfg.train.micro_batch_size = batch_size
    cfg.train.eval_batches = None
    metrics = evaluate(model, task, examples, cfg.train)
    return {**metrics, "labels": task.labels, "num_examples": len(examples)}
