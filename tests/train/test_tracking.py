"""train.report_to: what TensorBoard, MLflow and W&B receive, read back with their own readers (tensorboard's
EventAccumulator, MLflow's client, W&B's offline run folder). Offline: MLflow to a file store, W&B offline."""
import json

import pytest
import yaml

import tuneforge.models as models
from tuneforge.models.tiny import tiny_llama, tiny_tokenizer
from tuneforge.train import api
from tuneforge.train.tracking import flat_params, scalars

RECORDS = [{"instruction": f"Say {w}", "input": "", "output": f"{w} {w}!"} for w in ("hi", "yes", "no", "ok", "why")]
TRAIN_TAGS = {"train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_s", "train/epoch"}


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "_load_model", lambda cfg: tiny_llama(seed=1))
    monkeypatch.setattr(models, "load_tokenizer", lambda name: tiny_tokenizer())
    for var in ("WANDB_MODE", "WANDB_API_KEY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return {
        "model": {"name": "tiny-llama"},
        "method": {"name": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"]},
        "task": "sft",
        "data": {"train": str(data), "validation": str(data), "max_length": 64, "packing": True},
        "train": {"max_steps": 3, "micro_batch_size": 2, "learning_rate": 1e-3, "eval_every": 2},
        "output_dir": str(tmp_path / "run"),
    }


def _history(out):
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "lr" in r], [r for r in lines if "lr" not in r]


def test_tensorboard_events_read_back(config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config["train"]["report_to"] = ["tensorboard"]
    api.train(config, progress=False)
    out = tmp_path / "run"
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == TRAIN_TAGS | {"eval/eval_loss", "eval/perplexity"}
    train, evals = _history(out)
    for tag, key in (("train/loss", "loss"), ("train/learning_rate", "lr"), ("train/grad_norm", "grad_norm"),
                     ("train/tokens_per_s", "tokens_per_s")):
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        # event files store float32 scalars: one rounding, relative error <= 2^-24
        assert got == [(r["step"], pytest.approx(r[key], rel=2**-23)) for r in train]
    assert [(e.step, e.value) for e in events.Scalars("eval/eval_loss")] == [
        (r["step"], pytest.approx(r["eval_loss"], rel=2**-23)) for r in evals]
    assert [r["step"] for r in evals] == [2, 3]
    assert not (out / "mlflow.db").exists() and not (out / "wandb").exists()


def test_mlflow_run_read_back_with_its_client(config, tmp_path):
    from mlflow.tracking import MlflowClient

    config["train"]["report_to"] = ["mlflow"]
    api.train(config, progress=False)
    out = tmp_path / "run"
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tuneforge")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert run.data.params == flat_params(resolved)
    assert run.data.params["train.learning_rate"] == "0.001" and run.data.params["method.name"] == "lora"
    train, evals = _history(out)
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in loss) == [(r["step"], r["loss"]) for r in train]  # float64: exact
    evals_logged = client.get_metric_history(run.info.run_id, "eval/perplexity")
    assert sorted((m.step, m.value) for m in evals_logged) == [(r["step"], r["perplexity"]) for r in evals]


def test_wandb_offline_run_files(config, tmp_path):
    config["train"]["report_to"] = ["wandb"]
    config["train"]["wandb"] = {"project": "demo", "tags": ["tiny"]}
    api.train(config, progress=False)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))  # the offline record `wandb sync` uploads


def test_scalars_split_train_and_eval_lines():
    train = {"step": 3, "epoch": 0.5, "loss": 2.0, "lr": 1e-3, "grad_norm": 0.5, "tokens": 10, "tokens_per_s": 9.0,
             "elapsed_s": 1.0}
    assert scalars(train) == {"train/loss": 2.0, "train/learning_rate": 1e-3, "train/grad_norm": 0.5,
                              "train/tokens_per_s": 9.0, "train/epoch": 0.5}
    assert scalars({"step": 3, "epoch": 0.5, "eval_loss": float("nan"), "accuracy": 0.75, "elapsed_s": 2.0,
                    "note": "x"}) == {"eval/accuracy": 0.75}


def test_tensorboard_resume_and_fresh_start(tmp_path, sft_task):
    """A resumed run drops the events logged after its checkpoint (purge_step); a fresh run (resume=False)
    replaces the old run's curves as it replaces its checkpoints and metrics.jsonl."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tuneforge.train import run_training

    from .common import make_cfg, make_examples, make_model

    def steps():
        events = EventAccumulator(str(tmp_path / "tensorboard"))
        events.Reload()
        return [e.step for e in events.Scalars("train/loss")]

    train = make_examples(16)
    cfg = make_cfg(max_steps=4, save_every=2, keep_last=5, report_to=["tensorboard"])
    run_training(make_model(), sft_task, train, [], cfg, tmp_path, progress=False)
    assert steps() == [1, 2, 3, 4]
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "step-4")  # as if the run died after logging steps 3 and 4
    run_training(make_model(), sft_task, train, [], cfg, tmp_path, progress=False)
    assert steps() == [1, 2, 3, 4]  # 3 and 4 from before the resume were purged, not doubled
    run_training(make_model(), sft_task, train, [], make_cfg(max_steps=2, report_to=["tensorboard"]), tmp_path,
                 resume=False, progress=False)
    assert steps() == [1, 2]


def test_mlflow_resumed_run_continues_the_same_run(tmp_path, sft_task, monkeypatch):
    """The MLflow run id travels in the checkpoint: a resumed run appends to it instead of starting another."""
    import shutil

    from mlflow.tracking import MlflowClient

    from tuneforge.train import run_training

    from .common import make_cfg, make_examples, make_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train = make_examples(16)
    cfg = make_cfg(max_steps=4, save_every=2, keep_last=5, report_to=["mlflow"])
    run_training(make_model(), sft_task, train, [], cfg, tmp_path, progress=False)
    shutil.rmtree(tmp_path / "checkpoints" / "step-4")
    run_training(make_model(), sft_task, train, [], cfg, tmp_path, progress=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tuneforge").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["train.max_steps"] == "4"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == [1, 2, 3, 3, 4, 4]  # MLflow keeps every logged point: steps 3-4 of both sessions
