"""A job whose hyperparameters make a float of the run config infinite (learning_rate_multiplier Infinity, which
Python's JSON reads) is refused at creation, as the API does with the run config's ConfigError: before, it trained
to NaN, was marked succeeded and its NaN model was served."""
from __future__ import annotations

import json

import pytest

from tuneforge.config import config_from_dict
from tuneforge.errors import ConfigError
from tuneforge.serve.jobspec import build_run_config, load_template, parse_job_request


def test_an_infinite_multiplier_makes_an_invalid_run_config(tmp_path):
    body = json.loads('{"model": "base", "training_file": "file-x", '
                      '"hyperparameters": {"learning_rate_multiplier": Infinity}}')
    template = load_template(None)
    spec = parse_job_request(body, ("base",), template, default_seed=42)
    job = {"training_file": "file-a", "validation_file": None, "method": spec.method,
           "hyperparameters": spec.hyperparameters, "seed": spec.seed}
    run = build_run_config(job, template, "base", tmp_path / "files", tmp_path / "out")
    with pytest.raises(ConfigError, match="expected a finite number, got inf") as err:
        config_from_dict(run)
    assert err.value.key == "train.learning_rate"
