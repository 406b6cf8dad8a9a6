"""Sentence encoders: load any model tuneforge can point at and turn texts into unit vectors.

`SentenceEncoder.load(path)` accepts a packaged alias (all-minilm-l6-v2), a model directory (a
sentence-transformers directory keeps its pooling and max_seq_length), an adapter directory (base model from its
adapter_config.json, adapter applied), or a `tuneforge train` output directory (its `sentence-transformer/`
export when present, else its `adapter/`). Embeddings: mean pooling over real tokens (or [CLS]) then L2
normalisation, which for all-MiniLM-L6-v2 equals sentence-transformers' output.

`export_sentence_transformer` writes the layout sentence-transformers reads: the merged weights and tokenizer,
`modules.json` (Transformer -> Pooling -> Normalize), `1_Pooling/config.json` and `sentence_bert_config.json`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.padding import pad as pad_rows
from ..errors import ModelNotFound
from ..io import atomic_dir, load_adapter
from ..io.adapter_files import CONFIG_NAME
from ..io.model_card import write_model_card
from ..methods import list_adapters, unload
from ..models import load_model, load_tokenizer
from ..models.packaged import resolve_model
from ..models.pooling import pool
from ..registry import METHODS

EXPORT_DIR = "sentence-transformer"
DEFAULT_MAX_LENGTH = 256


class SentenceEncoder:
    def __init__(self, model, tokenizer, name: str, pooling: str = "mean", normalize: bool = True,
                 max_length: int = DEFAULT_MAX_LENGTH):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        positions = getattr(model.config, "max_position_embeddings", None)
        self.pooling, self.normalize = pooling, normalize
        self.max_length = min(max_length, positions) if positions else max_length

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @classmethod
    def load(cls, name_or_path, device: str = "auto", allow_pickle: bool = False) -> "SentenceEncoder":
        """An encoder from an alias, a model / sentence-transformers dir, an adapter dir or a run dir. Pickle
        weights (pytorch_model.bin, adapter_model.bin) only with allow_pickle: unpickling can run code."""
        path = Path(str(name_or_path)).expanduser()
        if path.is_dir() and (path / EXPORT_DIR / "modules.json").exists():
            path = path / EXPORT_DIR
        elif path.is_dir() and (path / "adapter" / CONFIG_NAME).exists():
            path = path / "adapter"
        if path.is_dir() and (path / CONFIG_NAME).exists():
            base = json.loads((path / CONFIG_NAME).read_text()).get("base_model_name_or_path")
            if not base:
                raise ModelNotFound(f"{path / CONFIG_NAME} names no base_model_name_or_path")
            model = load_model(base, kind="encoder", device=device, allow_pickle=allow_pickle)
            load_adapter(model, path, allow_pickle=allow_pickle)
            settings = st_settings(base)
            tokenizer = load_tokenizer(base)
        else:
            name = str(path) if path.exists() else str(name_or_path)
            model = load_model(name, kind="encoder", device=device, allow_pickle=allow_pickle)
            tokenizer = load_tokenizer(name)
            settings = st_settings(name)
        canonical = str(path.resolve()) if path.exists() else str(name_or_path)
        return cls(model, tokenizer, canonical, **settings)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, max_length: int | None = None) -> np.ndarray:
        """(len(texts), dim) float32 embeddings. Texts are batched by length so little padding is computed."""
        limit = max_length or self.max_length
        ids = self.tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch, mask = pad_rows([ids[i] for i in rows], pad)
            batch, mask = batch.to(device), mask.to(device)
            vectors = pool(self.model(input_ids=batch, attention_mask=mask).last_hidden_state, mask, self.pooling)
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            out[rows] = vectors.float().cpu().numpy()
        return out


def st_settings(name_or_path) -> dict:
    """pooling / normalize / max_length from a sentence-transformers directory; defaults otherwise."""
    try:
        source = resolve_model(name_or_path)
    except ModelNotFound:
        source = None
    root = Path(source.location) if source is not None and not source.is_hub else None
    settings = {"pooling": "mean", "normalize": True, "max_length": DEFAULT_MAX_LENGTH}
    if root is None or not (root / "modules.json").exists():
        return settings
    modules = json.loads((root / "modules.json").read_text())
    settings["normalize"] = any(m.get("type", "").endswith("Normalize") for m in modules)
    for m in modules:
        if m.get("type", "").endswith("Pooling") and (root / m["path"] / "config.json").exists():
            pooling = json.loads((root / m["path"] / "config.json").read_text())
            settings["pooling"] = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
    if (root / "sentence_bert_config.json").exists():
        limit = json.loads((root / "sentence_bert_config.json").read_text()).get("max_seq_length")
        settings["max_length"] = int(limit or DEFAULT_MAX_LENGTH)
    return settings


def write_sentence_transformer(model, tokenizer, out_dir, pooling: str = "mean", normalize: bool = True,
                               max_seq_length: int = DEFAULT_MAX_LENGTH, card: dict | None = None) -> Path:
    """Save a plain transformers encoder in sentence-transformers' layout, atomically, with a model card
    (card: the training facts of io.model_card; default: the base model alone)."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
            (tmp / "2_Normalize").mkdir()
        (tmp / "modules.json").write_text(json.dumps(modules, indent=2))
        (tmp / "1_Pooling").mkdir()
        (tmp / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": int(model.config.hidden_size),
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }, indent=2))
        (tmp / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": int(max_seq_length), "do_lower_case": False}, indent=2))
        (tmp / "config_sentence_transformers.json").write_text(
            json.dumps({"similarity_fn_name": "cosine", "prompts": {}, "default_prompt_name": None}, indent=2))
        base = getattr(model.config, "_name_or_path", None) or None
        facts = {**(card or {"base_model": base, "model_kind": "encoder"}),
                 "pooling": pooling, "normalize": normalize, "max_seq_length": int(max_seq_length)}
        write_model_card(tmp, "sentence-transformers", facts)
    return Path(out_dir)


def export_sentence_transformer(model, tokenizer, output_dir, pooling: str = "mean", normalize: bool = True,
                                max_seq_length: int = DEFAULT_MAX_LENGTH, card: dict | None = None) -> Path | None:
    """Merge the model's adapters and write `output_dir/sentence-transformer`; None (and a note) when an adapter
    cannot merge. The model is unloaded in place, so call this last."""
    adapters = list_adapters(model)
    blocked = sorted({type(c).method for c in adapters.values() if not METHODS.get(type(c).method).mergeable})
    if blocked:
        print(f"note: {', '.join(blocked)} cannot merge into the weights; no {EXPORT_DIR}/ export "
              "(the adapter itself loads with `tuneforge index build --model RUN_DIR`)")
        return None
    plain = unload(model, merge=True) if adapters else model
    return write_sentence_transformer(plain, tokenizer, Path(output_dir) / EXPORT_DIR, pooling, normalize,
                                      max_seq_length, card=card)
