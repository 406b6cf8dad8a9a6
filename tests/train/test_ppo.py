"""PPO: GAE against a direct sum, log-probs of left-padded rollouts against each sequence alone, the reference
as the base model, a reward adapter on the shared base scoring as its own sequence classifier does, the KL
controller, the reward rising on a tiny model with a programmatic reward, train() end to end, exact resume, and
bad prompts counted or named."""
import json
import string

import pytest
import torch

import tuneforge.models as models
from tuneforge.config.schema import TrainConfig
from tuneforge.errors import ConfigError, DataError
from tuneforge.models.tiny import tiny_llama, tiny_tokenizer
from tuneforge.train import api
from tuneforge.train import ppo, rollout
from tuneforge.train.tasks.ppo import PPOConfig, load_prompts

WORDS = ["hello", "the", "a cat", "we", "go to", "x", "it is", "no"]


def lowercase_share(prompts, responses):
    """A checkable reward: the share of lowercase ASCII letters in the response."""
    return [sum(c in string.ascii_lowercase for c in r) / max(1, len(r)) for r in responses]


def policy(seed: int = 0, init_range: float = 0.2):
    """Tiny Llama with a LoRA policy adapter; a wider init than the default makes its outputs far from uniform,
    so a few dozen PPO steps can move them."""
    from tuneforge.methods import add_adapter

    model = tiny_llama(seed=seed, initializer_range=init_range)
    torch.manual_seed(seed)
    add_adapter(model, "lora", r=4, lora_alpha=8, target_modules=["o_proj", "down_proj"])
    return model


def prompts(tok):
    return [{"text": w, "ids": tok.encode(w)} for w in WORDS]


def test_gae_equals_the_direct_sum():
    gen = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    lengths = [5, 3, 1]
    for row, n in enumerate(lengths):
        rewards[row, n:] = 0
        values[row, n:] = 0
    gamma, lam = 0.9, 0.8
    adv, returns = ppo.gae(rewards, values, gamma, lam)
    for row, n in enumerate(lengths):
        v = values[row, :n].tolist() + [0.0]
        deltas = [rewards[row, t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            expected = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
            assert torch.isclose(adv[row, t], torch.as_tensor(expected), atol=1e-5)
        assert torch.allclose(returns[row, :n], adv[row, :n] + values[row, :n])


def test_rollout_logps_values_and_reference_are_exact():
    """Left-padded prompts + sampled responses: each response token's log-prob equals that of the sequence run
    alone; with adapters disabled it equals the base model's; tokens after the stop token are masked out."""
    from tuneforge.methods import disable_adapters

    tok = tiny_tokenizer()
    model, base = policy(), tiny_llama(seed=0, initializer_range=0.2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))  # a policy that differs from the base
    model.add_module(rollout.VALUE_HEAD, torch.nn.Linear(64, 1))
    torch.manual_seed(3)
    batch = rollout.sample(model, tok, prompts(tok), max_new_tokens=6, temperature=0.7, greedy=False)
    rows = torch.arange(len(WORDS))
    with torch.no_grad():
        logps, entropy, values = rollout.policy_outputs(model, batch, rows, temperature=0.7)
        with disable_adapters(model):
            ref, _, _ = rollout.policy_outputs(model, batch, rows, temperature=0.7, values=False)
        width = batch["prompt_width"]
        for i, word in enumerate(WORDS):
            resp = batch["response_mask"][i]
            n = int(resp.sum())
            assert resp[:n].all() and not resp[n:].any()
            ids = torch.cat([torch.tensor(tok.encode(word)), batch["input_ids"][i, width : width + n]])[None]
            for net, got in ((model, logps), (base, ref)):
                alone = (net(ids).logits[0, -n - 1 : -1] / 0.7).log_softmax(-1)
                expected = alone.gather(-1, ids[0, -n:, None]).squeeze(-1)
                assert torch.allclose(got[i, :n], expected, atol=1e-4)
            assert (got[i, n:] == 0).all() and (values[i, n:] == 0).all() and (entropy[i, :n] > 0).all()
    assert not torch.allclose(logps, ref)


def test_reward_adapter_on_the_shared_base_scores_like_its_classifier(tmp_path):
    """A reward adapter trained on the sequence classifier, attached to the causal LM of the same base, gives
    the classifier's scores for the same tokens, while the policy adapter stays the one that trains."""
    from transformers import LlamaForSequenceClassification

    from tuneforge.io import save_adapter
    from tuneforge.methods import active_adapters, add_adapter, list_adapters
    from tuneforge.models.tiny import tiny_llama_config

    tok = tiny_tokenizer()
    model = policy(init_range=0.02)
    classifier = LlamaForSequenceClassification(tiny_llama_config(num_labels=1)).eval()
    classifier.model.load_state_dict(tiny_llama(seed=0).model.state_dict())
    classifier.config._name_or_path = "tiny-llama"
    add_adapter(classifier, "lora", r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["score"],
                init_lora_weights=False)
    save_adapter(classifier, tmp_path / "rm")
    reward = ppo.AdapterReward(model, tmp_path / "rm")
    assert set(list_adapters(model)) == {"default", "reward"} and active_adapters(model) == ["default"]
    assert all("reward" not in n for n, p in model.named_parameters() if p.requires_grad)
    torch.manual_seed(0)
    batch = rollout.sample(model, tok, prompts(tok), max_new_tokens=5, temperature=1.0, greedy=False)
    scores = reward(model, batch)
    with torch.no_grad():
        for i in range(len(WORDS)):
            keep = batch["score_mask"][i].bool()
            expected = classifier(batch["input_ids"][i][keep][None]).logits[0, 0]
            assert torch.isclose(scores[i], expected, atol=1e-4)


def test_reward_adapter_without_a_head_is_refused(tmp_path):
    from tuneforge.errors import AdapterMismatch
    from tuneforge.io import save_adapter

    donor = policy()
    save_adapter(donor, tmp_path / "plain")
    with pytest.raises(AdapterMismatch, match="no scalar reward head"):
        ppo.AdapterReward(policy(), tmp_path / "plain")


def test_adaptive_kl_controller():
    cfg = PPOConfig(target_kl=4.0, kl_horizon=100)
    assert ppo.next_kl_coef(0.1, 8.0, 10, cfg) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped
    assert ppo.next_kl_coef(0.1, 3.6, 10, cfg) == pytest.approx(0.1 * (1 - 0.1 * 10 / 100))
    assert ppo.next_kl_coef(0.1, 50.0, 10, PPOConfig(kl_control="fixed")) == 0.1


def run(tmp_path, steps: int, **overrides):
    tok = tiny_tokenizer()
    cfg = PPOConfig(**{"rollout_batch_size": 8, "max_new_tokens": 6, "ppo_epochs": 4, "kl_coef": 0.01, **overrides})
    train_cfg = TrainConfig(max_steps=steps, micro_batch_size=4, grad_accum_steps=2, learning_rate=5e-2,
                            lr_schedule="constant", seed=1, save_every=2)
    return ppo.run_ppo(policy(), tok, cfg, train_cfg, prompts(tok), prompts(tok)[:4], tmp_path,
                       reward=lowercase_share, progress=False)


def test_reward_rises_on_a_tiny_model(tmp_path):
    result = run(tmp_path, steps=24)
    train = [r for r in result.history if "kl" in r]
    rewards = [r["reward"] for r in train]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2, rewards
    for key in ("reward", "kl", "entropy", "clipfrac", "value_loss", "policy_loss", "kl_coef", "approx_kl"):
        assert all(key in r for r in train)
    assert train[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first rollout comes from the reference itself
    assert (tmp_path / "value_head.safetensors").is_file() and result.plot_path.name == "reward_kl.png"


def test_resume_repeats_the_same_steps(tmp_path):
    whole = [r for r in run(tmp_path / "a", steps=4).history if "kl" in r]
    run(tmp_path / "b", steps=2)
    history = run(tmp_path / "b", steps=4).history
    assert [r["step"] for r in history if "eval_reward" in r] == [0, 2, 4]  # the first run's final eval is kept
    resumed = [r for r in history if "kl" in r]
    for a, b in zip(whole, resumed):
        for key in ("reward", "kl", "loss", "value_loss", "kl_coef"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_train_end_to_end_with_a_reward_function(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(api, "_load_model", lambda cfg: tiny_llama(seed=0, initializer_range=0.2))
    monkeypatch.setattr(models, "load_tokenizer", lambda name: tiny_tokenizer())
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": w} for w in WORDS] + [{"prompt": "   "}, {"prompt": "z" * 40}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model": {"name": "tiny-llama"},
        "method": {"name": "lora", "r": 4, "target_modules": ["o_proj", "down_proj"]},
        "task": {"name": "ppo", "reward_function": f"{__name__}:lowercase_share", "template": "raw",
                 "rollout_batch_size": 4, "max_new_tokens": 4, "max_prompt_length": 16, "ppo_epochs": 2},
        "data": {"train": str(data), "validation": str(data), "limit_eval": 4},
        "train": {"max_steps": 3, "micro_batch_size": 2, "learning_rate": 1e-2},
        "output_dir": str(tmp_path / "run"),
    }
    result = api.train(config, progress=False)
    out = tmp_path / "run"
    assert result.steps == 3 and "eval_reward" in result.eval_metrics
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "reward_kl.png").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "eval_reward" in r] == [0, 3]
    printed = capsys.readouterr().out
    assert "kept 8 of 10 prompts; skipped 1 empty (line 9); skipped 1 longer than max_prompt_length=16 (line 10)" \
        in printed.split("trained")[-1]


def test_bad_prompt_files_and_settings(tmp_path):
    tok = tiny_tokenizer()
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "text": ""}) + "\n" + json.dumps({"text": "no prompt"}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:2.*'prompt'"):
        load_prompts(path, PPOConfig(), tok, None, 0)
    kept, note = load_prompts(path, PPOConfig(prompt_field="text", prompt_words=1), tok, None, 0)
    assert [p["text"] for p in kept] == ["no"] and "skipped 1 empty (line 1)" in note
    with pytest.raises(ConfigError, match="not both"):
        PPOConfig(reward_adapter="a", reward_function="m:f").validate()
    with pytest.raises(ConfigError, match="reward_function"):
        from tuneforge.train.tasks.ppo import load_reward_function

        load_reward_function("no_such_module_here:f")


@pytest.mark.slow
def test_smollm2_policy_and_reward_adapter_share_one_base(tmp_path):
    """On the packaged SmolLM2: a reward adapter saved from the sequence classifier scores the policy's rollouts
    on the causal LM exactly as the classifier does, and one PPO step runs with it."""
    from tuneforge.io import save_adapter
    from tuneforge.methods import add_adapter
    from tuneforge.models import load_model, load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    classifier = load_model("smollm2-135m-instruct", kind="sequence-classification", num_labels=1, device="cpu")
    add_adapter(classifier, "lora", r=4, target_modules=["q_proj", "v_proj"], layers_to_transform=[29],
                modules_to_save=["score"], init_lora_weights=False)
    save_adapter(classifier, tmp_path / "rm")
    model = load_model("smollm2-135m-instruct", device="cpu")
    add_adapter(model, "lora", r=4, target_modules=["q_proj", "v_proj"], layers_to_transform=[28, 29])
    cfg = PPOConfig(rollout_batch_size=2, max_new_tokens=4, ppo_epochs=1, template="raw")
    texts = ["the film is", "a dull and"]
    prompt_rows = [{"text": t, "ids": tok.encode(t)} for t in texts]
    reward = ppo.AdapterReward(model, tmp_path / "rm")
    torch.manual_seed(0)
    batch = rollout.sample(model, tok, prompt_rows, max_new_tokens=4, temperature=1.0, greedy=False)
    scores = reward(model, batch)
    with torch.no_grad():
        for i in range(2):
            keep = batch["score_mask"][i].bool()
            assert torch.isclose(scores[i], classifier(batch["input_ids"][i][keep][None]).logits[0, 0], atol=1e-3)
    from tuneforge.methods import delete_adapter

    delete_adapter(model, "reward")
    train_cfg = TrainConfig(max_steps=1, micro_batch_size=2, learning_rate=1e-3, seed=0)
    result = ppo.run_ppo(model, tok, cfg, train_cfg, prompt_rows, [], tmp_path / "run",
                         reward_adapter=tmp_path / "rm", progress=False)
    step = next(r for r in result.history if "kl" in r)
    assert step["kl"] == pytest.approx(0.0, abs=1e-5) and step["clipfrac"] == 0.0
