"""The service's guards, each proven against a running server: keys (never empty, checked on every /v1 route the
app has, before the body is read), CPU work off the event loop, streaming upload checks, partial uploads, file
names, job limits and job fields checked at creation, the body limit, the 503 of a full queue, one server per
data directory, and CORS."""
from __future__ import annotations

import json
import re
import threading
import tracemalloc

import httpx
import pytest

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.serve import ServeConfig

from .conftest import chat_records, make_adapter, running_server, write_jsonl

KEY = "sesame"
AUTH = {"Authorization": f"Bearer {KEY}"}


def config_for(served_dir, tmp_path, **changes) -> ServeConfig:
    fields = dict(base=str(served_dir / "base"), data_dir=str(tmp_path / "data"),
                  job_config=str(served_dir / "job.yaml"), api_keys=[KEY])
    return ServeConfig(**{**fields, **changes})


@pytest.fixture(scope="module")
def server(served_dir, tmp_path_factory):
    """One server with the default limits (8 MB requests) and its app, for the tests that only read."""
    apps: list = []
    config = config_for(served_dir, tmp_path_factory.mktemp("security"), max_upload_mb=64)
    with running_server(config, apps) as url:
        yield url, apps[0]


# ---- keys -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keys", [[""], ["   "], ["good", ""], [" padded "], ["tab\tkey"]])
def test_empty_or_whitespace_keys_are_refused(keys, monkeypatch):
    monkeypatch.delenv("TUNEFORGE_API_KEYS", raising=False)
    with pytest.raises(ConfigError) as info:
        ServeConfig(api_keys=keys).validate()
    assert info.value.key == "api_keys"


@pytest.mark.parametrize("value", ["", " ", " , "])
def test_a_set_but_empty_key_variable_is_refused(value, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_API_KEYS", value)
    with pytest.raises(ConfigError, match="TUNEFORGE_API_KEYS is set but holds no key"):
        ServeConfig().validate()


def test_the_cli_refuses_an_empty_api_key(capsys, tmp_path, monkeypatch):
    from tuneforge.cli.main import main

    monkeypatch.delenv("TUNEFORGE_API_KEYS", raising=False)
    for host in ("127.0.0.1", "0.0.0.0"):
        with pytest.raises(SystemExit) as info:
            main(["serve", "--host", host, "--api-key", "", "--data-dir", str(tmp_path)])
        assert info.value.code == 2 and "API key 1 is empty" in capsys.readouterr().err


def raw_request(url: str, method: str, path: str, authorization: bytes, body: bytes) -> tuple[int, str]:
    """One request written byte for byte (httpx refuses header values with trailing spaces; curl sends them)."""
    import socket

    host, port = httpx.URL(url).host, httpx.URL(url).port
    request = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode() + b"Authorization: " + authorization
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(request + b"\r\n\r\n" + body)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, rest = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest.decode(errors="replace")


def _filled(path: str) -> str:
    """A route's path with its parameters filled in with well-formed but unknown ids."""
    return re.sub(r"\{[^}]+\}", lambda m: "file-" + "0" * 24 if "file" in m.group(0) else "ftjob-" + "0" * 24, path)


def app_routes(routes, prefix: str = ""):
    """(method, path) of every route of the app, into included routers (FastAPI keeps those as branches)."""
    for route in routes:
        if hasattr(route, "original_router"):
            yield from app_routes(route.original_router.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "path"):
            for method in sorted(getattr(route, "methods", None) or ()):
                yield method, prefix + route.path


def test_every_v1_route_of_the_app_needs_the_key(server):
    url, app = server
    root = url.removesuffix("/v1")
    routes = [(m, p) for m, p in app_routes(app.routes) if p.startswith("/v1/") and m != "HEAD"]
    listed = {path for path in app.openapi()["paths"] if path.startswith("/v1/")}
    assert listed == {re.sub(r":path}", "}", p) for _, p in routes}  # the walk found every route there is
    assert len(routes) >= 15
    bad_headers = [{}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {KEY}"},
                   {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY}x"}]
    for method, path in routes:
        for headers in bad_headers:
            r = httpx.request(method, root + _filled(path), headers={**headers, "Content-Type": "application/json"},
                              content=b"{this is not json")
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        for header in (b"Bearer ", b"Bearer \t  "):  # an unset variable's empty token, spaces kept on the wire
            status, text = raw_request(url, method, _filled(path), header, b"{this is not json")
            assert status == 401 and "invalid_api_key" in text, (method, path, header)
    assert httpx.get(root + "/health").status_code == 200
    assert httpx.get(root + "/v1/unknown-route").status_code == 401  # nothing about routes leaks without a key


def test_a_malformed_body_with_the_key_gets_400_and_without_it_401(server):
    url, _ = server
    body = b'{"model": "base", "training_file": '
    without = httpx.post(url + "/fine_tuning/jobs", content=body, headers={"Content-Type": "application/json"})
    assert without.status_code == 401 and "JSON" not in without.text
    with_key = httpx.post(url + "/fine_tuning/jobs", content=body,
                          headers={**AUTH, "Content-Type": "application/json"})
    assert with_key.status_code == 400


# ---- the event loop -------------------------------------------------------------------------------------
class GatedTokenizer:
    """The server's tokenizer, except that tokenising waits until the test opens the gate: a stand-in for a
    request whose tokenisation takes long. Everything else is the real tokenizer."""

    def __init__(self, inner):
        self.inner, self.entered, self.gate, self.calls = inner, threading.Event(), threading.Event(), 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def gated(server):
    state = server[1].state.server
    tokenizer = state.tokenizer
    state.tokenizer = GatedTokenizer(tokenizer)
    try:
        yield state.tokenizer
    finally:
        state.tokenizer.gate.set()
        state.tokenizer = tokenizer


@pytest.mark.parametrize("route, body", [
    ("/chat/completions", {"model": "base", "max_tokens": 2, "messages": [{"role": "user", "content": "x" * 400}]}),
    ("/completions", {"model": "base", "max_tokens": 2, "prompt": "x" * 400}),
])
def test_health_answers_while_a_request_tokenises(server, gated, route, body):
    url, _ = server
    answers = []
    worker = threading.Thread(target=lambda: answers.append(httpx.post(url + route, json=body, headers=AUTH,
                                                                       timeout=120)))
    worker.start()
    assert gated.entered.wait(60)
    # Tokenisation is blocked until the gate opens; on the event loop it would block /health too (timeout).
    health = httpx.get(url.removesuffix("/v1") + "/health", timeout=30)
    assert health.status_code == 200 and not gated.gate.is_set()
    gated.gate.set()
    worker.join(120)
    assert answers[0].status_code == 200, answers[0].text


def test_a_prompt_longer_than_the_context_can_hold_is_refused_before_tokenising(server, gated):
    url, app = server
    state = app.state.server
    huge = "x" * (7 * 2**20)  # 7 MB, under the 8 MB body limit
    assert len(huge) > state.max_prompt_chars
    for route, body in (("/chat/completions", {"model": "base", "messages": [{"role": "user", "content": huge}]}),
                        ("/completions", {"model": "base", "prompt": ["hi", huge]})):
        r = httpx.post(url + route, json=body, headers=AUTH, timeout=120)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert gated.calls == 0
    context = state.model.config.max_position_embeddings
    longest = max(len(t.encode()) for t in state.tokenizer.get_vocab())
    assert state.max_prompt_chars == context * max(longest, *(len(t.encode()) for t in
                                                               state.tokenizer.all_special_tokens))


# ---- uploads --------------------------------------------------------------------------------------------
def test_an_upload_is_validated_without_holding_it_in_memory(server, tmp_path):
    url, _ = server
    line = json.dumps(chat_records(1)[0]) + "\n"
    path = tmp_path / "big.jsonl"
    with open(path, "w") as out:
        for _ in range((16 * 2**20) // len(line)):
            out.write(line)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with open(path, "rb") as handle:
            r = httpx.post(url + "/files", headers=AUTH, files={"file": ("big.jsonl", handle)},
                           data={"purpose": "fine-tune"}, timeout=300)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 200, r.text
    assert r.json()["bytes"] == size
    # Reading the file whole holds its bytes and its decoded text at once (2 x size); streaming holds one chunk.
    assert peak < size / 4, f"peak {peak / 2**20:.1f} MB while checking a {size / 2**20:.1f} MB upload"


@pytest.mark.parametrize("given, stored", [
    (b"a\x00b\nc.jsonl", "abc.jsonl"),
    (b"../../etc/x.jsonl", "x.jsonl"),
    (b"..\\\\..\\\\win.jsonl", "win.jsonl"),  # quoted backslashes: ..\..\win.jsonl
    ("\u202eevil.jsonl".encode(), "evil.jsonl"),
])
def test_stored_file_names_are_sanitised(server, given, stored):
    """The name goes on the wire byte for byte (a client library would escape it; an attacker need not)."""
    url, _ = server
    body = (b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="' + given + b'"\r\n\r\n'
            + (json.dumps(chat_records(1)[0]) + "\n").encode() + b"\r\n--B--\r\n")
    r = httpx.post(url + "/files", content=body, headers={**AUTH, "Content-Type": "multipart/form-data; boundary=B"})
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == stored
    assert httpx.get(url + f"/files/{r.json()['id']}", headers=AUTH).json()["filename"] == stored


def test_partial_uploads_are_removed_at_start(served_dir, tmp_path):
    config = config_for(served_dir, tmp_path)
    with running_server(config) as url:
        kept = httpx.post(url + "/files", headers=AUTH, data={"purpose": "fine-tune"},
                          files={"file": ("t.jsonl", (json.dumps(chat_records(1)[0]) + "\n").encode())}).json()
    files = tmp_path / "data" / "files"
    (files / ".partial-file-0123456789abcdef01234567.jsonl").write_text('{"half": ')
    (files / "file-89abcdef0123456789abcdef.jsonl").write_text("{}\n")  # stored, but its row was never added
    config = config_for(served_dir, tmp_path)
    with running_server(config) as url:
        listed = [f["id"] for f in httpx.get(url + "/files", headers=AUTH).json()["data"]]
    assert listed == [kept["id"]]
    assert sorted(p.name for p in files.iterdir()) == [f"{kept['id']}.jsonl"]


# ---- jobs -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def training_file(server, tmp_path_factory):
    url, _ = server
    path = write_jsonl(tmp_path_factory.mktemp("upload") / "t.jsonl", chat_records(4))
    with open(path, "rb") as handle:
        return httpx.post(url + "/files", headers=AUTH, files={"file": ("t.jsonl", handle)},
                          data={"purpose": "fine-tune"}).json()["id"]


@pytest.mark.parametrize("change, param, fragment", [
    ({"hyperparameters": {"n_epochs": 10**12}}, "hyperparameters.n_epochs", "at most 50 epochs"),
    ({"hyperparameters": {"n_epochs": 1.5}}, "hyperparameters.n_epochs", "an integer >= 1"),
    ({"hyperparameters": {"learning_rate_multiplier": "Infinity"}}, "hyperparameters.learning_rate_multiplier",
     "finite number"),
    ({"hyperparameters": {"batch_size": True}}, "hyperparameters.batch_size", "an integer"),
    ({"hyperparameters": {"warmup": 1}}, "hyperparameters.warmup", "unknown field hyperparameters.warmup"),
    ({"hyperparameters": [1]}, "hyperparameters", "valid dictionary"),
    ({"method": {"type": "supervised", "adapter": {"name": "lora", "target_modules": ["nope_proj"]}}},
     "method.adapter.target_modules", "nope_proj"),
    ({"method": {"type": "supervised", "adapter": {"name": "lora", "r": 2, "modules_to_save": ["nothing"]}}},
     "method.adapter.modules_to_save", "nothing"),
    ({"method": {"type": "supervised", "adapter": "lora"}}, "method.adapter", "an object with a name"),
    ({"method": {"type": "supervised", "dpo": {}}}, "method.dpo", "unknown field in method: dpo"),
    ({"method": "supervised"}, "method", "valid dictionary"),
    ({"seed": True}, "seed", "non-negative integer"),
    ({"training_file": None}, "training_file", "valid string"),
    ({"model": "gpt-4o"}, "model", "model 'gpt-4o' cannot be fine-tuned here; this server fine-tunes its base "
                                   "model 'base'"),
    ({"method": {"type": "rl"}}, "method.type", "method.type 'rl' is not supported; use one of supervised, dpo"),
    ({"integrations": [{"type": "neptune"}]}, "integrations.0.type", "integration type 'neptune' is not supported"),
])
def test_job_fields_are_checked_at_creation(server, training_file, change, param, fragment):
    url, _ = server
    body = {"model": "base", "training_file": training_file, **change}
    if change.get("hyperparameters", {}) == {"learning_rate_multiplier": "Infinity"}:
        content = json.dumps(body).replace('"Infinity"', "Infinity")
    else:
        content = json.dumps(body)
    r = httpx.post(url + "/fine_tuning/jobs", content=content, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and fragment in error["message"], error


def test_a_job_over_the_token_budget_is_refused(served_dir, tmp_path):
    import yaml

    max_length = yaml.safe_load((served_dir / "job.yaml").read_text())["data"]["max_length"]
    records = 4
    config = config_for(served_dir, tmp_path, max_job_tokens=records * 2 * max_length)
    with running_server(config) as url:
        path = write_jsonl(tmp_path / "t.jsonl", chat_records(records))
        with open(path, "rb") as handle:
            file_id = httpx.post(url + "/files", headers=AUTH, files={"file": ("t.jsonl", handle)},
                                 data={"purpose": "fine-tune"}).json()["id"]
        over = httpx.post(url + "/fine_tuning/jobs", headers=AUTH, json={
            "model": "base", "training_file": file_id, "hyperparameters": {"n_epochs": 3}})
        assert over.status_code == 400 and over.json()["error"]["code"] == "job_too_large"
        assert f"{records} records x 3 epochs x max_length {max_length}" in over.json()["error"]["message"]
        fits = httpx.post(url + "/fine_tuning/jobs", headers=AUTH, json={
            "model": "base", "training_file": file_id, "hyperparameters": {"n_epochs": 2}})
        assert fits.status_code == 200, fits.text
        httpx.post(url + f"/fine_tuning/jobs/{fits.json()['id']}/cancel", headers=AUTH)


# ---- limits, queue, one server per directory, CORS ------------------------------------------------------
def test_bodies_over_the_limit_get_413_declared_or_streamed(served_dir, tmp_path):
    config = config_for(served_dir, tmp_path, max_request_mb=0.01, max_upload_mb=0.02)
    limit = int(0.01 * 2**20)
    with running_server(config) as url:
        message = {"model": "base", "max_tokens": 1, "messages": [{"role": "user", "content": "x" * limit}]}
        declared = httpx.post(url + "/chat/completions", json=message, headers=AUTH)
        assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"
        payload = json.dumps(message).encode()

        def chunks():
            for start in range(0, len(payload), 1024):
                yield payload[start:start + 1024]

        streamed = httpx.post(url + "/chat/completions", content=chunks(),
                              headers={**AUTH, "Content-Type": "application/json"})
        assert streamed.status_code == 413
        small = dict(message, messages=[{"role": "user", "content": "hi"}])
        assert httpx.post(url + "/chat/completions", json=small, headers=AUTH).status_code == 200
        upload = b"{}\n" * (int(0.02 * 2**20) // 3 + 1)
        r = httpx.post(url + "/files", headers=AUTH, data={"purpose": "fine-tune"},
                       files={"file": ("big.jsonl", upload)})
        assert r.status_code == 413
        assert httpx.get(url + "/files", headers=AUTH).json()["data"] == []


def test_a_full_queue_answers_503(served_dir, tmp_path):
    apps: list = []
    config = config_for(served_dir, tmp_path, max_queued_requests=1, max_batch_size=1)
    with running_server(config, apps) as url:
        engine = apps[0].state.server.engine
        gate, busy = threading.Event(), threading.Event()
        engine.call_soon(lambda: (busy.set(), gate.wait(60)))  # the engine thread waits: nothing leaves the queue
        assert busy.wait(30)
        body = {"model": "base", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        first = []
        waiting = threading.Thread(target=lambda: first.append(httpx.post(url + "/chat/completions", json=body,
                                                                          headers=AUTH, timeout=120)))
        waiting.start()
        try:
            for _ in range(600):  # until the first request sits in the queue
                if len(engine._waiting) == 1:
                    break
                threading.Event().wait(0.05)
            assert len(engine._waiting) == 1
            refused = httpx.post(url + "/chat/completions", json=body, headers=AUTH, timeout=60)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_overloaded"
        finally:
            gate.set()
        waiting.join(120)
        assert first[0].status_code == 200


def test_a_second_server_on_the_same_data_dir_is_refused(served_dir, tmp_path):
    from tuneforge.serve.app import ServerState

    config = config_for(served_dir, tmp_path)
    with running_server(config) as url:
        second = ServerState(config_for(served_dir, tmp_path))
        with pytest.raises(TuneforgeError, match="another tuneforge server is using"):
            second.open()
        second.close()
        assert httpx.get(url + "/models", headers=AUTH).status_code == 200  # the first one is unharmed
    third = ServerState(config_for(served_dir, tmp_path))  # the lock went with the first server
    third.open()
    third.close()


def test_cors_answers_only_the_configured_origins(served_dir, tmp_path):
    allowed, other = "https://app.example", "https://evil.example"
    config = config_for(served_dir, tmp_path, cors_origins=[allowed])
    with running_server(config) as url:
        def preflight(origin):
            return httpx.options(url + "/models", headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                                                           "Access-Control-Request-Headers": "authorization"})

        ok = preflight(allowed)  # a preflight carries no key and must still be answered
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == allowed
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        refused = preflight(other)
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        real = httpx.get(url + "/models", headers={**AUTH, "Origin": allowed})
        assert real.status_code == 200 and real.headers["access-control-allow-origin"] == allowed
        keyless = httpx.get(url + "/models", headers={"Origin": allowed})
        assert keyless.status_code == 401 and keyless.headers["access-control-allow-origin"] == allowed
        foreign = httpx.get(url + "/models", headers={**AUTH, "Origin": other})
        assert "access-control-allow-origin" not in foreign.headers


# ---- adapters at start ----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "empty", "list-config", "pickle"])
def test_serve_refuses_a_bad_adapter_at_start(served_dir, tmp_path, capsys, damage, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from tuneforge.cli.main import main

    monkeypatch.delenv("TUNEFORGE_API_KEYS", raising=False)
    adapter = make_adapter(tmp_path / "adapters" / "broken", seed=1)
    weights = adapter / "adapter_model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "list-config":
        (adapter / "adapter_config.json").write_text("[]")
    else:
        torch.save(load_file(str(weights)), adapter / "adapter_model.bin")
        weights.unlink()
    with pytest.raises(SystemExit) as info:
        main(["serve", "--base", str(served_dir / "base"), "--adapters", str(tmp_path / "adapters"),
              "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and str(adapter) in err and "Traceback" not in err
    assert not (tmp_path / "data").exists()  # refused before the server took its data directory


# ---- request bodies are pydantic models -----------------------------------------------------------------
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("route, change, param, message", [
    ("/chat/completions", {"tools": [{"type": "function"}]}, "tools",
     "tools (function calling) is not supported by this server"),
    ("/chat/completions", {"logprobs": True}, "logprobs", "logprobs are not supported by this server"),
    ("/chat/completions", {"presence_penalty": 0.5}, "presence_penalty",
     "presence_penalty is not supported by this server"),
    ("/chat/completions", {"logit_bias": {"1": 2.0}}, "logit_bias", "logit_bias is not supported by this server"),
    ("/chat/completions", {"response_format": {"type": "json_object"}}, "response_format",
     "only the text response format is supported"),
    ("/chat/completions", {"stop": ["a", "b", "c", "d", "e"]}, "stop", "stop takes at most 4 non-empty strings"),
    ("/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                      {"type": "image_url"}]}]},
     "messages.0.content.1", "only text content parts are supported"),
    ("/chat/completions", {"messages": []}, "messages", "messages: List should have at least 1 item"),
    ("/chat/completions", {"temperature": 5}, "temperature", "temperature: Input should be less than or equal to 2"),
    ("/completions", {"prompt": [], "messages": None}, "prompt", "prompt must not be empty"),
    ("/completions", {"prompt": "x", "echo": True, "messages": None}, "echo", "echo is not supported"),
    ("/completions", {"prompt": "x", "best_of": 3, "messages": None}, "best_of", "best_of is not supported"),
])
def test_inference_bodies_are_checked_by_their_models(server, route, change, param, message):
    url, _ = server
    body = {"model": "base", "messages": HI, **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = httpx.post(url + route, json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"].startswith(message), error


def test_the_request_models_hold_the_checks():
    """Validation lives in the pydantic models (no hand-written pass over the body in the routes)."""
    from pydantic import ValidationError

    from tuneforge.serve.job_request import JobRequest
    from tuneforge.serve.schemas import ChatCompletionRequest, CompletionRequest

    with pytest.raises(ValidationError, match="tools"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": HI, "tools": [{}]})
    with pytest.raises(ValidationError, match="best_of"):
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "best_of": 2})
    with pytest.raises(ValidationError, match="cannot be fine-tuned here"):
        JobRequest.model_validate({"model": "gpt-4o", "training_file": "f"}, context={"base_names": ("base",)})
    ok = JobRequest.model_validate({"model": "base", "training_file": "f", "method": {"type": "dpo", "dpo": {}}},
                                   context={"base_names": ("base",)})
    assert ok.method.type == "dpo" and ok.method.section().hyperparameters is None
