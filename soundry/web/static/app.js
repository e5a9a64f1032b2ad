/* soundry playground: sign in, generate audio, follow progress, replay history.
   Plain browser JavaScript, no build step. Every JSON answer of the API is an envelope:
   {data, errors, error_description, status: "success"|"error"}. */
"use strict";

const TOKEN_KEY = "soundry.token";
const USER_KEY = "soundry.user";
const TERMINAL = ["COMPLETED", "FAILED", "CANCELED"];
const POLL_MS = 500;

const $ = (id) => document.getElementById(id);

// The task being followed; bumping `run` makes older followers stop quietly.
const current = { taskId: null, run: 0, abort: null };

/* ---------- API ---------- */

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

function authHeader() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Calls the API and returns the envelope's `data`, or throws ApiError with its error_description. */
async function api(method, path, { body, headers } = {}) {
  const init = { method, headers: { Accept: "application/json", ...authHeader(), ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let env = null;
  try { env = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok || !env || env.status === "error") {
    const msg = (env && env.error_description) || `${method} ${path} failed (HTTP ${res.status})`;
    if (res.status === 401 && sessionStorage.getItem(TOKEN_KEY) && !path.endsWith("/login")) signOut(msg);
    throw new ApiError(msg, res.status);
  }
  return env.data;
}

/** Base64 of a UTF-8 string (btoa alone only takes Latin-1). */
function b64(text) {
  const bytes = new TextEncoder().encode(text);
  return btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
}

/* ---------- small view helpers ---------- */

function show(el, visible) { el.hidden = !visible; }

function setError(el, message) {
  el.textContent = message || "";
  show(el, Boolean(message));
}

/** "2024-05-01 12:00:00.123456" (UTC, from the API) as a local time string. */
function fmtTime(s) {
  if (!s) return "";
  const d = new Date(s.replace(" ", "T").slice(0, 23) + "Z");
  return isNaN(d) ? s : d.toLocaleString();
}

/* ---------- session ---------- */

async function signInWithPassword(event) {
  event.preventDefault();
  setError($("auth-error"), "");
  const user = $("username").value.trim();
  try {
    const data = await api("POST", "/v1/user/login",
      { headers: { Authorization: `Basic ${b64(`${user}:${$("password").value}`)}` } });
    $("password").value = "";
    startSession(data.access_token, data.name || data.username);
  } catch (err) {
    setError($("auth-error"), err.message);
  }
}

async function signInWithKey(event) {
  event.preventDefault();
  setError($("auth-error"), "");
  const key = $("api-key").value.trim();
  try {
    // Validate the key before keeping it.
    const me = await api("GET", "/v1/user/me", { headers: { Authorization: `Bearer ${key}` } });
    $("api-key").value = "";
    startSession(key, me.name || me.username);
  } catch (err) {
    setError($("auth-error"), err.message);
  }
}

function startSession(token, who) {
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(USER_KEY, who || "");
  enterApp();
}

function signOut(reason) {
  stopFollowing();
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
  show($("app-view"), false);
  show($("session"), false);
  show($("auth-view"), true);
  setError($("auth-error"), typeof reason === "string" ? reason : "");
}

function enterApp() {
  $("whoami").textContent = `Signed in as ${sessionStorage.getItem(USER_KEY) || "API key"}`;
  show($("auth-view"), false);
  show($("session"), true);
  show($("app-view"), true);
  loadModels();
  loadHistory();
}

/* ---------- models and the form ---------- */

// The model list's entries by name: what each model takes (melody) and how it can be decoded (decoders).
const modelEntries = new Map();

async function loadModels() {
  try {
    const models = await api("GET", "/v1/models/audio_generation");
    const select = $("model");
    const chosen = select.value;
    modelEntries.clear();
    models.forEach((m) => modelEntries.set(m.model, m));
    select.replaceChildren(...models.map((m) => {
      const opt = new Option(m.model, m.model);
      if (m.metadata && m.metadata.description) opt.title = m.metadata.description;
      return opt;
    }));
    if (models.some((m) => m.model === chosen)) select.value = chosen;
    showModelOptions();
  } catch (err) {
    setError($("form-error"), `Could not load models: ${err.message}`);
  }
}

/** A model's list entry field, at the top level or in its metadata. */
function modelFact(name, key) {
  const m = modelEntries.get(name) || {};
  return m[key] ?? (m.metadata || {})[key];
}

/** What the chosen model takes: the melody picker (melody models), the MBD checkbox (models MBD can decode), the
    continuation clip (models that continue audio), the sampling fields (autoregressive models) or the denoising
    steps (diffusion models). A model change puts that model's guidance default in cfg_coef unless the user typed
    one. */
let shownModel = null;
function showModelOptions() {
  const model = $("model").value;
  const diffusion = modelFact(model, "kind") === "diffusion";
  show($("melody-field"), modelFact(model, "melody") === true);
  show($("decoder-field"), (modelFact(model, "decoders") || []).includes("mbd"));
  show($("input-audio-field"), (modelFact(model, "inputs") || ["input_audio"]).includes("input_audio"));
  document.querySelectorAll(".sampling-field").forEach((el) => show(el, !diffusion));
  show($("steps-field"), diffusion);
  const steps = modelFact(model, "default_steps");
  $("steps").placeholder = steps ? `default ${steps}` : "default";
  if (model !== shownModel && !$("cfg-coef").dataset.edited) {
    const guidance = modelFact(model, "default_guidance");
    $("cfg-coef").value = diffusion && guidance != null ? guidance : "3.0";
  }
  shownModel = model;
}

/** Whether a model's audio reaches …/stream while it is generated (a diffusion model makes it all at once). */
function streamsLive(model) {
  return modelFact(model, "streams_live") !== false;
}

/** The POST body from the form; numbers are sent as numbers, empty fields are left to the API's defaults, and a
    hidden field (one the model does not take) is not sent: the API would refuse it, naming it. */
function readForm() {
  const num = (id) => ($(id).value.trim() === "" || !isShown($(id)) ? undefined : Number($(id).value));
  const configs = {
    model: $("model").value, duration: num("duration"), top_k: num("top-k"), top_p: num("top-p"),
    temperature: num("temperature"), cfg_coef: num("cfg-coef"), steps: num("steps"), seed: num("seed"),
    output_format: $("output-format").value,
  };
  if (!$("decoder-field").hidden && $("mbd").checked) configs.decoder = "mbd";
  Object.keys(configs).forEach((k) => configs[k] === undefined && delete configs[k]);
  const body = { prompt: $("prompt").value, configs };
  if ($("negative-prompt").value.trim()) body.negative_prompt = $("negative-prompt").value;
  return body;
}

/** Whether an element and every container above it are shown. */
function isShown(el) {
  for (let node = el; node; node = node.parentElement) if (node.hidden) return false;
  return true;
}

/** Puts a task's prompt and settings back into the form. */
function fillForm(task) {
  const c = task.config || {};
  $("prompt").value = task.prompt || "";
  $("negative-prompt").value = task.negative_prompt || "";
  const set = (id, v) => { if (v !== undefined && v !== null) $(id).value = v; };
  set("model", c.model);
  showModelOptions();
  set("duration", c.duration); set("top-k", c.top_k); set("top-p", c.top_p);
  set("temperature", c.temperature); set("cfg-coef", c.cfg_coef); set("output-format", c.output_format);
  $("steps").value = c.steps ?? "";
  $("seed").value = c.seed ?? task.seed ?? "";
  $("mbd").checked = (task.decoder ?? c.decoder) === "mbd";
}

async function submitGeneration(event) {
  event.preventDefault();
  setError($("form-error"), "");
  $("generate-btn").disabled = true;
  try {
    const body = readForm();
    const clip = $("input-audio").files[0];
    if (clip) body.configs.input_audio = (await uploadClip(clip, "input clip")).id;
    const melody = $("melody-field").hidden ? null : $("melody").files[0];
    if (melody) body.configs.melody = (await uploadClip(melody, "melody")).id;
    current.model = body.configs.model;
    const created = await api("POST", "/v1/ai/audio_generation", { body });
    render({ task_id: created.task_id, status: "PENDING", percent: 0, prompt: created.prompt });
    follow(created.task_id);
    loadHistory();
  } catch (err) {
    setError($("form-error"), err.message);
  } finally {
    $("generate-btn").disabled = false;
  }
}

/** Uploads a clip to continue from or a melody (multipart, field "file"); returns the upload's facts.
    `what` names it in an error. */
async function uploadClip(file, what) {
  const form = new FormData();
  form.append("file", file, file.name);
  const res = await fetch("/v1/uploads", { method: "POST", headers: { ...authHeader() }, body: form });
  let env = null;
  try { env = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok || !env || env.status === "error") {
    throw new ApiError(`${what}: ${(env && env.error_description) || `upload failed (HTTP ${res.status})`}`,
                       res.status);
  }
  return env.data;
}

/* ---------- following a task: SSE stream, polling as the fallback ---------- */

function stopFollowing() {
  current.run += 1;
  if (current.abort) current.abort.abort();
  current.abort = null;
}

async function follow(taskId) {
  stopFollowing();
  current.taskId = taskId;
  const run = current.run;
  let last = null;
  try {
    last = await streamEvents(taskId, run);
  } catch (_) { /* stream unavailable or broken: poll instead */ }
  if (run !== current.run) return;
  if (!last || !TERMINAL.includes(last.status)) last = await poll(taskId, run);
  if (run === current.run && last) finish(last);
}

/** Reads `event: status|done` messages from the events route; returns the last task seen. */
async function streamEvents(taskId, run) {
  current.abort = new AbortController();
  const res = await fetch(`/v1/ai/audio_generation/${encodeURIComponent(taskId)}/events`,
    { headers: { Accept: "text/event-stream", ...authHeader() }, signal: current.abort.signal });
  if (!res.ok || !res.body) throw new Error(`events: HTTP ${res.status}`);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done || run !== current.run) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const msg = parseEvent(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (!msg || !msg.data) continue;
      last = msg.data;
      render(last);
      if (msg.event === "done" || TERMINAL.includes(last.status)) { reader.cancel(); return last; }
    }
  }
  return last;
}

/** One SSE block ("event: x\ndata: {...}") as {event, data}; comments and bad JSON give null. */
function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return null;
  try { return { event, data: JSON.parse(data.join("\n")) }; } catch (_) { return null; }
}

async function poll(taskId, run) {
  while (run === current.run) {
    try {
      const task = (await api("GET", `/v1/ai/audio_generation/${encodeURIComponent(taskId)}`)).data;
      if (run !== current.run) return null;
      render(task);
      if (TERMINAL.includes(task.status)) return task;
    } catch (err) {
      if (err.status === 401 || err.status === 404) { setError($("task-error"), err.message); return null; }
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  return null;
}

async function cancelTask() {
  if (!current.taskId) return;
  $("cancel-btn").disabled = true;
  try {
    const task = (await api("POST", `/v1/ai/audio_generation/${encodeURIComponent(current.taskId)}/cancel`)).data;
    render(task);
  } catch (err) {
    setError($("task-error"), err.message);
  } finally {
    $("cancel-btn").disabled = false;
  }
}

function finish(task) {
  render(task);
  loadHistory();
}

/* ---------- rendering a task ---------- */

function render(task) {
  const running = !TERMINAL.includes(task.status);
  const percent = task.status === "COMPLETED" ? 100 : Math.max(0, Math.min(100, Math.round(task.percent || 0)));
  show($("task-empty"), false);
  show($("task-details"), true);
  $("task-status").textContent = task.status;
  $("task-status").dataset.status = task.status;
  $("task-id").textContent = task.task_id ? `#${task.task_id}` : "";
  $("progress").value = percent;
  $("progress-text").textContent = `${percent} %`;
  renderQueue(task);
  show($("cancel-btn"), running);
  setError($("task-error"), task.status === "FAILED" ? (task.error_description || "generation failed") : "");
  if (task.status === "COMPLETED" && task.url_download) showResult(task);
  else if (running && task.url_stream && streamsLive(modelOf(task))) showStream(task);
  else hideResult();
  show($("at-once-note"), running && !streamsLive(modelOf(task)));
}

/** The model a task runs (the create answer has none: the one just submitted). */
function modelOf(task) {
  return (task.config || {}).model || task.model || current.model;
}

function renderQueue(task) {
  const parts = [];
  if (task.status === "PENDING" && task.queue_position) parts.push(`Queue position ${task.queue_position}`);
  if (!TERMINAL.includes(task.status) && task.eta_seconds != null) parts.push(`about ${Math.ceil(task.eta_seconds)} s left`);
  $("queue-info").textContent = parts.join(" · ");
  show($("queue-info"), parts.length > 0);
}

function hideResult() {
  show($("result"), false);
  $("player").removeAttribute("src");
  delete $("player").dataset.url;
  delete $("player").dataset.task;
  $("player").dataset.source = "";
}

/** Plays the task's audio while it is generated (a WAV that grows as the engine decodes it). */
function showStream(task) {
  const player = $("player");
  if (player.dataset.task === task.task_id && player.dataset.source === "stream") return; // already streaming
  player.dataset.task = task.task_id;
  player.dataset.source = "stream";
  player.dataset.url = task.url_stream;
  player.src = task.url_stream;
  show($("result"), true);
  show($("live-note"), true);
  show($("final-result"), false);
  player.play().catch(() => { /* autoplay refused: the controls are there */ });
}

/** Swaps to the stored file; a stream that is playing carries on from the same position. */
function showResult(task) {
  const player = $("player");
  if (player.dataset.url === task.url_download) return; // already loaded
  const fromStream = player.dataset.source === "stream" && player.dataset.task === task.task_id;
  const position = player.currentTime, playing = fromStream && !player.paused && !player.ended;
  player.dataset.url = task.url_download;
  player.dataset.task = task.task_id;
  player.dataset.source = "file";
  player.src = task.url_download;
  if (fromStream) {
    player.addEventListener("loadedmetadata", () => {
      player.currentTime = Math.min(position, player.duration || position);
      if (playing) player.play().catch(() => {});
    }, { once: true });
  }
  show($("live-note"), false);
  show($("final-result"), true);
  showRating(task);
  const link = $("download-link");
  link.href = task.url_download;
  link.download = `soundry-${task.task_id}.${task.output_format || (task.config || {}).output_format || "wav"}`;
  show($("result"), true);
  drawWaveform(task.url_download).catch((err) => console.warn("waveform:", err));
}

/** Fetches the audio, decodes it and draws min/max peaks per canvas column. */
async function drawWaveform(url) {
  const canvas = $("waveform");
  const ctx2d = canvas.getContext("2d");
  ctx2d.clearRect(0, 0, canvas.width, canvas.height);
  const bytes = await (await fetch(url)).arrayBuffer();
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return;
  const audioCtx = new Ctx();
  let buffer;
  try { buffer = await audioCtx.decodeAudioData(bytes); } finally { audioCtx.close(); }
  if ($("player").dataset.url !== url) return; // another result replaced this one meanwhile
  const samples = buffer.getChannelData(0);
  const { width, height } = canvas;
  const step = Math.max(1, Math.floor(samples.length / width));
  const mid = height / 2;
  ctx2d.fillStyle = getComputedStyle(canvas).color || "#3563e9";
  for (let x = 0; x < width; x++) {
    let min = 1, max = -1;
    for (let i = x * step; i < Math.min(samples.length, (x + 1) * step); i++) {
      if (samples[i] < min) min = samples[i];
      if (samples[i] > max) max = samples[i];
    }
    if (min > max) break; // past the end of the audio
    ctx2d.fillRect(x, mid - max * mid, 1, Math.max(1, (max - min) * mid));
  }
  canvas.dataset.drawn = "true";
}

/* ---------- rating a finished clip ---------- */

function showRating(task) {
  const fb = task.feedback;
  $("rating-form").dataset.taskId = task.task_id;
  $("rating").value = fb ? String(Math.round(fb.rating)) : "5";
  $("rating-text").value = fb ? fb.feedback : "";
  $("rating-saved").textContent = fb ? `Rated ${fb.rating}` : "";
}

async function submitRating(event) {
  event.preventDefault();
  const form = $("rating-form");
  try {
    const saved = await api("POST", "/v1/ai/feedback", { body: {
      task_id: form.dataset.taskId, rating: Number($("rating").value), feedback: $("rating-text").value } });
    $("rating-saved").textContent = `Rated ${saved.rating}`;
  } catch (err) {
    $("rating-saved").textContent = err.message;
  }
}

/* ---------- history ---------- */

async function loadHistory() {
  try {
    const page = await api("GET", "/v1/user/history?limit=20&offset=0");
    const list = $("history-list");
    list.replaceChildren(...page.tasks.map(historyItem));
    show($("history-empty"), page.tasks.length === 0);
  } catch (err) {
    if (err.status !== 401) setError($("form-error"), `Could not load history: ${err.message}`);
  }
}

function historyItem(task) {
  const c = task.config || {};
  const li = document.createElement("li");
  li.setAttribute("data-testid", "history-item");
  li.dataset.taskId = task.task_id;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "history-item";
  button.title = "Load these settings into the form";
  const prompt = document.createElement("span");
  prompt.className = "history-prompt";
  prompt.textContent = task.prompt;
  const meta = document.createElement("span");
  meta.className = "muted history-meta";
  const secs = task.duration ?? c.duration;
  meta.textContent = [c.model, secs != null ? `${Number(secs).toFixed(1)} s` : "", fmtTime(task.created_at)]
    .filter(Boolean).join(" · ");
  const badge = document.createElement("span");
  badge.className = `badge status-${String(task.status).toLowerCase()}`;
  badge.textContent = task.status;
  button.append(prompt, badge, meta);
  button.addEventListener("click", () => openFromHistory(task));
  li.append(button);
  return li;
}

/** Replays a history entry: its settings into the form, its state (and audio) into the task panel. */
function openFromHistory(task) {
  fillForm(task);
  setError($("form-error"), "");
  render(task);
  if (TERMINAL.includes(task.status)) {
    stopFollowing();
    current.taskId = task.task_id;
  } else {
    follow(task.task_id);
  }
}

/* ---------- start-up ---------- */

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signInWithPassword);
  $("apikey-form").addEventListener("submit", signInWithKey);
  $("signout-btn").addEventListener("click", () => signOut());
  $("generate-form").addEventListener("submit", submitGeneration);
  $("model").addEventListener("change", showModelOptions);
  $("cfg-coef").addEventListener("input", () => { $("cfg-coef").dataset.edited = "true"; });
  $("cancel-btn").addEventListener("click", cancelTask);
  $("history-refresh").addEventListener("click", loadHistory);
  $("rating-form").addEventListener("submit", submitRating);
  if (sessionStorage.getItem(TOKEN_KEY)) enterApp();
});
