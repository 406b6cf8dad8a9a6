"""README.md model cards in the Hugging Face format, written next to every adapter, merged model and
sentence-transformers export, so the folder explains itself on the Hub or on disk.

The YAML header holds what the Hub indexes (base_model, library_name, pipeline_tag, tags, license, datasets)
plus a `tuneforge:` mapping with the training facts (method and its settings, task, data, hyper-parameters,
steps, time, final metrics); a merged model's card copies that mapping from its adapter's card. The body says the
same for people, and how to load the files with peft / transformers / sentence-transformers and with tuneforge.

`license` is the training data's license where its folder holds a recognised LICENSE file (the data sets this
project ships do); otherwise it is left out rather than guessed. `datasets` names each data set: a Hub id as
given, or a local file's folder name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

CARD_NAME = "README.md"
# packaged aliases -> the Hub id of the same weights (base_model must be a Hub id to link)
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
           "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
PIPELINE_TAGS = {"causal-lm": "text-generation", "sequence-classification": "text-classification",
                 "encoder": "feature-extraction"}
LIBRARIES = {"adapter": "peft", "merged": "transformers", "sentence-transformers": "sentence-transformers"}
# the first words of a license file -> its Hub license id
LICENSE_SIGNS = (("apache license", "apache-2.0"), ("mit license", "mit"),
                 ("attribution-noncommercial-sharealike 4.0", "cc-by-nc-sa-4.0"),
                 ("attribution-noncommercial 4.0", "cc-by-nc-4.0"), ("attribution-sharealike 4.0", "cc-by-sa-4.0"),
                 ("attribution 4.0", "cc-by-4.0"), ("bsd 3-clause", "bsd-3-clause"), ("cc0 1.0", "cc0-1.0"))
LICENSE_FILES = ("LICENSE", "DATA_LICENSE", "LICENSE.txt", "LICENSE.md", "DATA_LICENSE.txt")
TRAIN_KEYS = ("epochs", "max_steps", "micro_batch_size", "grad_accum_steps", "learning_rate", "lr_schedule",
              "warmup_steps", "warmup_ratio", "weight_decay", "max_grad_norm", "optimizer", "bf16", "seed",
              "neftune_noise_alpha")


def data_license(path) -> str | None:
    """The Hub license id of a local data file, from a license file in its folder; None when unknown."""
    if not path or not os.path.exists(path):
        return None
    folder = Path(path) if os.path.isdir(path) else Path(path).parent
    for name in LICENSE_FILES:
        file = folder / name
        if file.is_file():
            head = " ".join(file.read_text(errors="replace")[:400].lower().split())
            for sign, license_id in LICENSE_SIGNS:
                if sign in head:
                    return license_id
    return None


def _dataset_name(path: str) -> str:
    """A Hub id as given; a local file -> its folder's name (train.jsonl in data/alpaca -> alpaca)."""
    p = Path(path)
    if not os.path.exists(path):
        return path
    return (p if p.is_dir() else p.parent).resolve().name or p.stem


def hub_base(name: str | None) -> str | None:
    """base_model for the header: the Hub id of a packaged alias, a Hub id as is, None for a local path."""
    if not name:
        return None
    if name in HUB_IDS:
        return HUB_IDS[name]
    return None if os.path.exists(name) else name


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def method_facts(method_cfg, base_model: str | None, model_kind: str) -> dict:
    """What any adapter's card states: its base, head kind, method and the method's settings."""
    from ..registry import METHODS

    name = type(method_cfg).method if method_cfg is not None else None
    body = method_cfg.to_dict() if method_cfg is not None else {}
    peft_ok = bool(name) and bool(METHODS.get(name).peft_type)
    return _plain({"base_model": base_model, "model_kind": model_kind, "method": {"name": name, **body},
                   "peft_compatible": peft_ok})


def training_facts(cfg, result=None) -> dict:
    """The `tuneforge:` mapping from a RunConfig and (optionally) its TrainResult."""
    method = cfg.method
    sources = [(cfg.data.train, cfg.data.validation)] if cfg.data.train else []
    sources += [(m.train, m.validation) for m in cfg.data.mixture]
    data = []
    for train, validation in sources:
        entry = {"name": _dataset_name(train), "train": str(train)}
        if validation:
            entry["validation"] = str(validation)
        license_id = data_license(train)
        if license_id:
            entry["license"] = license_id
        data.append(entry)
    facts = {
        **method_facts(method, cfg.model.name, cfg.model.kind),
        "task": cfg.task, "data": data,
        "hyperparameters": {k: getattr(cfg.train, k) for k in TRAIN_KEYS if hasattr(cfg.train, k)},
    }
    if cfg.model.quantization:
        facts["hyperparameters"]["quantization"] = cfg.model.quantization
    if result is not None:
        metrics = {"train_loss": result.train_loss, **(result.eval_metrics or {})}
        facts.update(steps=result.steps, training_time_s=round(float(result.wall_time_s), 1),
                     tokens_per_s=round(float(result.tokens_per_s), 1),
                     metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None})
    return _plain(facts)


def render_card(kind: str, facts: dict, *, base_model: str | None = None, title: str | None = None) -> str:
    """The README.md text. kind: adapter, merged or sentence-transformers; facts: training_facts() (or the
    mapping of the adapter a merged model came from); base_model: the model name to load the files against."""
    from huggingface_hub import ModelCard, ModelCardData

    base = base_model or facts.get("base_model")
    model_kind = facts.get("model_kind", "encoder" if kind == "sentence-transformers" else "causal-lm")
    method = (facts.get("method") or {}).get("name")
    data = facts.get("data") or []
    licenses = sorted({d["license"] for d in data if d.get("license")})
    tags = ["tuneforge", *[t for t in (method, facts.get("task")) if t]]
    if kind == "adapter":
        tags.insert(1, "peft")
    if kind == "merged":
        tags.append("merged")
    pipeline = "sentence-similarity" if kind == "sentence-transformers" else PIPELINE_TAGS.get(model_kind)
    card_data = ModelCardData(
        base_model=hub_base(base), library_name=LIBRARIES[kind], pipeline_tag=pipeline, tags=tags,
        license=licenses[0] if len(licenses) == 1 else ("other" if licenses else None),
        datasets=[d["name"] for d in data] or None, tuneforge=facts,
    )
    what = {"adapter": f"A {method or 'tuneforge'} adapter", "merged": f"A {method or ''} adapter merged into its "
            "base weights", "sentence-transformers": "A sentence-transformers encoder"}[kind]
    lines = [f"# {title or 'tuneforge ' + kind}", "",
             f"{what} for `{base}`, " + (f"trained with tuneforge on the `{facts['task']}` task."
                                         if facts.get("task") else "saved with tuneforge."), ""]
    lines += _training_section(facts) + (_data_section(data, licenses) if "data" in facts else [])
    lines += _results_section(facts)
    lines += ["## How to use", ""] + _usage(kind, model_kind, base, facts)
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))


def _table(rows, head=("setting", "value")) -> list[str]:
    out = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    out += [f"| {k} | {_show(v)} |" for k, v in rows]
    return out + [""]


def _show(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "null" if v is None else str(v)


def _training_section(facts: dict) -> list[str]:
    method = dict(facts.get("method") or {})
    name = method.pop("name", None)
    lines = ["## Training", ""]
    if name:
        lines += [f"Method: **{name}**" + (" with" if method else ""), ""]
        lines += _table(sorted(method.items())) if method else []
    if "pooling" in facts:
        lines += [f"Sentence embedding: {facts['pooling']} pooling, "
                  f"{'L2-normalised' if facts.get('normalize') else 'not normalised'}, "
                  f"max_seq_length {facts.get('max_seq_length')}.", ""]
    if facts.get("hyperparameters"):
        lines += ["Hyper-parameters:", ""] + _table(facts["hyperparameters"].items())
    if facts.get("merged_from"):
        lines += [f"Merged from the adapter `{facts['merged_from']}`.", ""]
    if "steps" in facts:
        lines += [f"Trained for {facts['steps']} optimizer steps in {facts['training_time_s']:.1f} s "
                  f"({facts['tokens_per_s']:,.0f} tokens/s).", ""]
    return lines


def _data_section(data: list, licenses: list) -> list[str]:
    lines = ["## Data", ""]
    for d in data:
        split = f"train `{d['train']}`" + (f", validation `{d['validation']}`" if d.get("validation") else "")
        lines.append(f"- **{d['name']}**: {split}; license: {d.get('license', 'unknown (not stated with the data)')}")
    if not data:
        lines.append("- not recorded")
    if any(lic.startswith("cc-by-nc") for lic in licenses):
        lines += ["", "The training data is licensed for non-commercial use only; so is what was learned from it."]
    return lines + [""]


def _results_section(facts: dict) -> list[str]:
    metrics = facts.get("metrics")
    if not metrics:
        return []
    return ["## Results", "", "Final values (train loss of the last logged step; eval metrics on the validation "
            "set):", ""] + _table(metrics.items(), head=("metric", "value"))


def _usage(kind: str, model_kind: str, base: str | None, facts: dict) -> list[str]:
    auto = {"causal-lm": "AutoModelForCausalLM", "sequence-classification": "AutoModelForSequenceClassification"}
    cls = auto.get(model_kind, "AutoModel")
    base_id = hub_base(base) or base
    if kind == "adapter":
        peft_ok = facts.get("peft_compatible", False)
        lines = []
        if peft_ok:
            lines += ["With peft and transformers:", "", "```python", "from peft import PeftModel",
                      f"from transformers import {cls}, AutoTokenizer", "",
                      f'base = {cls}.from_pretrained("{base_id}")',
                      'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
                      f'tokenizer = AutoTokenizer.from_pretrained("{base_id}")', "```", ""]
        else:
            lines += [f"This method ({(facts.get('method') or {}).get('name')}) has no peft equivalent: load it "
                      "with tuneforge.", ""]
        lines += ["With tuneforge:", "", "```python", "import tuneforge", "",
                  f'model = tuneforge.load_model("{base}")',
                  'tuneforge.load_adapter(model, "path/to/this/folder")', "```", ""]
        if model_kind == "causal-lm":
            lines += ["```bash", 'tuneforge generate --adapter path/to/this/folder --prompt "Hello"', "```", ""]
        return lines
    if kind == "merged":
        return ["With transformers (no peft or tuneforge needed):", "", "```python",
                f"from transformers import {cls}, AutoTokenizer", "",
                f'model = {cls}.from_pretrained("path/to/this/folder")',
                'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")', "```", "",
                "With tuneforge:", "", "```bash", 'tuneforge generate --base path/to/this/folder --prompt "Hello"',
                "```", ""]
    return ["With sentence-transformers:", "", "```python", "from sentence_transformers import SentenceTransformer",
            "", 'model = SentenceTransformer("path/to/this/folder")',
            'embeddings = model.encode(["first sentence", "second sentence"])', "```", "",
            "With tuneforge (a retrieval index over a corpus):", "", "```bash",
            "tuneforge index build --model path/to/this/folder --corpus corpus.jsonl --out index/", "```", ""]


def write_model_card(directory, kind: str, facts: dict, **kwargs) -> Path:
    """Render and write directory/README.md; returns its path."""
    path = Path(directory) / CARD_NAME
    tmp = path.with_name(f".{CARD_NAME}.tmp")
    tmp.write_text(render_card(kind, facts, **kwargs), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_facts(directory) -> dict | None:
    """The `tuneforge:` mapping of directory/README.md, or None when there is no card (or no mapping)."""
    path = Path(directory) / CARD_NAME
    if not path.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(path).data.to_dict()
    except Exception:  # a hand-written README is not ours to parse
        return None
    facts = data.get("tuneforge")
    return facts if isinstance(facts, dict) else None
