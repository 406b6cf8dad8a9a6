"""The evaluation harness end to end on the tiny Llama: every task type, zero-/few-shot and adapter systems in
one table, predictions on disk, config errors with file:line:key, and the CLI verb."""
import json
from pathlib import Path

import pytest
import yaml

from tuneforge.cli.main import main
from tuneforge.config import config_from_dict, load_config
from tuneforge.errors import ConfigError, DataError
from tuneforge.config.eval import EvalSystem, EvalTask
from tuneforge.eval.harness import evaluate
from tuneforge.eval.systems import run_task
from tuneforge.eval.generation import generate_with
from tuneforge.models import load_model, load_tokenizer

from .common import summary_task


def settings(**overrides):
    return config_from_dict({"eval": dict({"num_samples": 3, "max_new_tokens": 4, "batch_size": 2}, **overrides)}).eval


@pytest.fixture
def base(tiny_base_dir):
    return load_model(str(tiny_base_dir), device="cpu"), load_tokenizer(str(tiny_base_dir))


def test_generate_task_scores_replies_and_reference_loss(base, data_files):
    model, tok = base
    task = EvalTask(**summary_task(data_files))
    metrics, rows = run_task(model, tok, task, EvalSystem(name="zero-shot"), settings())
    assert set(metrics) == {"rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match", "loss", "perplexity"}
    assert len(rows) == 3 and rows[0]["references"] == ["cats works", "cats ok"]
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    assert [r["prediction"] for r in rows] == generate_with(model, tok, prompts, max_new_tokens=4)
    assert metrics["perplexity"] > 1 and all("loss" in r and "rougeL" in r["scores"] for r in rows)


def test_few_shot_prompts_carry_demonstrations(base, data_files, encoder_dir):
    from tuneforge.eval.systems import EncoderCache

    model, tok = base
    task = EvalTask(**summary_task(data_files, metrics=["rougeL"]))
    encoder = EncoderCache(encoder_dir, None)
    for selection in ("random", "retrieved"):
        _, rows = run_task(model, tok, task, EvalSystem(name="k2", shots=2, selection=selection), settings(), encoder)
        assert all(len(r["demonstrations"]) == 2 and len(set(r["demonstrations"])) == 2 for r in rows)
    with pytest.raises(ConfigError, match="no demonstrations file"):
        run_task(model, tok, EvalTask(**summary_task(data_files, demonstrations=None)),
                 EvalSystem(name="k2", shots=2), settings())


def test_choice_and_perplexity_tasks(base, data_files):
    model, tok = base
    choice = EvalTask(name="nli", data=data_files["nli"], type="choice", prompt="{premise} => {hypothesis}?",
                      choices=["yes", "no"], label="label", metrics=["accuracy", "f1"])
    metrics, rows = run_task(model, tok, choice, EvalSystem(name="zs"), settings(num_samples=6))
    assert set(metrics) == {"accuracy", "f1"} and 0 <= metrics["accuracy"] <= 100
    assert all(r["prediction"] in ("yes", "no") and len(r["choice_nll"]) == 2 for r in rows)
    text = EvalTask(name="text", data=data_files["text"], type="perplexity", prompt="{output}")
    metrics, rows = run_task(model, tok, text, EvalSystem(name="zs"), settings(num_samples=10))
    assert set(metrics) == {"loss", "perplexity"} and len(rows) == 5


def test_evaluate_writes_one_table_with_every_system(eval_config, lora_adapter, tmp_path):
    eval_config["eval"]["systems"].append({"name": "LoRA", "adapter": lora_adapter})
    result = evaluate(eval_config, log=lambda *_: None)
    out = Path(eval_config["output_dir"]) / "eval"
    assert [r["system"] for r in result["rows"]] == ["zero-shot", "random k=2", "retrieved k=2", "LoRA"]
    assert all(r["n"] == 3 for r in result["rows"])
    table = (out / "results.md").read_text()
    assert "| system | n | rouge1 ↑" in table and "| LoRA | 3 |" in table and "loss ↓" in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"])) and saved["settings"]["max_new_tokens"] == 4
    predictions = sorted(p.name for p in (out / "predictions").glob("*.jsonl"))
    assert predictions == ["sum.lora.jsonl", "sum.random-k-2.jsonl", "sum.retrieved-k-2.jsonl", "sum.zero-shot.jsonl"]
    lora_rows = [json.loads(line) for line in (out / "predictions" / "sum.lora.jsonl").read_text().splitlines()]
    zero_rows = [json.loads(line) for line in (out / "predictions" / "sum.zero-shot.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in lora_rows] != [r["loss"] for r in zero_rows]  # the adapter is applied
    again = evaluate(dict(eval_config, eval=dict(eval_config["eval"], systems=[{"name": "zero-shot"}])),
                     out_dir=tmp_path / "again", log=lambda *_: None)
    assert again["rows"][0]["metrics"] == result["rows"][0]["metrics"]  # base rows unaffected by loaded adapters


def test_evaluate_defaults_to_the_runs_validation_data_and_adapter(tiny_base_dir, data_files, lora_adapter, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(lora_adapter, run / "adapter")
    cfg = {"model": {"name": str(tiny_base_dir)}, "output_dir": str(run),
           "data": {"train": data_files["sum_train"], "validation": data_files["sum_val"], "prompt": "{document}",
                    "target": "{summary}"},
           "eval": {"max_new_tokens": 3, "batch_size": 3}}
    rows = evaluate(cfg, log=lambda *_: None)["rows"]
    assert [r["system"] for r in rows] == ["base (zero-shot)", "fine-tuned"]
    assert set(rows[0]["metrics"]) == {"rouge1", "rouge2", "rougeL", "loss", "perplexity"}


@pytest.mark.parametrize("task_patch,key,fragment", [
    ({"metrics": ["rouge", "meteor"]}, "eval.tasks.metrics", "unknown metric 'meteor'"),
    ({"type": "classify"}, "eval.tasks.type", "unknown task type"),
    ({"target": None, "references": None}, "eval.tasks.target", "no reference"),
    ({"limit": 0}, "eval.tasks.limit", "at least 1"),
    ({"format": "alpaca"}, "eval.tasks.format", "apply to format 'template'"),
])
def test_bad_task_config_names_file_line_key(tmp_path, data_files, task_patch, key, fragment):
    task = summary_task(data_files)
    task.update(task_patch)
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"eval": {"tasks": [task]}}, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path) and info.value.key == key and fragment in str(info.value)
    assert info.value.line is not None


def test_bad_system_and_duplicate_names(data_files):
    with pytest.raises(ConfigError, match="selection"):
        config_from_dict({"eval": {"systems": [{"name": "x", "shots": 2, "selection": "nearest"}]}})
    with pytest.raises(ConfigError, match="unique"):
        config_from_dict({"eval": {"systems": [{"name": "x"}, {"name": "x"}]}})


def test_bad_record_names_file_and_line(base, data_files, tmp_path):
    model, tok = base
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"document": "a", "summary": "b"}\n{"document": "c"}\n')
    with pytest.raises(DataError) as info:
        run_task(model, tok, EvalTask(name="t", data=str(bad), prompt="{document}", target="{summary}"),
                 EvalSystem(name="zs"), settings())
    assert (info.value.file, info.value.line, info.value.key) == (str(bad), 2, "summary")


def test_cli_eval_prints_the_table(eval_config, tmp_path, capsys):
    eval_config["eval"]["systems"] = [{"name": "zero-shot"}]
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(eval_config))
    with pytest.raises(SystemExit) as info:
        main(["eval", str(path), "--set", "eval.num_samples=2", "--out", str(tmp_path / "cli")])
    assert info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "| zero-shot | 2 |" in printed and str(tmp_path / "cli" / "results.md") in printed


def test_a_mixture_run_is_scored_per_task(tiny_base_dir, data_files, tmp_path):
    cfg = {"model": {"name": str(tiny_base_dir)}, "output_dir": str(tmp_path / "run"),
           "data": {"mixture": [
               {"name": "sum", "train": data_files["sum_train"], "validation": data_files["sum_val"],
                "prompt": "{document}", "target": "{summary}"},
               {"name": "inst", "train": data_files["alpaca"], "validation": data_files["alpaca"], "format": "alpaca"},
           ]},
           "eval": {"max_new_tokens": 2, "metrics": ["rougeL"]}}
    rows = evaluate(cfg, log=lambda *_: None)["rows"]
    assert [(r["task"], r["system"]) for r in rows] == [("sum", "base (zero-shot)"), ("inst", "base (zero-shot)")]
    assert set(rows[1]["metrics"]) == {"rougeL", "loss", "perplexity"}
