"""Shared set-up for the evaluation tests: tiny models saved as local directories, small data files, a config."""
import pytest
import torch

from .common import summary_task, write_jsonl


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def encoder_dir(tmp_path):
    """A tiny BERT + the tiny tokenizer as a local encoder directory (what eval.encoder may point at)."""
    from tuneforge.models import tiny_bert, tiny_tokenizer

    path = tmp_path / "encoder"
    tiny_bert().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture
def data_files(tmp_path):
    summaries = [{"document": f"paper {i} about {w}", "summary": f"{w} works", "references": [f"{w} works", f"{w} ok"]}
                 for i, w in enumerate(["cats", "dogs", "fish", "birds", "ants", "bees"])]
    nli = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 2} for i in range(6)]
    text = [{"output": f"Some general text number {i}, written plainly."} for i in range(5)]
    return {
        "sum_val": write_jsonl(tmp_path / "sum_val.jsonl", summaries[:3]),
        "sum_train": write_jsonl(tmp_path / "sum_train.jsonl", summaries[3:]),
        "nli": write_jsonl(tmp_path / "nli.jsonl", nli),
        "text": write_jsonl(tmp_path / "text.jsonl", text),
        "alpaca": write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": f"Say {w}", "input": "", "output": w}
                                                          for w in ("yes", "no", "maybe")]),
    }


@pytest.fixture
def eval_config(tmp_path, tiny_base_dir, encoder_dir, data_files):
    """A run config (as a mapping) scoring a summary task and two probes with the tiny Llama."""
    return {
        "model": {"name": str(tiny_base_dir)},
        "output_dir": str(tmp_path / "run"),
        "eval": {
            "num_samples": 3, "max_new_tokens": 4, "batch_size": 2, "encoder": encoder_dir,
            "tasks": [summary_task(data_files)],
            "systems": [{"name": "zero-shot"}, {"name": "random k=2", "shots": 2},
                        {"name": "retrieved k=2", "shots": 2, "selection": "retrieved"}],
            "probes": [
                {"name": "instructions", "data": data_files["alpaca"], "format": "alpaca", "metrics": ["rougeL", "loss"]},
                {"name": "general text", "type": "perplexity", "data": data_files["text"], "prompt": "{output}"},
            ],
        },
    }


@pytest.fixture
def lora_adapter(tmp_path, tiny_base_dir):
    """A LoRA adapter with random (non-identity) weights for the tiny base, saved in peft's layout."""
    from tuneforge.io import save_adapter
    from tuneforge.methods import add_adapter
    from tuneforge.models import load_model

    torch.manual_seed(3)
    model = load_model(str(tiny_base_dir), device="cpu")
    add_adapter(model, "lora", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                init_lora_weights=False)
    path = tmp_path / "adapter"
    save_adapter(model, path, base_model_name=str(tiny_base_dir))
    return str(path)


@pytest.fixture
def reward_model(tmp_path, tiny_base_dir):
    """(classifier, adapter dir): a tiny Llama sequence classifier on the tiny base's weights with a LoRA and a
    random scalar head, saved as a reward adapter (modules_to_save: score), as `task: reward` saves one."""
    from transformers import LlamaForSequenceClassification

    from tuneforge.io import save_adapter
    from tuneforge.methods import add_adapter
    from tuneforge.models import load_model
    from tuneforge.models.tiny import tiny_llama_config

    base = load_model(str(tiny_base_dir), device="cpu")
    classifier = LlamaForSequenceClassification(tiny_llama_config(num_labels=1)).eval()
    classifier.model.load_state_dict(base.model.state_dict())
    torch.manual_seed(5)
    add_adapter(classifier, "lora", r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["score"],
                init_lora_weights=False)
    path = tmp_path / "rm"
    save_adapter(classifier, path, base_model_name=str(tiny_base_dir))
    return classifier, str(path)
