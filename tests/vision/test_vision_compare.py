"""`tuneforge compare` on image classification: trained methods, feature_based on the frozen model's head inputs,
and a row that starts from another model folder (the from-scratch baseline of a transfer comparison)."""
import pytest
import yaml

from tuneforge.errors import ConfigError
from tuneforge.eval.compare import compare
from tuneforge.eval.compare_config import load_compare_config

from .conftest import image_config


def test_compare_runs_trained_feature_and_scratch_rows(resnet_dir, folders, tmp_path):
    from tuneforge.models.tiny import tiny_resnet
    from tuneforge.models.vision import write_processor

    scratch = tmp_path / "scratch-model"
    tiny_resnet(seed=7).save_pretrained(scratch)
    write_processor(scratch, 16, 3)
    shared = image_config(resnet_dir, *folders, tmp_path / "cmp", max_steps=2)
    shared.pop("method")
    shared["methods"] = ["head_only", {"name": "feature_based", "C": 10.0},
                         {"name": "full", "label": "scratch", "model": {"name": str(scratch)}}]
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(shared))
    cc = load_compare_config(path)
    assert cc.entries[2].run_config.model.name == str(scratch) and cc.entries[0].run_config.model.name == str(resnet_dir)
    result = compare(cc, echo=lambda *a: None)
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["head_only", "feature_based", "scratch"]
    assert rows["feature_based"]["trainable"] == 3 * (16 + 1)  # logistic regression on the 16 pooled channels
    assert rows["head_only"]["trainable"] == 3 * (16 + 1)  # the same shape, trained by gradient instead
    assert rows["scratch"]["trainable"] == rows["scratch"]["total"]
    for row in rows.values():
        assert 0.0 <= row["metric"] <= 1.0 and sum(map(sum, row["metrics"]["confusion_matrix"])) == 9
    assert "scratch" in result["markdown"].read_text()


def test_a_method_model_section_must_be_a_mapping(resnet_dir, folders, tmp_path):
    shared = image_config(resnet_dir, *folders, tmp_path / "cmp")
    shared.pop("method")
    shared["methods"] = [{"name": "full", "model": "elsewhere"}]
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(shared))
    with pytest.raises(ConfigError, match="model section must be a mapping"):
        load_compare_config(path)
