"""The generation engine: one thread owns the model, collects waiting requests into batches whose rows may each
name a different adapter, and runs them in one `model.generate` inside `mixed_batch`.

Batching: the first waiting request opens a batch; requests that arrive within `batch_wait_s` and decode the
same way (greedy, or sampling with the same temperature and top_p) join it, up to `max_batch_size`. Rows are
left-padded, so every row's next token sits in the same column; each row stops on its own (end-of-turn token,
a stop string, or its own max_tokens) and is reported as soon as it stops, so a short reply never waits for a
long one. A request cancelled by its client (a closed stream) stops at the next token.

Callbacks (`on_delta`, `on_done`) run on the engine thread and must only hand the value over (the web app posts
it to its event loop).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..data.padding import pad
from ..models.stop_tokens import generation_pad_id, stop_token_ids
from .pool import CheckpointRef


class EngineBusy(Exception):
    """Too many requests are waiting; the client should retry later."""


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int
    model_id: str | None = None  # None: the base model
    adapter: Path | CheckpointRef | None = None  # where the pool loads model_id from
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    on_delta: Callable[[str], None] = lambda text: None
    on_done: Callable[[dict], None] = lambda info: None  # {"finish_reason", "text", "completion_tokens"} or {"error"}
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def sampling_key(self) -> tuple:
        return ("greedy",) if self.temperature == 0 else ("sample", float(self.temperature), float(self.top_p))


class RowState:
    """Tokens and text of one row; `push` decodes incrementally and returns the text that is safe to emit: a
    trailing partial UTF-8 character, or text that may be the start of a stop string, is held back."""

    def __init__(self, request: GenerationRequest, tokenizer, stop_ids: set[int]):
        self.request, self.tokenizer, self.stop_ids = request, tokenizer, stop_ids
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish_reason: str | None = None

    def push(self, token: int) -> str:
        if token in self.stop_ids:
            return self._finish("stop")
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        for stop in self.request.stop:
            at = self.text.find(stop, max(0, self.emitted - len(stop)))
            if at >= 0:
                self.text = self.text[:at]
                return self._finish("stop")
        if len(self.tokens) >= self.request.max_tokens:
            return self._finish("length")
        safe = len(self.text.rstrip("\ufffd"))
        for stop in self.request.stop:
            for k in range(min(len(stop) - 1, safe), 0, -1):
                if self.text[safe - k:safe] == stop[:k]:
                    safe -= k
                    break
        return self._take(max(safe, self.emitted))

    def _take(self, end: int) -> str:
        delta, self.emitted = self.text[self.emitted:end], end
        return delta

    def _finish(self, reason: str) -> str:
        self.finish_reason = reason
        return self._take(len(self.text))


class RowStopper:
    """A transformers StoppingCriteria that feeds each new column of tokens to the rows and says which are done
    (transformers calls it once per step with the ids so far; a True row stops being extended)."""

    def __init__(self, rows: list[RowState]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last):
            if row.finish_reason is not None:
                continue
            if row.request.cancelled.is_set():
                row.finish_reason = "cancelled"
                continue
            delta = row.push(int(token))
            if delta:
                row.request.on_delta(delta)
            if row.finish_reason is not None:
                _report(row)
        return torch.tensor([r.finish_reason is not None for r in self.rows], dtype=torch.bool,
                            device=input_ids.device)


def _report(row: RowState) -> None:
    if row.finish_reason != "cancelled":
        row.request.on_done({"finish_reason": row.finish_reason, "text": row.text,
                             "completion_tokens": len(row.tokens)})


class GenerationEngine:
    def __init__(self, model, tokenizer, pool, max_batch_size: int = 16, batch_wait_s: float = 0.005,
                 max_queued: int = 256):
        self.model, self.tokenizer, self.pool = model, tokenizer, pool
        self.max_batch_size, self.batch_wait_s, self.max_queued = max_batch_size, batch_wait_s, max_queued
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.pad_id = generation_pad_id(tokenizer, self.stop_ids)
        self._waiting: deque[GenerationRequest] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._jobs: deque[Callable[[], None]] = deque()  # pool operations to run between batches
        self.batches = self.rows = 0

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tuneforge-generation", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, request: GenerationRequest) -> None:
        with self._cv:
            if len(self._waiting) >= self.max_queued:
                raise EngineBusy(f"{len(self._waiting)} requests are waiting; retry later")
            self._waiting.append(request)
            self._cv.notify_all()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run fn on the engine thread before the next batch (e.g. evicting a deleted model's adapter)."""
        with self._cv:
            self._jobs.append(fn)
            self._cv.notify_all()

    # ---- the loop -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._generate(batch)

    def _next_batch(self) -> list[GenerationRequest] | None:
        with self._cv:
            while not self._waiting and not self._jobs and not self._closing:
                self._cv.wait()
            if self._closing:
                for request in self._waiting:
                    request.on_done({"error": "the server is shutting down"})
                self._waiting.clear()
                return None
            jobs = list(self._jobs)
            self._jobs.clear()
        for fn in jobs:
            fn()
        deadline = time.monotonic() + self.batch_wait_s
        with self._cv:
            while len(self._waiting) < self.max_batch_size and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            if not self._waiting:
                return []
            key = self._waiting[0].sampling_key
            batch = [r for r in self._waiting if r.sampling_key == key][: self.max_batch_size]
            for request in batch:
                self._waiting.remove(request)
        return [r for r in batch if not r.cancelled.is_set()]

    def _generate(self, batch: list[GenerationRequest]) -> None:
        from .pool import AdapterConflict

        wanted = {r.model_id: r.adapter for r in batch if r.model_id is not None}
        try:
            slots = self.pool.ensure(wanted)
        except Exception as err:  # a broken or conflicting adapter must not fail the other adapters' rows
            if len(wanted) > 1:
                for model_id in dict.fromkeys(r.model_id for r in batch):  # one adapter at a time instead
                    self._generate([r for r in batch if r.model_id == model_id])
                return
            reason = str(err) if isinstance(err, AdapterConflict) else f"could not load the adapter: {err}"
            return _fail(batch, reason)
        rows = [RowState(r, self.tokenizer, set(self.stop_ids)) for r in batch]
        self.batches += 1
        self.rows += len(batch)
        try:
            self._decode(batch, [slots.get(r.model_id) for r in batch], rows)
        except Exception as err:
            return _fail([row.request for row in rows if row.finish_reason is None], f"generation failed: {err}")
        for row in rows:
            if row.finish_reason is None:
                row.finish_reason = "length"
                delta = row._take(len(row.text))
                if delta:
                    row.request.on_delta(delta)
                _report(row)

    @torch.no_grad()
    def _decode(self, batch: list[GenerationRequest], slots: list[str | None], rows: list[RowState]) -> None:
        from transformers import GenerationConfig, StoppingCriteriaList

        from ..methods import mixed_batch

        device = next(self.model.parameters()).device
        ids, mask = pad([r.prompt_ids for r in batch], self.pad_id, side="left")
        first = batch[0]
        sample = first.temperature > 0
        config = GenerationConfig(
            max_new_tokens=max(r.max_tokens for r in batch), do_sample=sample, eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id, temperature=first.temperature if sample else None,
            top_p=first.top_p if sample else None, top_k=0 if sample else None,
        )
        with mixed_batch(self.model, slots):
            self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                                stopping_criteria=StoppingCriteriaList([RowStopper(rows)]))


def _fail(requests: list[GenerationRequest], message: str) -> None:
    for request in requests:
        request.on_done({"error": message})

