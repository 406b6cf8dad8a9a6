"""ORPO, SimPO, CPO and KTO: each loss and its gradient against TRL 1.16's own code on the same log-probabilities
(ORPOTrainer.odds_ratio_loss, CPOTrainer.cpo_loss from trl.experimental, KTOTrainer._compute_loss), then each task
trained end to end on a tiny model (implicit-reward accuracy on held-out pairs rises), and KTO's bad data."""
import json
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

import tuneforge.models as models
from tuneforge.errors import DataError
from tuneforge.models.tiny import tiny_llama, tiny_tokenizer
from tuneforge.train import api
from tuneforge.train.tasks.kto import KTOConfig, KTOTask, kto_loss
from tuneforge.train.tasks.ref_free import CPOConfig, CPOTask, ORPOConfig, ORPOTask, SimPOConfig, SimPOTask

ACCEL = SimpleNamespace(device="cpu", num_processes=1, gather_for_metrics=lambda x: x)


def logps(pairs: int, seed: int = 0, equal_lengths: bool = False):
    """Summed reply log-probs (chosen rows, then rejected rows) and token counts, float64."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.full((2 * pairs,), 5.0, dtype=torch.float64) if equal_lengths else \
        torch.randint(1, 9, (2 * pairs,), generator=gen).double()
    sums = -counts * (0.2 + 2 * torch.rand(2 * pairs, generator=gen, dtype=torch.float64))
    return sums, counts


def fake(**attrs):
    return SimpleNamespace(accelerator=ACCEL, **attrs)


def check(ours_fn, theirs_fn, sums, rel: float = 1e-12):
    """Same loss and gradient. float64 with a handful of terms: only summation order differs (1e-12). ORPO's odds
    ratio is computed in float32 by both sides, as TRL does (rel=1e-6: a few float32 roundings of O(1) values)."""
    a, b = sums.clone().requires_grad_(True), sums.clone().requires_grad_(True)
    ours, theirs = ours_fn(a), theirs_fn(b)
    ours.backward()
    theirs.backward()
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=rel, abs=rel * 1e-3)
    assert torch.allclose(a.grad, b.grad, rtol=rel * 10, atol=rel * 1e-3)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_equals_trl(beta):
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    sums, counts = logps(6, equal_lengths=True)  # TRL's NLL is a batch token mean: equal to ours at equal lengths
    task = ORPOTask()
    task.cfg = ORPOConfig(beta=beta)

    def theirs(s):
        avg = s / counts
        losses, *_ = ORPOTrainer.odds_ratio_loss(fake(beta=beta), avg[:6], avg[6:])
        nll = -s[:6].sum() / counts[:6].sum()
        return nll - losses.mean()  # ORPOTrainer.get_batch_loss_metrics

    check(lambda s: task.pair_losses(s, counts)[0].mean(), theirs, sums, rel=1e-6)
    # unequal lengths: the preference term alone still equals TRL's
    sums, counts = logps(6, seed=1)
    check(lambda s: (task.pair_losses(s, counts)[0] + s[:6] / counts[:6]).mean(),
          lambda s: -ORPOTrainer.odds_ratio_loss(fake(beta=beta), (s / counts)[:6], (s / counts)[6:])[0].mean(), sums,
          rel=1e-6)


@pytest.mark.parametrize("loss_type,smoothing,alpha", [("sigmoid", 0.0, 1.0), ("sigmoid", 0.1, 0.5), ("hinge", 0.0, 0.0)])
def test_cpo_equals_trl(loss_type, smoothing, alpha):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    sums, counts = logps(5, equal_lengths=True)
    task = CPOTask()
    task.cfg = CPOConfig(beta=0.2, loss_type=loss_type, label_smoothing=smoothing, cpo_alpha=alpha)
    trainer = fake(alpha=0.0, beta=0.2, loss_type=loss_type, label_smoothing=smoothing, simpo_gamma=0.5)

    def theirs(s):
        losses, *_ = CPOTrainer.cpo_loss(trainer, s[:5], s[5:])  # summed log-probs for sigmoid / hinge
        return losses.mean() + alpha * (-s[:5].sum() / counts[:5].sum())

    check(lambda s: task.pair_losses(s, counts)[0].mean(), theirs, sums)


@pytest.mark.parametrize("beta,gamma,smoothing", [(2.0, 0.5, 0.0), (2.5, 1.0, 0.1)])
def test_simpo_equals_trl(beta, gamma, smoothing):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    sums, counts = logps(7, seed=2)  # SimPO has no NLL term by default: any lengths
    task = SimPOTask()
    task.cfg = SimPOConfig(beta=beta, gamma=gamma, label_smoothing=smoothing)
    trainer = fake(alpha=0.0, beta=beta, loss_type="simpo", label_smoothing=smoothing, simpo_gamma=gamma)
    theirs = lambda s: CPOTrainer.cpo_loss(trainer, (s / counts)[:7], (s / counts)[7:])[0].mean()  # noqa: E731
    check(lambda s: task.pair_losses(s, counts)[0].mean(), theirs, sums)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.7)])
def test_kto_equals_trl(weights):
    """TRL's KTOTrainer._compute_loss on a stand-in model whose per-token log-probs are given: the same loss
    (z_ref from the rotated mismatched rows, clamped at 0, no gradient through it) and the same gradient."""
    from trl.trainer.kto_trainer import KTOTrainer

    gen = torch.Generator().manual_seed(3)
    b, width = 6, 8
    label = torch.tensor([True, False, True, True, False, False])
    token = -torch.rand(b, width - 1, generator=gen, dtype=torch.float64) * 2
    kl_token = -torch.rand(b, width - 1, generator=gen, dtype=torch.float64) * 2
    ref = -torch.rand(b, generator=gen, dtype=torch.float64) * 8
    ref_kl = kl_token.sum(-1) - torch.rand(b, generator=gen, dtype=torch.float64) * 2  # mean log-ratio > 0
    ids, kl_ids = torch.zeros(b, width, dtype=torch.long), torch.ones(b, width, dtype=torch.long)
    ones = torch.ones(b, width, dtype=torch.long)

    def theirs(t):
        def model(**kw):
            lp = kl_token if kw["input_ids"] is kl_ids else t
            return SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=torch.zeros_like(lp))

        trainer = fake(model=SimpleNamespace(training=True), calculate_KL=True, precompute_ref_logps=True,
                       loss_type="kto", beta=0.3, desirable_weight=weights[0], undesirable_weight=weights[1],
                       _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
                       aux_loss_enabled=False)
        trainer._compute_kl_logps = lambda m, batch: KTOTrainer._compute_kl_logps(trainer, m, batch)
        batch = {"input_ids": ids, "attention_mask": ones, "completion_mask": ones, "label": label,
                 "ref_logps": ref, "ref_KL_logps": ref_kl, "KL_input_ids": kl_ids, "KL_attention_mask": ones,
                 "KL_completion_mask": ones}
        return KTOTrainer._compute_loss(trainer, model, batch, False)

    def ours(t):
        kl = (kl_token.sum(-1) - ref_kl).mean().clamp(min=0)
        losses, _ = kto_loss(t.sum(-1), ref, label, kl, beta=0.3, desirable_weight=weights[0],
                             undesirable_weight=weights[1])
        return losses.mean()

    assert float((kl_token.sum(-1) - ref_kl).mean()) > 0  # the KL term is not clamped away
    check(ours, theirs, token)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pair_rows(n: int, offset: int = 0) -> list[dict]:
    """Replies of equal length, so summed log-probabilities (CPO, KTO) do not favour the shorter side."""
    return [{"prompt": f"Item {i + offset}:", "chosen": f"good {i % 3}", "rejected": f"evil {i % 3}"} for i in range(n)]


@pytest.fixture
def pair_config(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "_load_model", lambda cfg: tiny_llama(seed=1))
    monkeypatch.setattr(models, "load_tokenizer", lambda name: tiny_tokenizer())
    return {
        "model": {"name": "tiny-llama"},
        "method": {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"]},
        "data": {"train": write_jsonl(tmp_path / "train.jsonl", pair_rows(24)),
                 "validation": write_jsonl(tmp_path / "val.jsonl", pair_rows(8, offset=50)), "max_length": 48},
        "train": {"max_steps": 10, "micro_batch_size": 4, "learning_rate": 3e-2, "lr_schedule": "constant",
                  "eval_every": 5},
        "output_dir": str(tmp_path / "run"),
    }


@pytest.mark.parametrize("task", [{"name": "orpo", "beta": 0.5}, {"name": "simpo"}, {"name": "cpo", "beta": 0.5},
                                  {"name": "kto", "beta": 0.5}])
def test_each_task_learns_held_out_pairs(pair_config, task):
    pair_config["task"] = {**task, "template": "raw"}
    result = api.train(pair_config, progress=False)
    final = result.eval_metrics
    assert final["reward_accuracy"] == 1.0 and final["chosen_reward"] > final["rejected_reward"], final
    assert final["eval_pairs"] == 8


def test_kto_reads_unpaired_rows_and_needs_both_labels(pair_config, tmp_path, capsys):
    rows = [{"prompt": f"Q{i}:", "completion": f"good {i % 3}", "label": True} for i in range(12)]
    rows += [{"prompt": f"Q{i}:", "completion": f"evil {i % 3}", "label": "false"} for i in range(12)]
    rows.append({"prompt": "Q:", "completion": "  ", "label": True})
    pair_config["task"] = {"name": "kto", "beta": 0.5, "template": "raw"}
    pair_config["data"]["train"] = write_jsonl(tmp_path / "unpaired.jsonl", rows)
    pair_config["data"]["validation"] = write_jsonl(tmp_path / "unpaired_val.jsonl", rows[:4] + rows[12:16])
    result = api.train(pair_config, progress=False)
    assert result.eval_metrics["desirable_reward"] > result.eval_metrics["undesirable_reward"]
    assert "24 examples from 25 rows (12 desirable, 12 undesirable); skipped 1 empty replies (first at line 25)" \
        in capsys.readouterr().out
    pair_config["data"]["train"] = write_jsonl(tmp_path / "one_kind.jsonl", rows[:12])
    pair_config["output_dir"] = str(tmp_path / "run2")
    with pytest.raises(DataError, match=r"one_kind\.jsonl.*needs both desirable and undesirable.*0 undesirable"):
        api.train(pair_config, progress=False)
    with pytest.raises(Exception, match="set task.label"):
        KTOConfig(label_field="x").validate()
    assert KTOTask().name == "kto"


def test_pair_metrics_score_the_policys_own_preference_next_to_the_implicit_reward():
    from tuneforge.train.tasks.preference import pair_metrics

    sums = torch.tensor([-5.0, -9.0, -4.0, -8.0])  # chosen -5, -9; rejected -4, -8 (summed log-probs)
    counts = torch.tensor([5, 3, 2, 8])  # per token: chosen -1, -3; rejected -2, -1
    out = pair_metrics(torch.tensor([0.5, 1.5]), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), sums, counts)
    assert out["logp_accuracy"] == 0.0 and out["avg_logp_accuracy"] == 0.5
    assert out["reward_accuracy"] == 0.5 and out["eval_pairs"] == 2  # the tie (0 vs 0) counts as wrong
    assert out["eval_loss"] == 1.0 and out["reward_margin"] == 0.5
