"""End to end on a tiny model: `tuneforge train` and `tuneforge data preview` with ShareGPT, OpenAI DPO and a
Hugging Face dataset folder as the data."""
import json

import pytest
import yaml

from tuneforge.cli import data as data_cli
from tuneforge.cli.main import main

SHAREGPT = [{"conversations": [{"from": "human", "value": f"What is {i} plus {i}?"},
                               {"from": "gpt", "value": f"{2 * i}."}], "system": "You do sums."} for i in range(8)]
OPENAI_DPO = [{"input": {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}]},
               "preferred_output": [{"role": "assistant", "content": f"{2 * i}."}],
               "non_preferred_output": [{"role": "assistant", "content": f"{2 * i + 1}."}]} for i in range(8)]


def write_run(tmp_path, base, records, **sections):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {"model": {"name": str(base)}, "method": {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
           "data": {"train": str(data), "max_length": 96, **sections.pop("data", {})},
           "train": {"micro_batch_size": 2, "log_every": 1}, "output_dir": str(tmp_path / "run"),
           **sections}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(args):
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None)


def test_sharegpt_trains_and_previews(tmp_path, tiny_base_dir):
    path = write_run(tmp_path, tiny_base_dir, SHAREGPT)
    text = data_cli.preview_config(str(path), n=1)
    assert "format: sharegpt" in text and "⟦0.<|im_end|>⟧" in text and "You do sums." in text
    run_cli(["train", str(path), "--set", "train.max_steps=2"])
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in lines) == 2


def test_openai_dpo_trains_and_previews(tmp_path, tiny_base_dir):
    path = write_run(tmp_path, tiny_base_dir, OPENAI_DPO, task={"name": "dpo", "beta": 0.1})
    text = data_cli.preview_config(str(path), n=1)
    assert "preference pairs" in text and "chosen (3 tokens): ⟦0.<|im_end|>⟧" in text
    assert "kept 8 of 8 pairs" in text
    run_cli(["train", str(path), "--set", "train.max_steps=2"])
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_saved_dataset_folder_trains(tmp_path, tiny_base_dir):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(8)]).save_to_disk(
        str(tmp_path / "ds"))
    path = write_run(tmp_path, tiny_base_dir, SHAREGPT, data={"train": str(tmp_path / "ds")})
    assert "format: prompt_completion" in data_cli.preview_config(str(path), n=1)
    run_cli(["train", str(path), "--set", "train.max_steps=2"])
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
