"""A job whose numbers would make a float of the run config infinite never trains: learning_rate_multiplier
Infinity (which Python's JSON reads) is refused with the request, and a run config holding an infinite float
anyway (a template or a new hyperparameter) is a ConfigError at creation. Before, such a job trained to NaN,
was marked succeeded and its NaN model was served."""
from __future__ import annotations

import json
import math

import pytest

from tuneforge.config import config_from_dict
from tuneforge.errors import ConfigError
from tuneforge.serve.jobspec import JobRequestError, build_run_config, load_template, parse_job_request


def test_an_infinite_multiplier_is_refused_and_an_infinite_run_config_is_invalid(tmp_path):
    template = load_template(None)
    body = json.loads('{"model": "base", "training_file": "file-x", '
                      '"hyperparameters": {"learning_rate_multiplier": Infinity}}')
    with pytest.raises(JobRequestError, match="learning_rate_multiplier"):
        parse_job_request(body, ("base",), template, default_seed=42)
    spec = parse_job_request({"model": "base", "training_file": "file-x"}, ("base",), template, default_seed=42)
    job = {"training_file": "file-a", "validation_file": None, "method": spec.method,
           "hyperparameters": spec.hyperparameters, "seed": spec.seed}
    run = build_run_config(job, template, "base", tmp_path / "files", tmp_path / "out")
    run["train"]["learning_rate"] = math.inf
    with pytest.raises(ConfigError, match="expected a finite number, got inf") as err:
        config_from_dict(run)
    assert err.value.key == "train.learning_rate"
