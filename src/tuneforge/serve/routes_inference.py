"""Models and generation: /v1/models, /v1/chat/completions and /v1/completions (streamed as server-sent events
when `stream` is true). `model` names the base, an `--adapters` adapter, or a fine-tuned model; rows for
different adapters share one batch in the engine.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from .engine import EngineBusy, GenerationRequest
from .http_errors import ApiError
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_completion,
    model_object,
    text_completion,
    usage,
)

router = APIRouter()


def _state(request: Request):
    return request.app.state.server


# ---- models ---------------------------------------------------------------------------------------------
def _all_models(state) -> list[dict]:
    started = int(state.data_dir.stat().st_mtime)
    out = [model_object(state.base_name, started, "tuneforge")]
    out += [model_object(name, int(path.stat().st_mtime), "user") for name, path in state.adapters.items()]
    out += [model_object(row["id"], row["created_at"], "user") for row in state.store.list_models()]
    return out


@router.get("/models")
def list_models(request: Request) -> dict:
    return {"object": "list", "data": _all_models(_state(request))}


@router.get("/models/{model_id:path}")
def get_model(request: Request, model_id: str) -> dict:
    state = _state(request)
    state.resolve_model(model_id)  # 404 for unknown ids
    wanted = state.base_name if model_id in state.base_names else model_id
    listed = [m for m in _all_models(state) if m["id"] == wanted]
    return listed[0] if listed else model_object(model_id, int(time.time()), "user")  # a checkpoint


@router.delete("/models/{model_id:path}")
def delete_model(request: Request, model_id: str) -> dict:
    state = _state(request)
    row = state.store.get_model(model_id)
    if row is None:
        state.resolve_model(model_id)  # 404 for unknown ids
        raise ApiError(400, f"only fine-tuned models can be deleted; {model_id!r} is not one", param="model")
    state.store.delete_model(model_id)
    state.engine.call_soon(lambda: state.pool.evict(model_id))
    shutil.rmtree(state.data_dir / row["adapter_dir"], ignore_errors=True)
    return {"id": model_id, "object": "model", "deleted": True}


# ---- generation -----------------------------------------------------------------------------------------
def _plan(state, params, prompt_ids: list[list[int]]) -> list[GenerationRequest]:
    """One engine request per choice (prompt x n), with max_tokens fitted to the model's context."""
    stops = params.stop_list()
    model_id, adapter = state.resolve_model(params.model)
    context = getattr(state.model.config, "max_position_embeddings", None)
    asked = params.token_limit() if isinstance(params, ChatCompletionRequest) else params.max_tokens
    requests = []
    for ids in prompt_ids:
        room = context - len(ids) if context else asked or state.config.default_max_tokens
        if room < 1 or (asked is not None and asked > room):
            param = "messages" if isinstance(params, ChatCompletionRequest) else "prompt"
            raise ApiError(400, f"this model's context is {context} tokens; the prompt has {len(ids)} and "
                                f"{asked or 1} more were requested", param=param, code="context_length_exceeded")
        limit = asked if asked is not None else min(state.config.default_max_tokens, room)
        for _ in range(params.n):
            requests.append(GenerationRequest(prompt_ids=ids, max_tokens=limit, model_id=model_id,
                                              adapter=adapter, temperature=params.temperature,
                                              top_p=params.top_p, stop=stops))
    return requests


def _submit(state, requests: list[GenerationRequest]) -> asyncio.Queue:
    """Hand the requests to the engine (503 when its queue is full); their events arrive on the returned queue
    as (choice index, "delta" | "done", payload)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def post(item):
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop closed: the client and the server are gone
            pass

    for index, r in enumerate(requests):
        r.on_delta = lambda text, i=index: post((i, "delta", text))
        r.on_done = lambda info, i=index: post((i, "done", info))
    try:
        for r in requests:
            state.engine.submit(r)
    except EngineBusy as err:
        for r in requests:
            r.cancelled.set()
        raise ApiError(503, f"the server is busy: {err}", code="server_overloaded") from None
    return queue


async def _results(queue: asyncio.Queue, requests: list[GenerationRequest]):
    open_rows = len(requests)
    try:
        while open_rows:
            index, kind, payload = await queue.get()
            if kind == "done":
                open_rows -= 1
                if "error" in payload:
                    raise ApiError(500, payload["error"], code="server_error")
            yield index, kind, payload
    finally:
        for r in requests:
            r.cancelled.set()  # a client that went away stops its rows at the next token


async def _collect(state, requests) -> list[dict]:
    choices = [None] * len(requests)
    async for index, kind, payload in _results(_submit(state, requests), requests):
        if kind == "done":
            choices[index] = {"index": index, **payload}
    return choices


def _sse(events):
    async def body():
        try:
            async for event in events:
                yield f"data: {json.dumps(event)}\n\n"
        except ApiError as err:
            yield f"data: {json.dumps({'error': {'message': err.message, 'type': err.type, 'code': err.code}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _usage(requests, choices) -> dict:
    return usage(sum(len(r.prompt_ids) for r in requests), sum(c["completion_tokens"] for c in choices))


def _refuse_overlong(state, texts: list[str], param: str) -> None:
    """400 for a text that cannot fit the context whatever it tokenises to: more characters than the context
    times the longest token (in UTF-8 bytes, which bound its characters). Checked before any tokenisation, so a
    megabyte prompt costs a length check, not seconds of CPU."""
    limit = state.max_prompt_chars
    for text in texts:
        if limit is not None and len(text) > limit:
            raise ApiError(400, f"the prompt has {len(text)} characters; this model's context of "
                                f"{state.context_tokens} tokens holds at most {limit}", param=param,
                           code="context_length_exceeded")


def _chat_ids(state, messages: list[dict]) -> list[int]:
    """Chat template + tokenisation (CPU work: run in a worker thread, never on the event loop)."""
    try:
        text = state.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # the template refused the conversation (e.g. roles out of order)
        raise ApiError(400, f"the model's chat template rejected the messages: {err}", param="messages") from None
    _refuse_overlong(state, [text], "messages")
    return state.tokenizer(text, add_special_tokens=False)["input_ids"]


@router.post("/chat/completions")
async def chat_completions(request: Request, body: ChatCompletionRequest):
    state = _state(request)
    messages = body.chat_messages()
    _refuse_overlong(state, ["".join(m["content"] for m in messages)], "messages")
    ids = await run_in_threadpool(_chat_ids, state, messages)
    requests = _plan(state, body, [ids])
    cid = f"chatcmpl-{secrets.token_hex(12)}"
    if not body.stream:
        choices = await _collect(state, requests)
        return chat_completion(cid, body.model, choices, _usage(requests, choices))

    queue = _submit(state, requests)

    async def events():
        for i in range(len(requests)):
            yield chat_chunk(cid, body.model, i, {"role": "assistant", "content": ""})
        completion_tokens = 0
        async for index, kind, payload in _results(queue, requests):
            if kind == "delta":
                yield chat_chunk(cid, body.model, index, {"content": payload})
            else:
                completion_tokens += payload["completion_tokens"]
                yield chat_chunk(cid, body.model, index, {}, payload["finish_reason"])
        if body.stream_options and body.stream_options.include_usage:
            yield chat_chunk(cid, body.model, None, use=usage(len(ids) * len(requests), completion_tokens))

    return _sse(events())


@router.post("/completions")
async def completions(request: Request, body: CompletionRequest):
    state = _state(request)
    texts = body.prompts()
    _refuse_overlong(state, texts, "prompt")
    prompts = await run_in_threadpool(lambda: [state.tokenizer(p)["input_ids"] for p in texts])
    requests = _plan(state, body, prompts)
    cid = f"cmpl-{secrets.token_hex(12)}"
    if not body.stream:
        choices = await _collect(state, requests)
        return text_completion(cid, body.model, choices, _usage(requests, choices))

    queue = _submit(state, requests)

    async def events():
        completion_tokens = 0
        async for index, kind, payload in _results(queue, requests):
            if kind == "delta":
                yield text_completion(cid, body.model, [{"index": index, "text": payload, "finish_reason": None}],
                                      None)
            else:
                completion_tokens += payload["completion_tokens"]
                yield text_completion(cid, body.model, [{"index": index, "text": "",
                                                         "finish_reason": payload["finish_reason"]}], None)
        if body.stream_options and body.stream_options.include_usage:
            prompt_tokens = sum(len(r.prompt_ids) for r in requests)
            yield {"id": cid, "object": "text_completion", "model": body.model, "choices": [],
                   "usage": usage(prompt_tokens, completion_tokens)}

    return _sse(events())
