"""Preference data (pairs, skips, HH turns) and the reward task: the Bradley-Terry loss on padded batches equals
the formula on each pair alone, train() learns a separable preference, and bad rows are errors or counted skips."""
import json

import pytest
import torch
import torch.nn.functional as F

import tuneforge.models as models
from tuneforge.data.preferences import build_pairs, collate_pairs, hh_messages
from tuneforge.errors import ConfigError, DataError
from tuneforge.models.tiny import tiny_llama_config, tiny_tokenizer
from tuneforge.train import api
from tuneforge.train.tasks.reward import RewardTask

HH_PROMPT = "Human: hi there\n\nAssistant: hello!\n\nHuman: how are you?\n\nAssistant:"


def tiny_reward_model(seed: int = 0):
    """A tiny Llama with a scalar sequence-classification head (what kind: sequence-classification loads)."""
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(tiny_llama_config(num_labels=1)).eval()
    model.config._name_or_path = "tiny-llama"
    return model


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pair_rows(n: int, offset: int = 0) -> list[dict]:
    """Separable preferences: the chosen reply is polite, the rejected one rude."""
    return [{"prompt": f"Question {i + offset}?", "chosen": f"Thanks, answer {i}.", "rejected": f"No. Go away {i}!"}
            for i in range(n)]


def test_hh_prompt_becomes_turns():
    assert hh_messages(HH_PROMPT) == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "how are you?"},
    ]
    assert hh_messages("just a question") is None
    assert hh_messages("Human: unfinished\n\nAssistant: reply") is None  # does not end at the assistant's turn


def test_build_pairs_chat_and_raw_templates():
    tok = tiny_tokenizer()
    pairs, stats = build_pairs([{"prompt": HH_PROMPT, "chosen": "Fine.", "rejected": "Go."}], tok,
                               template="chat", max_length=512, append_eos=True)
    rendered = tok.decode(pairs[0]["prompt_ids"])
    assert rendered.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nhow are you?" in rendered
    assert pairs[0]["chosen_ids"] == tok.encode("Fine.") + [tok.eos_token_id]
    raw, _ = build_pairs([{"prompt": "I think", "chosen": "yes", "rejected": "no"}], tok, template="raw")
    assert tok.decode(raw[0]["prompt_ids"] + raw[0]["chosen_ids"]) == "I think yes"
    empty_prompt, _ = build_pairs([{"prompt": "", "chosen": "great film", "rejected": "dull film"}], tok,
                                  template="raw")
    assert empty_prompt[0]["prompt_ids"] == [] and tok.decode(empty_prompt[0]["chosen_ids"]) == "great film"
    assert stats.kept == 1 and not stats.skipped


def test_bad_rows_are_counted_skips_or_errors(tmp_path):
    tok = tiny_tokenizer()
    rows = pair_rows(2) + [
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "p", "chosen": "   ", "rejected": "x"},
        {"prompt": "p" * 300, "chosen": "x" * 30 + "yes", "rejected": "x" * 30 + "no"},
    ]
    pairs, stats = build_pairs(rows, tok, template="raw", max_length=64, max_prompt_length=40)
    assert stats.kept == 2 and stats.rows == 5
    assert stats.skipped == {"with chosen == rejected": 1, "with an empty reply": 1,
                             "identical after cutting to max_length": 1}
    assert stats.skipped_lines["with chosen == rejected"] == [3]
    assert stats.truncated_prompts == 1 and stats.truncated_replies == 2
    assert all(len(p["prompt_ids"]) + len(p["chosen_ids"]) <= 64 for p in pairs)
    summary = stats.summary()
    assert "kept 2 of 5 pairs" in summary and "chosen == rejected (line 3)" in summary
    with pytest.raises(DataError, match=r"x\.jsonl:2.*'rejected'"):
        build_pairs([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}], tok,
                    source="x.jsonl")
    with pytest.raises(DataError, match="'chosen' must be text"):
        build_pairs([{"prompt": "a", "chosen": 3, "rejected": "c"}], tok)


def test_loss_on_a_padded_batch_equals_each_pair_alone():
    from tuneforge.methods import add_adapter

    tok = tiny_tokenizer()
    model = tiny_reward_model()
    add_adapter(model, "lora", r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["score"],
                init_lora_weights=False)
    pairs, _ = build_pairs(pair_rows(3) + [{"prompt": "Longer prompt here", "chosen": "ok", "rejected": "nah"}],
                           tok, template="chat", max_length=128)
    task = RewardTask()
    task.pad_token_id = tok.pad_token_id
    batch = task.collate(pairs)
    assert task.num_targets(batch) == 4
    expected = 0.0
    for p in pairs:
        scores = [model(torch.tensor([p["prompt_ids"] + p[side]])).logits[0, 0] for side in ("chosen_ids", "rejected_ids")]
        expected = expected - F.logsigmoid(scores[0] - scores[1])
    assert torch.allclose(task.loss_sum(model, batch), expected, atol=1e-5)


def test_collate_pairs_layout():
    batch = collate_pairs([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5]}], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [1, 2, 4, 5]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 0], [0, 0, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


@pytest.fixture
def reward_config(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "_load_model", lambda cfg: tiny_reward_model(seed=1))
    monkeypatch.setattr(models, "load_tokenizer", lambda name: tiny_tokenizer())
    bad = [{"prompt": "p", "chosen": "same", "rejected": "same"}]
    return {
        "model": {"name": "tiny-llama", "kind": "sequence-classification", "num_labels": 1},
        "method": {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["score"]},
        "task": {"name": "reward", "template": "chat"},
        "data": {"train": write_jsonl(tmp_path / "train.jsonl", pair_rows(24) + bad),
                 "validation": write_jsonl(tmp_path / "val.jsonl", pair_rows(8, offset=100)), "max_length": 64},
        "train": {"max_steps": 12, "micro_batch_size": 4, "learning_rate": 2e-2, "lr_schedule": "constant"},
        "output_dir": str(tmp_path / "run"),
    }


def test_train_learns_the_preference_and_reports_skips(reward_config, tmp_path, capsys):
    from safetensors.torch import load_file

    result = api.train(reward_config, overrides=["train.eval_every=6"], progress=False)
    metrics = result.eval_metrics
    assert set(metrics) >= {"pairwise_accuracy", "mean_margin", "chosen_score", "rejected_score", "eval_loss"}
    assert metrics["pairwise_accuracy"] == 1.0 and metrics["mean_margin"] > 0
    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.score.weight" in saved  # the head travels with the adapter
    printed = capsys.readouterr().out
    assert "train: kept 24 of 25 pairs; skipped 1 with chosen == rejected (line 25)" in printed.split("trained")[-1]


def test_reward_needs_a_scalar_head(reward_config):
    reward_config["model"] = {"name": "tiny-llama"}
    with pytest.raises(ConfigError, match="sequence-classification"):
        api.train(reward_config, progress=False)


def test_an_untrained_head_is_an_error(reward_config):
    reward_config["method"] = {"name": "lora", "r": 4, "target_modules": ["q_proj"], "modules_to_save": []}
    with pytest.raises(ConfigError, match="reward head"):
        api.train(reward_config, progress=False)


def test_prompt_budget_must_leave_room(reward_config):
    reward_config["task"]["max_prompt_length"] = 64
    with pytest.raises(ConfigError, match="max_prompt_length"):
        api.train(reward_config, progress=False)
