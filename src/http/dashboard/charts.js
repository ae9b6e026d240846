// gleaner dashboard, part two: each node's throughput over the last 15
// minutes (pages/s, items/s, errors/s, from the `throughput` series every
// node's part of /debug/state carries) drawn as inline SVG by this script
// (no library), and the webhooks table with their last deliveries. Values
// reach the page as text nodes or numeric SVG attributes only.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const CHART_W = 300;
const CHART_H = 80;
const CHART_WINDOW_MS = 15 * 60 * 1000;
const CHART_SERIES = [["pages", "pages/s"], ["items", "items/s"], ["errors", "errors/s"]];

function svgEl(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

// The path of one series: each sample a level segment over its interval
// (x by time within the window ending at `end`), at a height by its rate.
function chartPath(samples, field, interval, end, max) {
  const x = (t) => CHART_W - ((end - t) / CHART_WINDOW_MS) * CHART_W;
  const parts = [];
  for (const s of samples) {
    const x1 = x(s.at);
    const x0 = Math.max(0, x(s.at - interval * 1000));
    if (x1 < 0 || x1 > CHART_W + 1) continue;
    const rate = s[field] / interval;
    const y = CHART_H - 2 - (max > 0 ? (rate / max) * (CHART_H - 12) : 0);
    parts.push((parts.length ? "L" : "M") + x0.toFixed(1) + " " + y.toFixed(1));
    parts.push("L" + x1.toFixed(1) + " " + y.toFixed(1));
  }
  return parts.join(" ");
}

function chart(node, field, label, series) {
  const samples = series.samples || [];
  const interval = series.interval_secs || 1;
  // Each node's samples are stamped by its own clock: the window ends at its newest.
  const end = samples.length ? samples[samples.length - 1].at : Date.now();
  const rates = samples.map((s) => s[field] / interval);
  const max = Math.max(0, ...rates);
  const last = rates.length ? rates[rates.length - 1] : 0;
  const svg = svgEl("svg", { class: "chart", viewBox: "0 0 " + CHART_W + " " + CHART_H,
    width: CHART_W, height: CHART_H, role: "img" });
  svg.dataset.node = node;
  svg.dataset.series = field;
  svg.append(svgEl("rect", { x: 0, y: 0, width: CHART_W, height: CHART_H, class: "chart-bg" }));
  const d = chartPath(samples, field, interval, end, max);
  // The area under the line, closed along the bottom edge.
  const xs = [...d.matchAll(/[ML]([\d.]+) /g)].map((m) => m[1]);
  if (xs.length) {
    svg.append(svgEl("path", { class: "area area-" + field,
      d: d + " L" + xs[xs.length - 1] + " " + (CHART_H - 2) + " L" + xs[0] + " " + (CHART_H - 2) + " Z" }));
  }
  svg.append(svgEl("path", { d: d, class: "line line-" + field }));
  const title = svgEl("title");
  title.textContent = node + " " + label;
  svg.append(title);
  return el("figure", { class: "chart-box", node: node, series: field }, svg,
    el("figcaption", {}, label + ": " + last.toFixed(1) + " now, " + max.toFixed(1) + " max"));
}

function renderCharts(state) {
  const box = document.getElementById("charts");
  if (!box) return;
  box.replaceChildren(...state.nodes.filter((n) => n.throughput).map((n) =>
    el("div", { class: "chart-row", node: n.name }, el("h3", {}, n.name),
      ...CHART_SERIES.map(([field, label]) => chart(n.name, field, label, n.throughput)))));
}

function deliveryText(d) {
  const what = d.outcome === "ok" ? "ok " + (d.status ?? "") : (d.error || "failed");
  return "#" + d.n + " " + what + " · " + d.changes + " changes · " + d.attempts + " attempts · " +
    d.latency_ms + " ms · " + ago(d.at);
}

async function renderWebhooks() {
  const body = document.querySelector("#webhooks tbody");
  if (!body) return;
  try {
    const list = (await (await api("/api/v1/webhooks")).json()).webhooks;
    body.replaceChildren(...list.map((w) => el("tr", { webhook: w.id },
      el("td", {}, w.id), el("td", {}, w.url), el("td", {}, w.collection), el("td", {}, w.events.join(", ")),
      el("td", {}, w.status.owner || ""), el("td", {}, w.status.cursor.delivery),
      el("td", { class: "deliveries" }, ...w.status.deliveries.map((d) =>
        el("div", { class: d.outcome === "ok" ? "" : "error" }, deliveryText(d)))))));
  } catch (e) {
    // The sources part of the page shows refusals; nothing to add here.
  }
}
