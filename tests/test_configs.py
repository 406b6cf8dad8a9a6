"""Every example config in configs/ loads and validates (typos in shipped examples are bugs)."""
from pathlib import Path

import pytest

from tuneforge.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_example_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_loads(path):
    cfg = load_config(path)
    assert cfg.output_dir
    for split in ("train", "validation"):
        data_path = getattr(cfg.data, split)
        if data_path and data_path.startswith("../shared/"):
            assert (ROOT / data_path).exists(), f"{path.name}: {split} data {data_path} missing"
