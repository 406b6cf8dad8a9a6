"""The claim packing rests on: a packed batch trains exactly like the same examples run one by one.

Losses are summed token cross-entropies with the loop's shift (logits[:, :-1] vs labels[:, 1:])."""
import pytest
import torch
import torch.nn.functional as F

from tuneforge.data import DataConfig, build_sft_examples, collate_causal, pack_examples, packing_efficiency
from tuneforge.models.tiny import tiny_llama, tiny_tokenizer

IGNORE = -100


def loss_sum(logits, labels):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE,
                           reduction="sum")


def forward(model, batch):
    """Packed rows carry no mask: transformers reads the examples from the restarting position_ids, but only
    without a cache (with one it builds a plain causal mask), so use_cache=False as the SFT task passes."""
    return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                 position_ids=batch["position_ids"], use_cache=False).logits


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def examples(tok):
    """SFT examples of different lengths, plus one with every label trained (labels[0] != -100), which is the
    case where the previous example's last position could wrongly learn to predict the next first token."""
    records = [
        {"instruction": "hi", "input": "", "output": "hello there"},
        {"instruction": "What is 2+2? Explain carefully.", "input": "", "output": "4"},
        {"instruction": "Translate", "input": "x" * 37, "output": "y" * 23},
        {"instruction": "tell me", "input": "", "output": "ok ok ok"},
        {"instruction": "q", "input": "", "output": "a"},
    ]
    exs = build_sft_examples(records, tok, DataConfig(max_length=96))
    ids = tok.encode("raw text trained everywhere", add_special_tokens=False)
    return exs + [{"input_ids": ids, "labels": list(ids)}]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_logits_equal_unpacked(tok, examples, attn):
    model = tiny_llama(attn_implementation=attn)
    rows = pack_examples(examples, max_length=96)
    assert len(rows) >= 2 and len({len(r["input_ids"]) for r in rows}) > 1  # padding is exercised
    batch = collate_causal(rows, tok.pad_token_id)
    with torch.no_grad():
        packed_logits = forward(model, batch)
        packed = loss_sum(packed_logits, batch["labels"])
        alone, n_alone = 0.0, 0
        for ex in examples:
            ids, labels = torch.tensor([ex["input_ids"]]), torch.tensor([ex["labels"]])
            logits = model(input_ids=ids).logits
            alone = alone + loss_sum(logits, labels)
            n_alone += int((labels[:, 1:] != IGNORE).sum())
            row, start = _locate(rows, ex)
            n = len(ex["input_ids"])
            torch.testing.assert_close(packed_logits[row, start:start + n], logits[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(packed_logits).all()
    assert int((batch["labels"][:, 1:] != IGNORE).sum()) == n_alone
    assert abs(packed.item() - alone.item()) < 1e-5 * max(1.0, abs(alone.item()))


def test_packed_gradients_equal_unpacked(tok, examples):
    packed_model, alone_model = tiny_llama(), tiny_llama()
    batch = collate_causal(pack_examples(examples, 96), tok.pad_token_id)
    loss_sum(forward(packed_model, batch), batch["labels"]).backward()
    for ex in examples:
        logits = alone_model(input_ids=torch.tensor([ex["input_ids"]])).logits
        loss_sum(logits, torch.tensor([ex["labels"]])).backward()
    for (name, p), q in zip(packed_model.named_parameters(), alone_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_unpacked_padded_batch_equals_alone(tok, examples):
    model = tiny_llama()
    batch = collate_causal(examples, tok.pad_token_id)
    assert batch["attention_mask"].shape == batch["input_ids"].shape
    with torch.no_grad():
        padded = loss_sum(forward(model, batch), batch["labels"])
        alone = sum(loss_sum(model(input_ids=torch.tensor([e["input_ids"]])).logits, torch.tensor([e["labels"]]))
                    for e in examples)
    assert abs(padded.item() - alone.item()) < 1e-5 * max(1.0, abs(alone.item()))


def _locate(rows, ex):
    for r, row in enumerate(rows):
        start = 0
        for n in row["seq_lens"]:
            if row["input_ids"][start:start + n] == ex["input_ids"]:
                return r, start
            start += n
    raise AssertionError("example not found in any packed row")


def test_pack_keeps_every_example_once_and_fits(examples):
    rows = pack_examples(examples, 96)
    pieces = []
    for row in rows:
        assert len(row["input_ids"]) <= 96
        assert sum(row["seq_lens"]) == len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"])
        start = 0
        for n in row["seq_lens"]:
            assert row["position_ids"][start:start + n] == list(range(n))
            assert row["labels"][start] == IGNORE
            pieces.append(tuple(row["input_ids"][start:start + n]))
            start += n
    assert sorted(pieces) == sorted(tuple(e["input_ids"]) for e in examples)
    tokens = sum(len(e["input_ids"]) for e in examples)
    assert packing_efficiency(rows, 96) == tokens / (len(rows) * 96)


def test_pack_fills_rows_best_fit():
    exs = [{"input_ids": [1] * n, "labels": [1] * n} for n in (6, 4, 5, 5, 3, 7)]
    rows = pack_examples(exs, 10)
    assert len(rows) == 3 and packing_efficiency(rows, 10) == 1.0
    assert all(e["labels"][0] == 1 for e in exs)  # inputs are not modified


def test_pack_rejects_example_longer_than_row():
    with pytest.raises(ValueError, match="max_length"):
        pack_examples([{"input_ids": [1] * 11, "labels": [1] * 11}], 10)


def test_collate_unpacked_shapes_and_padding():
    exs = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [-100], "extra": 1}]
    b = collate_causal(exs, pad_token_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert all(t.dtype == torch.long for t in b.values())


def test_collate_packed_rows_carry_lengths_and_positions_not_a_mask():
    rows = [{"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, 3, -100, 5], "position_ids": [0, 1, 2, 0, 1],
             "seq_lens": [3, 2]},
            {"input_ids": [6, 7], "labels": [-100, 7], "position_ids": [0, 1], "seq_lens": [2]}]
    b = collate_causal(rows, pad_token_id=0)
    assert "attention_mask" not in b  # no (B, 1, L, L) tensor: O(L^2) memory, and no flash-attention
    assert b["seq_lens"].tolist() == [[3, 2], [2, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 0, 0]]
    assert b["labels"].tolist()[1] == [-100, 7, -100, -100, -100]


def test_block_causal_mask_for_models_that_need_one():
    from tuneforge.models.packed_attention import block_causal_mask

    mask = block_causal_mask(torch.tensor([[3, 2], [2, 0]]), 5)
    assert mask.shape == (2, 1, 5, 5) and mask.dtype == torch.float32
    allowed = (mask == 0)[:, 0].int().tolist()
    assert allowed[0] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    assert allowed[1] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]
    assert (mask[mask != 0] == torch.finfo(torch.float32).min).all()
    assert torch.equal(block_causal_mask(torch.tensor([[3, 2], [2, 0]]), 5, torch.bool)[:, 0], mask[:, 0] == 0)


def test_collate_rejects_bad_seq_lens():
    with pytest.raises(ValueError, match="seq_lens"):
        collate_causal([{"input_ids": [1, 2, 3], "labels": [1, 2, 3], "seq_lens": [2]}], 0)
