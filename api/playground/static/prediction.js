// The prediction page (urls.web): status, progress from the step lines in the logs, outputs and
// control map, timings and code to run it again. Live updates come from the stream endpoint,
// with polling when the stream is unavailable.
import { TERMINAL, api, el, formatSeconds, formatTime, startPage } from "./common.js";
import { curlSnippet, pythonSnippet } from "./snippets.js";

const predictionId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
// tqdm's meter, one line per denoising step: " 75%|███████▌  | 3/4 [00:01<00:00,  2.9it/s]"
const STEP_LINE = /(\d+)\/(\d+) \[/g;
const POLL_MS = 500;

let current = null;
let streamedLogs = "";
let shownOutputs = null;
let following = false;

export function progressOf(logs) {
  let last = null;
  for (const match of logs.matchAll(STEP_LINE)) last = match;
  return last ? { done: Number(last[1]), total: Number(last[2]) } : null;
}

// The stream and the record grow the same log; whichever has more is newer.
function latestLogs() {
  const stored = current?.logs || "";
  return streamedLogs.length > stored.length ? streamedLogs : stored;
}

// "1st", "2nd", "12th", "23rd": English ordinals, for a queue position.
export function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th";
  return `${n}${suffix}`;
}

// While queued: "12th in line" (queue_position 11: eleven of its model family start before it).
function waitingText(prediction) {
  const position = prediction.queue_position;
  const low = prediction.priority === "low" ? " (low priority)" : "";
  return Number.isInteger(position) ? `${ordinal(position + 1)} in line${low}` : `waiting in the queue${low}`;
}

function renderProgress() {
  const bar = document.getElementById("progress");
  const text = document.getElementById("progress-text");
  const steps = progressOf(latestLogs());
  if (steps) {
    bar.max = steps.total;
    bar.value = steps.done;
    text.textContent = `${steps.done} / ${steps.total} steps`;
  } else if (current.status === "succeeded") {
    bar.max = 1;
    bar.value = 1;
    text.textContent = "done";
  } else {
    bar.removeAttribute("value");  // indeterminate until the first step
    text.textContent = current.status === "starting" ? waitingText(current) : "preparing";
  }
}

function renderLogs() {
  const logs = document.getElementById("logs");
  const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
  logs.textContent = latestLogs() || "(no logs yet)";
  if (atBottom) logs.scrollTop = logs.scrollHeight;
}

function figure(url, caption, className) {
  return el("figure", { class: className },
    el("a", { href: url }, el("img", { src: url, alt: caption })),
    el("figcaption", {}, caption, " · ", el("a", { href: url, download: "" }, "download")));
}

// An output that is not an image (return_embeddings' .safetensors file): a download link.
function fileFigure(url, name) {
  return el("figure", { class: "output-file" },
    el("figcaption", {}, "File ", el("code", {}, name), " · ", el("a", { href: url, download: name }, "download")));
}

// The file name of an output URL: "out-0.webp", "control-map.png", "embeddings.safetensors".
function outputName(url) {
  return decodeURIComponent(new URL(url, location.origin).pathname.split("/").pop());
}

const IMAGE_NAME = /\.(png|jpe?g|webp)$/i;
const CONTROL_MAP_NAME = /^control-map\./;

function renderGallery(prediction) {
  const key = JSON.stringify([prediction.output, prediction.data_removed]);
  if (key === shownOutputs) return;  // keep loaded images from reloading on every update
  shownOutputs = key;
  const gallery = document.getElementById("gallery");
  const outputs = prediction.output || [];
  if (prediction.data_removed) {
    gallery.replaceChildren(el("p", {}, "The outputs have expired and were removed."));
    return;
  }
  if (!outputs.length) {
    gallery.replaceChildren(el("p", { class: "muted" }, TERMINAL.has(prediction.status) ? "No output." : "Not yet."));
    return;
  }
  // Outputs are told apart by their names: images (out-N), the control map return_control_map adds,
  // and files that are not images (return_embeddings).
  const named = outputs.map((url) => ({ url, name: outputName(url) }));
  const images = named.filter(({ name }) => IMAGE_NAME.test(name) && !CONTROL_MAP_NAME.test(name));
  const maps = named.filter(({ name }) => IMAGE_NAME.test(name) && CONTROL_MAP_NAME.test(name));
  const files = named.filter(({ name }) => !IMAGE_NAME.test(name));
  gallery.replaceChildren(
    ...images.map(({ url }, index) => figure(url, `Output ${index + 1}`, "output")),
    ...maps.map(({ url }) => figure(url, "Control map (what the model followed)", "control-map")),
    ...files.map(({ url, name }) => fileFigure(url, name)));
}

function facts(container, entries) {
  container.replaceChildren(...entries.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
}

function seconds(from, to) {
  return from && to ? (new Date(to) - new Date(from)) / 1000 : null;
}

function shown(value) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.startsWith("data:") && text.length > 80 ? `${text.slice(0, 60)}… (${text.length} characters)` : text;
}

function render(prediction) {
  current = prediction;
  document.getElementById("prediction").hidden = false;
  document.getElementById("load-status").textContent = "";
  document.title = `${prediction.model} · ${prediction.status} · Kiln playground`;
  const model = document.getElementById("model");
  model.textContent = prediction.model;
  model.href = `/playground/models/${prediction.model}`;
  const status = document.getElementById("status");
  status.textContent = prediction.status;
  status.className = `status status-${prediction.status}`;
  document.getElementById("cancel").hidden = TERMINAL.has(prediction.status);
  const error = document.getElementById("error");
  error.hidden = !prediction.error;
  error.textContent = prediction.error || "";
  renderProgress();
  renderLogs();
  renderGallery(prediction);
  facts(document.getElementById("timings"), [
    ["Queue wait", formatSeconds(seconds(prediction.created_at, prediction.started_at))],
    ["Predict time", formatSeconds(prediction.metrics?.predict_time)],
    ["Total time", formatSeconds(prediction.metrics?.total_time)],
    ["Created", formatTime(prediction.created_at)],
    ["Completed", formatTime(prediction.completed_at)],
  ]);
  facts(document.getElementById("input"), Object.entries(prediction.input).map(([name, value]) => [name, shown(value)]));
  document.getElementById("curl-snippet").textContent = curlSnippet(prediction);
  document.getElementById("python-snippet").textContent = pythonSnippet(prediction);
}

async function refresh() {
  render(await api(`/v1/predictions/${encodeURIComponent(predictionId)}`));
}

function parseEvent(block) {
  const event = { type: null, data: [] };
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event.type = line.slice(6).trim();
    else if (line.startsWith("data:")) event.data.push(line.slice(5).replace(/^ /, ""));
  }
  return { type: event.type, data: event.data.join("\n") };
}

// Server-Sent Events read with fetch, since EventSource cannot send the Authorization header.
async function stream() {
  const response = await api(`/v1/predictions/${encodeURIComponent(predictionId)}/stream?kiln_status=true`,
    { headers: { Accept: "text/event-stream" }, raw: true });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  streamedLogs = "";  // the stream starts again from the first line
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const event = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event.type === "logs") {
        streamedLogs += `${event.data}\n`;
        renderProgress();
        renderLogs();
      } else if (event.type) {
        await refresh();
        if (event.type === "done") return;
      }
    }
  }
}

async function follow() {
  if (following) return;
  following = true;
  try {
    await stream();
  } catch {
    // No stream (a proxy that buffers, a dropped connection): polling below takes over.
  }
  await refresh().catch(() => {});
  while (!TERMINAL.has(current.status)) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    try {
      await refresh();
    } catch {
      // A restarting API or a rate limit: keep the last state shown and try again.
    }
  }
  following = false;
}

async function load() {
  const status = document.getElementById("load-status");
  status.textContent = "Loading…";
  try {
    await refresh();
  } catch (error) {
    // Another token's prediction is indistinguishable from a missing one: show nothing of it.
    document.getElementById("prediction").hidden = true;
    status.textContent = error.status === 404 ? "Prediction not found." : `Could not load the prediction: ${error.message}`;
    return;
  }
  if (!TERMINAL.has(current.status)) await follow();
}

async function copy(event) {
  const button = event.target;
  const code = document.getElementById(button.dataset.copy);
  try {
    await navigator.clipboard.writeText(code.textContent);
    button.textContent = "Copied";
  } catch {
    getSelection().selectAllChildren(code);  // no clipboard access: select it for Ctrl+C
    button.textContent = "Selected: press Ctrl+C";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
}

document.querySelectorAll("button.copy").forEach((button) => button.addEventListener("click", copy));
document.getElementById("cancel").addEventListener("click", async () => {
  await api(`/v1/predictions/${encodeURIComponent(predictionId)}/cancel`, { method: "POST" });
  await refresh();
});
startPage(load);
