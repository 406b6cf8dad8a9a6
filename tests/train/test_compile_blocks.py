"""compile_blocks finds the decoder layers (the repeated blocks); compiling itself is left to the benchmarks
(torch.compile takes minutes on a small CPU)."""
from torch import nn

from tuneforge.models.tiny import tiny_bert, tiny_llama
from tuneforge.models.blocks import repeated_blocks
from tuneforge.train.compile import compile_blocks


def test_repeated_blocks_are_the_decoder_layers():
    model = tiny_llama()
    assert repeated_blocks(model) is model.model.layers
    bert = tiny_bert()
    assert repeated_blocks(bert) is bert.encoder.layer


def test_a_model_without_repeated_blocks_is_left_alone():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    assert repeated_blocks(model) is None and compile_blocks(model) == 0


def test_an_adapted_block_compiles_as_one_graph():
    """Dynamo traces a LoRA-adapted decoder block (fused LoRA layers and the fused SwiGLU MLP) without a graph
    break: a break at each adapted projection once made compiling the blocks almost worthless."""
    import torch

    import tuneforge.methods as M
    from tuneforge.models.fused_mlp import use_fused_mlp

    model = tiny_llama(seed=3)
    M.add_adapter(model, "lora", r=4, target_modules="all-linear")
    use_fused_mlp(model)
    model.train()
    block = model.model.layers[1]
    hidden = torch.randn(2, 12, model.config.hidden_size, requires_grad=True)
    positions = torch.arange(12)[None].expand(2, -1)
    cos_sin = model.model.rotary_emb(hidden, positions)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(block)(hidden, position_embeddings=cos_sin, position_ids=positions)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
