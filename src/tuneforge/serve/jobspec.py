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
import re
from pathlib import Path

from ..errors import ConfigError

TASK_OF_TYPE = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}
HYPERPARAMETERS = {"supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
                   "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta"),
                   "reinforcement": ("n_epochs", "batch_size", "learning_rate_multiplier", "eval_interval")}
SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
WANDB_FIELDS = ("project", "name", "entity", "tags")
# Job defaults when no --job-config is given: checkpoints often enough that a restart loses little.
TEMPLATE_DEFAULTS = {"train": {"epochs": 3, "save_every": 10, "keep_last": 2, "log_every": 1}}


class JobRequestError(ConfigError):
    """A bad field of a job request; `key` is the request parameter (dotted) the message is about."""


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
                      allow_python_graders: bool = False) -> JobSpec:
    """Check the request and resolve every 'auto' to the value the job will really use. Reinforcement jobs
    carry their grader as GRPO rewards; python graders only with allow_python_graders (the server's flag)."""
    model = body.get("model")
    if model not in base_names:
        raise JobRequestError(f"model {model!r} cannot be fine-tuned here; this server fine-tunes its base model "
                              f"{base_names[0]!r}", key="model")
    suffix = body.get("suffix")
    if suffix is not None and not (isinstance(suffix, str) and SUFFIX.match(suffix)):
        raise JobRequestError("suffix may hold letters, digits, '_' and '-' (1 to 40 characters)", key="suffix")
    method = body.get("method") or {"type": "supervised"}
    if not isinstance(method, dict):
        raise JobRequestError("method must be an object such as {\"type\": \"supervised\"}", key="method")
    kind = method.get("type", "supervised")
    if kind not in TASK_OF_TYPE:
        raise JobRequestError(f"method.type {kind!r} is not supported; use one of {', '.join(TASK_OF_TYPE)}",
                              key="method.type")
    unknown = set(method) - {"type", kind, "adapter"}
    if unknown:
        raise JobRequestError(f"unknown field in method: {sorted(unknown)[0]}", key=f"method.{sorted(unknown)[0]}")
    hyper = _merged_hyperparameters(body.get("hyperparameters"), method.get(kind), kind)
    resolved = _resolve_hyperparameters(hyper, kind, template)
    section = {"hyperparameters": resolved}
    if kind == "reinforcement":
        from .graders import grader_rewards

        unknown = set(method.get(kind) or {}) - {"grader", "hyperparameters"}
        if unknown:
            raise JobRequestError(f"unknown field in method.reinforcement: {sorted(unknown)[0]}",
                                  key=f"method.reinforcement.{sorted(unknown)[0]}")
        grader = (method.get(kind) or {}).get("grader")
        if grader is None:
            raise JobRequestError("a reinforcement job needs a grader", key="method.reinforcement.grader")
        grader_rewards(grader, allow_python=allow_python_graders)  # refused here, at creation, if unsupported
        section["grader"] = grader
    adapter = _adapter_section(method.get("adapter"), template)
    seed = body.get("seed", default_seed)
    if seed is None:
        seed = default_seed
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise JobRequestError("seed must be a non-negative integer", key="seed")
    return JobSpec(
        model=model, training_file=body.get("training_file"), validation_file=body.get("validation_file"),
        suffix=suffix, method={"type": kind, kind: section, "adapter": adapter},
        hyperparameters=resolved, seed=seed, integrations=parse_integrations(body.get("integrations")),
    )


def parse_integrations(value) -> list[dict]:
    """OpenAI's `integrations`: only W&B is supported; anything else is refused by name, never dropped."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise JobRequestError("integrations must be a list such as [{\"type\": \"wandb\", \"wandb\": {...}}]",
                              key="integrations")
    out = []
    for i, item in enumerate(value):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind != "wandb":
            raise JobRequestError(f"integration type {kind!r} is not supported; supported: wandb",
                                  key=f"integrations.{i}.type")
        unknown = sorted(set(item) - {"type", "wandb"})
        if unknown:
            raise JobRequestError(f"unknown field in integration: {unknown[0]}", key=f"integrations.{i}.{unknown[0]}")
        settings = item.get("wandb")
        if not isinstance(settings, dict) or not isinstance(settings.get("project"), str) or not settings["project"]:
            raise JobRequestError("a wandb integration needs wandb.project (a string)",
                                  key=f"integrations.{i}.wandb.project")
        for key, field in settings.items():
            where = f"integrations.{i}.wandb.{key}"
            if key not in WANDB_FIELDS:
                raise JobRequestError(f"unknown wandb field {key!r}; known: {', '.join(WANDB_FIELDS)}", key=where)
            ok = (isinstance(field, list) and all(isinstance(t, str) for t in field) if key == "tags"
                  else field is None or isinstance(field, str))
            if not ok:
                raise JobRequestError(f"wandb.{key} must be {'a list of strings' if key == 'tags' else 'a string'}",
                                      key=where)
        if i > 0:
            raise JobRequestError("at most one wandb integration per job", key=f"integrations.{i}")
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise JobRequestError("this server cannot log to W&B: the wandb package is not installed "
                                  "(pip install 'tuneforge[track]')", key=f"integrations.{i}")
        out.append({"type": "wandb", "wandb": {k: settings[k] for k in WANDB_FIELDS if k in settings}})
    return out


def _merged_hyperparameters(top, section, kind: str) -> dict:
    if top is not None and not isinstance(top, dict):
        raise JobRequestError("hyperparameters must be an object", key="hyperparameters")
    if section is not None and not isinstance(section, dict):
        raise JobRequestError(f"method.{kind} must be an object", key=f"method.{kind}")
    nested = (section or {}).get("hyperparameters") or {}
    if not isinstance(nested, dict):
        raise JobRequestError("hyperparameters must be an object", key=f"method.{kind}.hyperparameters")
    merged = dict(top or {})
    for key, value in nested.items():
        if key in merged and merged[key] != value:
            raise JobRequestError(f"hyperparameters.{key} and method.{kind}.hyperparameters.{key} disagree",
                                  key=f"method.{kind}.hyperparameters.{key}")
        merged[key] = value
    for key in merged:
        if key not in HYPERPARAMETERS[kind]:
            raise JobRequestError(f"unknown hyperparameter {key!r} for method {kind}; known: "
                                  f"{', '.join(HYPERPARAMETERS[kind])}", key=f"hyperparameters.{key}")
    return merged


def _resolve_hyperparameters(hyper: dict, kind: str, template: dict) -> dict:
    train = template["train"]
    out = {
        "n_epochs": _number(hyper, "n_epochs", int, train["epochs"], low=1),
        "batch_size": _number(hyper, "batch_size", int, train["micro_batch_size"], low=1),
        "learning_rate_multiplier": _number(hyper, "learning_rate_multiplier", float, 1.0, low=0, strict=True),
    }
    if kind == "dpo":
        task = template.get("task")
        default_beta = task.get("beta", 0.1) if isinstance(task, dict) and task.get("name") == "dpo" else 0.1
        out["beta"] = _number(hyper, "beta", float, default_beta, low=0, strict=True)
    if kind == "reinforcement":
        task = template.get("task")
        grpo = task if isinstance(task, dict) and task.get("name") == "grpo" else {}
        out["batch_size"] = _number(hyper, "batch_size", int, grpo.get("prompts_per_step", 4), low=1)
        out["eval_interval"] = _number(hyper, "eval_interval", int, train.get("eval_every") or 0, low=0) or None
    return out


def _number(hyper: dict, key: str, kind: type, default, low: float, strict: bool = False):
    value = hyper.get(key, "auto")
    if value == "auto" or value is None:
        return default
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or value == int(value))
    if not ok_type or value < low or (strict and value == low):
        relation = ">" if strict else ">="
        raise JobRequestError(f"{key} must be 'auto' or a{'n integer' if kind is int else ' number'} {relation} "
                              f"{low:g}", key=f"hyperparameters.{key}")
    return kind(value)


def _adapter_section(adapter, template: dict) -> dict:
    """The method section of the run config: the template's, or the request's `method.adapter`, validated by the
    method's own config class; the method must be able to share one base model with other adapters."""
    from ..config import Source, build_method
    from .pool import check_servable

    if adapter is None:
        section = dict(template["method"])
    elif isinstance(adapter, dict) and isinstance(adapter.get("name"), str):
        section = dict(adapter)
    else:
        raise JobRequestError("method.adapter must be an object with a name, such as {\"name\": \"lora\", \"r\": 16}",
                              key="method.adapter")
    try:
        cfg = build_method(section, Source())
        check_servable(type(cfg).method)
    except ConfigError as err:
        key = err.key if isinstance(err.key, str) else None
        key = key.replace("method.", "", 1) if key and key.startswith("method.") else key
        raise JobRequestError(err.message, key=f"method.adapter.{key}" if key else "method.adapter") from None
    return {"name": type(cfg).method, **cfg.to_dict()}


def build_run_config(job: dict, template: dict, base: str, files_dir: Path, output_dir: Path) -> dict:
    """The run config (plain data, as in a YAML file) the worker trains: the template with the job's choices."""
    kind = job["method"]["type"]
    hyper = job["hyperparameters"]
    cfg = {key: (dict(value) if isinstance(value, dict) else value) for key, value in template.items()}
    cfg["model"] = {**cfg["model"], "name": base, "kind": "causal-lm"}
    cfg["method"] = dict(job["method"]["adapter"])
    if kind == "dpo":
        task = template.get("task") if isinstance(template.get("task"), dict) else {}
        cfg["task"] = {**(task if task.get("name") == "dpo" else {}), "name": "dpo", "beta": hyper["beta"]}
    elif kind == "reinforcement":
        # the template's GRPO settings (or GRPO's defaults), with the grader's rewards on the rows' messages; the
        # grader was checked (python ones against the server's flag) when the job was created
        from .graders import grader_rewards

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
