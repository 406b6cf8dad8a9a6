"""Likelihood scoring: only the final reply counts, batching with padding changes nothing, choices pick the
most likely answer."""
import pytest
import torch
import torch.nn.functional as F

from tuneforge.eval.scoring import choose, last_turn_example, mean_loss, sequence_nll, text_example
from tuneforge.models import tiny_llama, tiny_tokenizer

IGNORE = -100


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=2)


@torch.no_grad()
def reference_nll(model, example):
    ids = torch.tensor([example["input_ids"]])
    labels = torch.tensor(example["labels"])[1:]
    logits = model(ids).logits[0, :-1]
    keep = labels != IGNORE
    return float(F.cross_entropy(logits[keep], labels[keep], reduction="sum")), int(keep.sum())


def test_only_the_last_reply_is_scored(tok):
    conversation = [{"role": "user", "content": "demo q"}, {"role": "assistant", "content": "demo a"},
                    {"role": "user", "content": "real q"}]
    ex = last_turn_example(tok, conversation, "final")
    scored = tok.decode([t for t in ex["labels"] if t != IGNORE])
    assert scored.startswith("final") and "demo" not in scored
    assert len(ex["input_ids"]) == len(ex["labels"])
    cut = last_turn_example(tok, conversation, "final", max_length=12)
    assert len(cut["input_ids"]) == 12 and tok.decode([t for t in cut["labels"] if t != IGNORE]).startswith("final")


def test_batched_nll_equals_one_at_a_time(model, tok):
    examples = [last_turn_example(tok, [{"role": "user", "content": q}], a)
                for q, a in [("hi", "there"), ("a much longer question here", "ok"), ("q", "a longer answer")]]
    examples.append(text_example(tok, "plain text to score"))
    batched = sequence_nll(model, examples, tok.pad_token_id, batch_size=3)
    for ex, (total, count) in zip(examples, batched):
        ref_total, ref_count = reference_nll(model, ex)
        assert count == ref_count and total == pytest.approx(ref_total, rel=1e-4)
    loss = mean_loss(batched)
    assert loss["loss"] == pytest.approx(sum(t for t, _ in batched) / sum(n for _, n in batched))


def test_choose_picks_the_lowest_nll(model, tok):
    conversations = [[{"role": "user", "content": "is it?"}]]
    picked, nlls = choose(model, tok, conversations, ["yes", "no", "perhaps"], batch_size=2)
    assert picked == [min(range(3), key=nlls[0].__getitem__)]
    direct = [reference_nll(model, last_turn_example(tok, conversations[0], c))[0] for c in ["yes", "no", "perhaps"]]
    assert nlls[0] == pytest.approx(direct, rel=1e-4)
