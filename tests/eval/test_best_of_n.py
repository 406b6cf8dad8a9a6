"""`best_of_n_pairs` and `tuneforge best-of-n` on the tiny Llama: each pair's chosen and rejected replies are the
highest- and lowest-scored of the prompt's samples by the reward adapter (checked against the reward model's own
classifier), ties and empty replies are dropped, and the CLI writes pairs `task: dpo` reads."""
import json

import pytest
import torch

from tuneforge.eval import best_of_n as bon
from tuneforge.eval.best_of_n import best_of_n_pairs
from tuneforge.eval.reward_metric import reward_token_ids
from tuneforge.models import load_model, load_tokenizer

from .common import write_jsonl

PROMPTS = ["the film is a quiet", "a dull and lifeless", "it never finds its"]


def classifier_score(classifier, tok, prompt, reply):
    with torch.no_grad():
        return float(classifier(torch.tensor([reward_token_ids(tok, prompt, reply)])).logits[0, 0])


def test_pairs_are_the_best_and_worst_sample_by_the_reward_model(tiny_base_dir, reward_model, monkeypatch):
    classifier, rm = reward_model
    tok, model = load_tokenizer(str(tiny_base_dir)), load_model(str(tiny_base_dir), device="cpu")
    sampled = []
    real_generate = bon.generate_with

    def recording(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        sampled.extend(out)
        return out

    monkeypatch.setattr(bon, "generate_with", recording)
    pairs = best_of_n_pairs(model, tok, rm, PROMPTS, samples=3, max_new_tokens=5, batch_size=4, seed=1)
    assert len(sampled) == 3 * len(PROMPTS)  # prompts are batched whole: 4 // 3 = 1 prompt per generate call
    by_prompt = {p: sampled[i * 3 : (i + 1) * 3] for i, p in enumerate(PROMPTS)}
    assert pairs, "the random tiny model's samples differ, so some prompts give a pair"
    for pair in pairs:
        replies = [r for r in by_prompt[pair["prompt"]] if r]
        scores = {r: classifier_score(classifier, tok, pair["prompt"], r) for r in replies}
        # fp32, two layers, a few dozen tokens: batched vs one-row scores differ by rounding only
        assert pair["chosen_reward"] == pytest.approx(max(scores.values()), abs=1e-4)
        assert pair["rejected_reward"] == pytest.approx(min(scores.values()), abs=1e-4)
        assert pair["chosen"] in replies and pair["rejected"] in replies and pair["chosen"] != pair["rejected"]
        assert pair["chosen_reward"] > pair["rejected_reward"]


def test_ties_empty_replies_and_margin_drop_prompts(tiny_base_dir, reward_model, monkeypatch):
    _, rm = reward_model
    tok, model = load_tokenizer(str(tiny_base_dir)), load_model(str(tiny_base_dir), device="cpu")
    replies = iter([["same", "same"], ["", "one word"], ["good", "bad"]])
    monkeypatch.setattr(bon, "generate_with", lambda *a, **k: next(replies))
    pairs = best_of_n_pairs(model, tok, rm, PROMPTS, samples=2, batch_size=2)
    assert [p["prompt"] for p in pairs] == [PROMPTS[2]]  # a tie, and one non-empty reply, make no pair
    replies = iter([["same", "same"], ["", "one word"], ["good", "bad"]])
    gap = pairs[0]["chosen_reward"] - pairs[0]["rejected_reward"]
    assert best_of_n_pairs(model, tok, rm, PROMPTS, samples=2, batch_size=2, min_margin=gap + 1) == []
    with pytest.raises(ValueError, match="at least 2"):
        best_of_n_pairs(model, tok, rm, PROMPTS, samples=1)


def test_cli_writes_dpo_pairs_and_rejects_bad_input(tmp_path, tiny_base_dir, reward_model):
    from tuneforge.cli.main import main

    _, rm = reward_model
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": t + " movie indeed"} for t in PROMPTS] + [{"text": "short"}])
    out = tmp_path / "pairs.jsonl"
    args = ["best-of-n", "--data", data, "--reward-adapter", rm, "--out", str(out), "--prompt-words", "3",
            "--samples", "3", "--max-new-tokens", "4", "--base", str(tiny_base_dir)]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(set(r) == {"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward"} for r in rows)
    assert {r["prompt"] for r in rows} <= {" ".join(p.split()[:3]) for p in PROMPTS}  # "short" is skipped
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"body": "no text field here"}])
    with pytest.raises(SystemExit) as failed:
        main([*args[:2], bad, *args[3:]])
    assert failed.value.code != 0


def test_context_samples_more_replies_inside_the_context_and_pairs_them_with_the_bare_prompt(
        tiny_base_dir, reward_model, monkeypatch):
    """Context distillation: half the replies come from the prompt inside the context; all are scored against the
    bare prompt, and the best and worst of the pool make the pair."""
    classifier, rm = reward_model
    tok, model = load_tokenizer(str(tiny_base_dir)), load_model(str(tiny_base_dir), device="cpu")
    asked = []
    canned = iter([["plain one", "plain two", "steered one", "steered two"] for _ in PROMPTS])

    def fake_generate(model, tokenizer, prompts, **kwargs):
        asked.extend(prompts)
        return next(canned)

    monkeypatch.setattr(bon, "generate_with", fake_generate)
    context = "A glowing review:\n\n{prompt}"
    pairs = best_of_n_pairs(model, tok, rm, PROMPTS, samples=2, batch_size=4, context=context)
    assert asked == [v for p in PROMPTS for v in (p, p, context.replace("{prompt}", p), context.replace("{prompt}", p))]
    assert pairs and {p["prompt"] for p in pairs} <= set(PROMPTS)
    for pair in pairs:
        scores = {r: classifier_score(classifier, tok, pair["prompt"], r)
                  for r in ("plain one", "plain two", "steered one", "steered two")}
        assert pair["chosen"] == max(scores, key=scores.get) and pair["rejected"] == min(scores, key=scores.get)
    with pytest.raises(ValueError, match="prompt"):
        best_of_n_pairs(model, tok, rm, PROMPTS, samples=2, context="no placeholder")


def test_cli_refuses_a_context_without_the_prompt_placeholder(tmp_path, tiny_base_dir, reward_model, capsys):
    from tuneforge.cli.main import main

    _, rm = reward_model
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": t + " movie indeed"} for t in PROMPTS])
    out = tmp_path / "pairs.jsonl"
    with pytest.raises(SystemExit) as failed:
        main(["best-of-n", "--data", data, "--reward-adapter", rm, "--out", str(out), "--base", str(tiny_base_dir),
              "--context", "A glowing review:"])
    assert failed.value.code != 0 and not out.exists()
    assert "--context" in capsys.readouterr().err
