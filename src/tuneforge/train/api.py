"""`train(config)`: the Python API behind `tuneforge train`, gluing the packages in the one direction data flows:
config -> base model -> method -> task data -> the loop -> adapter files.

Output directory after a run:
    config.yaml      the resolved config (every default filled in), loadable again to repeat the run
    adapter/         the trained adapter in peft's layout (adapter_config.json + adapter_model.safetensors)
    checkpoints/     resumable step-N checkpoints (see checkpoint.py)
    metrics.jsonl    one JSON line per logged step / evaluation (see report.py)
    summary.json     steps, final loss and metrics, examples dropped / truncated per split, resume changes
    .lock            flock'ed by the live run (run_lock.py)
    loss.png         train and eval loss against step
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..config import dump_config, resolve_config
from ..errors import ConfigError
from ..methods.api import init_reads_base
from ..models.from_config import load_model_for
from ..models.loader_deferred import deferred_of
from . import data_report, launcher, self_training
from .distributed import load_options
from .loop import TrainResult, run_training
from .resume_check import check_resume
from .run_lock import output_dir_lock


def write_config(cfg, path: Path) -> Path:
    """The resolved config as YAML, written atomically (JSON round trip turns tuples into plain lists)."""
    import yaml

    data = json.loads(json.dumps(dump_config(cfg), default=str))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    return path


def _report_lines(report: dict, cfg) -> list[str]:
    """The data report's lines: each split's counts, then a warning per split above data.warn_dropped_share."""
    lines = [data_report.describe(split, entry) for split, entry in report.items()]
    return lines + data_report.warn_lines(report, cfg.data.warn_dropped_share, cfg.data.max_length)


def write_summary(path: Path, result: TrainResult, applied: list[str]) -> Path:
    """summary.json: what the run did (steps, final losses and metrics), what became of its data (counts and
    shares of examples dropped or truncated per split) and the settings a resume changed."""
    data = {"steps": result.steps, "train_loss": result.train_loss, "eval_metrics": result.eval_metrics,
            "data": result.data_report, "resume_changes": applied}
    if result.self_training:
        data["self_training"] = result.self_training
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)
    return path


def _load_model(cfg, defer: bool = True):
    """The run's base model (the seam tests replace with a tiny one); a base to be sharded is built with
    placeholders each process fills with its own shard, or loaded into host memory first on GPUs
    (distributed.load_options)."""
    return load_model_for(cfg.model, **load_options(cfg, launcher.launched_world_size(), defer))


def _half_matmuls(model, cfg) -> list:
    """train.base_matmul_dtype bfloat16: bf16 copies of the adapted frozen weights for the fused kernels
    (models/fused_linear.py); returns the layers that got one."""
    if cfg.train.base_matmul_dtype != "bfloat16":
        return []
    if deferred_of(model) is not None:  # copies of placeholders would make the whole base in bf16, never used:
        if launcher.process_rank() == 0:  # FSDP replaces the weights they were taken from
            print("base_matmul_dtype: bfloat16 is ignored on a base loaded rank-local for sharding")
        return []
    from ..models.fused_linear import FusableLinear, use_half_matmuls

    layers = [m.base_layer for m in model.modules()
              if isinstance(m, FusableLinear) and isinstance(getattr(m, "base_layer", None), torch.nn.Linear)]
    count = use_half_matmuls(layers, torch.bfloat16)
    if launcher.process_rank() == 0:
        print(f"base matmuls in bfloat16: {count} frozen weights (activations, adapters and optimizer in fp32)")
    return layers


def dry_run_report(cfg, model) -> dict:
    """What would train: the targeted modules and the trainable / total parameter counts."""
    from ..methods import add_adapter, count_parameters, mark_trainable, select_targets

    targets = select_targets(model, cfg.method)
    add_adapter(model, cfg.method)
    mark_trainable(model)
    trainable, total = count_parameters(model)
    return {"method": type(cfg.method).method, "targets": targets, "trainable": trainable, "total": total}


def train(config_or_path, overrides=(), progress: bool = True, *, resume: bool = True, dry_run: bool = False):
    """Run a config end to end and return the TrainResult. With dry_run, print what would be adapted and how
    many parameters would train, and return that as a dict without training. resume=False starts over even
    when output_dir holds checkpoints (they are deleted). A resume whose config differs from the checkpoint's in
    a way that cannot resume exactly is refused (resume_check.py); output_dir is locked for the run (run_lock.py).
    The run summary (summary.json, result.data_report) counts the examples dropped or truncated per split."""
    cfg = resolve_config(config_or_path, overrides)
    rank = launcher.process_rank() or int(os.environ.get("RANK", "0"))  # torchrun's RANK: the group is not up yet
    if dry_run or rank != 0:  # process 0 of a multi-process run holds the lock for the group
        return _train(cfg, progress, resume, dry_run)
    with output_dir_lock(cfg.output_dir):  # before anything is loaded: a second run into a live one fails at once
        return _train(cfg, progress, resume, dry_run)


def _train(cfg, progress: bool, resume: bool, dry_run: bool):
    from ..io import save_adapter
    from ..methods import add_adapter, mark_trainable
    from ..registry import TASKS
    from .precision import fp32_master_weights, restore_dtypes

    task = TASKS.get(cfg.task)()
    # launched by torchrun: join its process group first (on CUDA that picks this process's GPU)
    own_group = not dry_run and launcher.init_from_env(cfg.model.device)
    torch.manual_seed(cfg.train.seed)  # a new head (classifier, reward value) is initialised while loading
    model = _load_model(cfg)
    task.configure_model(model, cfg)  # check / name the head's outputs
    cfg.method = task.configure_method(cfg.method, model)  # e.g. a new classifier head to save
    if deferred_of(model) is not None and init_reads_base(cfg.method):  # modules to save copy the base's values
        torch.manual_seed(cfg.train.seed)
        model = _load_model(cfg, defer=False)
        task.configure_model(model, cfg)
    if deferred_of(model) is not None and launcher.process_rank() == 0:
        print("rank-local loading: each process reads only its own shard of the base when it is sharded")
    if dry_run:
        info = dry_run_report(cfg, model)
        print(f"method {info['method']} on {cfg.model.name}: {len(info['targets'])} targeted modules")
        for name in info["targets"]:
            print(f"  {name}")
        share = 100.0 * info["trainable"] / max(1, info["total"])
        print(f"trainable parameters: {info['trainable']:,} of {info['total']:,} ({share:.3f}%)")
        return info

    torch.manual_seed(cfg.train.seed)  # adapter initialisation is part of what the seed reproduces
    add_adapter(model, cfg.method)
    if cfg.train.init_adapter:
        from .init_adapter import start_from_adapter

        start_from_adapter(model, cfg.method, cfg.train.init_adapter, cfg.model.allow_pickle)
        if launcher.process_rank() == 0:
            print(f"adapter weights start from {cfg.train.init_adapter}")
    mark_trainable(model)
    from ..models.fused_mlp import use_fused_mlp

    use_fused_mlp(model)  # every task: SwiGLU MLPs keep less for backward, same gradients (models/fused_mlp.py)
    if cfg.train.recompute_norms and not cfg.train.compile:
        from ..models.norm_recompute import use_norm_recompute

        use_norm_recompute(model)  # norm outputs recomputed in backward, same bits (models/norm_recompute.py)
    half = _half_matmuls(model, cfg)
    tokenizer = task.load_preprocessor(cfg)  # the tokenizer, or an image model's preprocessor
    own_run = task.run  # a task whose training is not one loss per batch (PPO) runs itself (None: the loop)
    if own_run is not None and launcher.launched_world_size() > 1:
        raise ConfigError(f"task {cfg.task!r} runs its own loop, which trains in one process only", key="task")
    if own_run is not None:
        from .callbacks import check_own_loop

        check_own_loop(cfg.train, cfg.task)  # NEFTune is refused there, never silently dropped
    main = launcher.process_rank() == 0
    report: dict = {}
    if own_run is None:
        train_examples, eval_examples = task.prepare(cfg, tokenizer)
        report = data_report.summarize(task.data_report())
        if main:
            for line in _report_lines(report, cfg):
                print(line)
        data_report.check_train(report, cfg.data.max_length)
    # unlabelled records of task.self_training: read and checked before anything trains or is written
    pool = self_training.prepare_pool(task, cfg, tokenizer, train_examples) if (
        own_run is None and self_training.settings(cfg) is not None) else None
    master = fp32_master_weights(model)  # trained base weights of a bf16 model: fp32 for the run (precision.py)
    if master:
        cfg.train.bf16 = True  # the fp32 and bf16 weights meet in bf16 matmuls under autocast (PPO's loop too)
        if main:
            count = sum(p.numel() for p, _ in master)
            print(f"training {count:,} bf16 parameters in fp32 under bf16 autocast (fp32 master weights)")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    applied = []
    if resume:  # every process checks, so all refuse together
        plain = json.loads(json.dumps(dump_config(cfg), default=str))
        _, applied = check_resume(plain, out, launcher.launched_world_size())
        if pool is not None:  # each round's checkpoints, in their own folders
            applied += self_training.check_resume_rounds(plain, out, launcher.launched_world_size())
        if main and applied:
            print("resuming with changed settings that keep the run exact:\n  " + "\n  ".join(applied))
    config_path = write_config(cfg, out / "config.yaml") if main else out / "config.yaml"
    try:
        if own_run is not None:
            result: TrainResult = own_run(model, tokenizer, cfg, out, resume=resume, progress=progress)
        elif pool is not None:
            result = self_training.run(model, task, train_examples, eval_examples, cfg, out, pool, resume=resume,
                                       progress=progress)
        else:
            result = run_training(
                model, task, train_examples, eval_examples, cfg.train, out, resume=resume, progress=progress
            )
    finally:
        restore_dtypes(master)
        if half:
            from ..models.fused_linear import drop_half_matmuls

            drop_half_matmuls(half)  # saving, merging and export read the fp32 weights
    if own_group:
        launcher.shutdown()
    result.data_report = report
    if not main:  # process 0 alone writes the adapter and reports
        return result
    summary_path = write_summary(out / "summary.json", result, applied)
    from ..io.model_card import training_facts

    adapter_dir = save_adapter(model, out / "adapter", base_model_name=cfg.model.name,
                               card=training_facts(cfg, result))  # README.md model card: io/model_card.py
    exported = task.export(model, tokenizer, cfg, out)  # last: it may merge adapters into the model
    print(f"trained {result.steps} steps in {result.wall_time_s:.1f}s ({result.tokens_per_s:,.0f} tokens/s)")
    if result.train_loss is not None:
        print(f"final train loss {result.train_loss:.4f}")
    for key, value in result.eval_metrics.items():
        print(f"{key} {value:.4g}" if isinstance(value, (int, float)) else f"{key} {value}")
    for note in task.data_notes():  # rows a task skipped or cut, told again at the end
        print(note)
    for line in _report_lines(report, cfg):
        print(line)
    print(f"adapter     {adapter_dir}")
    if exported is not None:
        print(f"exported    {exported}")
    print(f"config      {config_path}")
    print(f"metrics     {result.metrics_path}")
    print(f"summary     {summary_path}")
    if result.plot_path is not None:
        print(f"loss plot   {result.plot_path}")
    if result.checkpoint_dir is not None:
        print(f"checkpoint  {result.checkpoint_dir}")
    return result
