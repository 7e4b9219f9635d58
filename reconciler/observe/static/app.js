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

function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("events");
  es.addEventListener("open", () => {
    conn.textContent = "live";
    conn.className = "conn on";
  });
  es.addEventListener("status", (ev) => render(JSON.parse(ev.data)));
  es.addEventListener("error", () => {
    conn.textContent = "reconnecting…";
    conn.className = "conn off";
  });
}

connect();
