"""The `reward` metric of `tuneforge eval` on the tiny Llama: a reward adapter (a `task: reward` run's adapter and
scalar head) scores prompt + reply exactly as its own sequence classifier scores the same tokens, whichever
system adapter is active; raw-text systems, a system's own prompt template and prompt_words; config errors."""
import json

import pytest
import torch

from tuneforge.config import config_from_dict
from tuneforge.config.eval import EvalSystem, EvalTask
from tuneforge.errors import ConfigError
from tuneforge.eval.generation import generate_with
from tuneforge.eval.harness import evaluate
from tuneforge.eval.reward_metric import reward_scores, reward_token_ids
from tuneforge.eval.systems import run_task
from tuneforge.models import load_model, load_tokenizer

from .common import write_jsonl

OPENINGS = ["the film is a quiet delight", "a dull and lifeless remake", "it never finds its feet at all",
            "warm funny and sharp throughout", "nothing here works"]


@pytest.fixture
def openings(tmp_path):
    return write_jsonl(tmp_path / "openings.jsonl", [{"text": t, "label": i % 2} for i, t in enumerate(OPENINGS)])


def classifier_scores(classifier, tok, prompts, replies):
    with torch.no_grad():
        return [float(classifier(torch.tensor([reward_token_ids(tok, p, r)])).logits[0, 0])
                for p, r in zip(prompts, replies)]


def test_reward_scores_equal_the_reward_models_own_classifier(tiny_base_dir, reward_model, lora_adapter):
    from tuneforge.io import load_adapter
    from tuneforge.methods import active_adapters

    classifier, rm = reward_model
    tok = load_tokenizer(str(tiny_base_dir))
    model = load_model(str(tiny_base_dir), device="cpu")
    load_adapter(model, lora_adapter, adapter_name="system")
    prompts, replies = OPENINGS[:4], ["so good", "", "and then some more words here", "!"]
    scores = reward_scores(model, tok, rm, prompts, replies, batch_size=3)  # padded batches of unequal rows
    expected = classifier_scores(classifier, tok, prompts, replies)
    # fp32, two layers, a few dozen tokens: the batched forward differs from one row alone by rounding only
    assert scores == pytest.approx(expected, abs=1e-4)
    assert active_adapters(model) == ["system"]  # the system's adapter is active again afterwards
    assert reward_token_ids(tok, "a b", "c") == tok.encode("a b c", add_special_tokens=False) or \
        reward_token_ids(tok, "a b", "c") == tok.encode("a b", add_special_tokens=False) + tok.encode(" c", add_special_tokens=False)


def test_eval_scores_raw_prompted_and_adapter_systems_by_reward(tmp_path, tiny_base_dir, reward_model,
                                                                lora_adapter, openings):
    classifier, rm = reward_model
    cfg = {"model": {"name": str(tiny_base_dir)}, "output_dir": str(tmp_path / "run"),
           "eval": {"num_samples": 5, "max_new_tokens": 5, "batch_size": 2,
                    "tasks": [{"name": "openings", "data": openings, "prompt": "{text}", "template": "raw",
                               "prompt_words": 3, "metrics": ["reward"], "reward_adapter": rm}],
                    "systems": [{"name": "base"},
                                {"name": "prompted", "template": "chat",
                                 "prompt": "Continue this review positively:\n{task_prompt}"},
                                {"name": "tuned", "adapter": lora_adapter}]}}
    result = evaluate(config_from_dict(cfg), out_dir=tmp_path / "out", resamples=200)
    rows = {r["system"]: r for r in result["rows"]}
    assert set(rows) == {"base", "prompted", "tuned"}
    tok = load_tokenizer(str(tiny_base_dir))
    fresh = load_model(str(tiny_base_dir), device="cpu")
    openings3 = [" ".join(t.split()[:3]) for t in OPENINGS]
    for name in rows:
        preds = [json.loads(line) for line in (tmp_path / "out" / "predictions" / f"openings.{name}.jsonl")
                 .read_text().splitlines()]
        assert [p["prompt"] for p in preds] == openings3  # every system is scored on the same opening
        replies = [p["prediction"] for p in preds]
        expected = classifier_scores(classifier, tok, openings3, replies)
        assert [p["scores"]["reward"] for p in preds] == pytest.approx(expected, abs=1e-4)
        assert rows[name]["metrics"]["reward"] == pytest.approx(sum(expected) / 5, abs=1e-4)
        low, high = rows[name]["intervals"]["reward"]
        assert low <= rows[name]["metrics"]["reward"] <= high
        if name == "base":  # raw continuation of the opening, as PPO's template: raw
            assert replies == generate_with(fresh, tok, openings3, max_new_tokens=5, chat=False)
        if name == "prompted":
            assert preds[0]["system_prompt"] == f"Continue this review positively:\n{openings3[0]}"
            convs = [[{"role": "user", "content": f"Continue this review positively:\n{o}"}] for o in openings3]
            assert replies == generate_with(fresh, tok, convs, max_new_tokens=5)
    assert set(rows["tuned"]["vs_first"]) >= {"system", "reward"}
    assert "reward" in (tmp_path / "out" / "results.md").read_text()


def test_reward_and_raw_config_errors(tiny_base_dir, openings):
    with pytest.raises(ConfigError, match="set reward_adapter"):
        EvalTask(name="t", data=openings, prompt="{text}", metrics=["reward"]).validate()
    with pytest.raises(ConfigError, match="no reference"):
        EvalTask(name="t", data=openings, prompt="{text}", metrics=["rougeL"]).validate()
    with pytest.raises(ConfigError, match="loss metric"):
        EvalTask(name="t", data=openings, prompt="{text}", target="{text}", template="raw",
                 metrics=["loss"]).validate()
    with pytest.raises(ConfigError, match="unknown template"):
        EvalSystem(name="s", template="plain").validate()
    with pytest.raises(ConfigError, match="prompt_words must be at least 1"):
        EvalTask(name="t", data=openings, prompt="{text}", target="{text}", prompt_words=0).validate()
    task = EvalTask(name="t", data=openings, prompt="{text}", target="{text}", template="raw", metrics=["rougeL"])
    task.validate()
    model, tok = load_model(str(tiny_base_dir), device="cpu"), load_tokenizer(str(tiny_base_dir))
    settings = config_from_dict({"eval": {"num_samples": 2, "max_new_tokens": 2, "batch_size": 2}}).eval
    with pytest.raises(ConfigError, match="cannot take demonstrations"):
        run_task(model, tok, task, EvalSystem(name="k1", shots=1), settings)
