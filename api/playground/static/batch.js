// A batch's page (urls.web of a batch): its status, counts per prediction status, a progress bar
// of ended items, cancel, and its results file. Polls the batch until it has ended.
import { api, el, formatTime, startPage } from "./common.js";

const batchId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const ENDED = new Set(["completed", "canceled"]);
const STATUSES = ["starting", "processing", "succeeded", "failed", "canceled"];
const POLL_MS = 1000;

let current = null;

export function progressOfBatch(batch) {
  const counts = batch.counts;
  const runnable = counts.total - counts.invalid;
  const ended = counts.succeeded + counts.failed + counts.canceled;
  return { ended, runnable };
}

function render(batch) {
  current = batch;
  document.getElementById("batch").hidden = false;
  const status = document.getElementById("status");
  status.textContent = batch.status;
  status.className = `status status-${batch.status}`;
  document.getElementById("created").textContent = formatTime(batch.created_at);
  document.getElementById("completed").textContent = formatTime(batch.completed_at);
  document.getElementById("cancel").hidden = ENDED.has(batch.status);
  const { ended, runnable } = progressOfBatch(batch);
  const bar = document.getElementById("progress");
  bar.max = Math.max(runnable, 1);
  bar.value = runnable ? ended : 1;
  document.getElementById("progress-text").textContent = `${ended} / ${runnable} ended`;
  const rows = [["total", batch.counts.total], ["invalid", batch.counts.invalid]];
  rows.push(...STATUSES.map((name) => [name, batch.counts[name]]));
  document.getElementById("counts").replaceChildren(
    ...rows.flatMap(([name, value]) => [el("dt", {}, name), el("dd", { "data-count": name }, String(value))]));
  const link = document.getElementById("results-api");
  link.href = batch.urls.results;
  link.textContent = batch.urls.results;
}

async function refresh() {
  const batch = await api(`/v1/batches/${encodeURIComponent(batchId)}`);
  render(batch);
  if (!ENDED.has(batch.status)) setTimeout(() => refresh().catch(showError), POLL_MS);
}

function showError(error) {
  document.getElementById("load-status").textContent = `Could not load the batch: ${error.message}`;
}

// The results need the token, which a plain link cannot send: fetch them, then save the file.
async function downloadResults() {
  const response = await api(current.urls.results, { raw: true });
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: `${batchId}-results.jsonl` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

async function start() {
  document.getElementById("cancel").addEventListener("click", async () => {
    render(await api(current.urls.cancel, { method: "POST" }));
  });
  document.getElementById("download-results").addEventListener("click", () => downloadResults().catch(showError));
  // The API URL is shown for scripts; clicked here, it downloads with the token like the button.
  document.getElementById("results-api").addEventListener("click", (event) => {
    event.preventDefault();
    downloadResults().catch(showError);
  });
  try {
    await refresh();
  } catch (error) {
    showError(error);
  }
}

startPage(start);
