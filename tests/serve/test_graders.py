"""OpenAI reinforcement jobs: graders map onto GRPO's built-in rewards, python graders only with the server's
flag, and the run config is a GRPO run on the rows' messages."""
from __future__ import annotations

import pytest

from tuneforge.config import config_from_dict
from tuneforge.serve.graders import grader_rewards
from tuneforge.serve.jobspec import JobRequestError, build_run_config, load_template, parse_job_request
from tuneforge.train.grpo_rewards import build_rewards

BASES = ("base",)
SOURCE = "def grade(sample, item):\n    return float(sample['output_text'].strip() == str(item['answer']))\n"


def request(grader, **hyper):
    return {"model": "base", "training_file": "file-x", "method": {
        "type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hyper}}}


def test_string_check_job_becomes_a_grpo_run(tmp_path):
    template = load_template(None)
    grader = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}", "operation": "eq"}
    spec = parse_job_request(request(grader, batch_size=3, eval_interval=5), BASES, template, 42)
    job = {"training_file": "file-a", "validation_file": "file-b", "method": spec.method,
           "hyperparameters": spec.hyperparameters, "seed": spec.seed}
    run = build_run_config(job, template, "base", tmp_path, tmp_path / "out")
    cfg = config_from_dict(run)
    assert cfg.task == "grpo" and cfg.task_config.prompt_field == "messages"
    assert cfg.task_config.rewards == [{"name": "string_check", "field": "answer", "operation": "eq"}]
    assert cfg.task_config.prompts_per_step == 3 and cfg.train.eval_every == 5
    assert spec.method["reinforcement"] == {"grader": grader, "hyperparameters": spec.hyperparameters}  # OpenAI's shape


@pytest.mark.parametrize("grader, key", [
    ({"type": "score_model", "model": "x"}, "method.reinforcement.grader.type"),
    ({"type": "string_check", "input": "{{item.answer}}", "reference": "{{item.answer}}", "operation": "eq"},
     "method.reinforcement.grader.input"),
    ({"type": "string_check", "input": "{{sample.output_text}}", "reference": "paris", "operation": "eq"},
     "method.reinforcement.grader.reference"),
    ({"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.a}}", "operation": "gt"},
     "method.reinforcement.grader.operation"),
    ({"type": "text_similarity", "input": "{{sample.output_text}}", "reference": "{{item.a}}",
      "evaluation_metric": "bleu"}, "method.reinforcement.grader.evaluation_metric"),
    ({"type": "python", "source": SOURCE}, "method.reinforcement.grader.type"),  # not allowed by default
])
def test_bad_or_unsupported_graders_name_their_field(grader, key):
    with pytest.raises(JobRequestError) as info:
        parse_job_request(request(grader), BASES, load_template(None), 42)
    assert info.value.key == key


def test_python_graders_only_with_the_flag_and_run_in_the_reward():
    template = load_template(None)
    with pytest.raises(JobRequestError, match="--allow-python-graders"):
        parse_job_request(request({"type": "python", "source": SOURCE}), BASES, template, 42)
    with pytest.raises(JobRequestError, match="does not compile"):
        parse_job_request(request({"type": "python", "source": "def grade(:"}), BASES, template, 42,
                          allow_python_graders=True)
    spec = parse_job_request(request({"type": "python", "source": SOURCE}), BASES, template, 42,
                             allow_python_graders=True)
    [(name, fn)] = build_rewards(grader_rewards(spec.method["reinforcement"]["grader"], allow_python=True))
    assert fn(["q", "q"], [" 4", "5"], answer=[4, 4]) == [1.0, 0.0]
    sim = parse_job_request(request({"type": "text_similarity", "input": "{{sample.output_text}}",
                                     "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}),
                            BASES, template, 42)
    [(_, fn)] = build_rewards(grader_rewards(sim.method["reinforcement"]["grader"], allow_python=False))
    assert fn(None, ["abc", "xyz"], answer=["abc", "abd"]) == [1.0, 0.0]
