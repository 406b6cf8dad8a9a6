"""Request bodies of the inference endpoints and the OpenAI objects the API returns.

Requests accept OpenAI's field names and are checked by these pydantic models (FastAPI validates the body with
them). Fields we cannot honour exactly (tools, logprobs, penalties, logit_bias, JSON response formats) are refused
with a 400 naming the field rather than silently ignored; fields that do not change the output (user, metadata,
store) are accepted and ignored. Our own errors have types starting with `tf_`: their message is shown as it is.
"""
from __future__ import annotations

import time
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError


class StreamOptions(BaseModel):
    include_usage: bool = False


def unsupported(name: str, what: str | None = None) -> PydanticCustomError:
    """The 400 for a field we cannot honour (refused rather than silently ignored)."""
    return PydanticCustomError("tf_unsupported", "{what} not supported by this server",
                               {"what": what or f"{name} is"})


class GenerationParams(BaseModel):
    """What chat and text completions share. Every check is a declared constraint or a validator, so a bad field
    is a 400 naming it before anything runs (the app's RequestValidationError handler)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=8)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise PydanticCustomError("tf_stop", "stop takes at most 4 non-empty strings")
        return value

    @field_validator("presence_penalty", "frequency_penalty", "logit_bias")
    @classmethod
    def _not_supported(cls, value, info: ValidationInfo):
        if value:
            raise unsupported(info.field_name, "logit_bias is" if info.field_name == "logit_bias" else None)
        return value

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, value):
        for j, part in enumerate(value if isinstance(value, list) else []):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise PydanticCustomError("tf_content", "only text content parts are supported", {"field": j})
        return value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part["text"] for part in self.content)
        return self.content or ""


class ChatCompletionRequest(GenerationParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    tools: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("logprobs", "tools", "functions")
    @classmethod
    def _chat_not_supported(cls, value, info: ValidationInfo):
        if value:
            name = info.field_name
            raise unsupported(name, "logprobs are" if name == "logprobs" else f"{name} (function calling) is")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value):
        if value and value.get("type", "text") != "text":
            raise PydanticCustomError("tf_response_format", "only the text response format is supported")
        return value

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat_messages(self) -> list[dict[str, str]]:
        """Role/content pairs for the chat template ('developer' is OpenAI's newer name for 'system')."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(GenerationParams):
    prompt: Union[str, list[str]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for text completions
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("echo", "logprobs", "suffix")
    @classmethod
    def _completion_not_supported(cls, value, info: ValidationInfo):
        if value:
            raise unsupported(info.field_name)
        return value

    @field_validator("best_of")
    @classmethod
    def _one_best(cls, value):
        if value not in (None, 1):
            raise unsupported("best_of")
        return value

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, value):
        if not value:
            raise PydanticCustomError("tf_prompt", "prompt must not be empty")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(cid: str, model: str, choices: list[dict], use: dict) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None, "usage": use,
            "choices": [{"index": c["index"], "finish_reason": c["finish_reason"], "logprobs": None,
                         "message": {"role": "assistant", "content": c["text"], "refusal": None}} for c in choices]}


def chat_chunk(cid: str, model: str, index: int | None, delta: dict | None = None, finish_reason: str | None = None,
               use: dict | None = None) -> dict:
    choices = [] if index is None else [{"index": index, "delta": delta or {}, "finish_reason": finish_reason,
                                          "logprobs": None}]
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "system_fingerprint": None, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body


def text_completion(cid: str, model: str, choices: list[dict], use: dict | None) -> dict:
    body = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None,
            "choices": [{"index": c["index"], "text": c["text"], "finish_reason": c["finish_reason"],
                         "logprobs": None} for c in choices]}
    if use is not None:
        body["usage"] = use
    return body


def model_object(model_id: str, created: int, owned_by: str) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def file_object(row: dict) -> dict:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed",
            "status_details": None, "expires_at": None,
            "records": row["records"]}  # an extension: the file's JSON lines, counted when it was checked


def job_object(job: dict) -> dict:
    return {
        "id": job["id"], "object": "fine_tuning.job", "created_at": job["created_at"],
        "finished_at": job["finished_at"], "model": job["model"], "fine_tuned_model": job["fine_tuned_model"],
        "organization_id": "tuneforge", "result_files": [], "status": job["status"],
        "training_file": job["training_file"], "validation_file": job["validation_file"],
        "hyperparameters": job["hyperparameters"], "method": job["method"], "seed": job["seed"],
        "suffix": job["suffix"], "user_provided_suffix": job["suffix"], "trained_tokens": job["trained_tokens"],
        "error": job["error"], "estimated_finish": None, "integrations": job.get("integrations") or [], "metadata": job["metadata"],
    }


def event_object(event: dict) -> dict:
    return {"id": event["id"], "object": "fine_tuning.job.event", "created_at": event["created_at"],
            "level": event["level"], "message": event["message"], "type": event["type"], "data": event["data"]}


def checkpoint_object(job: dict, checkpoint: dict) -> dict:
    step = checkpoint["step"]
    model = job["fine_tuned_model"] or f"ft:{job['model']}:{job['suffix'] or ''}:{job['id'].split('-', 1)[1]}"
    return {"id": f"ftckpt-{job['id'].split('-', 1)[1]}-{step}", "object": "fine_tuning.job.checkpoint",
            "created_at": checkpoint["created_at"], "fine_tuning_job_id": job["id"], "step_number": step,
            "metrics": checkpoint["metrics"], "fine_tuned_model_checkpoint": f"{model}:ckpt-step-{step}"}
