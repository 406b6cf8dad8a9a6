"""A tiny random ConvNeXt (transformers' ConvNextForImageClassification: depthwise 7x7 convolutions, LayerNorm,
pointwise Linear layers) through task image_classify: the contract is not ResNet- or ViT-specific. Full
fine-tuning learns the colour classes, last_k counts ConvNeXt's stages, LoRA on its pointwise Linear layers and
on the depthwise (grouped) convolutions trains and a reloaded run scores the same."""
import pytest
import torch

from tuneforge.eval.classification import evaluate_classifier
from tuneforge.train.api import train

from .conftest import image_config


@pytest.fixture(scope="module")
def convnext_dir(tmp_path_factory):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    from tuneforge.models.vision import write_processor

    torch.manual_seed(0)
    config = ConvNextConfig(num_channels=3, patch_size=2, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                            num_labels=3, image_size=16)
    path = tmp_path_factory.mktemp("tiny-convnext")
    ConvNextForImageClassification(config).save_pretrained(path)
    write_processor(path, 16, 3)
    return path


def _params(model, prefix):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def test_full_fine_tuning_learns_colour_classes(convnext_dir, folders, tmp_path):
    cfg = image_config(convnext_dir, *folders, tmp_path / "run", method={"name": "full"}, epochs=10,
                       learning_rate=3e-3)
    assert train(cfg, progress=False).eval_metrics["accuracy"] == 1.0


@pytest.mark.parametrize("method", [
    {"name": "last_k", "k": 1},
    {"name": "lora", "r": 2, "target_modules": ["pwconv1", "pwconv2"]},
    {"name": "lora", "r": 2, "target_modules": ["dwconv"]},
], ids=["last_k", "lora-pointwise", "lora-depthwise"])
def test_methods_train_and_reloaded_run_scores_the_same(convnext_dir, folders, tmp_path, method):
    from tuneforge.models import load_model

    cfg = image_config(convnext_dir, *folders, tmp_path / "run", method=method, max_steps=2)
    info = train(cfg, dry_run=True)
    result = train(cfg, progress=False)
    assert torch.isfinite(torch.tensor(result.train_loss))
    again = evaluate_classifier(tmp_path / "run")
    assert again["eval_loss"] == pytest.approx(result.eval_metrics["eval_loss"], rel=1e-5)
    base = load_model(convnext_dir, kind="image-classification", num_labels=3)
    if method["name"] == "last_k":  # the last stage (of two), the final norm and the head
        assert info["trainable"] == (_params(base, "convnext.encoder.stages.1") + _params(base, "convnext.layernorm")
                                     + _params(base, "classifier"))
    else:  # adapters were attached to the named layers, beside the new head
        assert info["trainable"] > _params(base, "classifier")
