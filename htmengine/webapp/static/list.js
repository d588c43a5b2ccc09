"use strict";
// The list page: every metric, most anomalous first, as a virtual list (only the rows in view
// exist in the DOM, so 10,000 metrics render as fast as 30). Each row in view gets a small
// canvas chart of its recent values; the live stream updates the newest value and score.
const ROW_HEIGHT = 44;
const SPARK_POINTS = 96;
const SPARK_WIDTH = 220;
const SPARK_HEIGHT = 32;

const state = {
  metrics: [],        // sorted as the server ranked them
  shown: [],          // after the name filter
  byUid: new Map(),
  sparks: new Map(),  // uid -> {values: [], scores: [], lastRowid}
  pendingSparks: new Set(),
  period: 24,
};

const viewport = document.getElementById("viewport");
const rowsBox = document.getElementById("rows");
const spacer = document.getElementById("spacer");

async function loadList() {
  // The first screen's small charts come with the list (one round trip less).
  const first = state.sparks.size ? 0 : Math.ceil(viewport.clientHeight / ROW_HEIGHT) + 10;
  const page = await api(`/_dashboard/metrics?period=${state.period}&sparks=${first}&points=${SPARK_POINTS}`);
  for (const [uid, spark] of Object.entries(page.sparks)) state.sparks.set(uid, spark);
  const columns = page.columns;
  const metrics = page.rows.map((row) => {
    const metric = {};
    columns.forEach((name, i) => { metric[name] = row[i]; });
    return metric;
  });
  state.metrics = metrics;
  state.byUid = new Map(metrics.map((m) => [m.uid, m]));
  applyFilter();
  document.getElementById("empty").hidden = metrics.length > 0;
}

function applyFilter() {
  const text = document.getElementById("filter").value.trim().toLowerCase();
  state.shown = text ? state.metrics.filter((m) => m.name.toLowerCase().includes(text)) : state.metrics;
  document.getElementById("count").textContent =
    `${state.shown.length} of ${state.metrics.length} metrics`;
  spacer.style.height = `${state.shown.length * ROW_HEIGHT}px`;
  render();
}

function visibleRange() {
  const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_HEIGHT) - 5);
  const count = Math.ceil(viewport.clientHeight / ROW_HEIGHT) + 10;
  return [first, Math.min(state.shown.length, first + count)];
}

function render() {
  const [first, last] = visibleRange();
  const fragment = document.createDocumentFragment();
  const missing = [];
  for (let i = first; i < last; i++) {
    const metric = state.shown[i];
    fragment.appendChild(renderRow(metric, i));
    if (!state.sparks.has(metric.uid) && metric.last_rowid) missing.push(metric);
  }
  rowsBox.replaceChildren(fragment);
  rowsBox.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
  if (missing.length) loadSparks(missing);
  else if (!document.body.dataset.ready && state.metrics.length) document.body.dataset.ready = "1";
}

function renderRow(metric, index) {
  const row = document.createElement("div");
  row.className = "row metric-row";
  row.dataset.uid = metric.uid;
  const cells = [
    ["c-rank", String(index + 1)],
    ["c-name", null],
    ["c-status", null],
    ["c-spark", null],
    ["c-value", fmtNumber(metric.last_value)],
    ["c-score " + scoreClass(metric.last_anomaly_score), fmtScore(metric.last_anomaly_score)],
    ["c-time muted", metric.last_timestamp || "–"],
  ];
  for (const [cls, text] of cells) {
    const cell = document.createElement("span");
    cell.className = cls;
    if (text !== null) cell.textContent = text;
    row.appendChild(cell);
  }
  const link = document.createElement("a");
  link.href = `/metric/${metric.uid}`;
  link.textContent = metric.name;
  link.title = metric.name;
  row.children[1].appendChild(link);
  const badge = document.createElement("span");
  statusBadge(badge, metric.status);
  row.children[2].appendChild(badge);
  const canvas = document.createElement("canvas");
  canvas.width = SPARK_WIDTH;
  canvas.height = SPARK_HEIGHT;
  row.children[3].appendChild(canvas);
  const spark = state.sparks.get(metric.uid);
  if (spark) drawSpark(canvas, spark);
  return row;
}

async function loadSparks(metrics) {
  const wanted = metrics.filter((m) => !state.pendingSparks.has(m.uid));
  if (!wanted.length) return;
  wanted.forEach((m) => state.pendingSparks.add(m.uid));
  const query = wanted.map((m) => `m=${m.uid}:${m.last_rowid}`).join("&");
  try {
    const sparks = await api(`/_dashboard/sparklines?points=${SPARK_POINTS}&${query}`);
    for (const metric of wanted) {
      state.sparks.set(metric.uid, sparks[metric.uid] || {values: [], scores: [], lastRowid: 0});
    }
  } catch (error) {
    showError(`small charts: ${error.message}`);
  } finally {
    wanted.forEach((m) => state.pendingSparks.delete(m.uid));
  }
  redrawSparks();
}

function redrawSparks() {
  for (const row of rowsBox.children) {
    const spark = state.sparks.get(row.dataset.uid);
    if (spark) drawSpark(row.querySelector("canvas"), spark);
  }
  if (!document.body.dataset.ready && !state.pendingSparks.size) document.body.dataset.ready = "1";
}

function drawSpark(canvas, spark) {
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const values = spark.values;
  if (values.length < 2) return;
  let low = Infinity, high = -Infinity;
  for (const v of values) { if (v < low) low = v; if (v > high) high = v; }
  const span = high - low || 1;
  const x = (i) => (i / (values.length - 1)) * (canvas.width - 4) + 2;
  const y = (v) => canvas.height - 3 - ((v - low) / span) * (canvas.height - 6);
  context.strokeStyle = "#4a90d9";
  context.lineWidth = 1.2;
  context.beginPath();
  values.forEach((v, i) => (i ? context.lineTo(x(i), y(v)) : context.moveTo(x(i), y(v))));
  context.stroke();
  context.fillStyle = "#d0342c";
  values.forEach((v, i) => {
    const score = spark.scores[i];
    if (score !== null && score >= HIGH_SCORE) {
      context.beginPath();
      context.arc(x(i), y(v), 2.5, 0, 2 * Math.PI);
      context.fill();
    }
  });
}

function onLatest(latest) {
  // {uid: [timestamp, value, anomaly_score, rowid, raw, display]} of metrics that got scores.
  let visibleChanged = false;
  const visible = new Set(Array.from(rowsBox.children, (row) => row.dataset.uid));
  for (const [uid, row] of Object.entries(latest)) {
    const metric = state.byUid.get(uid);
    if (!metric) { scheduleReload(); continue; }
    metric.last_timestamp = row[0];
    metric.last_value = row[1];
    metric.last_anomaly_score = row[2];
    metric.last_rowid = row[3];
    const spark = state.sparks.get(uid);
    if (spark && row[3] > spark.lastRowid) {
      spark.values.push(row[1]);
      spark.scores.push(row[2]);
      spark.lastRowid = row[3];
      if (spark.values.length > SPARK_POINTS) { spark.values.shift(); spark.scores.shift(); }
    }
    if (visible.has(uid)) visibleChanged = true;
  }
  if (visibleChanged) render();
}

let reloadTimer = null;
function scheduleReload() {
  // A new ranking, a model that changed status or a new metric: reload the list (once).
  if (reloadTimer) return;
  reloadTimer = setTimeout(async () => {
    reloadTimer = null;
    try { await loadList(); showError(""); } catch (error) { showError(error.message); }
  }, 500);
}

viewport.addEventListener("scroll", () => requestAnimationFrame(render), {passive: true});
window.addEventListener("resize", () => render());
document.getElementById("filter").addEventListener("input", applyFilter);
document.getElementById("period").addEventListener("change", (event) => {
  state.period = Number(event.target.value);
  scheduleReload();
});

(async function start() {
  try {
    await loadList();
    if (!state.metrics.length || !state.shown.some((m) => m.last_rowid)) document.body.dataset.ready = "1";
  } catch (error) {
    showError(error.message);
    document.body.dataset.ready = "1";
  }
  follow("/_stream", {
    latest: onLatest,
    model: scheduleReload,
    ranking: (event) => { if (event.period === state.period) scheduleReload(); },
    open: () => { if (document.body.dataset.ready) scheduleReload(); },
  });
})();
