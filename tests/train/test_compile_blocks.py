"""compile_blocks finds the decoder layers (the repeated blocks); compiling itself is left to the benchmarks
(torch.compile takes minutes on a small CPU)."""
from torch import nn

from tuneforge.models.tiny import tiny_bert, tiny_llama
from tuneforge.train.compile import compile_blocks, repeated_blocks


def test_repeated_blocks_are_the_decoder_layers():
    model = tiny_llama()
    assert repeated_blocks(model) is model.model.layers
    bert = tiny_bert()
    assert repeated_blocks(bert) is bert.encoder.layer


def test_a_model_without_repeated_blocks_is_left_alone():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    assert repeated_blocks(model) is None and compile_blocks(model) == 0
