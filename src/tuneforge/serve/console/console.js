// The tuneforge web console: a single page over the server's /v1 API (docs/console.md).
// Rules: every value that came from the server or a user is written with textContent (the el() helper), never as
// HTML; the API key lives in sessionStorage and goes out only as the Bearer header of same-origin /v1 calls; a 401
// clears the page and shows the login prompt.
"use strict";

const KEY_NAME = "tuneforge.apiKey";
// Adaptation methods the form offers (each can share the served base; tests/serve/console checks this list
// against the server's registry). "" = the server's job template.
const METHODS = ["", "lora", "dora", "rslora", "loraplus", "vera", "ia3"];
const RANKED = new Set(["lora", "dora", "rslora", "loraplus", "vera"]);
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 1000;

let timers = [];
let streams = [];

// ---- small helpers -------------------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB"];
  let value = n, unit = -1;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function count(n) {
  return n === null || n === undefined ? "" : Number(n).toLocaleString("en");
}

function fmt(v) {
  return typeof v === "number" && !Number.isInteger(v) ? v.toFixed(4) : String(v);
}

function methodName(method) {
  if (!method) return "";
  const adapter = method.adapter || {};
  return [method.type, adapter.name].filter(Boolean).join(" / ") + (adapter.r ? ` r=${adapter.r}` : "");
}

function stopBackground() {
  timers.forEach(clearInterval);
  timers = [];
  streams.forEach((c) => c.abort());
  streams = [];
}

// ---- the API -------------------------------------------------------------------------------------------------
class LoggedOut extends Error {}

function apiKey() {
  return sessionStorage.getItem(KEY_NAME) || "";
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    showLogin(apiKey() ? "That API key was not accepted by this server." : "This server needs an API key.");
    throw new LoggedOut();
  }
  if (options.raw) return response;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (body.error && body.error.message) || `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

function showLogin(message) {
  stopBackground();
  sessionStorage.removeItem(KEY_NAME);
  const main = document.getElementById("main");
  main.replaceChildren();  // no data stays on the page
  main.hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("api-key").focus();
}

function showApp() {
  document.getElementById("login").hidden = true;
  document.getElementById("main").hidden = false;
  document.getElementById("logout").hidden = !apiKey();
}

function errorBox(err) {
  return el("p", { class: "error", role: "alert" }, err instanceof Error ? err.message : String(err));
}

// ---- routing -------------------------------------------------------------------------------------------------
function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { view: parts[0] || "jobs", id: parts[1], params: new URLSearchParams(query || "") };
}

async function render() {
  stopBackground();
  const { view, id, params } = route();
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.view === view);
  }
  const main = document.getElementById("main");
  const page = el("div", { class: "page", id: `page-${view}` });
  main.replaceChildren(page);
  const views = { jobs: id ? jobPage : jobsPage, models: modelsPage, playground: playgroundPage, files: filesPage };
  try {
    await (views[view] || jobsPage)(page, id, params);
  } catch (err) {
    if (!(err instanceof LoggedOut)) page.appendChild(errorBox(err));
  }
}

// ---- jobs ----------------------------------------------------------------------------------------------------
async function jobsPage(page) {
  const [jobs, models] = await Promise.all([api("/v1/fine_tuning/jobs?limit=100"), api("/v1/models")]);
  showApp();
  const bases = models.data.filter((m) => m.owned_by === "tuneforge");
  page.append(el("h1", {}, "Fine-tuning jobs"), newJobForm(bases));
  const table = el("table", { class: "list", id: "jobs-table" },
    el("thead", {}, el("tr", {}, ["job", "status", "base model", "method", "suffix", "created", "finished",
      "fine-tuned model"].map((h) => el("th", {}, h)))));
  const body = el("tbody");
  table.appendChild(body);
  page.appendChild(table);
  const fill = (list) => {
    body.replaceChildren(...list.map((job) => el("tr", { dataset: { job: job.id } },
      el("td", {}, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
      el("td", {}, el("span", { class: `status ${job.status}` }, job.status)),
      el("td", {}, job.model), el("td", {}, methodName(job.method)), el("td", {}, job.suffix || ""),
      el("td", {}, when(job.created_at)), el("td", {}, when(job.finished_at)),
      el("td", {}, job.fine_tuned_model || ""))));
    if (!list.length) body.appendChild(el("tr", {}, el("td", { colspan: 8, class: "empty" }, "No jobs yet.")));
    return list.some((job) => !FINAL.has(job.status));
  };
  if (fill(jobs.data)) {  // while some job is queued or running, its row follows it (the form is left alone)
    const timer = setInterval(async () => {
      try {
        if (!fill((await api("/v1/fine_tuning/jobs?limit=100")).data)) clearInterval(timer);
      } catch (err) {
        clearInterval(timer);
      }
    }, 2 * POLL_MS);
    timers.push(timer);
  }
}

function field(label, input, hint) {
  return el("label", { class: "field" }, el("span", {}, label), input, hint ? el("small", {}, hint) : null);
}

function newJobForm(bases) {
  const training = el("input", { type: "file", name: "training_file", accept: ".jsonl", required: true });
  const validation = el("input", { type: "file", name: "validation_file", accept: ".jsonl" });
  const base = el("select", { name: "model" }, bases.map((m) => el("option", { value: m.id }, m.id)));
  const type = el("select", { name: "type" }, el("option", { value: "supervised" }, "supervised (SFT)"),
    el("option", { value: "dpo" }, "DPO (preference pairs)"));
  const adapter = el("select", { name: "adapter" },
    METHODS.map((m) => el("option", { value: m }, m || "server default")));
  const rank = el("input", { type: "number", name: "r", min: 1, max: 1024, placeholder: "default" });
  const epochs = el("input", { type: "number", name: "n_epochs", min: 1, max: 50, placeholder: "auto" });
  const batch = el("input", { type: "number", name: "batch_size", min: 1, max: 256, placeholder: "auto" });
  const lrm = el("input", { type: "number", name: "learning_rate_multiplier", min: 0.001, max: 100, step: "any",
    placeholder: "auto" });
  const suffix = el("input", { type: "text", name: "suffix", maxlength: 64, placeholder: "my-model" });
  const status = el("p", { class: "form-status", role: "status" });
  const rankField = field("rank r", rank);
  const syncRank = () => { rankField.hidden = !RANKED.has(adapter.value); };
  adapter.addEventListener("change", syncRank);
  syncRank();
  const submit = el("button", { type: "submit" }, "Start fine-tuning");
  const form = el("form", { id: "new-job", class: "panel form-grid" },
    el("h2", {}, "New fine-tune"),
    field("training file (.jsonl)", training, "chat records {\"messages\": [...]} or any format tuneforge reads"),
    field("validation file (optional)", validation),
    field("base model", base), field("training method", type), field("adaptation method", adapter), rankField,
    field("epochs", epochs), field("batch size", batch), field("learning-rate multiplier", lrm),
    field("suffix", suffix), el("div", { class: "actions" }, submit, status));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    status.className = "form-status";
    try {
      status.textContent = "Uploading the training file…";
      const trainingFile = await upload(training.files[0]);
      let validationFile = null;
      if (validation.files.length) {
        status.textContent = "Uploading the validation file…";
        validationFile = await upload(validation.files[0]);
      }
      const hyper = {};
      if (epochs.value) hyper.n_epochs = Number(epochs.value);
      if (batch.value) hyper.batch_size = Number(batch.value);
      if (lrm.value) hyper.learning_rate_multiplier = Number(lrm.value);
      const method = { type: type.value, [type.value]: { hyperparameters: hyper } };
      if (adapter.value) {
        method.adapter = { name: adapter.value };
        if (rank.value && RANKED.has(adapter.value)) method.adapter.r = Number(rank.value);
      }
      const body = { model: base.value, training_file: trainingFile.id, method };
      if (validationFile) body.validation_file = validationFile.id;
      if (suffix.value) body.suffix = suffix.value;
      status.textContent = "Creating the job…";
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", body: JSON.stringify(body),
        headers: { "Content-Type": "application/json" } });
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      if (err instanceof LoggedOut) return;
      status.className = "form-status error";
      status.textContent = err.message;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

async function upload(file) {
  const data = new FormData();
  data.append("purpose", "fine-tune");
  data.append("file", file, file.name);
  return api("/v1/files", { method: "POST", body: data });
}

async function jobPage(page, jobId) {
  const path = `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
  let job = await api(path);
  showApp();
  const title = el("h1", {}, "Job ", el("span", { class: "mono" }, job.id));
  const status = el("span", { class: "status", id: "job-status" });
  const cancel = el("button", { type: "button", id: "cancel-job" }, "Cancel job");
  const facts = el("dl", { class: "facts" });
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.id = "loss-chart";
  svg.setAttribute("class", "chart");
  const events = el("ol", { class: "events", id: "job-events" });
  const config = el("pre", { class: "config", id: "job-config" }, "(loading)");
  const checkpoints = el("ul", { class: "checkpoints", id: "job-checkpoints" });
  const message = el("p", { class: "error", role: "alert" });
  page.append(el("p", {}, el("a", { href: "#/jobs" }, "← all jobs")), title,
    el("div", { class: "job-head" }, status, cancel), message, facts,
    el("section", { class: "panel" }, el("h2", {}, "Loss"), svg,
      el("h2", {}, "Checkpoints"), checkpoints),
    el("div", { class: "two" },
      el("section", { class: "panel" }, el("h2", {}, "Events"), events),
      el("section", { class: "panel" }, el("h2", {}, "Resolved config"), config)));
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      job = await api(`${path}/cancel`, { method: "POST" });
      await refresh();
    } catch (err) {
      if (!(err instanceof LoggedOut)) message.textContent = err.message;
    }
  });
  let configShown = false;
  const points = [];
  const refresh = async () => {
    const [fresh, metrics, log, saved] = await Promise.all([api(path), api(`${path}/metrics?offset=${points.length}`),
      api(`${path}/events?limit=200`), api(`${path}/checkpoints?limit=20`)]);
    if (metrics.offset === points.length) points.push(...metrics.data);
    job = fresh;
    status.textContent = job.status;
    status.className = `status ${job.status}`;
    cancel.hidden = FINAL.has(job.status);
    const rows = [["base model", job.model], ["method", methodName(job.method)], ["suffix", job.suffix || ""],
      ["training file", job.training_file], ["validation file", job.validation_file || "none"],
      ["created", when(job.created_at)], ["finished", when(job.finished_at)],
      ["trained tokens", count(job.trained_tokens)], ["fine-tuned model", job.fine_tuned_model || ""]];
    if (job.error && job.error.message) rows.push(["error", job.error.message]);
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    if (job.fine_tuned_model) {
      const href = `#/playground?a=${encodeURIComponent(job.model)}&b=${encodeURIComponent(job.fine_tuned_model)}`;
      facts.append(el("dt", {}, ""), el("dd", {}, el("a", { href, id: "try-model" }, "Try it in the playground")));
    }
    window.drawLossChart(svg, points);
    checkpoints.replaceChildren(...saved.data.map((c) => el("li", {},
      `step ${c.step_number}`, c.metrics.train_loss !== undefined ? ` · train loss ${fmt(c.metrics.train_loss)}` : "",
      " · ", el("a", { href: `#/playground?a=${encodeURIComponent(job.model)}&b=${encodeURIComponent(c.fine_tuned_model_checkpoint)}` },
        "chat with this checkpoint"))));
    if (!saved.data.length) checkpoints.appendChild(el("li", { class: "empty" }, "none kept"));
    events.replaceChildren(...log.data.map((e) => el("li", { class: `event ${e.level}` },
      el("time", {}, when(e.created_at)), " ", e.message)));
    if (!configShown) {
      try {
        const resolved = await api(`${path}/config`);
        config.textContent = JSON.stringify(resolved.config, null, 2);
        configShown = true;
      } catch (err) {
        if (err instanceof LoggedOut) throw err;
        config.textContent = err.message;
      }
    }
    return FINAL.has(job.status);
  };
  if (!(await refresh())) {
    let busy = false;
    const timer = setInterval(async () => {
      if (busy) return;
      busy = true;
      try {
        if (await refresh()) clearInterval(timer);
      } catch (err) {
        clearInterval(timer);
        if (!(err instanceof LoggedOut)) message.textContent = err.message;
      } finally {
        busy = false;
      }
    }, POLL_MS);
    timers.push(timer);
  }
}

// ---- models --------------------------------------------------------------------------------------------------
async function modelsPage(page) {
  const models = await api("/v1/models");
  showApp();
  page.appendChild(el("h1", {}, "Models"));
  const cards = await Promise.all(models.data.map((m) =>
    api(`/v1/models/${encodeURIComponent(m.id)}/card`).catch((err) => {
      if (err instanceof LoggedOut) throw err;
      return { id: m.id, error: err.message };
    })));
  const table = el("table", { class: "list", id: "models-table" },
    el("thead", {}, el("tr", {}, ["model", "kind", "method", "trainable parameters", "data", "final metrics",
      "created", ""].map((h) => el("th", {}, h)))));
  const body = el("tbody");
  models.data.forEach((m, i) => {
    const card = cards[i];
    const method = card.method ? [card.method.name || card.method.peft_type, card.method.r ? `r=${card.method.r}` : ""]
      .filter(Boolean).join(" ") : "";
    const params = card.kind === "base" ? `${count(card.parameters)} (all)` : count(card.trainable_parameters);
    const data = (card.data || []).map((d) => el("div", {}, d.filename ? `${d.filename} (${d.role.replace("_file", "")}, ${count(d.records)} records)` : (d.name || "")));
    const metrics = Object.entries(card.metrics || {}).map(([k, v]) => el("div", {}, `${k} ${fmt(v)}`));
    const job = card.fine_tuning_job_id ? el("a", { href: `#/jobs/${encodeURIComponent(card.fine_tuning_job_id)}` }, "job") : null;
    body.appendChild(el("tr", { dataset: { model: m.id } },
      el("td", { class: "mono" }, m.id), el("td", {}, card.kind || card.error || ""), el("td", {}, method),
      el("td", { class: "num" }, params), el("td", {}, data), el("td", {}, metrics), el("td", {}, when(m.created)),
      el("td", {}, el("a", { href: `#/playground?a=${encodeURIComponent(m.id)}` }, "chat"), job ? " · " : "", job)));
  });
  table.appendChild(body);
  page.appendChild(table);
}

// ---- playground ----------------------------------------------------------------------------------------------
async function playgroundPage(page, _id, params) {
  const models = await api("/v1/models");
  showApp();
  const ids = models.data.map((m) => m.id);
  for (const wanted of [params.get("a"), params.get("b")]) {  // a checkpoint is served but not listed
    if (wanted && !ids.includes(wanted)) ids.push(wanted);
  }
  const picker = (name, wanted) => {
    const select = el("select", { name, id: `model-${name}` }, ids.map((id) => el("option", { value: id }, id)));
    if (wanted && ids.includes(wanted)) select.value = wanted;
    return select;
  };
  const a = picker("a", params.get("a") || ids[0]);
  const b = picker("b", params.get("b") || ids[1] || ids[0]);
  const prompt = el("textarea", { id: "prompt", rows: 4, placeholder: "Ask both models the same thing…" });
  const temperature = el("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0.7 });
  const maxTokens = el("input", { id: "max-tokens", type: "number", min: 1, max: 4096, value: 128 });
  const send = el("button", { type: "submit", id: "send" }, "Send to both");
  const panes = [a, b].map((select, i) => {
    const text = el("div", { class: "reply", id: `reply-${i ? "b" : "a"}`, "aria-live": "polite" });
    const state = el("small", { class: "reply-state", id: `state-${i ? "b" : "a"}` });
    return { select, text, state, box: el("section", { class: "panel pane" }, el("h2", {}, i ? "Model B" : "Model A"), select, state, text) };
  });
  const form = el("form", { id: "playground", class: "panel" },
    field("prompt", prompt),
    el("div", { class: "row" }, field("temperature", temperature), field("max tokens", maxTokens), send));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    stopBackground();
    const body = { messages: [{ role: "user", content: prompt.value }], temperature: Number(temperature.value),
      max_tokens: Number(maxTokens.value), stream: true };
    send.disabled = true;
    Promise.allSettled(panes.map((p) => streamInto(p, { ...body, model: p.select.value })))
      .then(() => { send.disabled = false; });
  });
  page.append(el("h1", {}, "Playground"), form, el("div", { class: "two" }, panes.map((p) => p.box)));
}

async function streamInto(pane, body) {
  pane.text.replaceChildren();
  pane.state.textContent = "waiting…";
  pane.box.dataset.state = "waiting";
  const controller = new AbortController();
  streams.push(controller);
  let pieces = 0;
  try {
    const response = await api("/v1/chat/completions", { method: "POST", body: JSON.stringify(body), raw: true,
      headers: { "Content-Type": "application/json" }, signal: controller.signal });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || `${response.status}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    pane.state.textContent = "streaming…";
    pane.box.dataset.state = "streaming";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          for (const choice of chunk.choices || []) {
            const piece = choice.delta && choice.delta.content;
            if (piece) {
              pane.text.appendChild(document.createTextNode(piece));
              pieces += 1;
              pane.box.dataset.pieces = String(pieces);
            }
            if (choice.finish_reason) pane.state.textContent = `done (${choice.finish_reason}, ${pieces} pieces)`;
          }
        }
      }
    }
    pane.box.dataset.state = "done";
  } catch (err) {
    if (err instanceof LoggedOut || err.name === "AbortError") return;
    pane.box.dataset.state = "error";
    pane.state.textContent = err.message;
  }
}

// ---- files ---------------------------------------------------------------------------------------------------
async function filesPage(page) {
  const files = await api("/v1/files");
  showApp();
  const input = el("input", { type: "file", accept: ".jsonl", id: "upload-input", required: true });
  const status = el("span", { class: "form-status", role: "status" });
  const form = el("form", { class: "panel row", id: "upload-form" }, field("upload a .jsonl file", input),
    el("button", { type: "submit" }, "Upload"), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      status.textContent = "Uploading…";
      await upload(input.files[0]);
      await render();
    } catch (err) {
      if (!(err instanceof LoggedOut)) { status.className = "form-status error"; status.textContent = err.message; }
    }
  });
  const preview = el("section", { class: "panel", id: "file-preview", hidden: true });
  const table = el("table", { class: "list", id: "files-table" },
    el("thead", {}, el("tr", {}, ["file name", "id", "size", "lines", "uploaded", ""].map((h) => el("th", {}, h)))));
  const body = el("tbody");
  for (const file of files.data) {
    const show = el("button", { type: "button", class: "preview" }, "Preview");
    const remove = el("button", { type: "button", class: "delete" }, "Delete");
    const row = el("tr", { dataset: { file: file.id } },
      el("td", { class: "filename" }, file.filename), el("td", { class: "mono" }, file.id),
      el("td", { class: "num" }, bytes(file.bytes)), el("td", { class: "num" }, count(file.records)),
      el("td", {}, when(file.created_at)), el("td", {}, show, " ", remove));
    show.addEventListener("click", () => showPreview(preview, file.id).catch((err) => {
      if (!(err instanceof LoggedOut)) preview.replaceChildren(errorBox(err));
    }));
    remove.addEventListener("click", async () => {
      if (!remove.classList.contains("armed")) {  // a second click confirms (no dialog)
        remove.classList.add("armed");
        remove.textContent = "Really delete?";
        return;
      }
      try {
        await api(`/v1/files/${encodeURIComponent(file.id)}`, { method: "DELETE" });
        row.remove();
        preview.hidden = true;
      } catch (err) {
        if (!(err instanceof LoggedOut)) status.textContent = err.message;
      }
    });
    body.appendChild(row);
  }
  if (!files.data.length) body.appendChild(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No files yet.")));
  table.appendChild(body);
  page.append(el("h1", {}, "Files"), form, table, preview);
}

async function showPreview(box, fileId) {
  const data = await api(`/v1/files/${encodeURIComponent(fileId)}/preview?limit=5`);
  const records = data.preview.map((r) => {
    let text = r.text;
    try { text = JSON.stringify(JSON.parse(r.text), null, 2); } catch (_) { /* shown as written */ }
    return el("pre", { class: "record" }, text + (r.truncated ? "\n… (cut)" : ""));
  });
  box.replaceChildren(el("h2", {}, data.filename),
    el("p", {}, `${bytes(data.bytes)}, ${count(data.records)} lines; the first ${records.length}:`), ...records);
  box.hidden = false;
}

// ---- start ---------------------------------------------------------------------------------------------------
function start() {
  document.getElementById("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = document.getElementById("api-key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_NAME, key);
    document.getElementById("api-key").value = "";
    document.getElementById("login-error").textContent = "";
    showApp();
    render();
  });
  document.getElementById("logout").addEventListener("click", () => showLogin("Logged out."));
  window.addEventListener("hashchange", render);
  render();
}

start();
