"""ReFT: train a low-rank edit of the hidden states (not the weights) at a few prompt positions.

    LoReFT(h) = h + R^T (W h + b - R h)      R in R^{r x d} with orthonormal rows (R R^T = I), W in R^{r x d}
    DiReFT(h) = h + W2^T (W1 h + b)          W1, W2 in R^{r x d}, no orthogonality (cheaper, as LoRA on h)
    trainable per intervention: 2 r d + r;   total = layers x interventions per layer x (2 r d + r)

Wu, Arora, Wang, Geiger, Jurafsky, Manning, Potts 2024, "ReFT: Representation Finetuning for Language
Models", https://arxiv.org/abs/2404.03592. The edit is applied to the residual stream output of the chosen
layers, at the first n and last m tokens of each prompt (pyreft's `positions: "f1+l1"`; each side is capped at
half the prompt, as pyreft does). Without `share_weights` the first and the last positions get separate
interventions. The prompt is the tokens before the first trained label (labels != -100, taken from the batch
the training loop hands to `batch_context`) or, without labels, the non-padding tokens; packed rows
(4-D masks) are split at their position-id resets and each example gets its own positions. During `generate`
only the prefill step (the prompt) is edited, as pyreft does.

R is kept orthonormal by a torch parametrisation, as in pyreft, but through a QR map instead of pyreft's
`parametrizations.orthogonal` (Householder): that map reads its diagonal through an integer cast, so a single
AdamW step with weight decay collapses a column of R, and its trivialisation keeps a d x d buffer outside the
trainable parameters, which breaks exact resume. Q(A) has neither problem. DiReFT here is the paper's DiReFT,
which pyreft 0.1.0 calls NodireftIntervention (its DireftIntervention keeps W2 orthonormal). Dropout applies
to the edit only (pyreft drops the whole output). Files: safetensors + adapter_config.json, peft_type LOREFT /
DIREFT, R stored as R^T (d x r, pyreft's layout). Not mergeable: the edit depends on positions.
"""
from __future__ import annotations

import dataclasses
import math
import re
from contextlib import contextmanager
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..errors import AdapterMismatch, ConfigError, TargetNotFound
from ..registry import METHODS
from ._hooks import HookedMethod, HookState, backbone_of, bind_kwargs, text_config
from .base import MethodConfig, check
from .target_spec import SavedModules
from .weight_method import PEFT_PREFIX

IGNORE = -100
POSITIONS = re.compile(r"^(?:f(\d+))?\+?(?:l(\d+))?$")
LAYER_LISTS = ("layers", "layer", "h", "blocks", "block")


@dataclasses.dataclass
class ReftConfig(MethodConfig, SavedModules):
    """Where and how large the intervention is; names as pyreft's."""

    low_rank_dimension: int = 4
    """r, the rank of the edit."""
    layers: Union[list[int], str] = "all"
    """Layer indices whose output (residual stream) is edited, or "all"."""
    positions: Optional[str] = None
    """pyreft's shorthand "f<n>+l<m>" ("f3", "l1", "f3+l3"); when set it replaces first_n and last_n."""
    first_n: int = 1
    """Edit the first n prompt tokens."""
    last_n: int = 1
    """Edit the last m prompt tokens."""
    share_weights: bool = False
    """One intervention per layer for first and last positions; False gives each side its own."""
    dropout: float = 0.0
    """Dropout on the edit during training."""

    def validate(self) -> None:
        check(isinstance(self.low_rank_dimension, int) and self.low_rank_dimension > 0, "low_rank_dimension",
              f"low_rank_dimension must be a positive integer, got {self.low_rank_dimension!r}")
        check(self.layers == "all" or (isinstance(self.layers, list) and self.layers
                                       and all(isinstance(i, int) and i >= 0 for i in self.layers)),
              "layers", f"layers must be 'all' or a list of layer indices, got {self.layers!r}")
        check(self.positions is None or bool(self.positions and POSITIONS.match(self.positions)), "positions",
              f"positions must look like 'f3', 'l1' or 'f3+l3', got {self.positions!r}")
        check(all(isinstance(n, int) and n >= 0 for n in (self.first_n, self.last_n)), "first_n",
              "first_n and last_n must be integers >= 0")
        check(sum(self.first_last()) > 0, "positions", "edit at least one position (first_n or last_n > 0)")
        check(0.0 <= self.dropout < 1.0, "dropout", "dropout must be in [0, 1)")

    def first_last(self) -> tuple[int, int]:
        if self.positions is None:
            return self.first_n, self.last_n
        first, last = POSITIONS.match(self.positions).groups()
        return int(first or 0), int(last or 0)

    def num_interventions(self) -> int:
        """Per layer: 2 when first and last positions have their own weights."""
        first, last = self.first_last()
        return 1 if self.share_weights or not first or not last else 2


@dataclasses.dataclass
class LoreftConfig(ReftConfig):
    method = "loreft"


@dataclasses.dataclass
class DireftConfig(ReftConfig):
    method = "direft"


class LowRank(nn.Module):
    """x -> x W^T (+ b), W (r x d), initialised as nn.Linear. Not an nn.Linear, so LoRA's all-linear targeting
    on the same model leaves it alone."""

    def __init__(self, d: int, r: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(r, d))
        self.bias = nn.Parameter(torch.empty(r)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if bias:
            nn.init.uniform_(self.bias, -1 / math.sqrt(d), 1 / math.sqrt(d))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Rotation(nn.Module):
    """R^T as a (d x r) matrix with orthonormal columns (pyreft's LowRankRotateLayer)."""

    def __init__(self, d: int, r: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d, r))
        nn.init.orthogonal_(self.weight)
        parametrize.register_parametrization(self, "weight", Orthonormal())


class Orthonormal(nn.Module):
    """A (d x r) -> the Q of its QR decomposition, signs fixed so that diag of the R factor is positive: every
    full-rank A maps to orthonormal columns, cA maps where A does (weight decay cannot hurt), and an orthonormal
    matrix maps to itself (right_inverse is the identity)."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        q, r = torch.linalg.qr(a)
        return q * torch.where(r.diagonal() < 0, -1.0, 1.0).to(q.dtype)

    def right_inverse(self, q: torch.Tensor) -> torch.Tensor:
        return q


class Intervention(nn.Module):
    """One edit h -> h + delta(h) at one layer for one group of positions."""

    def __init__(self, kind: str, d: int, r: int, dropout: float):
        super().__init__()
        self.kind = kind
        self.learned_source = LowRank(d, r, bias=True)
        if kind == "loreft":
            self.rotate_layer = Rotation(d, r)
        else:
            self.proj_layer = LowRank(d, r, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.to(self.learned_source.weight.dtype)
        if self.kind == "loreft":
            rt = self.rotate_layer.weight  # R^T, (d, r)
            delta = (self.learned_source(x) - x @ rt) @ rt.T
        else:
            delta = self.learned_source(x) @ self.proj_layer.weight
        return h + self.dropout(delta).to(h.dtype)

    def saved(self) -> dict[str, torch.Tensor]:
        out = {f"learned_source.{k}": v for k, v in self.learned_source.state_dict().items()}
        if self.kind == "loreft":
            out["rotate_layer"] = self.rotate_layer.weight
        else:
            out["proj_layer.weight"] = self.proj_layer.weight
        return {k: v.detach() for k, v in out.items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.learned_source.weight.copy_(state["learned_source.weight"])
            self.learned_source.bias.copy_(state["learned_source.bias"])
            if self.kind == "loreft":
                self.rotate_layer.weight = state["rotate_layer"].to(self.learned_source.weight.dtype)
            else:
                self.proj_layer.weight.copy_(state["proj_layer.weight"])


def prompt_positions(cfg: ReftConfig, input_ids, attention_mask=None, labels=None, position_ids=None,
                     rows: Optional[list[bool]] = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(row indices, token indices) to edit, one pair per intervention of a layer (first, last or both)."""
    batch, length = input_ids.shape[:2]
    if labels is not None and tuple(labels.shape) != (batch, length):
        labels = None  # class labels of a classification batch, not token labels
    # packed rows come without a mask (or, for some models, with a 4-D block mask); their examples are where
    # position_ids restart at 0, which for an unpacked row is its whole length
    packed = position_ids is not None and (attention_mask is None or attention_mask.dim() == 4)
    if attention_mask is not None and attention_mask.dim() == 4 and position_ids is None:
        raise ConfigError("ReFT on packed rows (4-D mask) needs position_ids to find the examples",
                          key="data.packing")
    first_n, last_n = cfg.first_last()
    two = cfg.num_interventions() == 2
    slots: list[list[tuple[int, int]]] = [[], []] if two else [[]]
    for b in range(batch):
        if rows is not None and not rows[b]:
            continue
        if packed:
            starts = (position_ids[b] == 0).nonzero().flatten().tolist() + [length]
            segments = [list(range(s, e)) for s, e in zip(starts[:-1], starts[1:])]
        elif attention_mask is not None:
            segments = [attention_mask[b].nonzero().flatten().tolist()]
        else:
            segments = [list(range(length))]
        row_labels = labels[b].tolist() if labels is not None else None
        for tokens in segments:
            if row_labels is not None:
                trained = [t for t in tokens if row_labels[t] != IGNORE]
                if not trained:
                    continue  # nothing to predict here (padding, a fully masked example)
                tokens = [t for t in tokens if t < trained[0]]
            n = len(tokens)
            first, last = tokens[: min(n // 2, first_n)], tokens[n - min(n // 2, last_n):]
            slots[0].extend((b, t) for t in first)
            slots[-1].extend((b, t) for t in last)
    device = input_ids.device
    return [(torch.tensor([b for b, _ in s], dtype=torch.long, device=device),
             torch.tensor([t for _, t in s], dtype=torch.long, device=device)) for s in slots]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks (model.layers, encoder.layer, h, ...)."""
    for name, module in backbone_of(model).named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in LAYER_LISTS and len(module):
            return module
    raise TargetNotFound(f"ReFT found no list of transformer blocks ({', '.join(LAYER_LISTS)}) in this model")


class ReftState(HookState):
    """Switching state plus what the hooks need: each adapter's config, the batch the loop runs (for its
    labels) and the positions of the running forward (kept after it, as activation checkpointing replays the
    layers during backward)."""

    def __init__(self):
        super().__init__()
        self.configs: dict[str, ReftConfig] = {}
        self.batch: dict | None = None
        self.current: dict[str, list] = {}


class ReftMethod(HookedMethod):
    kind = "representation"
    paper = "https://arxiv.org/abs/2404.03592"
    formula = "len(layers) * interventions_per_layer * (2 * low_rank_dimension * hidden_size + low_rank_dimension)"
    state_attr = "_tuneforge_reft"
    state_class = ReftState

    @classmethod
    def claims_peft_config(cls, body: dict) -> bool:
        return body.get("peft_type") == cls.name.upper()

    def chosen_layers(self, model, cfg: ReftConfig) -> list[int]:
        count = len(decoder_layers(model))
        chosen = list(range(count)) if cfg.layers == "all" else list(cfg.layers)
        bad = [i for i in chosen if i >= count]
        if bad:
            raise TargetNotFound(f"{self.name}: layers {bad} do not exist; this model has layers 0..{count - 1}")
        return chosen

    def select_targets(self, model, cfg) -> list[str]:
        paths = layer_paths(model)
        return [paths[i] for i in self.chosen_layers(model, cfg)]

    def placed(self, model, adapter_name):
        """(module path, ModuleList of interventions) for every layer holding this adapter."""
        return [(path, layer.reft[adapter_name]) for path, layer in zip(layer_paths(model), decoder_layers(model))
                if adapter_name in getattr(layer, "reft", {})]

    def apply(self, model, cfg: ReftConfig, adapter_name) -> None:
        layers, chosen = decoder_layers(model), self.chosen_layers(model, cfg)
        d, device = text_config(model).hidden_size, next(model.parameters()).device
        state = self.state(model)
        if state is None:
            state = self.new_state(model)
            state.handles.append(backbone_of(model).register_forward_pre_hook(_pre_hook, with_kwargs=True))
        state.configs[adapter_name] = cfg
        for i in chosen:
            layer = layers[i]
            if not hasattr(layer, "reft"):
                layer.add_module("reft", nn.ModuleDict())
                state.handles.append(layer.register_forward_hook(_layer_hook))
                object.__setattr__(layer, "_tuneforge_reft", state)
            ivs = [Intervention(self.name, d, cfg.low_rank_dimension, cfg.dropout) for _ in range(cfg.num_interventions())]
            layer.reft[adapter_name] = nn.ModuleList(ivs).to(device)

    def trainable_parameters(self, model, adapter_name, cfg=None):
        return [(f"{path}.reft.{adapter_name}.{n}", p) for path, ivs in self.placed(model, adapter_name)
                for n, p in ivs.named_parameters()]

    def state_dict(self, model, adapter_name, cfg=None) -> dict[str, torch.Tensor]:
        return {f"{PEFT_PREFIX}{path}.reft.{i}.{k}": v for path, ivs in self.placed(model, adapter_name)
                for i, iv in enumerate(ivs) for k, v in iv.saved().items()}

    def load_state_dict(self, model, state, adapter_name, cfg=None) -> None:
        expected = self.state_dict(model, adapter_name)
        if set(state) != set(expected):
            extra, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
            raise AdapterMismatch(f"the {self.name} adapter does not fit this model's layers: unexpected "
                                  f"{extra[:2]}, missing {missing[:2]}")
        for key, tensor in state.items():
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise AdapterMismatch(f"{key}: the adapter has shape {tuple(tensor.shape)}, this model needs "
                                      f"{tuple(expected[key].shape)}; the adapter was saved for another base model")
        for path, ivs in self.placed(model, adapter_name):
            for i, iv in enumerate(ivs):
                head = f"{PEFT_PREFIX}{path}.reft.{i}."
                iv.load({k[len(head):]: v for k, v in state.items() if k.startswith(head)})

    def remove(self, model, adapter_name, keep_merged: bool = False) -> None:
        state = self.state(model)
        for layer in decoder_layers(model):
            if adapter_name in getattr(layer, "reft", {}):
                del layer.reft[adapter_name]
        self.forget(model, adapter_name)
        del state.configs[adapter_name]
        if state.configs:
            return
        self.drop_state(model)
        for layer in decoder_layers(model):
            if hasattr(layer, "reft"):
                delattr(layer, "reft")
                object.__delattr__(layer, "_tuneforge_reft")

    @contextmanager
    def batch_context(self, model, cfg, adapter_name, batch):
        state = self.state(model)
        previous, state.batch = state.batch, batch
        try:
            yield
        finally:
            state.batch = previous


def layer_paths(model) -> list[str]:
    names = {m: n for n, m in model.named_modules()}
    return [names[layer] for layer in decoder_layers(model)]


def _pre_hook(backbone, args, kwargs):
    """Work out, once per forward, which (row, token) pairs each adapter edits."""
    state = backbone._tuneforge_reft
    state.current = {}
    kw = bind_kwargs(backbone, args, kwargs)
    cache = kw.get("past_key_values")
    if cache is not None and cache.get_seq_length() > 0:
        return None  # a generation step after the prompt: pyreft edits the prompt only
    ids = kw.get("input_ids") if kw.get("input_ids") is not None else kw.get("inputs_embeds")
    labels, batch = None, state.batch
    if batch is not None and batch.get("input_ids") is not None and kw.get("input_ids") is not None:
        if batch["input_ids"].shape == ids.shape and torch.equal(batch["input_ids"], ids):
            labels = batch.get("labels")
    rows = state.row_adapters(state.configs, ids.shape[0])
    for name in dict.fromkeys(n for r in rows for n in r):
        state.current[name] = prompt_positions(state.configs[name], ids, kw.get("attention_mask"), labels,
                                               kw.get("position_ids"), [name in r for r in rows])
    return None


def _layer_hook(layer, args, output):
    h = output[0] if isinstance(output, tuple) else output
    current = layer._tuneforge_reft.current
    for name, slots in current.items():
        if name not in layer.reft:
            continue
        for iv, (rows, tokens) in zip(layer.reft[name], slots):
            if rows.numel():
                h = h.index_put((rows, tokens), iv(h[rows, tokens]))
    if not current:
        return None
    return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h


@METHODS.register("loreft")
class Loreft(ReftMethod):
    """LoReFT(h) = h + R^T (W h + b - R h), R with orthonormal rows."""

    name = "loreft"
    config_class = LoreftConfig


@METHODS.register("direft")
class Direft(ReftMethod):
    """DiReFT(h) = h + W2^T (W1 h + b)."""

    name = "direft"
    config_class = DireftConfig
