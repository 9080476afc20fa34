// What every playground page shares: the token kept in local storage, JSON API calls with it,
// and small DOM helpers. The token never goes into a URL.

const TOKEN_KEY = "kiln.token";

export const TERMINAL = new Set(["succeeded", "failed", "canceled", "aborted"]);

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

// Same-origin path of an API URL: the API may answer with absolute URLs built from a public
// base URL that differs from the address this page was loaded from.
export function apiPath(url) {
  const parsed = new URL(url, location.origin);
  return parsed.pathname + parsed.search;
}

// Calls the JSON API with the stored token; throws ApiError (with the problem's detail) on 4xx/5xx.
export async function api(path, { method = "GET", json, body, headers = {}, raw = false } = {}) {
  const init = { method, headers: { Authorization: `Bearer ${getToken()}`, ...headers } };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(apiPath(path), init);
  if (!response.ok) {
    let problem = {};
    try { problem = await response.json(); } catch { /* not JSON: keep the status */ }
    if (response.status === 401) showTokenForm("The API refused the token: enter a valid one.");
    throw new ApiError(response.status, problem);
  }
  return raw ? response : response.json();
}

// el("a", {href: "/x", class: "y"}, "text", child) -> element
export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "class") element.className = value;
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...children.filter((child) => child !== null && child !== undefined));
  return element;
}

export function predictionPagePath(id) {
  return `/playground/predictions/${encodeURIComponent(id)}`;
}

export function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  return seconds < 10 ? `${seconds.toFixed(2)} s` : `${seconds.toFixed(1)} s`;
}

export function formatTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

function showTokenForm(message) {
  const form = document.getElementById("token-form");
  if (!form) return;
  form.hidden = false;
  document.getElementById("token-saved").hidden = true;
  document.getElementById("token-message").textContent = message;
}

function buildHeader() {
  const header = document.querySelector("body > header");
  const current = location.pathname;
  const link = (href, text, active) => el("a", { href, "aria-current": active ? "page" : null }, text);
  header.replaceChildren(
    el("a", { class: "brand", href: "/" }, "Kiln playground"),
    el("nav", { "aria-label": "Playground" },
      link("/", "Models", current === "/" || current.startsWith("/playground/models/")),
      link("/playground/history", "History", current === "/playground/history")),
    el("form", { id: "token-form", class: "token", hidden: true },
      el("label", { for: "token" }, "API token"),
      el("input", { id: "token", type: "password", autocomplete: "off", required: true }),
      el("button", { type: "submit" }, "Save token"),
      el("span", { id: "token-message", role: "alert" })),
    el("p", { id: "token-saved", class: "token", hidden: true },
      "Token saved in this browser. ",
      el("button", { type: "button", id: "forget-token" }, "Forget it")),
  );
  const notice = el("p", { id: "needs-token", class: "notice", hidden: true },
    "Enter your API token above to use the playground. It stays in this browser's local storage.");
  document.querySelector("main").prepend(notice);
}

// Builds the page header (navigation and the token bar) and calls start() once a token is
// stored: now, or after the user enters one.
export function startPage(start) {
  buildHeader();
  const form = document.getElementById("token-form");
  const input = document.getElementById("token");
  const refresh = () => {
    const has = Boolean(getToken());
    form.hidden = has;
    document.getElementById("token-saved").hidden = !has;
    document.getElementById("needs-token").hidden = has;
    return has;
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    localStorage.setItem(TOKEN_KEY, token);
    input.value = "";
    document.getElementById("token-message").textContent = "";
    refresh();
    start();
  });
  document.getElementById("forget-token").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  if (refresh()) start();
}
