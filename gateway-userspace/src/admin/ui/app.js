// The live status page: polls /status once a second and renders it, keeping the DOM it
// built (a row per backend) and changing only the text that changed, so a thousand
// backends per service stay cheap. Rates come from counter deltas between two polls.
"use strict";

const gatewayUi = (() => {
  const TOKEN_KEY = "gateway-token";
  const POLL_MS = 1000;
  // Counting conntrack entries walks the whole map in the agent: one poll in this many
  // asks for it, the others leave it out (and the last count is shown with its age).
  const CONNTRACK_EVERY = 30;
  // Services with more backends than this start collapsed.
  const COLLAPSE_OVER = 50;

  // ---- pure helpers (also called by the browser test) ----

  // Per-second rate of a counter between two samples; null when it cannot be known: no
  // earlier sample, no time between them, or a counter that went backwards (the agent
  // restarted or the maps were reset).
  function rate(now, before, seconds) {
    if (typeof now !== "number" || typeof before !== "number") return null;
    if (!(seconds > 0) || now < before) return null;
    return (now - before) / seconds;
  }

  // A rate for display: "-" when unknown.
  function fmtRate(r, unit) {
    if (r === null || r === undefined) return "-";
    const u = unit || "";
    if (r >= 1e9) return (r / 1e9).toFixed(2) + " G" + u;
    if (r >= 1e6) return (r / 1e6).toFixed(2) + " M" + u;
    if (r >= 1e3) return (r / 1e3).toFixed(1) + " k" + u;
    return r.toFixed(r < 10 && r % 1 !== 0 ? 1 : 0) + (u ? " " + u : "");
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "-";
    if (s < 60) return Math.floor(s) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
  }

  // The row class of a backend: its admin state first, then its health and where the
  // last probe points.
  function rowState(b) {
    if (b.state === "maint") return "maint";
    if (b.state === "drain") return "drain";
    if (b.state === "backup" || b.state === "standby") return "backup";
    const probe = b.last_probe;
    if (b.health_up) return probe && !probe.ok ? "going-down" : "up";
    return probe && probe.ok ? "going-up" : "down";
  }

  // ---- state ----

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let prev = null; // { at: seconds, snap }
  let polls = 0;
  let conntrack = null; // { entries, at: seconds }
  const services = new Map(); // name -> { el, head: {...}, tbody, rows: Map(addr -> row) }
  const collapsed = new Set();
  const seenServices = new Set();

  const $ = (id) => document.getElementById(id);

  function headers(json) {
    const h = {};
    if (token) h["Authorization"] = "Bearer " + token;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  function setText(el, text) {
    const t = String(text);
    if (el.textContent !== t) el.textContent = t;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function showMessage(text, error) {
    const m = $("message");
    m.hidden = !text;
    m.className = "message" + (error ? " error" : "");
    setText(m, text || "");
  }

  function showBanner(text) {
    const b = $("banner");
    b.hidden = !text;
    setText(b, text || "");
    document.body.classList.toggle("stale", !!text);
  }

  // ---- rendering ----

  function counterMap(snap) {
    const m = new Map();
    for (const c of snap.dataplane.counters) m.set(c.name, c.value);
    return m;
  }

  function renderDataplane(snap, dt) {
    const d = snap.dataplane;
    const items = [
      ["interface", d.interface],
      ["XDP", d.xdp_mode || "not attached"],
      ["program", d.program_id === undefined ? "-" : d.program_id],
      ["uptime", fmtSeconds(snap.uptime_seconds)],
      ["conntrack", conntrack === null ? d.conntrack_capacity + " entries"
        : conntrack.entries + " / " + d.conntrack_capacity + " (" +
          (100 * conntrack.entries / Math.max(1, d.conntrack_capacity)).toFixed(1) + "%, " +
          fmtSeconds(performance.now() / 1000 - conntrack.at) + " ago)"],
      ["rebuilds", snap.table_rebuilds],
    ];
    const dl = $("dataplane");
    if (dl.children.length !== items.length * 2) {
      dl.textContent = "";
      for (const [k] of items) {
        dl.appendChild(el("dt", null, k));
        dl.appendChild(el("dd"));
      }
    }
    items.forEach(([, v], i) => setText(dl.children[2 * i + 1], v));

    const before = prev ? counterMap(prev.snap) : new Map();
    const tbody = $("verdicts").tBodies[0];
    const rows = d.counters.filter((c) => c.value > 0 || before.get(c.name) > 0);
    while (tbody.rows.length > rows.length) tbody.deleteRow(-1);
    rows.forEach((c, i) => {
      const tr = tbody.rows[i] || tbody.insertRow();
      if (tr.cells.length === 0) {
        tr.appendChild(el("td"));
        tr.appendChild(el("td", "num"));
        tr.appendChild(el("td", "num"));
      }
      tr.dataset.counter = c.name;
      setText(tr.cells[0], c.name);
      setText(tr.cells[1], fmtRate(rate(c.value, before.get(c.name), dt)));
      setText(tr.cells[2], c.value);
    });
  }

  const BACKEND_COLUMNS = ["backend", "state", "health", "since change", "weight",
    "share", "new flows/s", "bytes/s", "actions"];

  function makeService(s) {
    const box = el("div", "service");
    box.dataset.service = s.name;
    const head = el("div", "head");
    const parts = {};
    for (const k of ["toggle", "name", "endpoint", "mode", "table", "flows", "pps", "bps",
      "bgp", "limits"]) {
      parts[k] = el("span", k);
      head.appendChild(parts[k]);
    }
    head.dataset.action = "toggle";
    box.appendChild(head);
    const table = el("table");
    const tr = table.createTHead().insertRow();
    for (const c of BACKEND_COLUMNS) tr.appendChild(el("th", /\/s|share|weight/.test(c) ? "num" : null, c));
    const tbody = table.createTBody();
    box.appendChild(table);
    $("services").appendChild(box);
    if (!seenServices.has(s.name)) {
      seenServices.add(s.name);
      if (s.backends.length > COLLAPSE_OVER) collapsed.add(s.name);
    }
    return { el: box, parts, tbody, rows: new Map() };
  }

  function makeRow(tbody, addr) {
    const tr = tbody.insertRow();
    tr.dataset.backend = addr;
    for (let i = 0; i < BACKEND_COLUMNS.length - 1; i++) {
      tr.appendChild(el("td", i >= 4 && i <= 7 ? "num" : null));
    }
    const act = el("td", "actions");
    for (const s of ["drain", "ready", "maint"]) {
      const b = el("button", null, s);
      b.type = "button";
      b.dataset.action = "state";
      b.dataset.state = s;
      act.appendChild(b);
    }
    const w = el("input");
    w.type = "number";
    w.min = "1";
    w.max = "10000";
    w.placeholder = "weight";
    act.appendChild(w);
    const set = el("button", null, "set");
    set.type = "button";
    set.dataset.action = "weight";
    act.appendChild(set);
    tr.appendChild(act);
    return tr;
  }

  function renderServices(snap, dt) {
    const before = new Map();
    if (prev) for (const s of prev.snap.services) before.set(s.name, s);
    const announced = new Map();
    if (snap.bgp) for (const v of snap.bgp.vips) announced.set(v.vip, v);
    const names = new Set(snap.services.map((s) => s.name));
    for (const [name, v] of services) {
      if (!names.has(name)) {
        v.el.remove();
        services.delete(name);
      }
    }
    for (const s of snap.services) {
      let v = services.get(s.name);
      if (!v) {
        v = makeService(s);
        services.set(s.name, v);
      }
      const was = before.get(s.name);
      const p = v.parts;
      const vip = s.vip.includes(":") ? "[" + s.vip + "]" : s.vip;
      setText(p.name, s.name);
      setText(p.endpoint, vip + ":" + s.port + "/" + s.protocol);
      setText(p.mode, s.mode + (s.panic ? "  PANIC" : ""));
      setText(p.table, "table " + s.table_size + " (" + s.changed_slots + " changed)");
      setText(p.flows, fmtRate(rate(s.traffic.new_flows, was && was.traffic.new_flows, dt)) + " new flows/s");
      setText(p.pps, fmtRate(rate(s.traffic.packets, was && was.traffic.packets, dt)) + " pkt/s");
      const bps = rate(s.traffic.bytes, was && was.traffic.bytes, dt);
      setText(p.bps, fmtRate(bps === null ? null : bps * 8, "b/s"));
      const a = announced.get(s.vip);
      setText(p.bgp, snap.bgp ? (a && a.announced ? "announced" : "not announced" + (a ? " (" + a.reason + ")" : "")) : "");
      const prot = s.protection || {};
      const mode = s.protection_mode || "off";
      setText(p.limits, mode === "off" ? "" : "limits " + mode + ": dropped " +
        ((prot.dropped_new_flows || 0) + (prot.dropped_packets || 0)) + ", monitored " +
        ((prot.monitored_new_flows || 0) + (prot.monitored_packets || 0)));
      const isCollapsed = collapsed.has(s.name);
      v.el.classList.toggle("collapsed", isCollapsed);
      if (isCollapsed) continue;
      const beforeB = new Map();
      if (was) for (const b of was.backends) beforeB.set(b.address, b);
      const addrs = new Set(s.backends.map((b) => b.address));
      for (const [addr, tr] of v.rows) {
        if (!addrs.has(addr)) {
          tr.remove();
          v.rows.delete(addr);
        }
      }
      for (const b of s.backends) {
        let tr = v.rows.get(b.address);
        if (!tr) {
          tr = makeRow(v.tbody, b.address);
          v.rows.set(b.address, tr);
        }
        const st = rowState(b);
        if (tr.className !== st) tr.className = st;
        const c = tr.cells;
        const wb = beforeB.get(b.address);
        const probe = b.last_probe;
        setText(c[0], b.address + (b.backup ? " (backup)" : ""));
        setText(c[1], b.state + (b.api_override ? " *" : ""));
        setText(c[2], (b.health_up ? "up" : "down") +
          (probe ? " (" + probe.reason + ", " + probe.latency_ms.toFixed(1) + " ms)" : ""));
        setText(c[3], fmtSeconds(b.since_transition_seconds));
        setText(c[4], b.effective_weight === b.weight ? b.weight : b.effective_weight + " / " + b.weight);
        setText(c[5], b.share.toFixed(1) + "%");
        setText(c[6], fmtRate(rate(b.traffic.new_flows, wb && wb.traffic.new_flows, dt)));
        setText(c[7], fmtRate(rate(b.traffic.bytes, wb && wb.traffic.bytes, dt), "B"));
        c[0].title = b.reason;
      }
    }
  }

  function renderTransitions(snap) {
    const lines = [];
    for (const s of snap.services) {
      for (const b of s.backends) {
        for (const t of b.transitions) lines.push({ t, key: s.name + " " + b.address, age: b.since_transition_seconds });
      }
    }
    // Most recent backends first; each backend's own lines oldest first.
    lines.sort((x, y) => (x.age ?? 1e12) - (y.age ?? 1e12));
    const ol = $("transitions");
    const shown = lines.slice(0, 40).map((l) => l.t);
    if (ol.children.length !== shown.length) {
      ol.textContent = "";
      for (let i = 0; i < shown.length; i++) ol.appendChild(el("li"));
    }
    shown.forEach((t, i) => setText(ol.children[i], t));
  }

  function render(snap) {
    const now = performance.now() / 1000;
    if (typeof snap.dataplane.conntrack_entries === "number") {
      conntrack = { entries: snap.dataplane.conntrack_entries, at: now };
    }
    const dt = prev ? now - prev.at : 0;
    renderDataplane(snap, dt);
    renderServices(snap, dt);
    renderTransitions(snap);
    const up = snap.services.reduce((n, s) => n + s.backends.filter((b) => rowState(b) === "up").length, 0);
    const all = snap.services.reduce((n, s) => n + s.backends.length, 0);
    setText($("summary"), snap.services.length + " services, " + up + " of " + all + " backends up");
    prev = { at: now, snap };
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  }

  // ---- polling and actions ----

  async function poll() {
    try {
      const count = polls++ % CONNTRACK_EVERY === 0;
      const r = await fetch(count ? "/status" : "/status?conntrack=0", {
        headers: headers(false),
        cache: "no-store",
      });
      if (r.status === 401) {
        showBanner("the API needs a token to read: enter it above");
      } else if (!r.ok) {
        showBanner("/status answered " + r.status + ": " + (await errorOf(r)));
      } else {
        render(await r.json());
        showBanner("");
      }
    } catch (e) {
      showBanner("/status is unreachable (" + e.message + "); the page shows the last answer");
    }
    setTimeout(poll, POLL_MS);
  }

  async function errorOf(r) {
    try {
      const j = await r.json();
      return j.error || JSON.stringify(j);
    } catch (_) {
      return r.statusText;
    }
  }

  async function post(path, body) {
    try {
      const r = await fetch(path, {
        method: "POST",
        headers: headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
      if (r.ok) {
        showMessage(path + ": done", false);
      } else {
        showMessage(path + " answered " + r.status + ": " + (await errorOf(r)), true);
      }
      return r.status;
    } catch (e) {
      showMessage(path + " failed: " + e.message, true);
      return 0;
    }
  }

  function backendPath(tr) {
    const service = tr.closest(".service").dataset.service;
    return "/backends/" + encodeURIComponent(service) + "/" + encodeURIComponent(tr.dataset.backend);
  }

  function setState(service, addr, state) {
    return post("/backends/" + encodeURIComponent(service) + "/" + encodeURIComponent(addr) + "/state", { state });
  }

  function onClick(ev) {
    const t = ev.target.closest("[data-action]");
    if (!t) return;
    const action = t.dataset.action;
    if (action === "toggle") {
      const name = t.closest(".service").dataset.service;
      if (collapsed.has(name)) collapsed.delete(name);
      else collapsed.add(name);
      t.closest(".service").classList.toggle("collapsed", collapsed.has(name));
      if (prev) renderServices(prev.snap, 0);
      return;
    }
    const tr = t.closest("tr");
    if (action === "state") {
      post(backendPath(tr) + "/state", { state: t.dataset.state });
    } else if (action === "weight") {
      const w = Number(tr.querySelector("input").value);
      if (!Number.isInteger(w) || w < 1 || w > 10000) {
        showMessage("a weight is a whole number from 1 to 10000", true);
        return;
      }
      post(backendPath(tr) + "/weight", { weight: w });
    }
  }

  function start() {
    $("token").value = token;
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      token = $("token").value.trim();
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
      showMessage(token ? "token kept for this tab" : "token cleared", false);
    });
    $("services").addEventListener("click", onClick);
    $("reload").addEventListener("click", () => post("/reload"));
    poll();
  }

  document.addEventListener("DOMContentLoaded", start);
  return { rate, fmtRate, fmtSeconds, rowState, setState, render };
})();
