"""The web console in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) against a real
`tuneforge serve` subprocess on a tiny Llama, on a free loopback port.

Needs `pip install playwright` (the test extra) and `apt-get install chromium` (the Makefile / .ci/run install it);
`playwright install` is never run: the browser is /usr/bin/chromium. Without them the tests skip, except under CI
(env CI or TUNEFORGE_REQUIRE_BROWSER set; .ci/run sets the latter), where they fail.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from ..conftest import chat_records, free_port, make_adapter, write_jsonl

KEY = "console-test-key"
CHROMIUM = os.environ.get("TUNEFORGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
EVIL_NAME = "<img src=x onerror=alert(1)>.jsonl"


def _missing(reason: str):
    if os.environ.get("CI") or os.environ.get("TUNEFORGE_REQUIRE_BROWSER"):
        pytest.fail(f"{reason} (CI installs it: .ci/run, `make browser`)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright_api():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).is_file():
        _missing(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as api:
        yield api


@pytest.fixture(scope="module")
def browser(playwright_api):
    browser = playwright_api.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, playwright_api):
    """`tuneforge serve` on a tiny Llama with one extra adapter ('alpha'); jobs train 2 epochs of 3 steps with an
    evaluation after every step. Yields (base URL, the folder)."""
    from tuneforge.models import tiny_llama, tiny_tokenizer

    root = tmp_path_factory.mktemp("console")
    tiny_llama().save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    make_adapter(root / "adapters" / "alpha", seed=1)
    template = {"method": {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
                "data": {"max_length": 64, "packing": False},
                "train": {"epochs": 2, "micro_batch_size": 2, "learning_rate": 0.02, "eval_every": 1,
                          "save_every": 3, "keep_last": 1, "lr_schedule": "constant"}}
    (root / "job.yaml").write_text(yaml.safe_dump(template))
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TUNEFORGE_API_KEYS", None)
    src = Path(__file__).resolve().parents[3] / "src"
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge", "serve", "--base", str(root / "base"),
                             "--base-name", "tiny-base", "--adapters", str(root / "adapters"),
                             "--data-dir", str(root / "data"), "--api-key", KEY, "--port", str(port),
                             "--job-config", str(root / "job.yaml"), "--threads", "1", "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"tuneforge serve did not start:\n{(root / 'server.log').read_text()}")
        time.sleep(0.2)
    try:
        yield url, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.dialogs = dialogs
    yield page
    context.close()


def _api(server, method: str, path: str, **kwargs):
    response = httpx.request(method, f"{server[0]}/v1{path}", headers={"Authorization": f"Bearer {KEY}"},
                             timeout=60, **kwargs)
    response.raise_for_status()
    return response.json()


def _upload(server, path: Path, name: str) -> dict:
    with open(path, "rb") as handle:
        return _api(server, "POST", "/files", data={"purpose": "fine-tune"}, files={"file": (name, handle)})


def _login(page, server, key: str = KEY, view: str = "jobs"):
    page.goto(f"{server[0]}/#/{view}")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#api-key", key)
    page.click("#login button[type=submit]")


def test_a_wrong_key_shows_the_login_prompt_and_no_data(page, server, tmp_path):
    secret = _upload(server, write_jsonl(tmp_path / "t.jsonl", chat_records(2)), "secret-name.jsonl")
    _login(page, server, key="not-the-key", view="files")
    page.wait_for_selector("#login-error:has-text('not accepted')")
    assert page.is_visible("#login") and page.is_hidden("#main")
    assert page.locator("#main *").count() == 0
    html = page.content()
    assert "secret-name" not in html and secret["id"] not in html
    assert page.evaluate("sessionStorage.getItem('tuneforge.apiKey')") is None  # the wrong key is not kept
    page.screenshot(path=str(tmp_path / "login.png"))
    # the static page needs no key, the data does
    assert httpx.get(f"{server[0]}/").status_code == 200
    assert httpx.get(f"{server[0]}/v1/files").status_code == 401


def test_a_job_created_from_the_form_trains_and_draws_its_loss_curve(page, server, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(6))
    valid = write_jsonl(tmp_path / "valid.jsonl", chat_records(2))
    _login(page, server)
    page.wait_for_selector("#new-job")
    page.screenshot(path=str(tmp_path / "jobs.png"))
    page.set_input_files("#new-job input[name=training_file]", str(train))
    page.set_input_files("#new-job input[name=validation_file]", str(valid))
    page.select_option("#new-job select[name=adapter]", "lora")
    page.fill("#new-job input[name=r]", "4")
    page.fill("#new-job input[name=n_epochs]", "2")
    page.fill("#new-job input[name=batch_size]", "2")
    page.fill("#new-job input[name=suffix]", "console")
    page.click("#new-job button[type=submit]")
    page.wait_for_url("**/#/jobs/ftjob-*", timeout=60_000)
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#job-status.succeeded", timeout=240_000)
    # the page stops polling once the job ended, after drawing the final metrics
    metrics = _api(server, "GET", f"/fine_tuning/jobs/{job_id}/metrics")["data"]
    train_steps = [p["step"] for p in metrics if "train_loss" in p]
    eval_steps = [p["step"] for p in metrics if "valid_loss" in p]
    assert train_steps == list(range(1, 7))  # 6 records / batch 2 x 2 epochs, one point per step
    assert eval_steps == list(range(1, 7))  # eval_every: 1
    page.wait_for_function(f"document.querySelectorAll('#loss-chart circle.pt-train').length === {len(train_steps)}")
    drawn_train = page.eval_on_selector_all("#loss-chart circle.pt-train", "els => els.map(e => +e.dataset.step)")
    drawn_eval = page.eval_on_selector_all("#loss-chart circle.pt-eval", "els => els.map(e => +e.dataset.step)")
    assert drawn_train == train_steps and drawn_eval == eval_steps
    assert page.locator("#job-events li").count() >= len(train_steps)
    config = json.loads(page.inner_text("#job-config"))
    assert config["method"]["name"] == "lora" and config["method"]["r"] == 4 and config["train"]["epochs"] == 2
    assert page.is_hidden("#cancel-job")  # nothing to cancel once it ended
    kept = _api(server, "GET", f"/fine_tuning/jobs/{job_id}/checkpoints")["data"]
    assert page.locator("#job-checkpoints a").count() == len(kept) >= 1  # each can be chatted with
    job = _api(server, "GET", f"/fine_tuning/jobs/{job_id}")
    assert job["fine_tuned_model"] and job["fine_tuned_model"] in page.inner_text("dl.facts")
    page.screenshot(path=str(tmp_path / "job.png"), full_page=True)
    page.click("#job-checkpoints a")
    page.wait_for_selector("#playground")
    assert page.input_value("#model-b") == kept[0]["fine_tuned_model_checkpoint"]  # served, though not listed

    page.goto(f"{server[0]}/#/models")
    row = page.locator(f"#models-table tr[data-model='{job['fine_tuned_model']}']")
    row.wait_for()
    assert "fine-tuned" in row.inner_text() and "train.jsonl" in row.inner_text()
    page.screenshot(path=str(tmp_path / "models.png"), full_page=True)


def test_the_playground_streams_two_replies_side_by_side(page, server, tmp_path):
    _login(page, server, view="playground?a=tiny-base&b=alpha")
    page.wait_for_selector("#playground")
    assert page.input_value("#model-a") == "tiny-base" and page.input_value("#model-b") == "alpha"
    page.fill("#prompt", "say cat")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "12")
    page.click("#send")
    for pane in ("a", "b"):
        page.wait_for_selector(f".pane:has(#reply-{pane})[data-state=done]", timeout=60_000)
    for pane, model in (("a", "tiny-base"), ("b", "alpha")):
        pieces = int(page.get_attribute(f".pane:has(#reply-{pane})", "data-pieces") or 0)
        shown = page.eval_on_selector(f"#reply-{pane}", "e => e.textContent")
        # the same request without streaming, greedy: the streamed pieces add up to its reply
        whole = _api(server, "POST", "/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "say cat"}], "temperature": 0, "max_tokens": 12})
        expected = whole["choices"][0]["message"]["content"]
        assert pieces >= 2, f"pane {pane} got its reply in {pieces} piece(s): not streamed"
        assert shown == expected
    assert page.inner_text("#reply-a") != page.inner_text("#reply-b")  # two models, two replies
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)


def test_a_file_named_like_markup_is_shown_as_text(page, server, tmp_path):
    records = [{"messages": [{"role": "user", "content": "<script>alert(2)</script>"},
                             {"role": "assistant", "content": "<b onmouseover=alert(3)>hi</b>"}]}]
    evil = _upload(server, write_jsonl(tmp_path / "evil.jsonl", records * 3), EVIL_NAME)
    _login(page, server, view="files")
    row = page.locator(f"#files-table tr[data-file='{evil['id']}']")
    row.wait_for()
    assert row.locator("td.filename").inner_text() == EVIL_NAME
    assert row.locator("td.num").nth(1).inner_text() == "3"  # lines
    row.locator("button.preview").click()
    page.wait_for_selector("#file-preview pre.record")
    assert page.inner_text("#file-preview h2") == EVIL_NAME
    assert "<script>alert(2)</script>" in page.inner_text("#file-preview")
    assert page.locator("img").count() == 0 and page.locator("main script, main b").count() == 0
    page.screenshot(path=str(tmp_path / "files.png"), full_page=True)
    row.locator("button.delete").click()
    row.locator("button.delete").click()  # the second click confirms
    row.wait_for(state="detached")
    assert evil["id"] not in [f["id"] for f in _api(server, "GET", "/files")["data"]]
    assert page.dialogs == []


def test_a_bad_upload_in_the_form_shows_the_servers_message(page, server, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\nnot json\n')
    _login(page, server)
    page.wait_for_selector("#new-job")
    page.set_input_files("#new-job input[name=training_file]", str(bad))
    page.click("#new-job button[type=submit]")
    message = page.locator("#new-job .form-status.error")
    message.wait_for()
    assert "bad.jsonl line 2" in message.inner_text()
    assert "#/jobs" in page.url and "ftjob-" not in page.url


def test_a_running_job_is_cancelled_from_its_page(page, server, tmp_path):
    train = _upload(server, write_jsonl(tmp_path / "long.jsonl", chat_records(6)), "long.jsonl")
    job = _api(server, "POST", "/fine_tuning/jobs", json={
        "model": "tiny-base", "training_file": train["id"],
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 40}}}})
    _login(page, server, view=f"jobs/{job['id']}")
    page.wait_for_selector("#cancel-job:visible")
    page.click("#cancel-job")
    page.wait_for_selector("#job-status.cancelled", timeout=30_000)
    assert page.is_hidden("#cancel-job")
    assert _api(server, "GET", f"/fine_tuning/jobs/{job['id']}")["status"] == "cancelled"
    assert "cancelled" in page.inner_text("#job-events")
