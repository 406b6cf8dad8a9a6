"""Feature-based transfer: the network stays frozen and runs once; a classifier is fitted on its pooled embeddings,
p(y | x) = softmax(W z(x) + b), z(x) = pool(f_frozen(x)) (or a one-hidden-layer MLP on z).

Peters, Ruder and Smith 2019, "To Tune or Not to Tune?", https://arxiv.org/abs/1903.05987. Not a gradient method:
there is no adapter to inject, so the classification task path calls `fit` / `predict` here instead of the
training loop (the method's kind is "features"; `method_for(cfg).fit(...)` reaches the same functions).
z is the last hidden layer, mean-pooled over the attention mask (or the first / last real token), optionally
L2-normalised; it is cached on disk under a key made of the model's weights and active adapters, the texts and the
pooling settings. Trainable parameters: C (d + 1) for logistic regression over C classes (d + 1 for two).
Saved as `adapter_config.json` (settings, labels) + `adapter_model.safetensors` (the classifier's weights), no
pickles (`io.write_adapter_files(dir, *classifier.to_files())`), and loaded without scikit-learn
(`FeatureClassifier.from_files(*io.read_adapter_files(dir))`); fitting needs scikit-learn.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..errors import ConfigError, DataError
from ..registry import METHODS
from .api import active_adapters
from .base import Method, MethodConfig, check


@dataclasses.dataclass
class FeatureBasedConfig(MethodConfig):
    method = "feature_based"
    pooling: str = "mean"
    """mean: average over the attention mask; cls: the first real token; last: the last real token (decoders)."""
    normalize: bool = True
    """L2-normalise each embedding before the classifier sees it."""
    classifier: str = "logistic"
    """logistic: multinomial logistic regression; mlp: one hidden ReLU layer of hidden_size units."""
    C: float = 1.0
    """Inverse L2 regularisation strength (logistic: scikit-learn's C; mlp: alpha = 1 / C)."""
    hidden_size: int = 128
    """Width of the MLP's hidden layer (classifier: mlp)."""
    max_iter: int = 1000
    """Optimiser iterations for the classifier fit."""
    max_length: int = 256
    """Texts are truncated to this many tokens."""
    batch_size: int = 32
    """Texts per forward pass when embedding."""
    seed: int = 0
    """Seed of the classifier fit."""

    def validate(self) -> None:
        check(self.pooling in ("mean", "cls", "last"), "pooling", "pooling must be mean, cls or last")
        check(self.classifier in ("logistic", "mlp"), "classifier", "classifier must be logistic or mlp")
        check(self.C > 0, "C", "C must be positive")
        for key in ("hidden_size", "max_iter", "max_length", "batch_size"):
            value = getattr(self, key)
            check(isinstance(value, int) and value > 0, key, f"{key} must be a positive integer")


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(batch, seq, d) hidden states -> (batch, d); padding on either side."""
    mask = mask.to(hidden.dtype)
    if how == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    positions = torch.arange(mask.shape[1], device=mask.device, dtype=mask.dtype)
    index = (mask * positions).argmax(1) if how == "last" else mask.argmax(1)  # argmax: first maximum
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def cache_key(model, tokenizer, texts: list[str], cfg: FeatureBasedConfig) -> str:
    """Changes when the weights (sampled from every tensor), active adapters, texts or pooling change."""
    h = hashlib.sha256()
    facts = [getattr(getattr(model, "config", None), "_name_or_path", ""), type(model).__name__,
             active_adapters(model), cfg.pooling, cfg.normalize, cfg.max_length,
             getattr(tokenizer, "name_or_path", ""), len(tokenizer)]
    h.update(json.dumps(facts, default=str).encode())
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes())
    for text in texts:
        h.update(text.encode() + b"\0")
    return h.hexdigest()[:32]


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], cfg: FeatureBasedConfig | None = None, cache_dir=None) -> torch.Tensor:
    """Pooled (and normalised) last-layer embeddings, (len(texts), d) float32 on the CPU."""
    cfg = cfg or FeatureBasedConfig()
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"features-{cache_key(model, tokenizer, texts, cfg)}.safetensors"
        if path.is_file():
            return load_file(str(path))["features"]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(texts), cfg.batch_size):
        enc = tokenizer(list(texts[start:start + cfg.batch_size]), padding=True, truncation=True,
                        max_length=cfg.max_length, return_tensors="pt")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        hidden = out.hidden_states[-1] if hidden is None else hidden
        chunks.append(pool(hidden, mask, cfg.pooling).float().cpu())
    model.train(was_training)
    features = torch.cat(chunks)
    if cfg.normalize:
        features = F.normalize(features, dim=-1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"features": features.contiguous()}, str(tmp))
        os.replace(tmp, path)
    return features


@dataclasses.dataclass
class FeatureClassifier:
    """A fitted classifier as plain tensors: layer i maps h -> h @ weights[i] + biases[i], ReLU between layers;
    one output column = binary (sigmoid gives labels[1]), else softmax over labels."""

    cfg: FeatureBasedConfig
    labels: list
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]

    def predict_proba_features(self, features: torch.Tensor) -> torch.Tensor:
        h = features.to(self.weights[0].dtype)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = torch.relu(h)
        if h.shape[1] == 1:
            p = torch.sigmoid(h)
            return torch.cat([1 - p, p], dim=1)
        return torch.softmax(h, dim=1)

    def predict_features(self, features: torch.Tensor) -> list:
        return [self.labels[i] for i in self.predict_proba_features(features).argmax(1).tolist()]

    def to_files(self, base_model_name: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
        """(adapter_config.json body, tensors): `io.write_adapter_files` saves them, `from_files` reads them back."""
        body = {**self.cfg.to_dict(), "peft_type": FeatureBased.name.upper(), "labels": self.labels,
                "feature_dim": int(self.weights[0].shape[0]), "base_model_name_or_path": base_model_name}
        tensors = {f"weight.{i}": w.contiguous() for i, w in enumerate(self.weights)}
        tensors.update({f"bias.{i}": b.contiguous() for i, b in enumerate(self.biases)})
        return body, tensors

    @classmethod
    def from_files(cls, body: dict, tensors: dict[str, torch.Tensor]) -> "FeatureClassifier":
        """The classifier from `io.read_adapter_files(dir)` (no scikit-learn needed)."""
        n = len([k for k in tensors if k.startswith("weight.")])
        return cls(FeatureBased.config_from_peft(body), list(body["labels"]),
                   [tensors[f"weight.{i}"] for i in range(n)], [tensors[f"bias.{i}"] for i in range(n)])


def fit(model, tokenizer, texts: list[str], labels: list, cache_dir=None,
        cfg: FeatureBasedConfig | None = None) -> FeatureClassifier:
    """Embed texts with the frozen model and fit the classifier on (embedding, label) pairs."""
    cfg = cfg or FeatureBasedConfig()
    cfg.validate()
    if len(texts) != len(labels):
        raise DataError(f"{len(texts)} texts but {len(labels)} labels", key="labels")
    if len(set(labels)) < 2:
        raise DataError("a classifier needs at least two distinct labels", key="labels")
    return fit_classifier(embed(model, tokenizer, texts, cfg, cache_dir), labels, cfg)


def fit_classifier(features: torch.Tensor, labels: list, cfg: FeatureBasedConfig) -> FeatureClassifier:
    """The classifier of `cfg` fitted on (feature row, label) pairs."""
    if len(features) != len(labels):
        raise DataError(f"{len(features)} feature rows but {len(labels)} labels", key="labels")
    if len(set(labels)) < 2:
        raise DataError("a classifier needs at least two distinct labels", key="labels")
    features = features.numpy()
    if cfg.classifier == "logistic":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed).fit(features, labels)
        weights, biases = [clf.coef_.T], [clf.intercept_]
    else:
        from sklearn.neural_network import MLPClassifier

        clf = MLPClassifier(hidden_layer_sizes=(cfg.hidden_size,), alpha=1.0 / cfg.C, max_iter=cfg.max_iter,
                            random_state=cfg.seed).fit(features, labels)
        weights, biases = clf.coefs_, clf.intercepts_
    return FeatureClassifier(cfg, clf.classes_.tolist(), [torch.tensor(w, dtype=torch.float32) for w in weights],
                             [torch.tensor(b, dtype=torch.float32) for b in biases])


def predict_proba(model, tokenizer, texts: list[str], classifier: FeatureClassifier, cache_dir=None) -> torch.Tensor:
    """(len(texts), len(classifier.labels)) class probabilities, columns in classifier.labels order."""
    return classifier.predict_proba_features(embed(model, tokenizer, texts, classifier.cfg, cache_dir))


def predict(model, tokenizer, texts: list[str], classifier: FeatureClassifier, cache_dir=None) -> list:
    """The most probable label of each text."""
    return classifier.predict_features(embed(model, tokenizer, texts, classifier.cfg, cache_dir))


@torch.no_grad()
def embed_images(model, pixel_batches, cfg: FeatureBasedConfig | None = None) -> torch.Tensor:
    """For an image classifier: what its head reads (the model's own pooling: ViT's normalised [CLS] vector, a
    CNN's globally averaged last feature map), flattened and optionally L2-normalised; (images, d) on the CPU.
    `pixel_batches` are (batch, C, H, W) tensors; `cfg.pooling` does not apply (images have no padding)."""
    from ..models.vision import head_module

    cfg = cfg or FeatureBasedConfig()
    found = head_module(model)
    if found is None:
        raise ConfigError(f"{type(model).__name__} has no classifier head whose input to use as features",
                          key="method")
    captured = []
    handle = found[1].register_forward_pre_hook(lambda module, args: captured.append(args[0].flatten(1).float()))
    was_training = model.training
    model.eval()
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    try:
        for pixels in pixel_batches:
            model(pixels.to(device=device, dtype=dtype))
    finally:
        handle.remove()
        model.train(was_training)
    features = torch.cat([c.cpu() for c in captured])
    return F.normalize(features, dim=-1) if cfg.normalize else features


def fit_images(model, pixel_batches, labels: list, cfg: FeatureBasedConfig | None = None) -> FeatureClassifier:
    """fit() for images: the classifier on the frozen model's head inputs (embed_images)."""
    cfg = cfg or FeatureBasedConfig()
    cfg.validate()
    return fit_classifier(embed_images(model, pixel_batches, cfg), labels, cfg)


def predict_images(model, pixel_batches, classifier: FeatureClassifier) -> list:
    """The most probable label of each image."""
    return classifier.predict_features(embed_images(model, pixel_batches, classifier.cfg))


@METHODS.register("feature_based")
class FeatureBased(Method):
    name = "feature_based"
    kind = "features"
    fitted = True
    mergeable = False
    config_class = FeatureBasedConfig
    paper = "https://arxiv.org/abs/1903.05987"
    formula = "num_labels * (hidden + 1) for logistic regression (hidden + 1 with two labels)"
    fit = staticmethod(fit)
    predict = staticmethod(predict)
    predict_proba = staticmethod(predict_proba)
    from_files = staticmethod(FeatureClassifier.from_files)
    fit_images = staticmethod(fit_images)
    predict_images = staticmethod(predict_images)

    def apply(self, model, cfg, adapter_name) -> None:
        raise ConfigError(
            "feature_based trains no network parameters, so it adds no adapter to the model: the classification "
            "task fits it with tuneforge.methods.feature_based.fit(model, tokenizer, texts, labels, cache_dir)",
            key="method",
        )
