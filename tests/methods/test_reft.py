"""LoReFT / DiReFT: the formula, R's orthonormality under training, the positions, equality with pyreft (installed
by `make setup` with --no-deps; missing, those tests fail), generation, packed rows, mixed batches and the files."""
import json

import pytest
import torch
from safetensors.torch import load_file

import tuneforge.methods as M
from tuneforge.errors import ConfigError, TargetNotFound
from tuneforge.io import load_adapter, save_adapter
from tuneforge.methods.reft import Intervention, prompt_positions
from tuneforge.models.tiny import tiny_bert, tiny_llama

from ..oracles import require

D, R = 64, 4


def pyreft_or_skip():
    """pyreft, or a failure saying to run `make setup` (named for its history: it used to skip)."""
    require("pyvene")
    return require("pyreft")


def copy_from_pyreft(ours: Intervention, theirs) -> None:
    """Our intervention holding exactly the weights of a pyreft intervention."""
    w2 = theirs.proj_layer.weight if hasattr(theirs, "proj_layer") else theirs.rotate_layer.weight.T
    state = {"learned_source.weight": theirs.learned_source.weight, "learned_source.bias": theirs.learned_source.bias}
    if ours.kind == "loreft":
        state["rotate_layer"] = theirs.rotate_layer.weight
    else:
        state["proj_layer.weight"] = w2
    ours.load({k: v.detach() for k, v in state.items()})


@pytest.mark.parametrize("ours_kind,theirs", [("loreft", "LoreftIntervention"), ("direft", "NodireftIntervention"),
                                              ("direft", "DireftIntervention")])
def test_intervention_equals_pyreft(ours_kind, theirs):
    pyreft = pyreft_or_skip()
    torch.manual_seed(0)
    ref = getattr(pyreft, theirs)(embed_dim=D, low_rank_dimension=R, dtype=torch.float32, add_bias=False)
    ours = Intervention(ours_kind, D, R, 0.0)
    copy_from_pyreft(ours, ref)
    h = torch.randn(3, 5, D)
    assert (ours(h) - ref(h)).abs().max() < 1e-5


def labelled_batch(prompt_lens=(5, 7), length=10):
    ids = torch.randint(0, 250, (len(prompt_lens), length), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    mask = torch.ones_like(ids)
    for b, n in enumerate(prompt_lens):
        labels[b, :n] = -100
    labels[0, 8:], mask[0, 8:] = -100, 0  # row 0 is right-padded
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("kind,fields", [("loreft", {"positions": "f2+l2"}),
                                         ("direft", {"positions": "f1+l2", "share_weights": True, "layers": [1]})])
def test_model_equals_pyreft_reft_model_at_pyreft_positions(kind, fields):
    """Positions, layers and first/last weights as pyreft: our labels-derived positions vs pyreft's own
    get_intervention_locations on the prompt, logits and gradients equal."""
    pyreft = pyreft_or_skip()
    cfg = M.make_method_config(kind, {"low_rank_dimension": R, **fields})
    layers = [0, 1] if cfg.layers == "all" else cfg.layers
    count = len(layers) * cfg.num_interventions()
    iv_cls = pyreft.LoreftIntervention if kind == "loreft" else pyreft.NodireftIntervention
    torch.manual_seed(0)
    reps = [{"layer": layers[k % len(layers)], "component": "block_output", "low_rank_dimension": R,
             "intervention": iv_cls(embed_dim=D, low_rank_dimension=R, dtype=torch.float32, add_bias=False)}
            for k in range(count)]
    rm = pyreft.get_reft_model(tiny_llama(), pyreft.ReftConfig(representations=reps))
    ours = tiny_llama()
    M.add_adapter(ours, cfg)
    for k, rep in enumerate(reps):
        copy_from_pyreft(ours.model.layers[rep["layer"]].reft["default"][k // len(layers)], rep["intervention"])
    batch = labelled_batch()
    first, last = cfg.first_last()
    per_row = [pyreft.get_intervention_locations(last_position=n, first_n=first, last_n=last, num_interventions=count,
                                                 share_weights=cfg.share_weights) for n in (5, 7)]
    locations = [[per_row[b][k] for b in range(2)] for k in range(count)]
    _, theirs = rm({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                   unit_locations={"sources->base": (None, locations)})
    with M.batch_context(ours, batch):
        mine = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    assert (theirs.logits - mine)[real].abs().max() < 1e-5
    (theirs.logits[real] ** 2).mean().backward()
    (mine[real] ** 2).mean().backward()
    for k, rep in enumerate(reps):
        ours_iv = ours.model.layers[rep["layer"]].reft["default"][k // len(layers)]
        g = (rep["intervention"].learned_source.weight.grad - ours_iv.learned_source.weight.grad).abs().max()
        assert g < 1e-5, k


def test_formula_and_r_stays_orthonormal_under_adamw_with_weight_decay():
    torch.manual_seed(0)
    lo, di = Intervention("loreft", D, R, 0.0), Intervention("direft", D, R, 0.0)
    h = torch.randn(7, D)
    r_mat = lo.rotate_layer.weight.T  # R, (r x d)
    w, b = lo.learned_source.weight, lo.learned_source.bias
    assert (lo(h) - (h + (h @ w.T + b - h @ r_mat.T) @ r_mat)).abs().max() < 1e-5
    w1, b1, w2 = di.learned_source.weight, di.learned_source.bias, di.proj_layer.weight
    assert (di(h) - (h + (h @ w1.T + b1) @ w2)).abs().max() < 1e-5
    before = r_mat.detach().clone()
    opt = torch.optim.AdamW(lo.parameters(), lr=0.05, weight_decay=0.1)
    for step in range(20):
        opt.zero_grad()
        (lo(torch.randn(7, D, generator=torch.Generator().manual_seed(step))) ** 3).sum().backward()
        opt.step()
    after = lo.rotate_layer.weight.T
    assert (after @ after.T - torch.eye(R)).abs().max() < 1e-5
    assert (after - before).abs().max() > 1e-2


def pairs(slot):
    return sorted(zip(slot[0].tolist(), slot[1].tolist()))


def test_positions_from_labels_padding_sides_and_packing():
    cfg = M.make_method_config("loreft", {"positions": "f2+l2"})
    ids = torch.zeros(3, 10, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    mask[2, :2] = 0  # left padding
    labels = torch.full_like(ids, -100)
    labels[0, 6:] = 1  # prompt 0..5
    labels[1, 5:7] = 1  # prompt 0..4, capped to 2 per side
    labels[2, 2:] = -100  # a row with no target is not edited
    first, last = prompt_positions(cfg, ids, mask, labels)
    assert pairs(first) == [(0, 0), (0, 1), (1, 0), (1, 1)] and pairs(last) == [(0, 4), (0, 5), (1, 3), (1, 4)]
    (both,) = prompt_positions(cfg.replace(share_weights=True), ids, mask)  # no labels: the real tokens
    assert [t for b, t in pairs(both) if b == 2] == [2, 3, 8, 9] and [t for b, t in pairs(both) if b == 1] == [0, 1, 5, 6]
    (short,) = prompt_positions(M.make_method_config("direft", {"positions": "l3"}), ids[:1, :3])
    assert pairs(short) == [(0, 2)]  # 3 prompt tokens: each side is capped at 3 // 2
    packed_pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 0]])
    packed_labels = torch.tensor([[-100, -100, 5, 5, -100, -100, -100, 5, 5, -100]])  # the last is padding
    first, last = prompt_positions(cfg, ids[:1], torch.zeros(1, 1, 10, 10), packed_labels, packed_pos)
    assert pairs(first) == [(0, 0), (0, 4)] and pairs(last) == [(0, 1), (0, 6)]
    with pytest.raises(ConfigError, match="position_ids"):
        prompt_positions(cfg, ids[:1], torch.zeros(1, 1, 10, 10))


def test_generate_edits_the_prompt_once_and_equals_a_full_recompute():
    model = tiny_llama()
    M.add_adapter(model, "loreft", low_rank_dimension=R, positions="f1+l2")
    ids = torch.randint(0, 250, (2, 8), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, as generation batches are
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    seq, m = ids, mask
    for _ in range(4):  # the prompt stays the prompt: generated tokens are labelled, so never edited
        labels = torch.cat([torch.full_like(ids, -100), seq[:, ids.shape[1]:]], 1)
        with M.batch_context(model, {"input_ids": seq, "attention_mask": m, "labels": labels}):
            logits = model(input_ids=seq, attention_mask=m, use_cache=False).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
    assert torch.equal(out, seq)
    scores = lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False,  # noqa: E731
                                    output_scores=True, return_dict_in_generate=True).scores
    edited = scores()
    with M.disable_adapters(model):
        plain = scores()
    assert all((e - p).abs().max() > 1e-4 for e, p in zip(edited, plain))  # the prompt's edit reaches every step


def test_packed_rows_equal_the_examples_run_alone():
    from tuneforge.data import collate_causal

    model = tiny_llama()
    M.add_adapter(model, "loreft", low_rank_dimension=R, positions="f1+l1")
    a = {"input_ids": list(range(10, 17)), "labels": [-100] * 4 + list(range(14, 17))}
    b = {"input_ids": list(range(30, 36)), "labels": [-100] * 3 + list(range(33, 36))}
    packed = collate_causal([{"input_ids": a["input_ids"] + b["input_ids"], "labels": a["labels"] + b["labels"],
                              "seq_lens": [7, 6]}], pad_token_id=259)
    assert "attention_mask" not in packed  # transformers reads the examples from the restarting position_ids
    with M.batch_context(model, packed):
        y = model(**{k: packed[k] for k in ("input_ids", "position_ids")}, use_cache=False).logits
    for ex, span in ((a, slice(0, 7)), (b, slice(7, 13))):
        alone = collate_causal([ex], pad_token_id=259)
        with M.batch_context(model, alone):
            y_alone = model(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]).logits
        assert (y[0, span] - y_alone[0]).abs().max() < 1e-5


def test_mixed_batch_of_loreft_direft_and_base_rows():
    model, base = tiny_llama(), tiny_llama()
    M.add_adapter(model, "loreft", "lo", low_rank_dimension=R)
    M.add_adapter(model, "direft", "di", low_rank_dimension=2, positions="l3", layers=[0])
    batch = labelled_batch(prompt_lens=(5, 7, 6))
    batch["attention_mask"][0, 8:] = 0
    run = lambda: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # noqa: E731
    separate = {}
    for name in ("lo", "di"):
        M.set_active_adapters(model, name)
        with M.batch_context(model, batch):
            separate[name] = run()
    with M.mixed_batch(model, ["lo", "di", None]), M.batch_context(model, batch):
        mixed = run()
    plain = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (mixed[0] - separate["lo"][0]).abs().max() < 1e-5
    assert (mixed[1] - separate["di"][1]).abs().max() < 1e-5
    assert (mixed[2] - plain[2]).abs().max() < 1e-5
    assert (separate["lo"] - plain).abs().max() > 1e-3


def test_gradient_checkpointing_gives_the_same_gradients():
    """The loop runs forward inside batch_context and backward after it; checkpointing replays the layers then."""
    grads = []
    for checkpointing in (False, True):
        model = tiny_llama()
        M.add_adapter(model, "loreft", low_rank_dimension=R, dropout=0.1)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        batch = labelled_batch()
        torch.manual_seed(1)
        with M.batch_context(model, batch):
            y = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        y.last_hidden_state.pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in M.trainable_parameters(model)})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert (grads[0][k] - grads[1][k]).abs().max() < 1e-6, k


def test_classification_batches_ignore_class_labels():
    model = tiny_bert(num_labels=3)
    M.add_adapter(model, "direft", low_rank_dimension=2, positions="l1", modules_to_save=["classifier"])
    ids = torch.randint(0, 250, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2])}
    with M.batch_context(model, batch):
        y = model(input_ids=ids, attention_mask=mask).logits
    assert (y - model(input_ids=ids, attention_mask=mask).logits).abs().max() == 0
    with M.disable_adapters(model):
        assert (y - model(input_ids=ids, attention_mask=mask).logits).abs().max() > 0


def test_files_are_safetensors_and_json_and_round_trip(tmp_path):
    model = tiny_llama()
    M.add_adapter(model, "loreft", low_rank_dimension=R, layers=[1], positions="f1+l1")
    save_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    body = json.loads((tmp_path / "adapter_config.json").read_text())
    assert body["peft_type"] == "LOREFT" and body["layers"] == [1] and body["positions"] == "f1+l1"
    state = load_file(tmp_path / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.reft.0.rotate_layer"
    assert state[key].shape == (D, R)
    fresh = tiny_llama()
    cfg = load_adapter(fresh, tmp_path)
    assert type(cfg).method == "loreft"
    assert (fresh.model.layers[1].reft["default"][0].rotate_layer.weight - state[key]).abs().max() < 1e-6


def test_config_errors_and_delete_restores_the_base():
    for fields, key in (({"positions": "x3"}, "positions"), ({"first_n": 0, "last_n": 0}, "positions"),
                        ({"layers": "some"}, "layers"), ({"low_rank_dimension": 0}, "low_rank_dimension")):
        with pytest.raises(ConfigError) as err:
            M.make_method_config("loreft", fields)
        assert err.value.key == key, fields
    assert M.make_method_config("direft", {"positions": "l3", "first_n": 5}).first_last() == (0, 3)
    model, base = tiny_llama(), tiny_llama()
    with pytest.raises(TargetNotFound, match="0..1"):
        M.add_adapter(model, "loreft", layers=[4])
    M.add_adapter(model, "loreft", "a")
    M.add_adapter(model, "direft", "b", layers=[0])
    M.delete_adapter(model, "a")
    M.delete_adapter(model, "b")
    ids = torch.randint(0, 250, (2, 6))
    assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in base.named_parameters()}
    assert not model.model._forward_pre_hooks and not model.model.layers[0]._forward_hooks
