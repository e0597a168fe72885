// The playground talks to the server only through its public DashScope-style API, as any client would:
// models from GET api/v1/models, work submitted as an async task, progress and results polled from
// api/v1/tasks. Paths are relative so the page also works behind a reverse proxy's path prefix.

const KEY_STORAGE = "qwen-image-server.api-key";
const MODEL_STORAGE = "qwen-image-server.model";
const MAX_INPUTS = 3;
const POLL_MS = 400;
const FINISHED = new Set(["SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"]);

const $ = (id) => document.getElementById(id);
const models = new Map();
let inputs = []; // [{name, dataUrl}]
let followed = null; // the task whose progress is shown: {taskId, context, first}

class ApiError extends Error {
  constructor(code, message, requestId = null) {
    super(message);
    this.code = code;
    this.requestId = requestId;
  }
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const key = localStorage.getItem(KEY_STORAGE);
  if (!key) {
    throw new ApiError("NoApiKey", "Enter an API key first: the server prints one at its first start, " +
      "or create one with `qwen-image-server keys create`.");
  }
  const sent = { Authorization: `Bearer ${key}`, ...headers };
  if (body !== undefined) sent["Content-Type"] = "application/json";
  const response = await fetch(new URL(path, document.baseURI), {
    method, headers: sent, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const payload = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(payload?.code ?? `HTTP ${response.status}`, payload?.message ?? response.statusText,
      payload?.request_id ?? null);
  }
  return payload;
}

function showError(error) {
  const box = $("error");
  const code = error instanceof ApiError ? error.code : "Error";
  const request = error instanceof ApiError && error.requestId ? ` (request ${error.requestId})` : "";
  box.textContent = `${code}: ${error.message}${request}`;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// Same path on this page's origin: result URLs carry the server's configured base URL, which need not be
// the address this browser reached the page by.
function onThisOrigin(url) {
  const parsed = new URL(url, document.baseURI);
  return parsed.pathname + parsed.search;
}

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- API key -------------------------------------------------------------------------------------------

async function saveKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  localStorage.setItem(KEY_STORAGE, key);
  $("key-status").textContent = "Saved in this browser.";
  await connect();
}

function forgetKey() {
  localStorage.removeItem(KEY_STORAGE);
  $("api-key").value = "";
  $("key-status").textContent = "Forgotten.";
}

async function connect() {
  clearError();
  try {
    await loadModels();
    await refreshTasks();
  } catch (error) {
    showError(error);
  }
}

// ---- Models --------------------------------------------------------------------------------------------

async function loadModels() {
  const page = await api("api/v1/models?page_size=100");
  const select = $("model");
  const remembered = localStorage.getItem(MODEL_STORAGE);
  models.clear();
  select.replaceChildren();
  for (const entry of page.output.models) {
    models.set(entry.model, entry.capabilities);
    select.append(new Option(entry.model, entry.model, false, entry.model === remembered));
  }
  describeModel();
}

function describeModel() {
  const name = $("model").value;
  const caps = models.get(name);
  if (!caps) return;
  localStorage.setItem(MODEL_STORAGE, name);
  $("n").max = caps.max_n;
  if (Number($("n").value) > caps.max_n) $("n").value = caps.max_n;
  $("model-hint").textContent = caps.max_images === 0 ? "Text to image only."
    : caps.min_images === 0 ? `Text to image, or edits of up to ${caps.max_images} images.`
      : `Edits ${caps.max_images === 1 ? "one image" : `1 to ${caps.max_images} images`}.`;
  $("size-hint").textContent = {
    sides: "Each side 512-2048; rounded to multiples of 16.",
    area: "Any shape with an area from 512² to 2048².",
    fixed: `Fixed sizes; default ${caps.default_size ?? "per model"}.`,
    auto: "Not adjustable: follows the input image.",
  }[caps.size_rule] ?? "";
  $("size").disabled = caps.size_rule === "auto";
  $("prompt-extend").disabled = !caps.prompt_extend;
  $("file-input").disabled = caps.max_images === 0;
}

// ---- Input images --------------------------------------------------------------------------------------

async function addImages(files) {
  clearError();
  for (const file of files) {
    if (!file.type.startsWith("image/")) {
      showError(new ApiError("NotAnImage", `${file.name || "The pasted item"} is not an image.`));
      continue;
    }
    const dataUrl = await readAsDataUrl(file);
    // Checked after the read, with no await before the push: two quick drops must not both find room.
    if (inputs.length >= MAX_INPUTS) {
      showError(new ApiError("TooManyImages", `Up to ${MAX_INPUTS} input images; remove one first.`));
      break;
    }
    inputs.push({ name: file.name || "pasted image", dataUrl });
  }
  renderInputs();
}

function renderInputs() {
  const list = $("input-list");
  list.replaceChildren(...inputs.map((input, index) => {
    const item = document.createElement("li");
    const image = document.createElement("img");
    image.src = input.dataUrl;
    image.alt = `Input ${index + 1}: ${input.name}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", `Remove input ${index + 1} (${input.name})`);
    remove.addEventListener("click", () => {
      inputs.splice(index, 1);
      renderInputs();
    });
    item.append(image, remove);
    return item;
  }));
  $("inputs-count").textContent = `(${inputs.length} of ${MAX_INPUTS})`;
}

function onDrop(event) {
  event.preventDefault();
  $("drop-zone").classList.remove("dragging");
  addImages([...event.dataTransfer.files]);
}

function onPaste(event) {
  const files = [...(event.clipboardData?.files ?? [])];
  if (files.length === 0) return; // plain text pastes into the focused field as usual
  event.preventDefault();
  addImages(files);
}

// ---- Submitting and following a task -------------------------------------------------------------------

function requestBody() {
  const parameters = {
    n: Number($("n").value) || 1,
    prompt_extend: $("prompt-extend").checked && !$("prompt-extend").disabled,
    watermark: $("watermark").checked,
  };
  const size = $("size").value.trim();
  if (size && !$("size").disabled) parameters.size = size;
  const seed = $("seed").value.trim();
  if (seed) parameters.seed = Number(seed);
  const negative = $("negative-prompt").value.trim();
  if (negative) parameters.negative_prompt = negative;
  const content = [...inputs.map((input) => ({ image: input.dataUrl })), { text: $("prompt").value.trim() }];
  return { model: $("model").value, input: { messages: [{ role: "user", content }] }, parameters };
}

async function submit(event) {
  event.preventDefault();
  clearError();
  const button = $("submit");
  button.disabled = true;
  try {
    const created = await api("api/v1/services/aigc/multimodal-generation/generation", {
      method: "POST", body: requestBody(), headers: { "X-DashScope-Async": "enable" },
    });
    await follow(created.output.task_id, { inputs: inputs.slice() });
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

async function follow(taskId, context) {
  followed = { taskId, context, first: null };
  const mine = followed;
  $("progress-section").hidden = false;
  $("cancel").hidden = false;
  showProgress({ task_status: "PENDING" }, mine);
  refreshTasks().catch(showError);
  try {
    while (followed === mine) {
      const task = await api(`api/v1/tasks/${encodeURIComponent(taskId)}`);
      if (followed !== mine) return;
      if (FINISHED.has(task.output.task_status)) {
        finish(task, context);
        return;
      }
      showProgress(task.output, mine);
      await sleep(POLL_MS);
    }
  } finally {
    if (followed === mine) {
      followed = null;
      $("progress-section").hidden = true;
    }
  }
}

function showProgress(output, tracker) {
  const bar = $("progress");
  const label = $("progress-label");
  const progress = output.progress;
  if (!progress) {
    bar.removeAttribute("value"); // indeterminate while queued or loading
    label.textContent = output.task_status === "PENDING" ? "Queued…" : "Starting…";
    return;
  }
  $("cancel").hidden = true; // only queued tasks can be cancelled
  const now = performance.now();
  if (!tracker.first || progress.step < tracker.first.step) tracker.first = { step: progress.step, at: now };
  bar.max = progress.total_steps;
  bar.value = progress.step;
  let text = `Step ${progress.step} of ${progress.total_steps}`;
  const stepsSeen = progress.step - tracker.first.step;
  if (stepsSeen > 0) {
    const secondsLeft = ((now - tracker.first.at) / stepsSeen) * (progress.total_steps - progress.step) / 1000;
    text += ` · about ${secondsLeft < 1 ? "<1" : Math.round(secondsLeft)} s left`;
  }
  label.textContent = text;
}

function finish(task, context) {
  const output = task.output;
  refreshTasks().catch(showError);
  if (output.task_status !== "SUCCEEDED") {
    const message = output.message ?? (output.task_status === "UNKNOWN"
      ? "This task is unknown or has expired." : `The task ended ${output.task_status.toLowerCase()}.`);
    showError(new ApiError(output.code ?? output.task_status, message, task.request_id));
    return;
  }
  showResults(output, task.usage, context);
}

async function cancel() {
  if (!followed) return;
  try {
    await api(`api/v1/tasks/${encodeURIComponent(followed.taskId)}/cancel`, { method: "POST" });
  } catch (error) {
    showError(error);
  }
}

// ---- Results -------------------------------------------------------------------------------------------

function showResults(output, usage, context) {
  const results = output.results ?? [];
  const gallery = $("gallery");
  gallery.replaceChildren(...results.map((result, index) => resultItem(output.task_id, result, index, results.length,
    context)));
  const facts = [`Task ${output.task_id}`];
  if (usage) facts.push(`${usage.width}*${usage.height}`);
  const extended = results[0]?.actual_prompt;
  if (extended && extended !== results[0].orig_prompt) facts.push(`extended prompt: “${extended}”`);
  $("results-meta").textContent = facts.join(" · ");
  $("results-section").hidden = false;
  $("compare").hidden = true;
  if (context.inputs.length > 0 && results.length > 0) compare(context.inputs[0].dataUrl, results[0].url);
}

function resultItem(taskId, result, index, count, context) {
  const url = onThisOrigin(result.url);
  const item = document.createElement("li");
  const image = document.createElement("img");
  image.src = url;
  image.alt = `Result ${index + 1} of ${count}`;
  const download = document.createElement("a");
  download.href = url;
  download.download = `${taskId}-${index + 1}.${new URL(url, document.baseURI).pathname.split(".").pop()}`;
  download.textContent = "Download";
  download.setAttribute("aria-label", `Download result ${index + 1}`);
  const reuse = document.createElement("button");
  reuse.type = "button";
  reuse.textContent = "Use as input";
  reuse.setAttribute("aria-label", `Use result ${index + 1} as input`);
  reuse.addEventListener("click", () => useAsInput(url).catch(showError));
  item.append(image, download, reuse);
  if (context.inputs.length > 0) {
    const before = document.createElement("button");
    before.type = "button";
    before.textContent = "Compare";
    before.setAttribute("aria-label", `Compare result ${index + 1} with the first input`);
    before.addEventListener("click", () => compare(context.inputs[0].dataUrl, result.url));
    item.append(before);
  }
  return item;
}

function compare(beforeUrl, afterUrl) {
  const after = $("compare-after");
  after.onload = () => $("compare").querySelector(".compare-frame").style.setProperty(
    "aspect-ratio", `${after.naturalWidth} / ${after.naturalHeight}`);
  $("compare-before").src = beforeUrl;
  after.src = onThisOrigin(afterUrl);
  $("compare").hidden = false;
  splitCompare();
}

function splitCompare() {
  $("compare-after").style.setProperty("clip-path", `inset(0 0 0 ${$("compare-range").value}%)`);
}

// Keep editing: the result replaces the inputs, and a model that takes images is chosen if needed.
async function useAsInput(url) {
  const response = await fetch(url);
  if (!response.ok) throw new ApiError("ResultNotFound", "The result has expired or cannot be read.");
  inputs = [{ name: "previous result", dataUrl: await readAsDataUrl(await response.blob()) }];
  renderInputs();
  if (models.get($("model").value)?.max_images === 0) {
    const editor = [...models].find(([, caps]) => caps.max_images > 0);
    if (editor) {
      $("model").value = editor[0];
      describeModel();
    }
  }
  $("prompt").focus();
}

// ---- Recent tasks --------------------------------------------------------------------------------------

async function refreshTasks() {
  const page = await api("api/v1/tasks?page_size=10");
  $("tasks").tBodies[0].replaceChildren(...page.data.map((task) => {
    const row = document.createElement("tr");
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = task.task_id.slice(0, 8);
    open.setAttribute("aria-label", `Open task ${task.task_id}`);
    open.addEventListener("click", () => {
      clearError();
      follow(task.task_id, { inputs: [] }).catch(showError);
    });
    const cells = [new Date(task.gmt_create).toLocaleString(), task.model_name, task.status].map((text) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      return cell;
    });
    const action = document.createElement("td");
    action.append(open);
    row.append(...cells, action);
    return row;
  }));
}

// ---- Wiring --------------------------------------------------------------------------------------------

function start() {
  $("key-form").addEventListener("submit", saveKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("model").addEventListener("change", describeModel);
  $("file-input").addEventListener("change", (event) => {
    addImages([...event.target.files]);
    event.target.value = "";
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", onDrop);
  document.addEventListener("paste", onPaste);
  $("request-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("compare-range").addEventListener("input", splitCompare);
  $("refresh-tasks").addEventListener("click", () => refreshTasks().catch(showError));
  renderInputs();
  const key = localStorage.getItem(KEY_STORAGE);
  if (key) {
    $("api-key").value = key;
    connect();
  } else {
    $("key-status").textContent = "Paste the key the server printed at its first start.";
  }
}

start();
