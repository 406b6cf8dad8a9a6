"""From an OpenAI `POST /v1/fine_tuning/jobs` body to a tuneforge run config.

The request speaks OpenAI's terms; this module maps them onto ours and nothing else:

    model                                   must be the served base model
    hyperparameters.n_epochs                train.epochs            ("auto": the job template's value)
    hyperparameters.batch_size              train.micro_batch_size  ("auto": the job template's value)
    hyperparameters.learning_rate_multiplier  train.learning_rate = template learning rate x multiplier
    hyperparameters.beta (dpo only)         task.beta
    hyperparameters.eval_interval (reinforcement only)  train.eval_every
    method.type: supervised | dpo | reinforcement   task: sft | dpo | grpo
    method.reinforcement.grader             task.rewards (see serve/graders.py); batch_size = prompts per step
    method.adapter: {name: lora, r: 16}     the adaptation method (any registered one that can share a base)
    seed                                    train.seed
    training_file / validation_file         data.train / data.validation (paths inside the data directory)
    integrations: [{type: wandb, wandb: {project, name, entity, tags}}]
                                            train.report_to: [wandb] and train.wandb (offline unless the server's
                                            WANDB_MODE / WANDB_API_KEY say otherwise); any other type is refused

Hyperparameters may come at the top level (OpenAI's older form) or under method.<type>.hyperparameters (the
newer one); giving different values in both places is an error. Everything else (data.max_length, LoRA rank,
checkpoint cadence...) comes from the job template: built-in defaults or the run config given to
`tuneforge serve --job-config`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import ConfigError
from .graders import grader_rewards
from .job_request import AUTO, HYPERPARAMETER_MODELS, MethodRequest
from .request_errors import JobRequestError

TASK_OF_TYPE = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}
HYPERPARAMETERS = {kind: tuple(model.model_fields) for kind, model in HYPERPARAMETER_MODELS.items()}
WANDB_FIELDS = ("project", "name", "entity", "tags")
# Job defaults when no --job-config is given: checkpoints often enough that a restart loses little.
TEMPLATE_DEFAULTS = {"train": {"epochs": 3, "save_every": 10, "keep_last": 2, "log_every": 1}}


@dataclasses.dataclass
class JobSpec:
    """A validated job request, as stored with the job."""

    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    method: dict  # {"type": ..., "<type>": {"hyperparameters": {...}}, "adapter": {...}} with values resolved
    hyperparameters: dict
    seed: int
    integrations: list = dataclasses.field(default_factory=list)  # validated, as OpenAI's request spells them


def load_template(job_config: str | None) -> dict:
    """The job template as plain run-config data: the YAML's sections, or the built-in defaults."""
    from ..config import dump_config, load_config

    if job_config is None:
        from ..config import config_from_dict

        return dump_config(config_from_dict(TEMPLATE_DEFAULTS))
    return dump_config(load_config(job_config))


def parse_job_request(body: dict, base_names: tuple[str, ...], template: dict, default_seed: int, *,
                      allow_python_graders: bool = False, max_epochs: int | None = None) -> JobSpec:
    """Check the request (the pydantic models of job_request.py) and resolve every 'auto' to the value the job will
    really use; JobRequestError names the field. Reinforcement jobs carry their grader as GRPO rewards; python
    graders only with allow_python_graders (the server's flag). max_epochs: the server's limit on n_epochs."""
    from pydantic import ValidationError

    from .job_request import JobRequest, first_error

    if not isinstance(body, dict):
        raise JobRequestError("the request body must be a JSON object", key=None)
    try:
        request = JobRequest.model_validate(body, context={"base_names": base_names})
    except ValidationError as err:
        key, message = first_error(err)
        raise JobRequestError(message, key=key) from None
    method = request.method or MethodRequest()
    kind = method.type
    given = method.section()
    hyper = _merged_hyperparameters(request.hyperparameters, given.hyperparameters, kind)
    resolved = _resolve_hyperparameters(hyper, kind, template)
    if max_epochs is not None and resolved["n_epochs"] > max_epochs:
        raise JobRequestError(f"n_epochs is {resolved['n_epochs']}; this server trains at most {max_epochs} "
                              "epochs per job (its max_job_epochs)", key="hyperparameters.n_epochs")
    section = {"hyperparameters": resolved}
    if kind == "reinforcement":

        if given.grader is None:
            raise JobRequestError("a reinforcement job needs a grader", key="method.reinforcement.grader")
        grader_rewards(given.grader, allow_python=allow_python_graders)  # refused here, at creation, if unsupported
        section["grader"] = given.grader
    adapter = _adapter_section(method.adapter, template)
    seed = default_seed if request.seed is None else request.seed
    return JobSpec(
        model=request.model, training_file=request.training_file, validation_file=request.validation_file,
        suffix=request.suffix, method={"type": kind, kind: section, "adapter": adapter},
        hyperparameters=resolved, seed=seed, integrations=parse_integrations(request.integrations),
    )


def parse_integrations(integrations) -> list[dict]:
    """OpenAI's `integrations`, as checked by job_request.Integration (only W&B; anything else is refused by name,
    never dropped), as stored with the job; refused too when this server cannot log to W&B."""
    import importlib.util

    out = []
    for i, item in enumerate(integrations or []):
        if importlib.util.find_spec("wandb") is None:
            raise JobRequestError("this server cannot log to W&B: the wandb package is not installed "
                                  "(pip install 'tuneforge[track]')", key=f"integrations.{i}")
        settings = item.wandb.model_dump(exclude_unset=True)
        out.append({"type": "wandb", "wandb": {k: settings[k] for k in WANDB_FIELDS if k in settings}})
    return out


def _merged_hyperparameters(top: dict | None, nested: dict | None, kind: str) -> dict:
    """The top-level (older) and method.<type> (newer) hyperparameters as one dict; different values for one key
    are an error naming the nested one."""
    merged = dict(top or {})
    for key, value in (nested or {}).items():
        if key in merged and merged[key] != value:
            raise JobRequestError(f"hyperparameters.{key} and method.{kind}.hyperparameters.{key} disagree",
                                  key=f"method.{kind}.hyperparameters.{key}")
        merged[key] = value
    return merged


def _resolve_hyperparameters(hyper: dict, kind: str, template: dict) -> dict:
    """The hyperparameters of the method type's pydantic model, each 'auto' replaced by the template's value."""
    from pydantic import ValidationError

    from .job_request import first_error

    try:
        given = HYPERPARAMETER_MODELS[kind].model_validate(hyper)
    except ValidationError as err:
        key, message = first_error(err, prefix="hyperparameters")
        raise JobRequestError(message, key=key) from None
    train = template["train"]
    task = template.get("task") if isinstance(template.get("task"), dict) else {}
    defaults = {"n_epochs": train["epochs"], "batch_size": train["micro_batch_size"], "learning_rate_multiplier": 1.0}
    if kind == "dpo":
        defaults["beta"] = task.get("beta", 0.1) if task.get("name") == "dpo" else 0.1
    if kind == "reinforcement":
        defaults["batch_size"] = (task if task.get("name") == "grpo" else {}).get("prompts_per_step", 4)
        defaults["eval_interval"] = train.get("eval_every") or 0
    out = {name: defaults[name] if getattr(given, name) == AUTO else getattr(given, name) for name in defaults}
    if kind == "reinforcement":
        out["eval_interval"] = out["eval_interval"] or None  # 0: no evaluation
    return out


def _adapter_section(adapter, template: dict) -> dict:
    """The method section of the run config: the template's, or the request's `method.adapter`, validated by the
    method's own config class; the method must be able to share one base model with other adapters."""
    from ..config import Source, build_method
    from .pool import check_servable

    section = dict(template["method"]) if adapter is None else dict(adapter)  # its shape: job_request.py
    try:
        cfg = build_method(section, Source())
        check_servable(type(cfg).method)
    except ConfigError as err:
        key = err.key if isinstance(err.key, str) else None
        key = key.replace("method.", "", 1) if key and key.startswith("method.") else key
        raise JobRequestError(err.message, key=f"method.adapter.{key}" if key else "method.adapter") from None
    return {"name": type(cfg).method, **cfg.to_dict()}


def build_run_config(job: dict, template: dict, base: str, files_dir: Path, output_dir: Path,
                     allow_pickle: bool = False) -> dict:
    """The run config (plain data, as in a YAML file) the worker trains: the template with the job's choices."""
    kind = job["method"]["type"]
    hyper = job["hyperparameters"]
    cfg = {key: (dict(value) if isinstance(value, dict) else value) for key, value in template.items()}
    cfg["model"] = {**cfg["model"], "name": base, "kind": "causal-lm", "allow_pickle": allow_pickle}
    cfg["method"] = dict(job["method"]["adapter"])
    if kind == "dpo":
        task = template.get("task") if isinstance(template.get("task"), dict) else {}
        cfg["task"] = {**(task if task.get("name") == "dpo" else {}), "name": "dpo", "beta": hyper["beta"]}
    elif kind == "reinforcement":
        # the template's GRPO settings (or GRPO's defaults), with the grader's rewards on the rows' messages; the
        # grader was checked (python ones against the server's flag) when the job was created

        task = template.get("task") if isinstance(template.get("task"), dict) else {}
        rewards = grader_rewards(job["method"][kind]["grader"], allow_python=True)
        cfg["task"] = {**(task if task.get("name") == "grpo" else {"prompt_field": "messages"}), "name": "grpo",
                       "rewards": rewards, "reward_weights": None,
                       "prompts_per_step": hyper["batch_size"]}
    else:
        cfg["task"] = TASK_OF_TYPE[kind]
    cfg["data"] = {**cfg["data"], "train": str(files_dir / f"{job['training_file']}.jsonl"),
                   "validation": (str(files_dir / f"{job['validation_file']}.jsonl") if job["validation_file"]
                                  else None)}
    micro = cfg["train"]["micro_batch_size"] if kind == "reinforcement" else hyper["batch_size"]
    cfg["train"] = {**cfg["train"], "epochs": hyper["n_epochs"], "max_steps": None,
                    "micro_batch_size": micro, "seed": job["seed"],
                    "learning_rate": template["train"]["learning_rate"] * hyper["learning_rate_multiplier"]}
    if kind == "reinforcement":
        cfg["train"]["eval_every"] = hyper["eval_interval"]
    for item in job.get("integrations") or []:  # only wandb passes parse_integrations
        cfg["train"]["report_to"] = sorted({*(cfg["train"].get("report_to") or []), "wandb"})
        cfg["train"]["wandb"] = {**(cfg["train"].get("wandb") or {}),
                                 **{k: v for k, v in item["wandb"].items() if v is not None}}
    cfg["output_dir"] = str(output_dir)
    return cfg
