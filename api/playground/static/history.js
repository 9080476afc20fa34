// The token's predictions, newest first, a page at a time (the API's cursors, kept in this
// page's URL so a page can be bookmarked and the browser's back button works).
import { api, el, formatTime, predictionPagePath, startPage } from "./common.js";

function pageLink(id, apiUrl) {
  const link = document.getElementById(id);
  const cursor = apiUrl ? new URL(apiUrl, location.origin).searchParams.get("cursor") : null;
  link.hidden = !cursor;
  if (cursor) link.href = `/playground/history?cursor=${encodeURIComponent(cursor)}`;
}

function entry(prediction) {
  // The first image: an output that is a file (return_embeddings) makes no thumbnail.
  const first = (prediction.output || []).find((url) => /\.(png|jpe?g|webp)(\?|$)/i.test(url));
  const thumbnail = first
    ? el("img", { src: first, alt: "", loading: "lazy", class: "thumbnail" })
    : el("span", { class: "thumbnail empty", "aria-hidden": "true" }, "no image");
  const prompt = typeof prediction.input?.prompt === "string" ? prediction.input.prompt : "";
  return el("li", {},
    el("a", { href: predictionPagePath(prediction.id), class: "history-entry" },
      thumbnail,
      el("span", { class: "history-text" },
        el("strong", {}, prediction.model),
        el("span", { class: `status status-${prediction.status}` }, prediction.status),
        el("span", { class: "muted" }, formatTime(prediction.created_at)),
        prompt ? el("span", { class: "prompt" }, prompt) : null)));
}

function batchEntry(batch) {
  const counts = batch.counts;
  const ended = counts.succeeded + counts.failed + counts.canceled;
  const runnable = counts.total - counts.invalid;
  return el("li", {},
    el("a", { href: `/playground/batches/${encodeURIComponent(batch.id)}`, class: "history-entry" },
      el("progress", { max: Math.max(runnable, 1), value: runnable ? ended : 1, class: "batch-progress" }),
      el("span", { class: "history-text" },
        el("strong", {}, `Batch of ${counts.total}`),
        el("span", { class: `status status-${batch.status}` }, batch.status),
        el("span", { class: "muted" }, formatTime(batch.created_at)),
        el("span", {}, `${ended} / ${runnable} ended`))));
}

// The newest batches (first page) above the predictions: a batch is followed as one object.
async function listBatches() {
  const page = await api("/v1/batches");
  document.getElementById("batches").replaceChildren(...page.results.map(batchEntry));
}

async function listPredictions() {
  listBatches().catch(() => { /* the predictions below say what went wrong */ });
  const status = document.getElementById("history-status");
  const cursor = new URLSearchParams(location.search).get("cursor");
  status.textContent = "Loading…";
  try {
    const page = await api(`/v1/predictions${cursor ? `?cursor=${encodeURIComponent(cursor)}` : ""}`);
    document.getElementById("history").replaceChildren(...page.results.map(entry));
    pageLink("newer", page.previous);
    pageLink("older", page.next);
    status.textContent = page.results.length ? "" : "No predictions yet.";
  } catch (error) {
    status.textContent = `Could not load the predictions: ${error.message}`;
  }
}

startPage(listPredictions);
