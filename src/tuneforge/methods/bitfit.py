"""BitFit: train only the bias terms, h = W x + (b + delta_b); every weight matrix stays frozen.

Ben Zaken, Goldberg and Ravfogel 2021, https://arxiv.org/abs/2106.10199. Trainable parameters: the sum of all
bias sizes (attention, feed-forward, LayerNorm), about 0.1% of BERT; as in the paper, a sequence classifier's
new task head trains too (`train_head`).

Models without bias terms (Llama, Mistral, SmolLM2) have nothing for BitFit to train: apply raises a ConfigError
that says so, rather than silently adding zero biases the architecture does not know (a saved or merged model
would then lose them on reload). Use `selective`, `ia3` or `lora` there. Storage, switching and merging are the
shared subset logic (see subset.py): the adapter file holds the trained biases under their own names.
"""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from ..registry import METHODS
from .base import MethodConfig, check
from .subset import SubsetMethod, head_parameter_names


@dataclasses.dataclass
class BitFitConfig(MethodConfig):
    method = "bitfit"
    train_head: bool = True
    """Also train the whole task head (classifier / score) of a classification model, whose weights start random.
    A language model's output head is never included: it is usually tied to the input embeddings."""

    def validate(self) -> None:
        check(isinstance(self.train_head, bool), "train_head", "train_head must be true or false")


@METHODS.register("bitfit")
class BitFit(SubsetMethod):
    name = "bitfit"
    config_class = BitFitConfig
    paper = "https://arxiv.org/abs/2106.10199"
    formula = "sum of all bias sizes (+ the task head's parameters with train_head)"

    def select_parameters(self, model, cfg: BitFitConfig, params) -> list[str]:
        biases = [n for n in params if n.rsplit(".", 1)[-1] == "bias"]
        if not biases:
            raise ConfigError(
                f"bitfit trains bias terms, and this {type(model).__name__} has none (Llama-style models are built "
                "without biases); use `selective` with trainable_patterns, `ia3` or `lora` instead",
                key="method",
            )
        head = head_parameter_names(model, params, lm_head=False) if cfg.train_head else []
        chosen = set(biases) | set(head)
        return [n for n in params if n in chosen]
