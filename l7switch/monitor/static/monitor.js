// l7switch monitor: polls /api/state every second and draws the overview, the locality view
// and the charts (plain SVG, nothing loaded from elsewhere). Text goes in through textContent
// only, never as HTML. Actions POST /api/action with the session's CSRF token.
"use strict";

const CSRF = document.querySelector('meta[name="csrf"]').content;
const ADMIN = document.querySelector('meta[name="role"]').content === "admin";
const REFRESH_MS = 1000;
const CLASSES = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];
let view = "overview";
let last = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}
const fmt = (v, digits = 1) => (v === null || v === undefined) ? "–" : Number(v).toFixed(digits);
const pct = (v) => (v === null || v === undefined) ? "–" : (100 * v).toFixed(1) + "%";
function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
const slug = (s) => s.replace(/[^A-Za-z0-9_-]/g, "_");

function message(text, error) {
  const m = document.getElementById("message");
  m.textContent = text; m.className = "message" + (error ? " error" : "");
  clearTimeout(message.timer); message.timer = setTimeout(() => m.className = "message hidden", 6000);
}

async function act(action, server, weight) {
  const body = {action, server}; if (weight !== undefined) body.weight = weight;
  const r = await fetch("/api/action", {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": CSRF}, body: JSON.stringify(body)});
  const j = await r.json().catch(() => ({error: "HTTP " + r.status}));
  if (r.ok) message(`${action} ${server}: done`); else message(`${action} ${server}: ${j.error}`, true);
  refresh();
}

function actions(target) {
  if (!ADMIN) return "";
  const w = el("input", {type: "text", placeholder: "weight", "aria-label": "weight", id: "w-" + slug(target)});
  return el("span", {class: "actions"},
    el("button", {onclick: () => act("drain", target), id: "drain-" + slug(target)}, "Drain"),
    el("button", {onclick: () => act("disable", target), id: "disable-" + slug(target)}, "Disable"),
    el("button", {onclick: () => act("enable", target), id: "enable-" + slug(target)}, "Enable"),
    w, el("button", {onclick: () => act("weight", target, w.value), id: "setw-" + slug(target)}, "Set"));
}

// The overview keeps its elements from one refresh to the next and only changes their text, so
// a click or a half-typed weight is never lost to a redraw.
const cards = new Map();  // pool -> {card, title, table}
const rows = new Map();  // "pool/server" -> {tr, cells}
const HEADS = ["server", "address", "state", "last check", "weight", "effective", "in flight", "queue",
  "req/s", "p50 ms", "p99 ms", "errors", "retries", "cache hits", "total", ""];

function poolCard(pname) {
  let c = cards.get(pname);
  if (!c) {
    const title = el("small", {});
    const table = el("table", {}, el("tr", {}, ...HEADS.map((h, i) => el("th", {class: i > 0 && i < 4 || i === 15 ? "l" : ""}, h))));
    c = {card: el("div", {class: "card", id: "pool-" + slug(pname)}, el("h2", {}, pname, title), table), title, table};
    cards.set(pname, c);
  }
  return c;
}

function serverRow(key) {
  let r = rows.get(key);
  if (!r) {
    const cells = HEADS.slice(0, 15).map((h, i) => el("td", {class: i > 0 && i < 4 ? "l" : ""}));
    cells[1].classList.add("muted");
    const badge = el("span", {class: "state"});
    cells[2].append(badge);
    const tr = el("tr", {id: "srv-" + slug(key)}, ...cells, el("td", {class: "l"}, actions(key)));
    r = {tr, cells, badge};
    rows.set(key, r);
  }
  return r;
}

function overview(state) {
  const root = document.getElementById("view-overview");
  const stats = state.stats, recent = state.recent || {};
  const seenPools = new Set(), seenRows = new Set(), out = [];
  for (const [pname, pool] of Object.entries(stats.pools || {})) {
    seenPools.add(pname);
    const c = poolCard(pname), pr = recent[pname] || {};
    c.title.textContent = ` ${pool.scheduler}` + (pool.persistence ? `, persistence ${pool.persistence}` : "")
      + ` · ${fmt(pr.rps)} req/s · p99 ${fmt(pr.p99_ms)} ms · errors ${pct(pr.error_rate)} · queued ${pool.queued} · retries ${pool.retries}`;
    const trs = [];
    for (const [sname, s] of Object.entries(pool.servers || {})) {
      const key = pname + "/" + sname, r = recent[key] || {}, ch = s.check, row = serverRow(key);
      seenRows.add(key);
      const check = ch ? `${ch.ok === null ? "–" : ch.ok ? "ok" : "failed"}${ch.ms !== null ? " " + fmt(ch.ms) + " ms" : ""}` : "no check";
      const values = [sname + (s.backup ? " (backup)" : ""), s.address, null, check, s.weight, s.effective_weight,
        s.inflight, s.queued, fmt(r.rps), fmt(r.p50_ms), fmt(r.p99_ms), pct(r.error_rate), pct(r.retry_rate),
        pct(r.hit_ratio), s.traffic ? s.traffic.requests : 0];
      values.forEach((v, i) => { if (v !== null && row.cells[i].textContent !== String(v)) row.cells[i].textContent = v; });
      row.cells[3].title = ch ? ch.detail : "";
      row.badge.textContent = s.state; row.badge.className = "state " + s.state;
      row.tr.dataset.state = s.state;
      trs.push(row.tr);
    }
    trs.forEach((tr, i) => { if (c.table.children[i + 1] !== tr) c.table.insertBefore(tr, c.table.children[i + 1] || null); });
    while (c.table.children.length > trs.length + 1) c.table.lastChild.remove();
    out.push(c.card);
  }
  for (const k of [...cards.keys()]) if (!seenPools.has(k)) cards.delete(k);
  for (const k of [...rows.keys()]) if (!seenRows.has(k)) rows.delete(k);
  let listeners = document.getElementById("listeners");
  if (!listeners) listeners = el("div", {class: "card", id: "listeners"});
  const lrows = Object.entries(stats.listeners || {}).map(([name, t]) => el("tr", {},
    el("td", {}, name), el("td", {}, t.connections), el("td", {}, t.requests),
    ...[2, 3, 4, 5].map((i) => el("td", {}, t.classes[i])), el("td", {}, bytes(t.bytes_in)), el("td", {}, bytes(t.bytes_out))));
  listeners.replaceChildren(el("h2", {}, "Listeners"), el("table", {},
    el("tr", {}, ...["listener", "connections", "requests", "2xx", "3xx", "4xx", "5xx", "bytes in", "bytes out"].map((h) => el("th", {}, h))),
    ...lrows));
  out.push(listeners);
  if (out.length !== root.children.length || out.some((n, i) => root.children[i] !== n)) root.replaceChildren(...out);
}

function bar(shares, colors) {
  const width = 260, height = 14, s = svg("svg", {width, height, role: "img"});
  let x = 0;
  shares.forEach((v, i) => {
    const w = Math.max(0, v * width);
    s.append(svg("rect", {x, y: 0, width: w, height, fill: colors[i % colors.length]})); x += w;
  });
  return s;
}

function locality(state) {
  const root = document.getElementById("view-locality");
  const colors = ["#0969da", "#1a7f37", "#9a6700", "#8250df", "#cf222e", "#57606a", "#bc4c00", "#116329"];
  const out = [el("p", {class: "muted"}, "Locality: how a pool's request keys are spread over its servers (lblc, lblcr and lard remember a server per key) and, where servers say so (X-Cache: HIT/MISS, or Age), how often their caches hit. A well-kept key table gives each server its own keys and a high hit ratio; rr spreads every key everywhere.")];
  for (const [pname, pool] of Object.entries(state.stats.pools || {})) {
    const servers = Object.entries(pool.servers || {});
    const keys = pool.keys || {};
    const totalKeys = Object.values(keys).reduce((a, b) => a + b, 0);
    const totalReq = servers.reduce((a, [, s]) => a + (s.traffic ? s.traffic.requests : 0), 0);
    let hits = 0, misses = 0;
    const rows = servers.map(([sname, s], i) => {
      const t = s.traffic || {requests: 0, hits: 0, misses: 0};
      hits += t.hits; misses += t.misses;
      const k = keys[sname];
      return el("tr", {id: "loc-" + slug(pname + "/" + sname)},
        el("td", {}, el("span", {class: "state", "data-color": i}, "■"), " ", sname),
        el("td", {}, k === undefined ? "–" : k), el("td", {}, totalKeys ? pct((k || 0) / totalKeys) : "–"),
        el("td", {}, t.requests), el("td", {}, totalReq ? pct(t.requests / totalReq) : "–"),
        el("td", {}, t.hits + t.misses ? pct(t.hits / (t.hits + t.misses)) : "–"));
    });
    rows.forEach((r, i) => { r.firstChild.firstChild.style.color = colors[i % colors.length]; });
    const reqShares = servers.map(([, s]) => totalReq ? (s.traffic ? s.traffic.requests : 0) / totalReq : 0);
    const keyShares = servers.map(([n]) => totalKeys ? (keys[n] || 0) / totalKeys : 0);
    out.push(el("div", {class: "card", id: "locality-" + slug(pname)},
      el("h2", {}, pname, el("small", {}, `${pool.scheduler} · ${totalKeys ? totalKeys + " keys remembered" : "no key table"} · cache hit ratio ${hits + misses ? pct(hits / (hits + misses)) : "not reported"}`)),
      el("div", {class: "bars"}, el("div", {class: "muted"}, "requests by server"), bar(reqShares, colors),
        totalKeys ? el("div", {class: "muted"}, "keys by server") : null, totalKeys ? bar(keyShares, colors) : null),
      el("table", {}, el("tr", {}, ...["server", "keys", "share of keys", "requests", "share of requests", "cache hits"].map((h) => el("th", {}, h))), ...rows)));
  }
  root.replaceChildren(...out);
}

function lineChart(title, points, index, unit) {
  const W = 300, H = 90, pad = 4;
  const data = points.map((p) => [p[0], p[index]]).filter((p) => p[1] !== null && p[1] !== undefined);
  const box = el("div", {class: "chart"});
  const s = svg("svg", {width: "100%", height: H, viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img"});
  s.append(svg("rect", {x: 0, y: 0, width: W, height: H, fill: "#fbfcfd"}));
  let label = "no data yet";
  if (data.length > 1) {
    const t1 = data[data.length - 1][0], t0 = t1 - 600;
    const top = Math.max(...data.map((d) => d[1]));
    const max = index === 4 ? 1 : top || 1;  // (a ratio is drawn on 0..1)
    const pts = data.filter((d) => d[0] >= t0).map((d) =>
      `${(pad + (W - 2 * pad) * (d[0] - t0) / 600).toFixed(1)},${(H - pad - (H - 2 * pad) * d[1] / max).toFixed(1)}`);
    s.append(svg("polyline", {points: pts.join(" "), fill: "none", stroke: "#0969da", "stroke-width": 1.5}));
    const now = data[data.length - 1][1];
    label = `now ${index === 4 ? pct(now) : fmt(now)}${index === 4 ? "" : " " + unit} · max ${index === 4 ? pct(top) : fmt(top)}`;
  }
  box.append(el("h3", {}, `${title} (${label})`), s, el("div", {class: "axis muted"}, el("span", {}, "10 min ago"), el("span", {}, "now")));
  return box;
}

async function charts() {
  const r = await fetch("/api/charts", {credentials: "same-origin"});
  if (!r.ok) return;
  const j = await r.json();
  const out = [el("p", {class: "muted"}, "The last 10 minutes, one point a second.")];
  for (const [pname, points] of Object.entries(j.charts)) {
    out.push(el("div", {class: "card"}, el("h2", {}, pname), el("div", {class: "charts"},
      lineChart("requests/s", points, 1, "req/s"), lineChart("5xx/s", points, 2, "/s"),
      lineChart("p99 latency", points, 3, "ms"), lineChart("cache hit ratio", points, 4, ""))));
  }
  document.getElementById("view-charts").replaceChildren(...out);
}

async function refresh() {
  try {
    const r = await fetch("/api/state", {credentials: "same-origin"});
    if (r.status === 401) { location.href = "/login"; return; }
    if (!r.ok) return;
    last = await r.json();
    const st = last.stats || {};
    document.getElementById("info").textContent =
      `version ${st.version || "?"} · up ${fmt(st.uptime_s, 0)} s · ${st.workers || 1} worker(s) · ${st.clients || 0} clients · ${st.config || ""} loaded ${st.loaded_at || ""}`;
    if (st.pools) { overview(last); locality(last); }
    if (view === "charts") await charts();
  } catch (e) { /* the switch restarting: try again next tick */ }
}

document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => {
  view = b.dataset.view;
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === b));
  document.querySelectorAll(".view").forEach((v) => v.classList.toggle("hidden", v.id !== "view-" + view));
  refresh();
}));
async function loop() { await refresh(); setTimeout(loop, REFRESH_MS); }
loop();
