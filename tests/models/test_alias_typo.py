"""A misspelt packaged alias is answered at once with a "did you mean", before any hub lookup (offline, the hub
was retried for 48 s and the network blamed); real hub ids are still passed through."""
import pytest
import transformers

from tuneforge.errors import ModelNotFound
from tuneforge.models import load_model, load_tokenizer, resolve_model


@pytest.fixture
def no_hub(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the hub was asked")

    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM, transformers.AutoModel):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


@pytest.mark.parametrize("typo,alias", [("smollm2-135m-instrct", "smollm2-135m-instruct"),
                                        ("SmolLM2-135M-Intruct", "smollm2-135m-instruct"),
                                        ("all-minilm-l6", "all-minilm-l6-v2")])
def test_typo_gets_did_you_mean_without_the_network(no_hub, typo, alias):
    for load in (load_tokenizer, load_model, resolve_model):
        with pytest.raises(ModelNotFound, match=rf"{typo!r} is not a packaged model or a local path \(did you "
                                                rf"mean {alias!r}\?\)"):
            load(typo)


def test_hub_ids_are_not_taken_for_typos():
    for name in ("gpt2", "org/smollm2-135m-instrct", "bert-base-uncased"):
        assert resolve_model(name).is_hub
