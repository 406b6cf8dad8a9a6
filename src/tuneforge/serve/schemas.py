"""Request bodies of the inference endpoints and the OpenAI objects the API returns.

Requests accept OpenAI's field names. Fields we cannot honour exactly (tools, logprobs, penalties, logit_bias, JSON
response formats) are refused with a 400 naming the field rather than silently ignored; fields that do not
change the output (user, metadata, store) are accepted and ignored.
"""
from __future__ import annotations

import time
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from .http_errors import ApiError


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationParams(BaseModel):
    """What chat and text completions share."""

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

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "stop takes at most 4 non-empty strings", param="stop")
        return stops

    def refuse_unsupported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ApiError(400, f"{name} is not supported by this server", param=name)
        if self.logit_bias:
            raise ApiError(400, "logit_bias is not supported by this server", param="logit_bias")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: str | None = None

    def text(self, index: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for j, part in enumerate(self.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, "only text content parts are supported", param=f"messages.{index}.content.{j}")
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(GenerationParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    tools: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.logprobs:
            raise ApiError(400, "logprobs are not supported by this server", param="logprobs")
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise ApiError(400, f"{name} (function calling) is not supported by this server", param=name)
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ApiError(400, "only the text response format is supported", param="response_format")

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat_messages(self) -> list[dict[str, str]]:
        """Role/content pairs for the chat template ('developer' is OpenAI's newer name for 'system')."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
                for i, m in enumerate(self.messages)]


class CompletionRequest(GenerationParams):
    prompt: Union[str, list[str]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for text completions
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        for name in ("echo", "logprobs", "suffix"):
            if getattr(self, name):
                raise ApiError(400, f"{name} is not supported by this server", param=name)
        if self.best_of not in (None, 1):
            raise ApiError(400, "best_of is not supported by this server", param="best_of")

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not prompts:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        return prompts


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
            "status_details": None, "expires_at": None}


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
