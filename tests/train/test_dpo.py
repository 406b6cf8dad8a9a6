"""DPO: the loss equals TRL's DPOTrainer loss on the same log-probabilities (TRL is a test-only oracle) and the
papers' formulas computed here independently; log-probabilities of a padded batch equal each sequence's own;
the reference is the base model; train() raises the implicit-reward accuracy on held-out pairs."""
import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

import tuneforge.models as models
from tuneforge.data.preferences import build_pairs
from tuneforge.errors import ConfigError
from tuneforge.models.tiny import tiny_llama, tiny_tokenizer
from tuneforge.train import api
from tuneforge.train.tasks.dpo import DPOConfig, DPOTask, completion_logps, dpo_loss

from ..oracles import require


def random_logps(pairs: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [-(torch.rand(pairs, generator=gen, dtype=torch.float64) * 30 + 1) for _ in range(4)]


def trl_loss(loss_type, beta, label_smoothing, pc, pr, rc, rr, chosen_tokens, rejected_tokens):
    """DPOTrainer._compute_loss of the installed TRL, fed per-token log-probs that sum to the given values.
    The trainer object is bare (no model, data or accelerate set-up): only the attributes the loss reads."""
    dpo_trainer = require("trl.trainer.dpo_trainer")
    pairs, width = pc.shape[0], int(max(chosen_tokens.max(), rejected_tokens.max())) + 2
    completion = torch.zeros(2 * pairs, width, dtype=torch.long)
    per_token = torch.zeros(2 * pairs, width - 1, dtype=torch.float64)
    for row, (total, n) in enumerate(zip(torch.cat([pc, pr]), torch.cat([chosen_tokens, rejected_tokens]))):
        completion[row, 1 : 1 + n] = 1
        per_token[row, :n] = total / n  # spread over the row's reply tokens; positions after them stay 0

    def fake_model(**kwargs):
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    ident = lambda x: x  # noqa: E731
    trainer = object.__new__(dpo_trainer.DPOTrainer)
    trainer.__dict__.update(
        model=torch.nn.Linear(1, 1), accelerator=SimpleNamespace(device="cpu", gather=ident, gather_for_metrics=ident),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing, use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    inputs = {"input_ids": torch.zeros(2 * pairs, width, dtype=torch.long), "attention_mask": torch.ones_like(completion),
              "completion_mask": completion, "ref_chosen_logps": rc, "ref_rejected_logps": rr}
    return dpo_trainer.DPOTrainer._compute_loss(trainer, fake_model, inputs, return_outputs=False), trainer._metrics


@pytest.mark.slow  # importing TRL takes 15-40 s here
@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("sigmoid", 0.5), ("ipo", 0.1)])
def test_loss_equals_trl(loss_type, beta):
    pc, pr, rc, rr = random_logps(6)
    nc, nr = torch.tensor([3, 5, 1, 8, 2, 4]), torch.tensor([4, 2, 6, 1, 3, 5])
    ours, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type,
                                                      chosen_tokens=nc, rejected_tokens=nr)
    theirs, metrics = trl_loss(loss_type, beta, 0.0, pc, pr, rc, rr, nc, nr)
    assert torch.allclose(ours.mean(), theirs, atol=1e-10, rtol=1e-9)
    assert math.isclose(float(chosen_rewards.mean()), metrics["train"]["rewards/chosen"][0], rel_tol=1e-9)
    accuracy = float((chosen_rewards > rejected_rewards).double().mean())
    assert math.isclose(accuracy, metrics["train"]["rewards/accuracies"][0], rel_tol=1e-6)  # TRL's is float32


def test_losses_equal_the_papers_formulas():
    pc, pr, rc, rr = random_logps(5, seed=3)
    nc, nr = torch.tensor([2, 3, 4, 5, 6]), torch.tensor([6, 5, 4, 3, 2])
    beta, eps = 0.2, 0.1
    for i in range(5):
        d = (float(pc[i]) - float(rc[i])) - (float(pr[i]) - float(rr[i]))
        sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
        cdpo = -(1 - eps) * math.log(sig(beta * d)) - eps * math.log(sig(-beta * d))  # Mitchell 2023
        d_avg = (float(pc[i]) - float(rc[i])) / int(nc[i]) - (float(pr[i]) - float(rr[i])) / int(nr[i])
        ipo = (d_avg - 1 / (2 * beta)) ** 2  # Azar et al. 2023, eq. 17, per-token averaged
        ours_cdpo = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)[0][i]
        ours_ipo = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo", chosen_tokens=nc, rejected_tokens=nr)[0][i]
        assert math.isclose(float(ours_cdpo), cdpo, rel_tol=1e-9)
        assert math.isclose(float(ours_ipo), ipo, rel_tol=1e-9)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="beta"):
        DPOConfig(beta=0).validate()
    with pytest.raises(ConfigError, match="label_smoothing"):
        DPOConfig(loss_type="ipo", label_smoothing=0.1).validate()


def test_padded_logps_and_reference_are_exact():
    """Summed reply log-probs of a padded batch equal each row computed alone; the reference (adapter disabled)
    equals a model that never had the adapter, even after the adapter has changed the policy."""
    from tuneforge.methods import add_adapter, disable_adapters

    tok = tiny_tokenizer()
    base, model = tiny_llama(seed=2), tiny_llama(seed=2)
    add_adapter(model, "lora", r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    rows = [{"prompt": "Q: short", "chosen": "yes indeed", "rejected": "no"},
            {"prompt": "Q: a longer question here", "chosen": "ok", "rejected": "not at all, sorry"}]
    pairs, _ = build_pairs(rows, tok, template="chat", max_length=256, append_eos=True)
    task = DPOTask()
    task.pad_token_id = tok.pad_token_id
    batch = task.collate(pairs)
    with torch.no_grad():
        logps, counts = completion_logps(model, batch)
        with disable_adapters(model):
            ref, _ = completion_logps(model, batch)
        for row, (p, side) in enumerate([(p, s) for s in ("chosen_ids", "rejected_ids") for p in pairs]):
            ids, n = torch.tensor([p["prompt_ids"] + p[side]]), len(p[side])
            for net, got in ((model, logps), (base, ref)):
                alone = net(ids).logits[0, :-1].log_softmax(-1)[-n:].gather(-1, ids[0, -n:, None]).sum()
                assert torch.allclose(got[row], alone, atol=1e-4)
            assert counts[row] == n
    assert not torch.allclose(logps, ref)  # the adapter does change the policy


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pair_rows(n: int, offset: int = 0) -> list[dict]:
    return [{"prompt": f"Item {i + offset}:", "chosen": f"good {i % 3}", "rejected": f"bad {i % 3}"} for i in range(n)]


@pytest.fixture
def dpo_config(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "_load_model", lambda cfg: tiny_llama(seed=1))
    monkeypatch.setattr(models, "load_tokenizer", lambda name: tiny_tokenizer())
    bad = [{"prompt": "p", "chosen": "", "rejected": "x"}]
    return {
        "model": {"name": "tiny-llama"},
        "method": {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"]},
        "task": {"name": "dpo", "beta": 0.5, "template": "raw"},
        "data": {"train": write_jsonl(tmp_path / "train.jsonl", bad + pair_rows(24)),
                 "validation": write_jsonl(tmp_path / "val.jsonl", pair_rows(8, offset=50)), "max_length": 48},
        "train": {"max_steps": 10, "micro_batch_size": 4, "learning_rate": 3e-2, "lr_schedule": "constant",
                  "eval_every": 5},
        "output_dir": str(tmp_path / "run"),
    }


def test_train_raises_implicit_reward_accuracy(dpo_config, capsys):
    result = api.train(dpo_config, progress=False)
    evals = [r for r in result.history if "reward_accuracy" in r]
    assert [r["step"] for r in evals] == [5, 10]
    final = result.eval_metrics
    assert final["reward_accuracy"] == 1.0 and final["reward_margin"] > 0
    assert final["chosen_reward"] > final["rejected_reward"]
    assert "skipped 1 with an empty reply (line 1)" in capsys.readouterr().out.split("trained")[-1]


def test_ipo_trains_too(dpo_config):
    dpo_config["task"] = {"name": "dpo", "loss_type": "ipo", "beta": 0.5, "template": "raw"}
    result = api.train(dpo_config, progress=False)
    assert result.eval_metrics["reward_accuracy"] >= 0.75


def test_a_split_with_no_usable_pairs_is_an_error(dpo_config, tmp_path):
    dpo_config["data"]["validation"] = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "b"}])
    with pytest.raises(Exception, match=r"bad\.jsonl.*no usable preference pairs"):
        api.train(dpo_config, progress=False)


def test_rpo_alpha_adds_the_chosen_replys_mean_nll_to_each_pair():
    """RPO: each pair's loss is the DPO loss plus rpo_alpha times the chosen reply's negative log-likelihood per
    token, computed here from the policy's own summed log-probs; the implicit rewards are unchanged."""
    from tuneforge.methods import add_adapter

    tok = tiny_tokenizer()
    model = tiny_llama(seed=2)
    add_adapter(model, "lora", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    rows = [{"prompt": "a fine", "chosen": "film indeed", "rejected": "mess"},
            {"prompt": "the plot", "chosen": "works", "rejected": "is thin and dull"}]
    task = DPOTask()
    task.pad_token_id = tok.pad_token_id
    batch = task.collate(build_pairs(rows, tok, template="raw", max_length=64, append_eos=True)[0])
    with torch.no_grad():
        task.cfg = DPOConfig(beta=0.2)
        plain, c0, r0, (sums, counts) = task.pair_terms(model, batch)
        task.cfg = DPOConfig(beta=0.2, rpo_alpha=0.5)
        rpo, c1, r1, _ = task.pair_terms(model, batch)
    nll = -sums[:2] / counts[:2]  # chosen rows come first
    assert torch.allclose(rpo, plain + 0.5 * nll, rtol=1e-6, atol=0)  # the same fp32 values, one more add
    assert torch.equal(c0, c1) and torch.equal(r0, r1)
    with pytest.raises(ConfigError, match="rpo_alpha"):
        DPOConfig(rpo_alpha=-1).validate()
