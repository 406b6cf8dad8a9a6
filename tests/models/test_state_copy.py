"""Saved tensors go into parameters through one checked copy: a wrong shape or kind of dtype names the key."""
import pytest
import torch

import tuneforge.methods as M
from tuneforge.errors import AdapterMismatch, TuneforgeError
from tuneforge.models.state_copy import copy_checked
from tuneforge.models.tiny import tiny_llama


def test_copy_casts_to_the_parameters_dtype_without_autograd():
    target = torch.nn.Parameter(torch.zeros(2, 3))
    copy_checked(target, torch.ones(2, 3, dtype=torch.float64), "w")
    assert target.dtype == torch.float32 and torch.equal(target.detach(), torch.ones(2, 3))
    assert target.grad_fn is None


def test_wrong_shape_or_dtype_kind_names_the_key_and_leaves_the_target():
    target = torch.zeros(2, 3)
    with pytest.raises(AdapterMismatch, match=r"layer\.w: the file has shape \(3, 2\), this model needs \(2, 3\)"):
        copy_checked(target, torch.ones(3, 2), "layer.w")
    with pytest.raises(TuneforgeError, match=r"layer\.w: the file holds torch.int64.*another run"):
        copy_checked(target, torch.ones(2, 3, dtype=torch.long), "layer.w", hint="another run", error=TuneforgeError)
    assert not target.any()


def test_an_adapter_for_another_shape_is_refused_by_its_key():
    source = tiny_llama()
    M.add_adapter(source, "lora", r=4, target_modules=["q_proj"])
    state = M.adapter_state_dict(source)
    model = tiny_llama()
    cfg = M.add_adapter(model, "lora", r=2, target_modules=["q_proj"])
    key = next(iter(state))
    with pytest.raises(AdapterMismatch, match=key.replace(".", r"\.") + ": the file has shape"):
        M.method_for(cfg).load_state_dict(model, state, "default", cfg)
