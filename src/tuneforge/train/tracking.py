"""Experiment trackers (train.report_to): the metrics.jsonl lines, also sent to TensorBoard, MLflow and W&B through
their own libraries, so their UIs read our runs like anyone else's. Process 0 alone logs (the caller decides).

Names, the same in every tracker:
    train/loss, train/learning_rate, train/grad_norm, train/tokens_per_s, train/epoch   each logged train line
    eval/<metric>                                                                      each evaluation
    self_training/<count>, self_training/eval/<metric>   one point per self-training round (step = round)
TensorBoard writes output_dir/tensorboard/; MLflow a run in train.mlflow_experiment at train.mlflow_tracking_uri
(default the SQLite store output_dir/mlflow.db, artifacts in output_dir/mlruns) with the resolved config as
params; W&B a run under output_dir/wandb, offline unless configured: train.wandb.mode, else WANDB_MODE, else
online when WANDB_API_KEY is set (so nothing leaves the machine unless someone set W&B up).

A resumed run continues where the checkpoint was: TensorBoard drops the events of steps after it (purge_step),
MLflow appends to the same run (its id travels in the checkpoint), W&B resumes its run id.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import TuneforgeError

TRAIN_TAGS = {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm",
              "tokens_per_s": "train/tokens_per_s", "epoch": "train/epoch"}
NOT_METRICS = ("step", "epoch", "elapsed_s")
EXTRA = "pip install 'tuneforge[track]'"


def scalars(record: dict) -> dict[str, float]:
    """A metrics.jsonl record as tracker tags: train lines (they have "lr") and eval lines (they have not)."""
    if "lr" in record:
        pairs = ((tag, record.get(key)) for key, tag in TRAIN_TAGS.items())
    else:
        pairs = ((f"eval/{key}", value) for key, value in record.items() if key not in NOT_METRICS)
    return {tag: float(v) for tag, v in pairs
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"train.learning_rate": "0.0002", ...} (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = (json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value))[:6000]
    return out


def _require(module: str, tracker: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise TuneforgeError(f"train.report_to lists {tracker}, but {module} cannot be imported ({err}); "
                             f"install it with {EXTRA}") from None


class TensorBoardTracker:
    def __init__(self, output_dir: Path, resumed_step: int | None):
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        log_dir = output_dir / "tensorboard"
        if resumed_step is None:  # a fresh run replaces the old one's checkpoints and metrics.jsonl: its curves too
            for old in log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        purge = resumed_step + 1 if resumed_step is not None else None
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def state(self) -> dict:
        return {}

    def close(self, status: str) -> None:
        self.writer.close()


def default_mlflow_uri(output_dir: Path) -> str:
    """The SQLite store output_dir/mlflow.db: MLflow 3's own default backend (its ./mlruns file store is in
    maintenance mode and refused unless MLFLOW_ALLOW_FILE_STORE=true), so `mlflow ui` run inside output_dir
    shows the run as is."""
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


class MlflowTracker:
    def __init__(self, cfg, output_dir: Path, config: dict, state: dict):
        _require("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        output_dir.mkdir(parents=True, exist_ok=True)
        uri = cfg.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri(output_dir)
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = state.get("mlflow_run_id")
        if self.run_id is not None:
            try:
                self.client.get_run(self.run_id)
                self.client.update_run(self.run_id, status="RUNNING")
                return
            except Exception:  # the store moved or was cleared: start a new run
                self.run_id = None
        experiment = self.client.get_experiment_by_name(cfg.mlflow_experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:  # artifacts beside the store, not in ./mlruns of whatever folder the run was started from
            own_store = uri == default_mlflow_uri(output_dir)
            artifacts = (output_dir / "mlruns").resolve().as_uri() if own_store else None
            experiment_id = self.client.create_experiment(cfg.mlflow_experiment, artifact_location=artifacts)
        run = self.client.create_run(experiment_id, run_name=output_dir.resolve().name, tags={"tuneforge": "1"})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flat_params(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, step: int, values: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def state(self) -> dict:
        return {"mlflow_run_id": self.run_id}

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class WandbTracker:
    def __init__(self, cfg, output_dir: Path, config: dict, state: dict):
        wandb = _require("wandb", "wandb")
        w = cfg.wandb
        mode = w.mode or os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        run_id = state.get("wandb_run_id")
        self.run = wandb.init(
            project=w.project or os.environ.get("WANDB_PROJECT") or "tuneforge",
            name=w.name or os.environ.get("WANDB_NAME") or output_dir.resolve().name, entity=w.entity, group=w.group,
            tags=list(w.tags) or None, mode=mode, dir=str(output_dir), config=config,
            id=run_id, resume="allow" if run_id else None, reinit="create_new",
        )

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def state(self) -> dict:
        return {"wandb_run_id": self.run.id}

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


class Trackers:
    """The run's trackers; `log(record)` takes metrics.jsonl records. Empty when report_to is empty."""

    def __init__(self, cfg, output_dir, state: dict | None = None, resumed_step: int | None = None):
        output_dir = Path(output_dir)
        state = state or {}
        self.items = []
        names = list(getattr(cfg, "report_to", None) or [])
        config = _resolved_config(output_dir, cfg) if {"mlflow", "wandb"} & set(names) else {}
        try:
            for name in names:
                if name == "tensorboard":
                    self.items.append(TensorBoardTracker(output_dir, resumed_step))
                elif name == "mlflow":
                    self.items.append(MlflowTracker(cfg, output_dir, config, state))
                elif name == "wandb":
                    self.items.append(WandbTracker(cfg, output_dir, config, state))
        except BaseException:
            self.close("FAILED")
            raise

    def log(self, record: dict) -> None:
        values = scalars(record)
        if values:
            for tracker in self.items:
                tracker.log(int(record["step"]), values)

    def log_values(self, step: int, values: dict) -> None:
        """Tags chosen by the caller (self-training's per-round counts): finite numbers only."""
        values = {tag: float(v) for tag, v in values.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if values:
            for tracker in self.items:
                tracker.log(int(step), values)

    def state(self) -> dict:
        out: dict = {}
        for tracker in self.items:
            out.update(tracker.state())
        return out

    def close(self, status: str = "FINISHED") -> None:
        items, self.items = self.items, []
        for tracker in items:
            tracker.close(status)


def _resolved_config(output_dir: Path, cfg) -> dict:
    """The run's resolved config (output_dir/config.yaml, written by `train`), else the train section alone."""
    path = output_dir / "config.yaml"
    if path.is_file():
        import yaml

        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict):
            return data
    import dataclasses

    return {"train": json.loads(json.dumps(dataclasses.asdict(cfg), default=str))} if dataclasses.is_dataclass(cfg) else {}
