"use strict";
// The metric page: value and anomaly score over time in two uPlot charts that zoom together,
// rows scoring at least HIGH_SCORE marked in red, new rows appended live from the stream, and
// the monitor / unmonitor actions.
const uid = decodeURIComponent(location.pathname.split("/").pop());
const NEWEST_ROWS = 20;
const LIMIT = 100000;

const state = {metric: null, rows: [], lastRowid: 0, charts: [], zoomed: false};
document.getElementById("threshold").textContent = String(HIGH_SCORE);

function columns() {
  // uPlot wants one array per series, x first (epoch seconds).
  const n = state.rows.length;
  const x = new Array(n), value = new Array(n), marked = new Array(n);
  const score = new Array(n), raw = new Array(n);
  for (let i = 0; i < n; i++) {
    const r = state.rows[i];
    x[i] = epochOf(r[0]);
    value[i] = r[1];
    score[i] = r[2];
    raw[i] = r[4];
    marked[i] = r[2] !== null && r[2] >= HIGH_SCORE ? r[1] : null;
  }
  return [[x, value, marked], [x, score, raw]];
}

function makeCharts() {
  const width = Math.max(400, document.querySelector("main").clientWidth - 10);
  const sync = uPlot.sync("metric");
  const cursor = {sync: {key: sync.key, setSeries: false}, drag: {x: true, y: false}};
  const zoomTogether = (self) => {
    // Keep both charts on the same x range, and remember that the user zoomed.
    const {min, max} = self.scales.x;
    state.zoomed = true;
    for (const other of state.charts) {
      if (other !== self && (other.scales.x.min !== min || other.scales.x.max !== max)) {
        other.setScale("x", {min, max});
      }
    }
  };
  const tzDate = (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");  // the table is UTC too
  const hooks = {setSelect: [(self) => { if (self.select.width > 0) zoomTogether(self); }]};
  const [valueData, scoreData] = columns();
  const valueChart = new uPlot({
    width, height: 300, cursor, hooks, tzDate,
    scales: {x: {time: true}},
    series: [
      {},
      {label: "value", stroke: "#4a90d9", width: 1.2},
      {label: `anomaly score ≥ ${HIGH_SCORE}`, stroke: "#d0342c", fill: "#d0342c", width: 0,
       points: {show: true, size: 7, fill: "#d0342c"}, paths: () => null},
    ],
    axes: [{}, {label: "value"}],
  }, valueData, document.getElementById("chart-value"));
  const scoreChart = new uPlot({
    width, height: 180, cursor, hooks, tzDate,
    scales: {x: {time: true}, y: {range: [-0.02, 1.02]}},
    series: [
      {},
      {label: "anomaly score", stroke: "#e08a1e", width: 1.2},
      {label: "raw anomaly", stroke: "#999", width: 0.8},
    ],
    axes: [{}, {label: "score"}],
  }, scoreData, document.getElementById("chart-score"));
  state.charts = [valueChart, scoreChart];
  for (const element of ["chart-value", "chart-score"]) {
    document.getElementById(element).addEventListener("dblclick", () => { state.zoomed = false; });
  }
}

function redraw() {
  const [valueData, scoreData] = columns();
  if (!state.charts.length) { makeCharts(); return; }
  // While zoomed, keep the user's range; otherwise follow the data.
  state.charts[0].setData(valueData, !state.zoomed);
  state.charts[1].setData(scoreData, !state.zoomed);
}

function renderNewest() {
  const body = document.querySelector("#newest tbody");
  const fragment = document.createDocumentFragment();
  for (const r of state.rows.slice(-NEWEST_ROWS).reverse()) {
    const tr = document.createElement("tr");
    tr.dataset.rowid = r[3];
    if (r[2] !== null && r[2] >= HIGH_SCORE) tr.className = "high";
    for (const text of [String(r[3]), r[0], fmtNumber(r[1], 6), fmtScore(r[2]), fmtScore(r[4])]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    fragment.appendChild(tr);
  }
  body.replaceChildren(fragment);
  const marked = state.rows.filter((r) => r[2] !== null && r[2] >= HIGH_SCORE).length;
  document.getElementById("row-count").textContent = `${state.rows.length} rows shown, ${marked} marked.`;
}

function renderMetric() {
  const m = state.metric;
  document.title = `htmengine: ${m.name}`;
  document.getElementById("name").textContent = m.name;
  statusBadge(document.getElementById("status"), m.status);
  const message = document.getElementById("message");
  message.textContent = m.message || "";
  message.hidden = !m.message;
  const monitored = m.status !== 0;
  document.getElementById("monitor-form").hidden = monitored;
  document.getElementById("unmonitor").hidden = !monitored;
}

async function loadMetric() {
  state.metric = await api(`/_models/${uid}`);
  renderMetric();
}

async function loadRows() {
  const days = Number(document.getElementById("window").value);
  const params = new URLSearchParams({order: "asc", limit: String(LIMIT)});
  if (days && state.metric.last_timestamp) {
    const newest = epochOf(state.metric.last_timestamp);
    params.set("from", String(Math.max(0, Math.floor(newest - days * 86400))));
  }
  const page = await api(`/_models/${uid}/data?${params}`);
  state.rows = page.data;
  state.lastRowid = state.rows.length ? state.rows[state.rows.length - 1][3] : 0;
  state.zoomed = false;
  redraw();
  renderNewest();
}

function onRows(event) {
  let added = 0;
  for (const row of event.rows) {
    if (row[3] > state.lastRowid) {
      state.rows.push(row);
      state.lastRowid = row[3];
      added++;
    } else {
      // A row scored again (e.g. after a re-monitor): replace it in place.
      const index = state.rows.findIndex((r) => r[3] === row[3]);
      if (index >= 0) { state.rows[index] = row; added++; }
    }
  }
  if (added) { redraw(); renderNewest(); }
}

async function act(button, request) {
  button.disabled = true;
  try {
    await request();
    showError("");
    await loadMetric();
    await loadRows();
  } catch (error) {
    showError(error.message);
  } finally {
    button.disabled = false;
  }
}

document.getElementById("monitor").addEventListener("click", (event) => act(event.target, () => {
  const spec = {datasource: "custom", metricSpec: {uid}};
  const min = document.getElementById("min").value, max = document.getElementById("max").value;
  if (min !== "" || max !== "") spec.modelParams = {min: Number(min), max: Number(max)};
  return api("/_models", {method: "POST", headers: {"Content-Type": "application/json"},
                          body: JSON.stringify(spec)});
}));
document.getElementById("unmonitor").addEventListener("click", (event) => act(event.target, () =>
  api(`/_models/${uid}`, {method: "DELETE"})));
document.getElementById("window").addEventListener("change", () => loadRows().catch((e) => showError(e.message)));
window.addEventListener("resize", () => {
  const width = Math.max(400, document.querySelector("main").clientWidth - 10);
  for (const chart of state.charts) chart.setSize({width, height: chart.height});
});

(async function start() {
  try {
    await loadMetric();
    await loadRows();
  } catch (error) {
    showError(error.message);
  }
  document.body.dataset.ready = "1";
  let opened = false;
  follow(`/_models/${uid}/stream`, {
    rows: onRows,
    model: () => loadMetric().catch((e) => showError(e.message)),
    open: () => {
      // After a reconnect, reload what the stream may have missed.
      if (opened) loadMetric().then(loadRows).catch((e) => showError(e.message));
      opened = true;
    },
  });
})();
