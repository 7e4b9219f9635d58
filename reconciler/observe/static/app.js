// Mycelium Mesh dashboard: renders the MeshStatus JSON pushed by /ui/events (SSE).
// No framework and no build step; every value goes through textContent (no HTML injection).
"use strict";

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null || text === "" ? "–" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function badge(tr, text, cls) {
  const td = cell(tr, "", cls);
  const span = document.createElement("span");
  span.className = "badge " + String(text).toLowerCase();
  span.textContent = text;
  td.replaceChildren(span);
}

function fill(id, rows, build) {
  const body = document.querySelector("#" + id + " tbody");
  const out = rows.map((row) => {
    const tr = document.createElement("tr");
    build(tr, row);
    return tr;
  });
  if (out.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(tr, "none", "empty");
    td.colSpan = document.querySelectorAll("#" + id + " thead th").length;
    out.push(tr);
  }
  body.replaceChildren(...out);
}

function short(rev) {
  // a Git commit, or the content hash of a plain directory ("sha256:...")
  if (rev && rev.startsWith("sha256:")) return rev.slice(0, 19);
  return rev && rev.length === 40 ? rev.slice(0, 12) : rev;
}

function mem(mb) {
  return mb >= 1024 ? (mb / 1024).toFixed(1) + " GiB" : mb + " MiB";
}

function render(st) {
  document.getElementById("revision").textContent = short(st.revision) || "–";
  document.getElementById("source").textContent = st.source ? "from " + st.source : "";
  const s = st.summary;
  const cards = [
    ["apps", s.apps],
    ["synced", s.synced + "/" + s.apps],
    ["healthy", s.healthy + "/" + s.apps],
    ["instances", s.instances],
    ["nodes alive", s.nodes.alive],
    ["suspect", s.nodes.suspect],
  ].map(([label, value]) => {
    const div = document.createElement("div");
    div.className = "card";
    div.dataset.card = label;
    const b = document.createElement("b");
    b.textContent = value;
    const i = document.createElement("span");
    i.textContent = label;
    div.append(b, i);
    return div;
  });
  document.getElementById("summary").replaceChildren(...cards);
  document.getElementById("problems").replaceChildren(
    ...st.problems.map((p) => {
      const li = document.createElement("li");
      li.textContent = p;
      return li;
    })
  );
  fill("apps", st.apps, (tr, a) => {
    tr.dataset.app = a.name;
    cell(tr, a.name, "name");
    badge(tr, a.sync, "sync");
    badge(tr, a.health, "health");
    cell(tr, a.ready + "/" + a.desired, "ready");
    cell(tr, a.instances, "instances");
    cell(tr, a.rollout && a.rollout !== "idle" ? a.rollout : "idle", "rollout");
    cell(tr, short(a.revision), "revision");
    cell(tr, a.prefix, "prefix");
    cell(tr, a.rps, "rps");
    cell(tr, a.p99_ms, "p99");
    cell(tr, a.reason, "reason");
  });
  fill("nodes", st.nodes, (tr, n) => {
    tr.dataset.node = n.name;
    cell(tr, n.name, "name");
    badge(tr, n.state + (n.draining ? " draining" : ""), "state");
    cell(tr, n.roles.join(", "), "roles");
    cell(tr, n.cpu_milli ? n.free_cpu_milli + "m / " + n.cpu_milli + "m" : "", "cpu");
    cell(tr, n.memory_mb ? mem(n.free_memory_mb) + " / " + mem(n.memory_mb) : "", "mem");
    cell(tr, n.instances, "instances");
  });
  fill("instances", st.instances, (tr, i) => {
    tr.dataset.instance = i.instance_id;
    cell(tr, i.instance_id, "id");
    cell(tr, i.app, "app");
    cell(tr, i.version, "version");
    cell(tr, i.node, "node");
    badge(tr, i.phase, "phase");
    cell(tr, i.restarts, "restarts");
    cell(tr, i.endpoint, "endpoint");
    cell(tr, i.message, "message");
  });
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
}

// ---- charts: each app's last minutes (events?charts=1: "timeline", then "sample"s) -------
// A sample is [t, arrivals/s, answers/s, p99 ms | null, ready, desired]; t in wall seconds.

const SVG = "http://www.w3.org/2000/svg";
const timeline = { window_s: 900, now: 0, apps: new Map() };

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

function onTimeline(doc) {
  timeline.window_s = doc.window_s;
  timeline.now = doc.now;
  timeline.apps = new Map(
    Object.entries(doc.apps).map(([name, a]) => [
      name,
      { budget_ms: a.budget_ms, autoscale: a.autoscale, samples: a.samples, events: a.events },
    ])
  );
  drawCharts();
}

function onSample(doc) {
  timeline.now = doc.t;
  const next = new Map();
  for (const [name, a] of Object.entries(doc.apps)) {
    const cur = timeline.apps.get(name) || { samples: [], events: [] };
    cur.budget_ms = a.budget_ms;
    cur.autoscale = a.autoscale;
    cur.samples.push([doc.t, ...a.s]);
    next.set(name, cur);
  }
  for (const ev of doc.events) {
    const cur = next.get(ev.app);
    if (cur) cur.events.push(ev);
  }
  const horizon = doc.t - timeline.window_s;
  for (const cur of next.values()) {
    while (cur.samples.length && cur.samples[0][0] < horizon) cur.samples.shift();
    while (cur.events.length && cur.events[0].at < horizon) cur.events.shift();
  }
  timeline.apps = next; // apps not in the sample left the chart
  drawCharts();
}

function rate(v) {
  return v >= 10 ? Math.round(v).toString() : (Math.round(v * 10) / 10).toString();
}

function nice(v) {
  // a round axis maximum at or above v
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function ago(s) {
  if (s === 0) return "now";
  return s % 60 === 0 ? "−" + s / 60 + "m" : "−" + s + "s";
}

const W = 960, L = 62, R = 14, PW = W - L - R;
const PANELS = { rps: [24, 66], p99: [106, 66], inst: [188, 48] };
const AXIS_Y = 252, H = 268;

function panel(g, key, label, max, fmt) {
  const [y, h] = PANELS[key];
  svg("rect", { x: L, y: y, width: PW, height: h, class: "panel" }, g);
  for (const f of [0, 0.5, 1]) {
    const yy = y + h - f * h;
    svg("line", { x1: L, x2: L + PW, y1: yy, y2: yy, class: "grid" }, g);
    const t = svg("text", { x: L - 6, y: yy + 4, class: "tick", "text-anchor": "end" }, g);
    t.textContent = fmt(f * max);
  }
  const t = svg("text", { x: L + 6, y: y + 13, class: "plabel" }, g);
  t.textContent = label;
  return (v) => y + h - (Math.min(Math.max(v, 0), max) / max) * h;
}

function linePath(samples, x, y, col) {
  // a polyline with gaps where the value is null
  let d = "", pen = false;
  for (const s of samples) {
    const v = s[col];
    if (v === null || v === undefined) {
      pen = false;
      continue;
    }
    d += (pen ? "L" : "M") + x(s[0]).toFixed(1) + " " + y(v).toFixed(1);
    pen = true;
  }
  return d;
}

function stepPath(samples, x, y, col) {
  let d = "";
  samples.forEach((s, i) => {
    const px = x(s[0]).toFixed(1), py = y(s[col]).toFixed(1);
    d += i === 0 ? "M" + px + " " + py : "H" + px + "V" + py;
  });
  if (samples.length) d += "H" + x(timeline.now).toFixed(1);
  return d;
}

function drawChart(fig, name, a) {
  const now = timeline.now;
  const first = a.samples.length ? a.samples[0][0] : now;
  const span = Math.min(timeline.window_s, Math.max(60, now - first));
  const t0 = now - span;
  const x = (t) => L + ((t - t0) / span) * PW;
  const last = a.samples[a.samples.length - 1];
  const budget = a.budget_ms;

  // the line a person reads first: the figures now
  const cap = document.createElement("figcaption");
  const title = document.createElement("b");
  title.className = "app";
  title.textContent = name;
  const bits = [title];
  const add = (cls, text) => {
    const el = document.createElement("span");
    el.className = cls;
    el.textContent = text;
    bits.push(el);
    return el;
  };
  if (last) {
    add("now-rps", rate(last[1]) + " req/s");
    const p = add("now-p99", last[3] === null ? "p99 –" : "p99 " + rate(last[3]) + " ms");
    if (budget) {
      p.classList.add(last[3] !== null && last[3] > budget ? "over" : "within");
      add("budget", "budget " + budget + " ms");
    }
    add("now-instances", last[4] + (last[4] === 1 ? " instance" : " instances") +
      (last[5] !== last[4] ? " (→ " + last[5] + ")" : ""));
  }
  add("span", "last " + (span >= 120 ? Math.round(span / 60) + " min" : Math.round(span) + " s"));
  cap.replaceChildren(...bits);

  const root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", class: "chart" });
  const label = svg("title", {}, root);
  label.textContent = name + ": requests per second, p99 against the budget, instances";

  const maxRps = nice(Math.max(1, ...a.samples.map((s) => Math.max(s[1], s[2]))));
  const yr = panel(root, "rps", "req/s", maxRps, rate);
  svg("path", { d: linePath(a.samples, x, yr, 2), class: "done" }, root);
  svg("path", { d: linePath(a.samples, x, yr, 1), class: "rps" }, root);

  const p99s = a.samples.map((s) => s[3]).filter((v) => v !== null);
  const maxP99 = Math.max(0, ...p99s);
  const top = budget ? Math.max(budget * 2, Math.min(nice(maxP99), budget * 5)) : nice(maxP99);
  const yp = panel(root, "p99", "p99 ms", top, (v) => Math.round(v).toString());
  if (budget) {
    const [py] = PANELS.p99;
    svg("rect", { x: L, y: py, width: PW, height: yp(budget) - py, class: "over-zone" }, root);
    svg("line", { x1: L, x2: L + PW, y1: yp(budget), y2: yp(budget), class: "budget" }, root);
    const bt = svg("text", { x: L + PW - 4, y: yp(budget) - 4, class: "blabel", "text-anchor": "end" }, root);
    bt.textContent = "budget " + budget + " ms";
  }
  svg("path", { d: linePath(a.samples, x, yp, 3), class: "p99" }, root);
  if (maxP99 > top) {
    // beyond the scale: drawn at its top edge; say how far
    const [py] = PANELS.p99;
    const ct = svg("text", { x: L + PW - 4, y: py + 13, class: "clipped", "text-anchor": "end" }, root);
    ct.textContent = "off scale: up to " + rate(maxP99) + " ms";
  }

  let maxInst = Math.max(1, ...a.samples.map((s) => Math.max(s[4], s[5]))) + 1;
  maxInst += maxInst % 2; // even: the middle tick is a whole number
  const yi = panel(root, "inst", "instances", maxInst, (v) => Math.round(v).toString());
  svg("path", { d: stepPath(a.samples, x, yi, 4), class: "ready" }, root);
  svg("path", { d: stepPath(a.samples, x, yi, 5), class: "desired" }, root);

  // the time axis
  const step = [15, 30, 60, 120, 300].find((s) => span / s <= 6) || 300;
  for (let s = 0; s <= span + 0.001; s += step) {
    const xx = x(now - s);
    svg("line", { x1: xx, x2: xx, y1: PANELS.rps[0], y2: AXIS_Y - 8, class: "vgrid" }, root);
    const t = svg("text", { x: xx, y: AXIS_Y + 8, class: "tick", "text-anchor": "middle" }, root);
    t.textContent = ago(s);
  }

  // events: a line across the panels, a mark on top; the reason on hover and below
  const evs = svg("g", { class: "events" }, root);
  const shown = a.events.filter((e) => e.at >= t0).sort((p, q) => p.at - q.at);
  let free = 0; // labels left to right, each after the one before
  for (const e of shown) {
    const xx = x(e.at);
    const g = svg("g", { class: "ev " + e.kind + " " + (e.direction || ""), "data-kind": e.kind }, evs);
    svg("line", { x1: xx, x2: xx, y1: 14, y2: AXIS_Y - 8 }, g);
    const lx = Math.min(Math.max(xx - 8, free), W - 30);
    const t = svg("text", { x: lx, y: 11, "text-anchor": "start" }, g);
    t.textContent = e.label;
    free = lx + 10 * String(e.label).length + 6;
    const tip = svg("title", {}, g);
    tip.textContent = clock(e.at) + " " + e.text;
  }

  const list = document.createElement("ol");
  list.className = "events";
  for (const e of shown.slice(-4).reverse()) {
    const li = document.createElement("li");
    li.className = e.kind + " " + (e.direction || "");
    const when = document.createElement("time");
    when.textContent = clock(e.at);
    const what = document.createElement("span");
    what.textContent = e.text;
    li.append(when, what);
    list.appendChild(li);
  }

  fig.dataset.samples = String(a.samples.length);
  fig.dataset.events = String(shown.length);
  fig.replaceChildren(cap, root, list);
}

function drawCharts() {
  const box = document.getElementById("charts");
  const names = [...timeline.apps.keys()].sort((p, q) => {
    const a = timeline.apps.get(p), b = timeline.apps.get(q);
    return a.autoscale === b.autoscale ? p.localeCompare(q) : a.autoscale ? -1 : 1;
  });
  const old = new Map([...box.querySelectorAll("figure.chart")].map((f) => [f.dataset.app, f]));
  const figs = names.map((name) => {
    const fig = old.get(name) || document.createElement("figure");
    fig.className = "chart";
    fig.dataset.app = name;
    drawChart(fig, name, timeline.apps.get(name));
    return fig;
  });
  if (figs.length === 0) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "no app with autoscale or requests in the last 15 minutes";
    figs.push(p);
  }
  box.replaceChildren(...figs);
}

function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("events?charts=1"); // statuses, and the charts' samples
  es.addEventListener("open", () => {
    conn.textContent = "live";
    conn.className = "conn on";
  });
  es.addEventListener("status", (ev) => render(JSON.parse(ev.data)));
  es.addEventListener("error", () => {
    conn.textContent = "reconnecting…";
    conn.className = "conn off";
  });
  es.addEventListener("timeline", (ev) => onTimeline(JSON.parse(ev.data)));
  es.addEventListener("sample", (ev) => onSample(JSON.parse(ev.data)));
}

connect();
