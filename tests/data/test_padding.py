"""One padding routine for every batch: right for training, left for generation."""
import pytest
import torch

from tuneforge.data import pad
from tuneforge.models import generation_pad_id, stop_token_ids, tiny_llama, tiny_tokenizer


def test_right_and_left_padding_put_the_rows_at_opposite_ends():
    ids, mask = pad([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    ids, mask = pad([[5, 6, 7], [8]], pad_id=-100, side="left")
    assert ids.tolist() == [[5, 6, 7], [-100, -100, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long


def test_bad_side_and_empty_batch_are_errors():
    with pytest.raises(ValueError, match="side"):
        pad([[1]], 0, side="middle")
    with pytest.raises(ValueError, match="empty"):
        pad([], 0)


def test_stop_ids_join_the_tokenizers_and_the_generation_configs_eos_once_each():
    model, tok = tiny_llama(), tiny_tokenizer()
    model.generation_config.eos_token_id = [tok.eos_token_id, 7]
    assert stop_token_ids(model, tok) == [tok.eos_token_id, 7]
    model.generation_config.eos_token_id = None
    assert stop_token_ids(model, tok) == [tok.eos_token_id]
    assert generation_pad_id(tok, [7]) == tok.pad_token_id
    tok.pad_token = None
    assert generation_pad_id(tok, [7]) == 7
