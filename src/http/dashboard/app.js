// gleaner dashboard: renders /debug/state and refreshes it on every event of
// /debug/events (a streamed fetch, so the token travels in a header, never in
// a URL), with a slow poll as a fallback. Every value from the server is put
// into the page as text (text nodes, never markup).
"use strict";

const TOKEN_KEY = "gleaner.admin_token";
const POLL_MS = 10000;
const REFRESH_DEBOUNCE_MS = 150;
// A busy fleet emits many events a second; a large state costs the node tens
// of milliseconds to assemble, so refresh at most this often.
const MIN_REFRESH_INTERVAL_MS = 1000;
const MAX_EVENTS = 50;

let current = null;
let refreshTimer = null;
let lastRefresh = 0;
let streaming = false;

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function headers() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

class Unauthorized extends Error {}

async function api(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) throw new Error(path + " answered " + response.status);
  return response;
}

// Builds an element; children are nodes or values shown as text.
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else e.dataset[k] = v;
  }
  for (const c of children) {
    if (c instanceof Node) e.append(c);
    else e.append(document.createTextNode(c === null || c === undefined ? "" : String(c)));
  }
  return e;
}

function stateCell(state) {
  return el("td", { class: "state state-" + state }, state);
}

function healthCell(status) {
  const health = status.health || "ok";
  const cell = el("td", { class: "health health-" + health }, health);
  if (status.health_reason) cell.title = status.health_reason;
  return cell;
}

function ago(iso) {
  if (!iso) return "";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (s < 0) return "in " + duration(-s);
  return duration(s) + " ago";
}

function duration(s) {
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  return (n / (1024 * 1024)).toFixed(1) + " MiB";
}

function showLogin(message) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

function renderMembers(state) {
  const body = $("members").tBodies[0];
  body.replaceChildren(
    ...state.members.map((m) =>
      el("tr", { member: m.name },
        el("td", {}, m.name), el("td", {}, m.address), el("td", {}, m.role), stateCell(m.state),
        el("td", {}, duration(m.uptime_secs)), el("td", { class: "owned" }, m.sources_owned),
        el("td", {}, bytes(m.memory_rss_bytes)))));
}

function treeItem(actor) {
  const stats = actor.stats || {};
  const counters = ["runs", "items", "errors", "restarts", "batches", "inserted", "changed"]
    .filter((k) => typeof stats[k] === "number")
    .map((k) => k + " " + stats[k]).join(", ");
  const li = el("li", { actor: actor.kind + ":" + actor.id },
    el("span", { class: "kind" }, actor.kind), " ", actor.id, " ",
    el("span", { class: "state state-" + actor.state }, actor.state), " ",
    el("span", { class: "muted" }, counters));
  if (stats.last_run) {
    li.append(el("span", { class: "muted" }, " · last run " + ago(stats.last_run.finished_at) +
      " (" + stats.last_run.duration_ms + " ms)"));
  }
  if (stats.next_run) li.append(el("span", { class: "muted" }, " · next " + ago(stats.next_run)));
  if (stats.last_error) li.append(el("div", { class: "error" }, stats.last_error));
  // Scrapers are listed (filtered, grouped) in the sources table; the tree counts them.
  const children = (actor.children || []).filter((c) => c.kind !== "Scraper");
  if (children.length) li.append(el("ul", { class: "tree" }, ...children.map(treeItem)));
  const scrapers = (actor.children || []).length - children.length;
  if (scrapers) li.append(el("ul", { class: "tree" }, el("li", { class: "muted" }, scrapers + " Scraper actors, listed under Sources")));
  return li;
}

function renderTrees(state) {
  $("trees").replaceChildren(
    ...state.nodes.map((n) => el("div", { node: n.name }, el("ul", { class: "tree" }, treeItem(n.tree)))));
}

function allSources(state) {
  const out = [];
  for (const node of state.nodes) {
    const scrapers = new Map();
    const walk = (a) => { if (a.kind === "Scraper") scrapers.set(a.id, a); (a.children || []).forEach(walk); };
    walk(node.tree);
    for (const s of node.sources) out.push({ node: node.name, source: s, scraper: scrapers.get(s.id) });
  }
  return out;
}

function fillSelect(select, values) {
  const keep = select.value;
  select.replaceChildren(select.options[0], ...values.map((v) => el("option", {}, v)));
  for (const o of select.options) o.value = o.value || o.textContent;
  select.options[0].value = "";
  select.value = values.includes(keep) ? keep : "";
}

function sourceRow(entry) {
  const s = entry.source;
  const st = (entry.scraper && entry.scraper.stats) || {};
  const run = s.status.last_run;
  return el("tr", { class: "source", source: s.id, on: { click: () => showHistory(s.id) } },
    el("td", { class: "id" }, s.id),
    stateCell(s.status.state),
    healthCell(s.status),
    el("td", {}, s.status.owner),
    el("td", {}, s.collection),
    el("td", { class: "runs" }, st.runs ?? 0),
    el("td", { class: "items" }, s.status.items),
    el("td", { class: "errors" }, st.errors ?? 0),
    el("td", {}, run ? ago(run.finished_at) + " (" + run.duration_ms + " ms, " + run.items + " items)" : "never"),
    el("td", {}, s.status.next_run ? ago(s.status.next_run) : ""),
    el("td", { class: "error last-error" }, s.status.last_error || ""),
    el("td", {}, el("button", { class: "edit", on: { click: (ev) => { ev.stopPropagation(); editSource(s.id); } } }, "edit")));
}

const STATE_ORDER = ["failed", "backing_off", "running", "scheduled", "disabled"];

function renderSources(state) {
  const entries = allSources(state);
  fillSelect($("filter-state"), STATE_ORDER.filter((st) => entries.some((e) => e.source.status.state === st)));
  fillSelect($("filter-node"), state.nodes.map((n) => n.name));
  const q = $("search").value.trim().toLowerCase();
  const wantState = $("filter-state").value;
  const wantNode = $("filter-node").value;
  const shown = entries.filter((e) =>
    (!wantState || e.source.status.state === wantState) &&
    (!wantNode || e.node === wantNode) &&
    (!q || [e.source.id, e.source.url, e.source.collection].some((v) => v.toLowerCase().includes(q))));
  $("source-count").textContent = "(" + shown.length + " of " + entries.length + ")";
  const groups = STATE_ORDER.map((st) => [st, shown.filter((e) => e.source.status.state === st)])
    .filter(([, list]) => list.length);
  const head = () => el("thead", {}, el("tr", {}, ...["id", "state", "health", "owner", "collection", "runs", "items",
    "errors", "last run", "next run", "last error", ""].map((h) => el("th", {}, h))));
  const open = new Set([...document.querySelectorAll("details.group[open]")].map((d) => d.dataset.group));
  $("sources").replaceChildren(...groups.map(([st, list]) => {
    const details = el("details", { class: "group", group: st },
      el("summary", {}, st + " (" + list.length + ")"),
      el("table", {}, head(), el("tbody", {}, ...list.map(sourceRow))));
    details.open = current === null || open.has(st) || list.length <= 200 || st === "failed";
    return details;
  }));
}

function renderCollections(state) {
  const rows = [];
  for (const node of state.nodes) {
    for (const c of node.collections) {
      // Every node keeps every collection: in a cluster, say whose copy a row is.
      const where = state.nodes.length > 1 ? el("small", {}, " @ " + node.name) : "";
      rows.push(el("tr", { class: "source", collection: c.name, node: node.name, on: { click: () => showItems(c.name) } },
        el("td", {}, c.name, where), el("td", { class: "items" }, c.items), el("td", {}, ago(c.last_update)),
        el("td", {}, c.batches ?? ""), el("td", {}, c.inserted ?? ""), el("td", {}, c.changed ?? "")));
    }
  }
  $("collections").tBodies[0].replaceChildren(...rows);
}

// Each node's sources directory as it last read it; broken files first.
function renderSourceFiles(state) {
  const rows = [];
  for (const node of state.nodes) {
    const files = [...(node.source_files || [])].sort((a, b) => (b.error ? 1 : 0) - (a.error ? 1 : 0));
    for (const f of files) {
      const error = f.error ? (f.field ? f.field + ": " : "") + f.error : "";
      rows.push(el("tr", { class: f.error ? "source broken" : "source", file: f.path, node: node.name },
        el("td", {}, node.name), el("td", {}, f.path), el("td", {}, f.sources.join(", ")),
        el("td", { class: f.error ? "error" : "" }, error)));
    }
  }
  $("source-files-section").hidden = rows.length === 0;
  $("source-files").tBodies[0].replaceChildren(...rows);
}

// Hosts come from /api/v1/hosts (each host's figures from its owner node).
function renderHosts(list) {
  const rows = list.hosts.map((h) => {
    const p = h.policy;
    const policy = `${p.max_in_flight} in flight, ${p.min_delay_ms} ms apart` +
      (p.obey_robots ? "" : ", robots.txt ignored") + (h.override ? " (override)" : "");
    const r = h.robots || {};
    const robots = (r.status || "unknown") +
      (r.crawl_delay_secs ? `, crawl-delay ${r.crawl_delay_secs} s` : "") +
      (r.fetched_at ? ", " + ago(r.fetched_at) : "");
    return el("tr", { class: "host", host: h.host },
      el("td", {}, h.host), el("td", {}, h.owner ?? ""), el("td", {}, policy), el("td", {}, robots),
      el("td", {}, h.backoff_until ? new Date(h.backoff_until).toLocaleTimeString() : ""),
      el("td", { class: "in-flight" }, h.in_flight), el("td", {}, h.waiting ?? 0),
      el("td", { class: "requests" }, h.requests));
  });
  $("hosts").tBodies[0].replaceChildren(...rows);
}

async function refreshHosts() {
  try {
    renderHosts(await (await api("/api/v1/hosts")).json());
  } catch (e) {
    // The hosts table keeps its last rows; the state refresh reports failures.
  }
}

function render(state) {
  current = state;
  $("login").hidden = true;
  $("main").hidden = false;
  $("node-name").textContent = state.self;
  $("updated").textContent = "updated " + new Date(state.generated_at).toLocaleTimeString();
  renderMembers(state);
  renderTrees(state);
  renderSources(state);
  renderSourceFiles(state);
  renderCollections(state);
  // charts.js: throughput charts and webhooks.
  if (typeof renderCharts === "function") renderCharts(state);
  if (typeof renderWebhooks === "function") renderWebhooks();
}

async function refresh() {
  lastRefresh = Date.now();
  try {
    const state = await (await api("/debug/state")).json();
    render(state);
    refreshHosts();
    if (!streaming) streamEvents();
  } catch (e) {
    if (e instanceof Unauthorized) showLogin(token() ? "That token was refused." : "");
    else $("updated").textContent = "refresh failed: " + e.message;
  }
}

function scheduleRefresh() {
  if (refreshTimer) return;
  const wait = Math.max(REFRESH_DEBOUNCE_MS, lastRefresh + MIN_REFRESH_INTERVAL_MS - Date.now());
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, wait);
}

function logEvent(text) {
  const list = $("events");
  list.prepend(el("li", {}, text));
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// Reads the server-sent event stream through fetch, so the bearer token goes in a header.
async function streamEvents() {
  streaming = true;
  try {
    const response = await api("/debug/events");
    $("live").textContent = "live";
    $("live").className = "badge on";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (!data) continue;
        try {
          const ev = JSON.parse(data);
          if (ev.kind) logEvent(new Date(ev.at).toLocaleTimeString() + " " + ev.node + " " + ev.kind + " " +
            (ev.source || ev.collection || "") + (ev.error ? ": " + ev.error : ""));
        } catch (_) { /* a frame we do not know */ }
        scheduleRefresh();
      }
    }
  } catch (e) {
    if (e instanceof Unauthorized) { streaming = false; showLogin(); return; }
  }
  $("live").textContent = "reconnecting";
  $("live").className = "badge off";
  setTimeout(streamEvents, 2000);
}

async function showItems(name) {
  try {
    const page = await (await api("/api/v1/collections/" + encodeURIComponent(name) + "/items?limit=10")).json();
    $("preview").hidden = false;
    $("preview-collection").textContent = name;
    $("preview-rows").replaceChildren(...page.items.map((i) => el("tr", { item: i.key },
      el("td", {}, i.key), el("td", {}, i.version), el("td", {}, i.source), el("td", {}, ago(i.last_seen)),
      el("td", { class: "data" }, JSON.stringify(i.data)))));
  } catch (e) {
    if (e instanceof Unauthorized) showLogin();
  }
}

async function showHistory(id) {
  try {
    const runs = (await (await api("/api/v1/sources/" + encodeURIComponent(id) + "/runs?limit=20")).json()).runs;
    $("history").hidden = false;
    $("history-source").textContent = id;
    $("history-rows").replaceChildren(...runs.map((r) => el("tr", {},
      el("td", {}, new Date(r.started_at).toLocaleString()), el("td", {}, r.duration_ms + " ms"),
      el("td", {}, r.pages), el("td", {}, r.items), el("td", {}, r.inserted), el("td", {}, r.changed),
      el("td", { class: "error" }, r.error || ""))));
    $("history").scrollIntoView();
  } catch (e) {
    if (e instanceof Unauthorized) showLogin();
  }
}

// ---------------------------------------------------------------- source editor
// A spec pasted or loaded from a source ("edit"), previewed through
// POST /api/v1/preview and saved with POST /api/v1/sources (new) or
// PUT /api/v1/sources/{id} (the source it was loaded from). Everything the
// server sends back is shown as text.

let editorOrigin = null;

async function send(method, path, body) {
  const response = await fetch(path, {
    method, cache: "no-store",
    headers: Object.assign({ "Content-Type": "application/json" }, headers()),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) throw new Unauthorized();
  let json = null;
  try { json = await response.json(); } catch (_) { /* no body */ }
  return { status: response.status, json };
}

function editorSpec() {
  $("editor-error").textContent = "";
  $("editor-error").dataset.field = "";
  try {
    return JSON.parse($("editor-spec").value);
  } catch (e) {
    showEditorError({ field: "", message: "not valid JSON: " + e.message });
    return null;
  }
}

function showEditorError(error) {
  const field = error.field || "";
  $("editor-error").dataset.field = field;
  $("editor-error").textContent = (field ? field + ": " : "") + (error.message || "refused");
}

function cellText(v) {
  if (v === null || v === undefined) return "";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

function renderPreview(result) {
  $("editor-warnings").replaceChildren(...result.warnings.map((w) =>
    el("li", { field: w.field }, w.field + ": " + w.message)));
  $("editor-result").replaceChildren(...result.pages.map((page, n) => {
    const fields = [];
    for (const item of page.items) for (const k of Object.keys(item.data)) if (!fields.includes(k)) fields.push(k);
    const head = el("p", {},
      "page " + (n + 1) + ": " + page.url + " (" + (page.status ?? "no answer") + ", " + page.elapsed_ms + " ms, " +
      page.items.length + " items)" + (page.next_page ? ", next: " + page.next_page : ""));
    const parts = [head];
    if (page.error) parts.push(el("p", { class: "error" }, (page.error.code ? page.error.code + ": " : "") + page.error.message));
    parts.push(el("table", { class: "preview-items" },
      el("thead", {}, el("tr", {}, ...fields.map((f) => el("th", {}, f)))),
      el("tbody", {}, ...page.items.map((item) => el("tr", { item: item.key },
        ...fields.map((f) => el("td", { field: f }, cellText(item.data[f]))))))));
    return el("div", { class: "preview-page", page: n + 1 }, ...parts);
  }));
}

async function previewSpec() {
  const spec = editorSpec();
  if (!spec) return;
  $("editor-status").textContent = "previewing…";
  try {
    const { status, json } = await send("POST", "/api/v1/preview?pages=" + $("editor-pages").value, spec);
    $("editor-status").textContent = status === 200 ? "previewed (nothing stored)" : "preview refused (" + status + ")";
    if (status === 200) renderPreview(json);
    else showEditorError((json && json.error) || { message: "answered " + status });
  } catch (e) {
    if (e instanceof Unauthorized) showLogin();
    else showEditorError({ message: e.message });
  }
}

async function saveSpec() {
  const spec = editorSpec();
  if (!spec) return;
  const replacing = editorOrigin !== null && spec.id === editorOrigin;
  const path = replacing ? "/api/v1/sources/" + encodeURIComponent(editorOrigin) : "/api/v1/sources";
  try {
    const { status, json } = await send(replacing ? "PUT" : "POST", path, spec);
    if (status === 200 || status === 201) {
      editorOrigin = json.id;
      $("editor-origin").textContent = "(" + json.id + ")";
      $("editor-status").textContent = (status === 201 ? "created " : "saved ") + json.id;
      scheduleRefresh();
    } else {
      $("editor-status").textContent = "not saved (" + status + ")";
      showEditorError((json && json.error) || { message: "answered " + status });
    }
  } catch (e) {
    if (e instanceof Unauthorized) showLogin();
    else showEditorError({ message: e.message });
  }
}

async function editSource(id) {
  try {
    const source = await (await api("/api/v1/sources/" + encodeURIComponent(id))).json();
    for (const k of ["status", "version", "created_at", "updated_at", "managed_by"]) delete source[k];
    $("editor-spec").value = JSON.stringify(source, null, 2);
    editorOrigin = id;
    $("editor-origin").textContent = "(" + id + ")";
    $("editor-status").textContent = "";
    $("editor-error").textContent = "";
    $("editor").scrollIntoView();
  } catch (e) {
    if (e instanceof Unauthorized) showLogin();
  }
}

function newSpec() {
  editorOrigin = null;
  $("editor-origin").textContent = "";
  $("editor-spec").value = "";
  for (const id of ["editor-status", "editor-error"]) $(id).textContent = "";
  $("editor-warnings").replaceChildren();
  $("editor-result").replaceChildren();
}

document.addEventListener("DOMContentLoaded", () => {
  $("editor-preview").addEventListener("click", previewSpec);
  $("editor-save").addEventListener("click", saveSpec);
  $("editor-new").addEventListener("click", newSpec);
});

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    refresh();
  });
  for (const id of ["search", "filter-state", "filter-node"]) {
    $(id).addEventListener("input", () => current && renderSources(current));
  }
  refresh();
  setInterval(refresh, POLL_MS);
});
