"""What prompt tuning and prefix tuning share: N virtual tokens in front of every row, added by hooks on the
backbone (`model.base_model`), so the plain transformers model keeps its own forward, `generate` and heads.

A forward pre-hook on the backbone lengthens the attention mask by N and shifts the position ids by N; the
method then either prepends N trained embeddings (prompt tuning, stripped again from the backbone's output so
every caller sees its own sequence length) or prefills the key/value cache with N trained keys and values per
layer (prefix tuning). A forward is the first one of a sequence when its cache is missing or empty; later
`generate` steps only get the longer mask and the shifted positions.

Rows may differ (a mixed batch, or a row with no adapter): row i's virtual tokens are right-aligned in the N
slots and the slots it does not use are masked out, so each row computes what it would compute alone.
Packed rows (4-D block-diagonal masks) are refused with a ConfigError: virtual tokens would have to be
repeated per packed example.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ._hooks import HookedMethod, HookState, backbone_of, bind_kwargs
from .base import MethodConfig, check
from .target_spec import SavedModules

HOLDERS = ("prompt_encoder", "prefix_encoder")  # backbone attributes that hold one input method's modules


@dataclasses.dataclass
class VirtualTokenConfig(MethodConfig, SavedModules):
    """The fields prompt and prefix tuning share (peft's PromptLearningConfig); names are peft's so
    adapter_config.json reads the same in both tools."""

    num_virtual_tokens: int = 20
    """N, the number of trained virtual tokens in front of every input (prompt embeddings, or key/value
    positions in every layer for prefix tuning)."""
    token_dim: Optional[int] = None
    """Width of one virtual token, filled from the model when left empty (a set value must fit the model):
    hidden_size for prompt tuning, d_kv = key/value heads x head dim for prefix tuning."""
    num_layers: Optional[int] = None
    """L, the number of transformer layers; filled from the model (prompt tuning records it for peft only)."""
    num_attention_heads: Optional[int] = None
    """Attention heads per layer (key/value heads for prefix tuning); filled from the model (prompt tuning
    records it for peft only)."""
    num_transformer_submodules: Optional[int] = 1
    """1 for decoder-only and encoder-only models (encoder-decoder models are not supported)."""
    inference_mode: bool = False
    """True when weights will be loaded into the adapter (save_adapter writes true, as peft): no initialisation
    from the vocabulary or a text (loading never needs the tokenizer), and a prefix is held directly, without
    its MLP."""

    def validate(self) -> None:
        check(isinstance(self.num_virtual_tokens, int) and self.num_virtual_tokens > 0, "num_virtual_tokens",
              f"num_virtual_tokens must be a positive integer, got {self.num_virtual_tokens!r}")
        check(self.num_transformer_submodules in (None, 1), "num_transformer_submodules",
              "only num_transformer_submodules 1 (decoder-only or encoder-only models) is supported")


class VirtualState(HookState):
    def __init__(self):
        super().__init__()
        self.strip = 0  # virtual positions to cut from the running forward's output


class VirtualTokenMethod(HookedMethod):
    """Base of the input methods. Subclasses set `holder_attr`, build one module per adapter (`build`), say
    how many virtual tokens an adapter adds (`num_tokens`) and how they enter the forward (`inject`)."""

    kind = "input"
    holder_attr: ClassVar[str] = ""
    state_attr = "_tuneforge_virtual"
    state_class = VirtualState

    # ---- what a subclass writes -------------------------------------------------------------------
    def build(self, model: nn.Module, cfg: MethodConfig) -> nn.Module:
        raise NotImplementedError

    def num_tokens(self, module: nn.Module) -> int:
        raise NotImplementedError

    def inject(self, backbone, kw, rows, counts, n_slots, prefill, real_pos):
        """Change the forward's keywords `kw` in place for rows whose adapters are `rows[i]`."""
        raise NotImplementedError

    # ---- shared -------------------------------------------------------------------------------------
    def holder(self, model: nn.Module) -> nn.ModuleDict | None:
        return getattr(backbone_of(model), self.holder_attr, None)

    def apply(self, model, cfg, adapter_name) -> None:
        backbone = backbone_of(model)
        other = [h for h in HOLDERS if h != self.holder_attr and hasattr(backbone, h)]
        if other:
            raise ConfigError(f"this model already carries a {other[0].split('_')[0]} tuning adapter; {self.name} "
                              "cannot be combined with another virtual-token method on one model", key="method")
        module = self.build(model, cfg)
        holder = self.holder(model)
        if holder is None:
            state = self.new_state(model)
            holder = nn.ModuleDict()
            backbone.add_module(self.holder_attr, holder)
            state.handles = [backbone.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
                             backbone.register_forward_hook(self._post_hook)]
        holder[adapter_name] = module

    def trainable_parameters(self, model, adapter_name, cfg=None):
        prefix = "" if backbone_of(model) is model else model.base_model_prefix + "."
        module = self.holder(model)[adapter_name]
        return [(f"{prefix}{self.holder_attr}.{adapter_name}.{n}", p) for n, p in module.named_parameters()]

    def remove(self, model, adapter_name, keep_merged: bool = False) -> None:
        holder = self.holder(model)
        del holder[adapter_name]
        self.forget(model, adapter_name)
        if not len(holder):
            self.drop_state(model)
            delattr(backbone_of(model), self.holder_attr)

    def _pre_hook(self, backbone, args, kwargs):
        state = backbone._tuneforge_virtual
        state.strip = 0
        kw = bind_kwargs(backbone, args, kwargs)
        ref = kw.get("input_ids") if kw.get("input_ids") is not None else kw.get("inputs_embeds")
        batch_size, length = ref.shape[:2]
        rows = state.row_adapters(getattr(backbone, self.holder_attr), batch_size)
        if not any(rows):
            return None
        mask = kw.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise ConfigError(
                f"{self.name} needs a 2-D padding mask; packed rows (a 4-D block-diagonal mask) would need the "
                "virtual tokens once per packed example. Set data.packing: false",
                key="data.packing",
            )
        holder, device = getattr(backbone, self.holder_attr), ref.device
        counts = torch.tensor([sum(self.num_tokens(holder[n]) for n in r) for r in rows], device=device)
        n_slots = int(counts.max())
        uniform = bool((counts == n_slots).all())
        cache = kw.get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        prefill = past == 0
        if mask is not None or not uniform:
            real = mask if mask is not None else torch.ones(batch_size, length, dtype=torch.long, device=device)
            slots = torch.arange(n_slots, device=device)[None] >= (n_slots - counts)[:, None]
            kw["attention_mask"] = torch.cat([slots.to(real.dtype), real], dim=1)
        pos = kw.get("position_ids")
        if pos is None and not uniform:
            pos = torch.arange(length, device=device)[None] + (past - n_slots if past else 0)
        real_pos = None if pos is None else pos + counts[:, None]
        self.inject(backbone, kw, rows, counts, n_slots, prefill, real_pos)
        return (), kw

    def _post_hook(self, backbone, args, output):
        strip = backbone._tuneforge_virtual.strip
        if not strip:
            return None
        if isinstance(output, tuple):
            return (output[0][:, strip:],) + tuple(output[1:])
        output["last_hidden_state"] = output.last_hidden_state[:, strip:]
        if getattr(output, "hidden_states", None) is not None:
            output["hidden_states"] = tuple(h[:, strip:] for h in output.hidden_states)
        return output


def fill_from_model(cfg: MethodConfig, values: dict) -> None:
    """Fill the config's model-shape fields (token_dim, num_layers, ...) from the model; a value that is set
    but does not fit this model is an error (an adapter file made for another base)."""
    for field, value in values.items():
        given = getattr(cfg, field)
        if given is None:
            setattr(cfg, field, value)
        elif given != value:
            raise ConfigError(f"{field} is {given}, but this model has {value} (an adapter for another base?)",
                              key=field)


def batch_of_rows(rows: list[list[str]], pieces: dict[str, torch.Tensor], n_slots: int, dim: int) -> torch.Tensor:
    """(batch, ...) tensor: row i is its adapters' pieces concatenated along `dim` (of the piece), left-padded
    with zeros to n_slots, so that the virtual tokens a row uses sit right before its real tokens."""
    if all(r == rows[0] for r in rows):
        one = torch.cat([pieces[n] for n in rows[0]], dim=dim)
        return one.unsqueeze(0).expand(len(rows), *one.shape)
    template = next(iter(pieces.values()))
    out = []
    for row in rows:
        parts = [pieces[n] for n in row]
        shape = list(template.shape)
        shape[dim] = n_slots - sum(p.shape[dim] for p in parts)
        out.append(torch.cat([template.new_zeros(shape), *parts], dim=dim))
    return torch.stack(out)

