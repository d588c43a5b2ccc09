"use strict";
// Shared by the dashboard pages: API calls (the browser sends the API key it asked for),
// time parsing, number formatting, the live-stream indicator.
const HIGH_SCORE = 0.9999; // as `htmengine plot`: the original UI's warning level
const STATUS_NAMES = {0: "UNMONITORED", 1: "ACTIVE", 2: "CREATE_PENDING", 4: "ERROR", 8: "PENDING_DATA"};

async function api(path, options = {}) {
  const response = await fetch(path, Object.assign({credentials: "same-origin"}, options));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.result ? body.result : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

function epochOf(text) {  // "YYYY-MM-DD HH:MM:SS" (UTC) -> seconds
  return Date.parse(text.replace(" ", "T") + "Z") / 1000;
}

function fmtNumber(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e6 || abs < 1e-3)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

function fmtScore(value) {
  return value === null || value === undefined ? "–" : value.toFixed(5);
}

function scoreClass(value) {
  if (value === null || value === undefined) return "score-none";
  if (value >= HIGH_SCORE) return "score-high";
  if (value >= 0.9) return "score-mid";
  return "score-low";
}

function statusBadge(element, status) {
  const name = STATUS_NAMES[status] || String(status);
  element.textContent = name;
  element.className = "status status-" + name.toLowerCase();
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

function follow(path, handlers) {
  // An EventSource that reconnects by itself; `onopen` runs again after each reconnect so the
  // page can reload what it may have missed.
  const indicator = document.getElementById("live");
  const source = new EventSource(path);
  source.onopen = () => { indicator.className = "live on"; if (handlers.open) handlers.open(); };
  source.onerror = () => { indicator.className = "live off"; };
  for (const [event, handler] of Object.entries(handlers)) {
    if (event !== "open") source.addEventListener(event, (e) => handler(JSON.parse(e.data)));
  }
  return source;
}
