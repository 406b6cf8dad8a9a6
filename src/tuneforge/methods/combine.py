"""Combine LoRA-family adapters of one model into a new adapter: linear, cat, svd (peft's add_weighted_adapter).

With weights w_i, scalings s_i and factors (A_i, B_i) per adapted layer, the new adapter has scaling 1 and

    cat:     A = [w_1 s_1 A_1; ...; w_K s_K A_K],   B = [B_1, ..., B_K]        B A = sum_i w_i s_i B_i A_i  (exact)
    svd:     B A = the best rank-R approximation of sum_i w_i dW_i (truncated SVD; R = `rank`, default the max r)
    linear:  A = sum_i sign(w_i) sqrt|w_i s_i| A_i,   B = sum_i sqrt|w_i s_i| B_i     (same r; cross terms B_i A_j
             make it only an approximation of sum_i w_i dW_i, as peft warns; exact for one adapter)

which is peft's arithmetic, so results are numerically comparable (tests/methods/test_combine.py). Task arithmetic
(Ilharco et al. 2023, https://arxiv.org/abs/2212.04089) is the same call: `combine(model, {"a": 1.0, "b": -1.0})`
adds a's delta and removes b's; `combine(model, {"a": -1.0}, "not_a")` negates one (a single adapter uses `linear`,
exact for it, as in peft; except with how="svd", which here re-projects it to `rank`: peft would ignore that).
cat ranks add up (zero-padded where a layer lacks an adapter).

Which adapters: lora, rslora, lora_fa and loraplus (their output is W x + s B A x); DoRA only with how="svd", whose
input is the layer's real change m (W + s B A) / ||W + s B A|| - W (peft combines DoRA's B A and drops m), and the
result is a DoRA adapter whose magnitude equals its norm, so it adds exactly the SVD's B A. PiSSA and Delta-LoRA
adapters first become the plain LoRA they equal (`pissa.pissa_to_lora`; a Delta-LoRA file loads as LoRA).
Differences from peft: an rsLoRA result keeps use_rslora with lora_alpha = sqrt(R) so its scaling is 1 (peft keeps
alpha = R, which scales the result by sqrt(R)); the new adapter is frozen and becomes the active one (as
`load_adapter` does); a trained head (modules_to_save) of one source is copied, of several is refused.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError, TuneforgeError
from .api import _require, active_adapters, add_adapter, delete_adapter, list_adapters, method_for
from .base import MethodConfig
from .targeting import saved_modules

HOWS = ("linear", "cat", "svd")
TARGETING = ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern")


def combine(model: nn.Module, adapters: Mapping[str, float] | Sequence[str], adapter_name: str = "combined", *,
            how: str = "cat", rank: int | None = None) -> MethodConfig:
    """Add adapter `adapter_name` = the weighted combination of `adapters` ({name: weight}, or names at weight 1);
    returns its config. how: "cat" (exact, rank sum), "svd" (rank `rank`), "linear" (peft's factor sum)."""
    weights = _weights(adapters)
    if how not in HOWS:
        raise ConfigError(f"how must be one of {', '.join(HOWS)}, got {how!r}", key="how")
    if rank is not None and (how != "svd" or not isinstance(rank, int) or rank < 1):
        raise ConfigError(f"rank sets the SVD's target rank: a positive integer with how='svd' (got {rank!r} with "
                          f"how={how!r})", key="rank")
    if adapter_name in list_adapters(model):
        raise ConfigError(f"an adapter named {adapter_name!r} already exists", key="adapter_name")
    cfgs = {name: _check_source(model, name, how) for name in weights}
    if len(weights) == 1 and how != "svd":
        how = "linear"  # peft's rule; for one adapter it is exact
    layers = _source_layers(model, list(weights))
    ranks = {n: max(layer.r[n] for layer in layers.values() if n in layer.r) for n in weights}
    if how == "linear":
        layer_ranks = {layer.r[n] for layer in layers.values() for n in weights if n in layer.r}
        if len(layer_ranks) != 1:
            raise ConfigError(f"how='linear' sums the factors, so every adapter needs one rank in every layer (got "
                              f"ranks {sorted(layer_ranks)}); use how='cat' or how='svd'", key="how")
        new_rank = layer_ranks.pop()
    else:
        new_rank = sum(ranks.values()) if how == "cat" else (rank or max(ranks.values()))
    new_cfg = _new_config(model, cfgs, layers, new_rank)
    with torch.no_grad():
        factors = {m: _combined_factors(layer, weights, how, new_rank) for m, layer in layers.items()}
    flags = {id(p): p.requires_grad for p in model.parameters()}
    add_adapter(model, new_cfg, adapter_name)
    try:
        _fill(model, adapter_name, new_cfg, layers, factors, cfgs)
    except BaseException:
        delete_adapter(model, adapter_name)
        raise
    for p in model.parameters():  # the sources train as before; the result is frozen (mark_trainable to train it)
        p.requires_grad_(flags.get(id(p), False))
    return new_cfg


def _weights(adapters) -> dict[str, float]:
    if isinstance(adapters, Mapping):
        pairs = list(adapters.items())
    elif isinstance(adapters, str):
        pairs = [(adapters, 1.0)]
    else:
        pairs = [(name, 1.0) for name in adapters]
    if not pairs:
        raise ConfigError("name at least one adapter to combine", key="adapters")
    out: dict[str, float] = {}
    for name, w in pairs:
        if name in out:
            raise ConfigError(f"adapter {name!r} is named twice", key="adapters")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"the weight of {name!r} must be a finite number, got {w!r}", key="weights")
        out[name] = float(w)
    return out


def _check_source(model, name: str, how: str):
    cfg = _require(model, name)
    refusal = method_for(cfg).combine_refusal(name, how)  # each method says whether and how (Method.combine_as)
    if refusal is not None:
        raise TuneforgeError(refusal)
    if cfg.bias != "none":  # every combinable config is a LoraConfig
        raise TuneforgeError(f"adapter {name!r} trains base biases (bias={cfg.bias!r}); those are shared tensors, "
                             "not a per-adapter delta, so they cannot be weighted")
    return cfg


def _source_layers(model, names: list[str]) -> dict:
    """Module name -> LoRA layer for every layer holding a source adapter, in model order."""
    from .lora import LoraLayer

    layers = {m: layer for m, layer in model.named_modules()
              if isinstance(layer, LoraLayer) and any(layer.has_adapter(n) for n in names)}
    merged = sorted({a for layer in layers.values() for a in layer.merged_adapters})
    if merged:
        raise TuneforgeError(f"adapter(s) {merged} are merged into the base weights; unmerge_adapters(model) first")
    return layers


def _new_config(model, cfgs: dict, layers: dict, new_rank: int):
    """The first source's config at the new rank with scaling 1, targeting exactly the union of the sources' layers."""
    first = next(iter(cfgs.values()))
    targeting = {k: getattr(first, k) for k in TARGETING}
    if any({k: getattr(c, k) for k in TARGETING} != targeting for c in cfgs.values()):
        targeting = dict.fromkeys(TARGETING)
        targeting["target_modules"] = list(layers)
    heads = [n for n in cfgs if saved_modules(model, n)]
    if len(heads) > 1:
        raise TuneforgeError(f"adapters {heads} each train their own copy of a module (modules_to_save); a weighted "
                             "sum of whole modules is not defined, so at most one source may have one")
    alpha = math.sqrt(new_rank) if first.use_rslora else new_rank
    changes = dict(targeting, r=new_rank, lora_alpha=alpha, rank_pattern={}, alpha_pattern={}, init_lora_weights=True,
                   modules_to_save=cfgs[heads[0]].modules_to_save if heads else None)
    known = {f.name for f in dataclasses.fields(first)}
    cfg = first.replace(**{k: v for k, v in changes.items() if k in known})
    method = method_for(cfg)
    for mname, layer in layers.items():
        wanted = method.dispatch(layer.base_layer)
        if type(layer) is not wanted:
            raise TuneforgeError(f"{mname} carries a {type(layer).__name__}, but the result would be a "
                                 f"{type(cfg).method} adapter ({wanted.__name__}); combine adapters of one method "
                                 "family (save and reload plain LoRA variants to make them 'lora')")
    return cfg


def _delta_matrix(layer, name: str) -> torch.Tensor:
    """The layer's change from this adapter as an (out, in * k * k) matrix (embeddings: (dim, num)), in float32."""
    A, B = (t.detach().float() for t in layer.factors(name))
    return layer.combined_change(name, layer.scaling[name] * (B.flatten(1) @ A.flatten(1)))  # DoRA: its real change


def _combined_factors(layer, weights: dict[str, float], how: str, new_rank: int):
    """(A, B) of the new adapter at this layer (float32, stored shapes, scaling 1)."""
    present = [(n, w) for n, w in weights.items() if layer.has_adapter(n)]
    pairs = [tuple(t.detach().float() for t in layer.factors(n)) for n, _ in present]
    if how == "linear":
        signed = [w * layer.scaling[n] for n, w in present]
        A = sum(math.copysign(math.sqrt(abs(ws)), ws) * a for ws, (a, _) in zip(signed, pairs))
        B = sum(math.sqrt(abs(ws)) * b for ws, (_, b) in zip(signed, pairs))
        return A, B
    if how == "cat":
        A = torch.cat([w * layer.scaling[n] * a for (n, w), (a, _) in zip(present, pairs)], dim=0)
        B = torch.cat([b for _, b in pairs], dim=1)
    else:
        delta = sum(w * _delta_matrix(layer, n) for n, w in present)
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
        k = min(new_rank, S.shape[0])
        a_shape, b_shape = pairs[0][0].shape, pairs[0][1].shape
        A = Vh[:k].reshape(k, *a_shape[1:])
        B = (U[:, :k] * S[:k]).reshape(b_shape[0], k, *b_shape[2:])
    pad = new_rank - A.shape[0]  # zero rows / columns: layers lacking some adapters, or an SVD of lower rank
    if pad:
        A = torch.cat([A, A.new_zeros(pad, *A.shape[1:])], dim=0)
        B = torch.cat([B, B.new_zeros(B.shape[0], pad, *B.shape[2:])], dim=1)
    return A, B


def _fill(model, name: str, cfg, layers: dict, factors: dict, cfgs: dict) -> None:
    with torch.no_grad():
        for mname, layer in layers.items():
            A_new, B_new = layer.factors(name)
            A, B = factors[mname]
            A_new.copy_(A.to(A_new.dtype))
            B_new.copy_(B.to(B_new.dtype))
            layer.after_combine(name)  # DoRA resets its magnitude so the layer adds exactly B A
        for source in cfgs:
            for _, wrapper in saved_modules(model, source):
                if wrapper.has_adapter(name):
                    wrapper.modules_to_save[name].load_state_dict(wrapper.modules_to_save[source].state_dict())
    added = {m for m, layer in model.named_modules() if m in layers and layer.has_adapter(name)}
    if added != set(layers) or name not in active_adapters(model):
        raise TuneforgeError(f"internal: the combined adapter landed on {len(added)} of {len(layers)} layers")
