// The learning-loop page: polls /loop/history every second and draws its
// samples with uPlot. Every figure is a /metrics series (keys as the text
// format prints them); the charts and cells carry data-points / data-key
// attributes so a test can read what the page shows.
"use strict";
(() => {
  const KEPT = 600;
  const state = { t: [], series: {}, since: 0, model: "" };

  // "name{a=\"x\",b=\"y\"}" -> {name, labels}
  function parseKey(key) {
    const brace = key.indexOf("{");
    if (brace < 0) return { name: key, labels: {} };
    const labels = {};
    const body = key.slice(brace + 1, -1);
    const pair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    let match;
    while ((match = pair.exec(body)) !== null) labels[match[1]] = match[2].replace(/\\(.)/g, "$1");
    return { name: key.slice(0, brace), labels };
  }

  // Keys of the series named `name` whose labels include `labels`.
  function keys(name, labels = {}) {
    return Object.keys(state.series).filter((key) => {
      const parsed = parseKey(key);
      return parsed.name === name && Object.entries(labels).every(([k, v]) => parsed.labels[k] === v);
    });
  }

  function column(name, labels) {
    const found = keys(name, labels);
    return found.length ? state.series[found[0]] : state.t.map(() => null);
  }

  function newest(key) {
    const values = state.series[key] || [];
    for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
    return null;
  }

  function merge(answer) {
    const count = answer.t.length;
    if (!count) return;
    const before = state.t.length;
    state.t.push(...answer.t);
    for (const key of Object.keys(answer.series)) {
      if (!state.series[key]) state.series[key] = new Array(before).fill(null);
    }
    for (const key of Object.keys(state.series)) {
      const incoming = answer.series[key] || new Array(count).fill(null);
      state.series[key].push(...incoming);
    }
    const extra = state.t.length - KEPT;
    if (extra > 0) {
      state.t.splice(0, extra);
      for (const key of Object.keys(state.series)) state.series[key].splice(0, extra);
    }
    state.since = state.t[state.t.length - 1];
  }

  // Events per second between samples, from the applied total.
  function rate() {
    const applied = column("freshet_events_applied");
    return state.t.map((t, i) => {
      if (i === 0 || applied[i] === null || applied[i - 1] === null) return null;
      const seconds = (t - state.t[i - 1]) / 1000;
      return seconds > 0 ? Math.max(0, (applied[i] - applied[i - 1]) / seconds) : null;
    });
  }

  // Axis labels short enough for the axis: 15000 -> 15k.
  function compact(value) {
    if (value === null) return "";
    const size = Math.abs(value);
    if (size >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
    if (size >= 1e4) return `${+(value / 1e3).toFixed(1)}k`;
    return String(+value.toFixed(3));
  }

  const COLORS = ["#0b7285", "#e8590c", "#5f3dc4", "#2b8a3e", "#c92a2a"];
  const CHARTS = [
    { id: "chart-rate", lines: () => [["events/s", rate()]] },
    {
      id: "chart-rating",
      lines: () => [
        ["RMSE", column("freshet_progressive_metric", { head: "rating", metric: "rmse", span: "window" })],
        ["MAE", column("freshet_progressive_metric", { head: "rating", metric: "mae", span: "window" })],
      ],
    },
    {
      id: "chart-click",
      lines: () => [
        ["AUC", column("freshet_progressive_metric", { head: "click", metric: "auc", span: "window" })],
        ["log loss", column("freshet_progressive_metric", { head: "click", metric: "logloss", span: "window" })],
      ],
    },
    {
      id: "chart-versions",
      lines: () => {
        const lines = [
          ["checkpoint", column("freshet_checkpoint_version")],
          ["published", column("freshet_snapshot_version")],
        ];
        if (keys("served_version").length) lines.push(["served", column("served_version")]);
        return lines;
      },
    },
    {
      id: "chart-freshness",
      lines: () => {
        const lines = [["event to published snapshot", column("freshet_snapshot_freshness_ms")]];
        if (keys("served_freshness_ms").length) lines.push(["event to served model", column("served_freshness_ms")]);
        return lines;
      },
    },
  ];
  const plots = {};

  function draw() {
    const xs = state.t.map((t) => t / 1000);
    for (const chart of CHARTS) {
      const lines = chart.lines();
      const element = document.getElementById(chart.id);
      const data = [xs, ...lines.map(([, values]) => values)];
      const points = lines.reduce((sum, [, values]) => sum + values.filter((v) => v !== null).length, 0);
      element.dataset.points = String(points);
      element.dataset.series = lines.map(([label]) => label).join(",");
      // As wide as its section, whose width follows the window.
      const width = Math.max(320, (element.parentElement.clientWidth || 444) - 24);
      const plot = plots[chart.id];
      if (plot && plot.series.length === data.length) {
        if (Math.abs(plot.width - width) > 8) plot.setSize({ width, height: 200 });
        plot.setData(data);
        continue;
      }
      if (plot) plot.destroy();
      plots[chart.id] = new uPlot(
        {
          width,
          height: 200,
          scales: { x: { time: true } },
          axes: [{}, { size: 56, values: (u, splits) => splits.map(compact) }],
          series: [{}, ...lines.map(([label], i) => ({ label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true }))],
        },
        data,
        element,
      );
    }
  }

  const NUMBERS = [
    ["events applied", "freshet_events_applied"],
    ["events skipped (skip rollbacks)", "freshet_events_skipped"],
    ["checkpoint version", "freshet_checkpoint_version"],
    ["published version", "freshet_snapshot_version"],
    ["served version", "served_version"],
    ["event to snapshot (ms)", "freshet_snapshot_freshness_ms"],
    ["event to served model (ms)", "served_freshness_ms"],
    ["quality-gate holds", "freshet_snapshot_holds_total"],
  ];
  const LABELLED = [
    ["rows", "freshet_rows", "table"],
    ["rejected", "freshet_events_rejected_total", "reason"],
    ["rollbacks", "freshet_rollbacks_total", "reason"],
  ];

  function cell(row, text, key) {
    const td = row.insertCell();
    td.textContent = text;
    if (key !== undefined) {
      td.className = "number";
      td.dataset.key = key;
    }
  }

  function tabulate() {
    const body = document.querySelector("#numbers tbody");
    body.replaceChildren();
    const add = (label, key) => {
      const value = newest(key);
      if (value === null) return;
      const row = body.insertRow();
      cell(row, label);
      cell(row, Number.isInteger(value) ? String(value) : value.toFixed(4), key);
      row.cells[1].dataset.value = String(value);
    };
    for (const [label, key] of NUMBERS) if (state.series[key]) add(label, key);
    for (const [label, name, by] of LABELLED) {
      for (const key of keys(name).sort()) add(`${label}: ${parseKey(key).labels[by]}`, key);
    }
    if (!body.rows.length) {
      const row = body.insertRow();
      cell(row, "no samples yet");
    }
  }

  async function poll() {
    const status = document.getElementById("status");
    try {
      const response = await fetch(`/loop/history?since=${state.since}`, { cache: "no-store" });
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      const answer = await response.json();
      if (answer.model) document.getElementById("model").textContent = answer.model;
      merge(answer);
      draw();
      tabulate();
      status.className = "status";
      status.textContent = state.t.length
        ? `${state.t.length} samples, newest ${new Date(state.since).toLocaleTimeString()}`
        : "waiting for the first sample…";
      document.body.dataset.samples = String(state.t.length);
    } catch (error) {
      status.className = "status stale";
      status.textContent = `not updating: ${error.message}`;
    }
  }

  poll();
  setInterval(poll, 1000);
})();
