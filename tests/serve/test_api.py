"""The HTTP API through the official openai client: upload, fine-tune, poll, chat (plain and streamed) with the
result, several adapters at once, and OpenAI-shaped errors with the right status codes."""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import httpx
import openai
import pytest

from tuneforge.eval.generation import generate_with
from tuneforge.io import load_adapter
from tuneforge.models import load_model, load_tokenizer
from tuneforge.serve import ServeConfig

from .conftest import chat_records, running_server, wait_for_job, write_jsonl

KEY = "test-key"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE = re.compile(r"<!-- the test .*? -->\n```python\n(.*?)```", re.S)


@pytest.fixture(scope="module")
def api(served_dir):
    config = ServeConfig(base=str(served_dir / "base"), adapters=[str(served_dir / "adapters")],
                         data_dir=str(served_dir / "data"), job_config=str(served_dir / "job.yaml"),
                         api_keys=[KEY], max_upload_mb=0.05, batch_wait_ms=20)
    with running_server(config) as url:
        yield url


@pytest.fixture(scope="module")
def client(api):
    return openai.OpenAI(base_url=api, api_key=KEY, max_retries=0, timeout=120)


def reply_of(served_dir, adapter_dir, prompt: str, max_tokens: int) -> str:
    model, tokenizer = load_model(served_dir / "base"), load_tokenizer(served_dir / "base")
    if adapter_dir is not None:
        load_adapter(model, adapter_dir)
    return generate_with(model, tokenizer, prompt, max_new_tokens=max_tokens)[0]


def test_models_lists_base_and_adapters(client):
    ids = [m.id for m in client.models.list()]
    assert ids[:4] == ["base", "alpha", "beta", "gamma"]
    assert client.models.retrieve("alpha").owned_by == "user"


def test_fine_tune_poll_chat_and_stream(client, served_dir, tmp_path):
    upload = client.files.create(file=write_jsonl(tmp_path / "train.jsonl", chat_records()).open("rb"),
                                 purpose="fine-tune")
    assert upload.status == "processed" and upload.filename == "train.jsonl"
    job = client.fine_tuning.jobs.create(
        model="base", training_file=upload.id, suffix="e2e", seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}},
                "adapter": {"name": "lora", "r": 2, "target_modules": ["q_proj", "v_proj", "o_proj"]}})
    assert job.status == "queued" and job.hyperparameters.n_epochs == 1
    job = wait_for_job(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:base:e2e:{job.id.split('-', 1)[1]}" and job.trained_tokens > 0
    messages = [e.message for e in reversed(client.fine_tuning.jobs.list_events(job.id, limit=100).data)]
    assert messages[1] == "Fine-tuning job started." and messages[-1] == "The job has successfully completed."
    assert [m for m in messages if m.startswith("Step ")] == [f"Step {s}: training loss=" + m.split("=")[1]
                                                              for s, m in zip((1, 2, 3), messages[2:5])]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [3, 2]
    assert job.fine_tuned_model in [m.id for m in client.models.list()]

    adapter_dir = served_dir / "data" / "jobs" / job.id / "output" / "adapter"
    expected = reply_of(served_dir, adapter_dir, "say cat", 10)
    chat = client.chat.completions.create(model=job.fine_tuned_model, temperature=0, max_tokens=10,
                                          messages=[{"role": "user", "content": "say cat"}])
    assert chat.choices[0].message.content.strip() == expected
    assert chat.usage.completion_tokens == 10 and chat.choices[0].finish_reason == "length"
    stream = client.chat.completions.create(model=job.fine_tuned_model, temperature=0, max_tokens=10, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "say cat"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 10
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    final_checkpoint = checkpoints[0].fine_tuned_model_checkpoint  # the last step's weights are the model's
    again = client.chat.completions.create(model=final_checkpoint, temperature=0, max_tokens=10,
                                           messages=[{"role": "user", "content": "say cat"}])
    assert again.choices[0].message.content == chat.choices[0].message.content
    assert client.models.retrieve(final_checkpoint).id == final_checkpoint
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(final_checkpoint.replace("ckpt-step-3", "ckpt-step-1"))  # pruned (keep_last 2)

    assert client.models.delete(job.fine_tuned_model).deleted
    assert job.fine_tuned_model not in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="only fine-tuned models"):
        client.models.delete("alpha")


def test_concurrent_requests_for_different_adapters_do_not_mix(client, served_dir):
    prompts = {"alpha": "hello", "beta": "hello", "gamma": "hello", "base": "hello"}
    expected = {name: reply_of(served_dir, None if name == "base" else served_dir / "adapters" / name, p, 8)
                for name, p in prompts.items()}
    assert len(set(expected.values())) == 4  # the adapters do answer differently
    got, errors = [], []

    def ask(name):
        try:
            r = client.chat.completions.create(model=name, temperature=0, max_tokens=8,
                                               messages=[{"role": "user", "content": prompts[name]}])
            got.append((name, r.choices[0].message.content.strip()))
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(name,)) for name in list(prompts) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(got) == 12
    assert all(text == expected[name] for name, text in got)


def test_text_completions_with_several_prompts_and_a_stop(client):
    r = client.completions.create(model="alpha", prompt=["one", "two"], max_tokens=6, temperature=0)
    assert [c.index for c in r.choices] == [0, 1] and r.usage.completion_tokens == 12
    stop = r.choices[0].text[2:4]
    cut = client.completions.create(model="alpha", prompt="one", max_tokens=6, temperature=0, stop=stop)
    assert cut.choices[0].text == r.choices[0].text[: r.choices[0].text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="alpha", prompt="one", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text


def test_files_list_content_and_delete(client, tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", chat_records(2))
    upload = client.files.create(file=path.open("rb"), purpose="fine-tune")
    assert upload.id in [f.id for f in client.files.list()]
    assert client.files.content(upload.id).content == path.read_bytes()
    assert client.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(upload.id)


def test_cancel_a_running_job(client, tmp_path):
    upload = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_records(8)).open("rb"),
                                 purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="base", training_file=upload.id, hyperparameters={"n_epochs": 50})
    with pytest.raises(openai.ConflictError):  # a file an active job trains on stays
        client.files.delete(upload.id)
    job = client.fine_tuning.jobs.cancel(job.id)
    assert job.status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="already cancelled"):
        client.fine_tuning.jobs.cancel(job.id)
    assert client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None


@pytest.mark.parametrize("lines, fragment", [
    (['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}', "{oops"],
     "bad.jsonl line 2: malformed JSON"),
    (['[1, 2]'], "bad.jsonl line 1: expected a JSON object"),
])
def test_a_bad_upload_names_its_first_bad_line(client, tmp_path, lines, fragment):
    with pytest.raises(openai.BadRequestError, match=fragment) as info:
        client.files.create(file=write_jsonl(tmp_path / "bad.jsonl", lines).open("rb"), purpose="fine-tune")
    assert info.value.body["param"] == "file"


def test_a_job_on_records_of_the_wrong_shape_is_refused_naming_the_line(client, tmp_path):
    records = chat_records(2) + [{"messages": [{"role": "user", "content": "no reply"}]}]
    upload = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", records).open("rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="line 3.*no assistant message") as info:
        client.fine_tuning.jobs.create(model="base", training_file=upload.id)
    assert info.value.body["param"] == "training_file"


@pytest.mark.parametrize("change, param", [
    ({"model": "gpt-4o"}, "model"),
    ({"training_file": "file-000000000000000000000000"}, "training_file"),
    ({"training_file": "../../etc/passwd"}, "training_file"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup"),
    ({"suffix": "no spaces please"}, "suffix"),
    ({"method": {"type": "reinforcement"}}, "method.reinforcement.grader"),
    ({"method": {"type": "reinforcement", "reinforcement": {"grader": {"type": "python", "source": "def grade(s, i):\n    return 1.0\n"}}}}, "method.reinforcement.grader.type"),
    ({"method": {"type": "supervised", "adapter": {"name": "lora", "r": 0}}}, "method.adapter.r"),
    ({"method": {"type": "supervised", "adapter": {"name": "full"}}}, "method.adapter.name"),
])
def test_bad_job_requests_name_the_parameter(client, tmp_path, change, param):
    upload = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", chat_records(2)).open("rb"),
                                 purpose="fine-tune")
    body = {"model": "base", "training_file": upload.id, **change}
    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.jobs.create(**body)
    assert info.value.status_code == 400 and info.value.body["param"] == param


def test_openai_shaped_errors_and_status_codes(client, api):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body == {"message": "The model 'nope' does not exist", "type": "invalid_request_error",
                               "param": "model", "code": "model_not_found"}
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-does-not-exist")
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}],
                                       tools=[{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="base", max_tokens=10_000, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="assistants")
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="base", temperature=5, messages=[{"role": "user", "content": "hi"}])


def test_uploads_over_the_limit_get_413_before_they_are_stored(client, api):
    big = (json.dumps(chat_records(1)[0]) + "\n") * 2000  # > 50 KB
    before = len(client.files.list().data)
    with pytest.raises(openai.APIStatusError) as info:
        client.files.create(file=("big.jsonl", big.encode()), purpose="fine-tune")
    assert info.value.status_code == 413 and info.value.body["code"] == "request_too_large"
    assert len(client.files.list().data) == before


def test_every_api_route_needs_the_key(api):
    assert httpx.get(api.removesuffix("/v1") + "/health").status_code == 200
    for bad in (None, "wrong"):
        headers = {"Authorization": f"Bearer {bad}"} if bad else {}
        for method, path in (("GET", "/models"), ("GET", "/files"), ("POST", "/chat/completions"),
                             ("GET", "/fine_tuning/jobs")):
            r = httpx.request(method, api + path, headers=headers, json={})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    wrong = openai.OpenAI(base_url=api, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_cors_is_off_by_default(api):
    r = httpx.options(api + "/models", headers={"Origin": "http://evil.example",
                                                "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers


def test_the_docs_example_runs(api, tmp_path, monkeypatch, capsys):
    """docs/serving.md's client example, unchanged but for the address, key and base model name."""
    block = EXAMPLE.search(DOCS.read_text()).group(1)
    assert EXAMPLE.search(README.read_text()).group(1) == block  # the README shows the same, tested code
    code = (block.replace("http://127.0.0.1:8000/v1", api).replace("my-secret-key", KEY)
            .replace("smollm2-135m-instruct", "base").replace("time.sleep(1)", "time.sleep(0.2)"))
    write_jsonl(tmp_path / "train.jsonl", chat_records())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    assert namespace["job"].status == "succeeded"
    assert namespace["reply"].choices[0].message.content is not None
    assert "succeeded ft:base:demo:" in capsys.readouterr().out


def test_a_reinforcement_job_trains_with_grpo_on_its_grader(client, served_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"say {w}"}], "answer": w} for w in ("cat", "dog", "sun", "moon")]
    upload = client.files.create(file=write_jsonl(tmp_path / "rl.jsonl", rows).open("rb"), purpose="fine-tune")
    grader = {"type": "string_check", "name": "says it", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}", "operation": "like"}
    job = client.fine_tuning.jobs.create(model="base", training_file=upload.id, seed=1, method={
        "type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {"n_epochs": 1, "batch_size": 2}},
        "adapter": {"name": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"]}})
    job = wait_for_job(client, job.id)
    assert job.status == "succeeded", job.error
    run = served_dir / "data" / "jobs" / job.id / "output"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "reward/string_check" in r] == [1, 2]  # 4 prompts, 2 per GRPO step
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
