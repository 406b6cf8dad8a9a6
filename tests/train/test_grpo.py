"""GRPO: the loss and its gradient against TRL's GRPOTrainer._compute_loss on the same log-probs, advantages and
masks (each loss normalisation, with and without KL, with a stale old policy), group advantages, micro-batched
steps equal to one big batch, the built-in rewards, failing rewards named with their prompt, bad settings and
prompts stopped before training, the reward rising on a tiny model, and train() end to end."""
import json
import math
import string
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

import tuneforge.models as models
from tuneforge.config.schema import TrainConfig
from tuneforge.errors import ConfigError, DataError, TuneforgeError
from tuneforge.models.tiny import tiny_llama, tiny_tokenizer
from tuneforge.train import api, grpo
from tuneforge.train.grpo_rewards import build_rewards, builtin_reward, score
from tuneforge.train.tasks.grpo import GRPOConfig, load_grpo_prompts

WORDS = ["hello", "the", "a cat", "we", "go to", "x", "it is", "no"]


def lowercase_share(prompts, completions):
    """A checkable reward: the share of lowercase ASCII letters in the completion."""
    return [sum(c in string.ascii_lowercase for c in r) / max(1, len(r)) for r in completions]


def policy(seed: int = 0):
    from tuneforge.methods import add_adapter

    model = tiny_llama(seed=seed, initializer_range=0.2)
    torch.manual_seed(seed)
    add_adapter(model, "lora", r=4, lora_alpha=8, target_modules=["o_proj", "down_proj"])
    return model


def trl_loss(logps, old, ref, advantages, mask, *, beta, loss_type, eps, eps_high, max_len):
    """TRL 1.16's GRPOTrainer._compute_loss, run on a stand-in trainer whose log-prob function returns `logps`
    (one process, no gradient accumulation, one generation batch per optimizer step)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    accelerator = SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x,
                                  gather_for_metrics=lambda x: x, sync_gradients=True)
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        loss_type=loss_type, epsilon_low=eps, epsilon_high=eps_high, use_vllm=False, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=max_len, accelerator=accelerator, _metrics={"train": defaultdict(list)})
    b, t = mask.shape
    inputs = {"prompt_ids": torch.zeros(b, 3, dtype=torch.long), "prompt_mask": torch.ones(b, 3, dtype=torch.long),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "num_items_in_batch": mask.sum()}
    if old is not None:
        inputs["old_per_token_logps"] = old
    if beta:
        inputs["ref_per_token_logps"] = ref
    return GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta,stale", [(0.0, False), (0.04, False), (0.1, True)])
def test_loss_and_gradient_equal_trl(loss_type, beta, stale):
    gen = torch.Generator().manual_seed(0)
    b, t, max_len = 6, 7, 9
    lengths = torch.tensor([7, 3, 1, 5, 7, 2])
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    base = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 3
    # a stale old policy: ratios well outside [1 - eps, 1 + eps] on some tokens, so clipping is exercised
    old = base + 0.5 * torch.randn(b, t, generator=gen, dtype=torch.float64) if stale else None
    ref = base + 0.3 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    advantages = grpo.group_advantages(torch.rand(b, generator=gen, dtype=torch.float64), 3)
    eps, eps_high = 0.2, 0.28

    ours_in = base.clone().requires_grad_(True)
    ours = grpo.grpo_loss(ours_in, old if stale else ours_in.detach(), ref, advantages, mask, beta=beta,
                          epsilon=eps, epsilon_high=eps_high, loss_type=loss_type, max_new_tokens=max_len)
    ours.backward()
    theirs_in = base.clone().requires_grad_(True)
    theirs = trl_loss(theirs_in, old, ref, advantages, mask, beta=beta, loss_type=loss_type, eps=eps,
                      eps_high=eps_high, max_len=max_len)
    theirs.backward()
    # float64, a few dozen terms: both sides differ only in summation order
    assert float(ours) == pytest.approx(float(theirs), rel=1e-12, abs=1e-14)
    assert torch.allclose(ours_in.grad, theirs_in.grad, rtol=1e-10, atol=1e-14)
    assert float(ours_in.grad[~mask].abs().max()) == 0.0  # padding gets no gradient
    if stale:
        assert float(theirs_in.grad.abs().sum()) > 0


def test_group_advantages():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = grpo.group_advantages(rewards, 4)
    first = rewards[:4]
    expected = (first - first.mean()) / (first.std() + 1e-4)  # Bessel-corrected std, as TRL's nanstd
    assert torch.allclose(adv[:4], expected)
    assert torch.equal(adv[4:], torch.zeros(4))  # a group that all agree teaches nothing
    assert torch.allclose(grpo.group_advantages(rewards, 4, scale=False)[:4], first - first.mean())


def tiny_cfg(**overrides) -> GRPOConfig:
    base = dict(rewards=["x"], num_generations=4, prompts_per_step=2, max_new_tokens=5, max_prompt_length=16,
                template="raw", beta=0.05)
    base.update(overrides)
    return GRPOConfig(**base)


def prompts(tok, words=WORDS):
    return [{"text": w, "ids": tok.encode(w), "index": i} for i, w in enumerate(words)]


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_give_the_gradient_of_one_batch(loss_type):
    tok = tiny_tokenizer()
    cfg = tiny_cfg(loss_type=loss_type, num_iterations=2)
    rewards = [("lowercase_share", lowercase_share)]
    grads = []
    for micro in (8, 3):
        model = policy()
        torch.manual_seed(1)
        batch = grpo.make_samples(model, tok, prompts(tok)[:2], rewards, cfg, micro)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        grpo.grpo_update(model, optimizer, scheduler, params, batch, cfg, TrainConfig(micro_batch_size=micro))
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert grads[0].abs().sum() > 0
    # fp32, sums over at most 8 rows: reassociation differences only
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_builtin_rewards():
    cols = {"answer": ["12", "12", "7", "x"]}
    texts = ["<answer> 12 </answer>", "so 3 + 9 = 12.", "<answer>8</answer>", "<answer>X</answer>"]
    tagged = builtin_reward("numeric_match", {"pattern": r"<answer>(.*?)</answer>"})
    assert tagged(None, texts[:3], answer=cols["answer"][:3]) == [1.0, 0.0, 0.0]
    assert builtin_reward("numeric_match", {})(None, texts[:3], answer=cols["answer"][:3]) == [1.0, 1.0, 0.0]
    assert builtin_reward("numeric_match", {"tolerance": 1})(None, texts[2:3], answer=["7"]) == [1.0]
    exact = builtin_reward("exact_match", {"pattern": r"<answer>(.*?)</answer>", "ignore_case": True})
    assert exact(None, texts, **cols) == [1.0, 0.0, 0.0, 1.0]
    fmt = builtin_reward("format", {"pattern": r"^<answer>.*</answer>$", "fullmatch": True})
    assert fmt(None, texts, **cols) == [1.0, 0.0, 1.0, 1.0]
    assert builtin_reward("length_penalty", {"max_chars": 10})(None, ["a" * 5, "a" * 15, "a" * 40]) == [0.0, -0.5, -1.0]
    check = builtin_reward("string_check", {"operation": "ilike"})
    assert check(None, ["The answer is PARIS", "Lyon"], answer=["paris", "paris"]) == [1.0, 0.0]
    assert builtin_reward("text_similarity", {})(None, ["abcd"], answer=["abcd"]) == [1.0]
    with pytest.raises(ConfigError, match="no option 'patern'"):
        builtin_reward("numeric_match", {"patern": "x"})
    with pytest.raises(ConfigError, match="unknown built-in reward 'numeric'"):
        build_rewards(["numeric"])
    with pytest.raises(ConfigError, match="not a regular expression"):
        build_rewards([{"name": "format", "pattern": "(("}])
    with pytest.raises(TuneforgeError, match="needs the record field 'answer'"):
        tagged(None, texts[:1])


def raises_on_third(prompts, completions):
    if "third" in prompts:
        raise KeyError("boom")
    return [1.0] * len(completions)


def nan_on_second(prompts, completions):
    return [math.nan if "second" in p else 0.5 for p in prompts]


def short_on_second(prompts, completions):
    return [0.0] * (len(completions) - ("second" in prompts))


def test_failing_rewards_are_named_with_their_prompt():
    group = 2
    texts = [t for t in ("first", "second", "third") for _ in range(group)]
    completions = ["a"] * len(texts)
    places = ["prompt 4 (line 5)", "prompt 9 (line 10)", "prompt 1 (line 2)"]
    with pytest.raises(TuneforgeError, match=r"raises_on_third failed on prompt 1 \(line 2\): KeyError"):
        score("raises_on_third", raises_on_third, texts, completions, {}, group, places)
    with pytest.raises(TuneforgeError, match=r"nan_on_second returned nan .* prompt 9 \(line 10\)"):
        score("nan_on_second", nan_on_second, texts, completions, {}, group, places)
    with pytest.raises(TuneforgeError, match=r"short_on_second returned 1 scores for the 2 completions of prompt 9"):
        score("short_on_second", short_on_second, texts, completions, {}, group, places)
    assert score("ok", lambda p, c, **kw: [len(kw)] * len(c), texts, completions, {"answer": [1] * 6}, group) == [1.0] * 6


def test_bad_settings_and_prompts_stop_before_training(tmp_path):
    with pytest.raises(ConfigError, match="num_generations must be at least 2"):
        GRPOConfig(num_generations=1).validate()
    with pytest.raises(ConfigError, match="reward_weights has 1 weights for 2 rewards"):
        GRPOConfig(rewards=["numeric_match", "exact_match"], reward_weights=[1.0]).validate()
    with pytest.raises(ConfigError, match="cannot load"):
        GRPOConfig(rewards=["no_such_module_here:f"]).validate()
    tok = tiny_tokenizer()
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "answer": 1}) + "\n" + json.dumps({"prompt": "z" * 40}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:2.*longer than task.max_prompt_length=16"):
        load_grpo_prompts(path, tiny_cfg(), tok, None, 0)
    kept, _ = load_grpo_prompts(path, tiny_cfg(max_prompt_length=64), tok, None, 0)
    assert kept[0]["fields"] == {"answer": 1} and kept[1]["line"] == 2


def run(out, steps, **overrides):
    tok = tiny_tokenizer()
    cfg = tiny_cfg(**overrides)
    train_cfg = TrainConfig(max_steps=steps, micro_batch_size=8, learning_rate=2e-2, lr_schedule="constant",
                            eval_every=steps // 2, save_every=2, seed=3)
    return grpo.run_grpo(policy(), tok, cfg, train_cfg, prompts(tok), prompts(tok, ["ab", "we go"]), out,
                         rewards=[("lowercase_share", lowercase_share)], progress=False)


def test_reward_rises_on_a_tiny_model(tmp_path):
    result = run(tmp_path, steps=24, beta=0.0, num_generations=6, prompts_per_step=4)
    train = [r for r in result.history if "lr" in r]
    rewards = [r["reward"] for r in train]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.15, rewards
    evals = [r["eval_reward"] for r in result.history if "eval_reward" in r]
    assert evals[-1] > evals[0] + 0.3, evals
    assert all("kl" not in r for r in train)  # beta = 0: no reference pass, no KL
    assert (tmp_path / "reward.png").is_file() and "eval_lowercase_share" in result.eval_metrics


def test_resume_repeats_the_same_steps(tmp_path):
    whole = [r for r in run(tmp_path / "a", steps=4).history if "lr" in r]
    run(tmp_path / "b", steps=2)
    resumed = [r for r in run(tmp_path / "b", steps=4).history if "lr" in r]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(whole, resumed):
        for key in ("reward", "kl", "loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_train_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(api, "_load_model", lambda cfg: tiny_llama(seed=0, initializer_range=0.2))
    monkeypatch.setattr(models, "load_tokenizer", lambda name: tiny_tokenizer())
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"{a} + {a}", "answer": 2 * a} for a in range(8)] + [{"prompt": "  ", "answer": 0}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model": {"name": "tiny-llama"},
        "method": {"name": "lora", "r": 4, "target_modules": ["o_proj", "down_proj"]},
        "task": {"name": "grpo", "rewards": ["numeric_match", f"{__name__}:lowercase_share",
                                             {"name": "length_penalty", "max_chars": 3}],
                 "reward_weights": [1.0, 0.5, 0.1], "template": "raw", "num_generations": 3, "prompts_per_step": 2,
                 "max_new_tokens": 4, "max_prompt_length": 16, "num_iterations": 2, "loss_type": "dapo"},
        "data": {"train": str(data), "validation": str(data), "limit_eval": 4},
        "train": {"max_steps": 2, "micro_batch_size": 4, "learning_rate": 1e-2},
        "output_dir": str(tmp_path / "run"),
    }
    result = api.train(config, progress=False)
    out = tmp_path / "run"
    assert result.steps == 2 and {"eval_reward", "eval_numeric_match", "eval_lowercase_share"} <= set(result.eval_metrics)
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "reward.png").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "lr" in r]
    assert len(train) == 2 and all("kl" in r and "reward/numeric_match" in r for r in train)
    assert "kept 8 of 9 prompts; skipped 1 empty (line 9)" in capsys.readouterr().out
    config["task"]["max_new_tokens"] = 10_000
    config["output_dir"] = str(tmp_path / "too-long")
    with pytest.raises(ConfigError, match="exceeds the model's context"):
        api.train(config, progress=False)


def test_uniform_groups_are_dropped_and_a_step_without_any_moves_nothing():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert grpo.informative_rows(rewards, 4).tolist() == [4, 5, 6, 7]
    assert grpo.informative_rows(torch.zeros(8), 4).numel() == 0
    tok = tiny_tokenizer()
    cfg = tiny_cfg(drop_uniform_groups=True, beta=0.0)
    model = policy()
    batch = grpo.make_samples(model, tok, prompts(tok)[:2], [("same", lambda p, c: [0.5] * len(c))], cfg, 8)
    assert batch["train_rows"].numel() == 0 and float(batch["advantages"].abs().sum()) == 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for p in params:  # a moment estimate from an earlier step, which AdamW would keep applying
        p.grad = torch.ones_like(p)
    optimizer.step()
    moved = [p.detach().clone() for p in params]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    stats = grpo.grpo_update(model, optimizer, scheduler, params, batch, cfg, TrainConfig(micro_batch_size=8))
    assert stats["skipped"] == 1 and scheduler.last_epoch == 1
    assert all(torch.equal(a, b) for a, b in zip(moved, params))
    assert not all(torch.equal(a, b) for a, b in zip(before, moved))


def test_dropping_uniform_groups_keeps_the_gradient_of_the_informative_ones():
    """The uniform groups add exactly nothing to the summed loss (every advantage 0, beta 0), so with a per-step
    normaliser over the kept rows the gradient is the full batch's times rows / kept rows (loss grpo)."""
    tok = tiny_tokenizer()
    reward = [("alternating", lambda p, c: [float(i < 4 and i % 2 == 0) for i in range(len(c))])]  # 2nd group: all 0
    grads, kept = [], []
    for drop in (False, True):
        model = policy()
        torch.manual_seed(3)
        cfg = tiny_cfg(drop_uniform_groups=drop, beta=0.0)
        batch = grpo.make_samples(model, tok, prompts(tok)[:2], reward, cfg, 8)
        kept.append(batch["train_rows"].numel())
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        grpo.grpo_update(model, optimizer, scheduler, params, batch, cfg, TrainConfig(micro_batch_size=8))
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert kept == [8, 4] and grads[1].abs().sum() > 0
    # fp32 sums over at most 8 rows: reassociation differences only
    assert torch.allclose(grads[1], grads[0] * kept[0] / kept[1], rtol=1e-4, atol=1e-6)


def test_save_best_returns_the_best_validation_step_and_test_prompts_are_scored_on_it(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "_load_model", lambda cfg: tiny_llama(seed=0, initializer_range=0.2))
    monkeypatch.setattr(models, "load_tokenizer", lambda name: tiny_tokenizer())
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": w}) + "\n" for w in WORDS))
    config = {
        "model": {"name": "tiny-llama"},
        "method": {"name": "lora", "r": 4, "target_modules": ["o_proj", "down_proj"]},
        "task": {"name": "grpo", "rewards": [f"{__name__}:lowercase_share"], "template": "raw", "num_generations": 3,
                 "prompts_per_step": 2, "max_new_tokens": 4, "max_prompt_length": 16, "beta": 0.0,
                 "drop_uniform_groups": True, "test_prompts": str(data)},
        "data": {"train": str(data), "validation": str(data), "limit_eval": 4},
        "train": {"max_steps": 4, "micro_batch_size": 4, "learning_rate": 5e-2, "eval_every": 1,
                  "save_best": "eval_lowercase_share", "save_best_mode": "max"},  # auto reads "wer" in it
        "output_dir": str(tmp_path / "run"),
    }
    result = api.train(config, progress=False)
    evals = [r for r in result.history if "eval_reward" in r]
    tests = [r for r in result.history if "test_reward" in r]
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert len(evals) == 5 and len(tests) == 2
    assert best["value"] == max(r["eval_lowercase_share"] for r in evals)
    assert result.eval_metrics["eval_lowercase_share"] == best["value"]
    assert result.eval_metrics["test_reward"] == tests[-1]["test_reward"]
    if best["step"] == 0:  # the untouched adapter was best: the returned weights are the starting ones
        assert tests[-1]["test_reward"] == tests[0]["test_reward"]
