// The live status page of a hidra sender or receiver: polls its REST API once a second and draws what it says.
// No build step and no library: plain DOM calls, and every value from the API is set as text, never as markup.
"use strict";

(function () {
  const PERIOD_MS = 1000;
  const WINDOW_S = 120;          // what the plot shows
  const RATE_SPAN_S = 5;         // the tables' rates: over the last few seconds, so that they do not flicker
  const FILES_SHOWN = 50;
  const MB = 1e6;
  const $ = (id) => document.getElementById(id);

  let token = takeToken();
  let samples = [];              // {t (s), totals: {key: number}, second: number|null}

  // The token comes in the URL fragment (never sent to the server) or through the form, and stays in this tab.
  function takeToken() {
    const found = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (found) {
      sessionStorage.setItem("hidra-token", decodeURIComponent(found[1]));
      forgetFragment();
    }
    return sessionStorage.getItem("hidra-token") || "";
  }

  function forgetFragment() {
    window.history.replaceState(null, "", location.pathname + location.search);
  }

  class Unauthorized extends Error {}

  async function get(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const answer = await fetch(path, { headers: headers, cache: "no-store" });  // relative: works behind a prefix
    if (answer.status === 401) throw new Unauthorized(path);
    if (!answer.ok) throw new Error(path + ": HTTP " + answer.status);
    return answer.json();
  }

  async function tick() {
    try {
      const [status, stats] = await Promise.all([get("status"), get("statistics")]);
      const sender = status.role === "sender";
      const [clients, files] = sender ? await Promise.all([get("clients"), get("files?limit=" + FILES_SHOWN)])
        : [null, null];
      record(status.role, stats, clients);
      render(status, stats, clients, files);
      $("link").textContent = "updated " + new Date().toLocaleTimeString();
      $("link").className = "muted";
    } catch (err) {
      if (err instanceof Unauthorized) {
        askToken();
        return;  // NOTE: polling resumes when a token is given
      }
      setState("unreachable");
      $("link").textContent = "no answer: " + err.message;
      $("link").className = "down";
    }
    setTimeout(tick, PERIOD_MS);
  }

  function askToken() {
    setState("token needed");
    $("link").textContent = token ? "the token was refused" : "this instance needs a token";
    $("token-form").hidden = false;
    $("token-input").focus();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token-input").value.trim();
    sessionStorage.setItem("hidra-token", token);
    $("token-form").hidden = true;
    tick();
  });

  // ---- what the rates and the plot are computed from

  function record(role, stats, clients) {
    const totals = {};
    for (const [name, value] of Object.entries(stats.counters)) totals["counter:" + name] = value;
    let second = null;
    if (role === "sender") {
      second = stats.in_flight + stats.queued + stats.retrying;
      for (const t of clients.targets) {
        totals["client:" + t.id + ":files"] = t.files;
        totals["client:" + t.id + ":bytes"] = t.bytes;
      }
    } else if (stats.durable_latency_s) {
      totals["latency:count"] = stats.durable_latency_s.counts.reduce((a, b) => a + b, 0);
      totals["latency:sum"] = stats.durable_latency_s.sum;
    }
    const now = performance.now() / 1000;
    samples.push({ t: now, totals: totals, second: second });
    samples = samples.filter((h) => h.t >= now - WINDOW_S - 2 * PERIOD_MS / 1000);
  }

  function rate(key) {
    const last = samples[samples.length - 1];
    // NOTE: the oldest poll that knew the key: a client that registered a moment ago has a rate at once
    const first = samples.find((h) => h.t >= last.t - RATE_SPAN_S - 0.5 && key in h.totals) || last;
    if (first === last || !(key in last.totals)) return null;
    return Math.max(0, last.totals[key] - first.totals[key]) / (last.t - first.t);
  }

  // The plotted points: one per poll, from the counters' change since the poll before.
  function points(role) {
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1], b = samples[i];
      const dt = b.t - a.t;
      const bytes = (b.totals["counter:bytes"] - a.totals["counter:bytes"]) / dt / MB;
      let second = b.second;
      if (role !== "sender") {
        const n = b.totals["latency:count"] - a.totals["latency:count"];
        second = n > 0 ? (b.totals["latency:sum"] - a.totals["latency:sum"]) / n * 1000 : null;
      }
      out.push({ t: b.t, rate: Math.max(0, bytes), second: second });
    }
    return out;
  }

  // ---- drawing

  function render(status, stats, clients, files) {
    document.title = "hidra " + status.role + " · " + status.state;
    $("role").textContent = "hidra " + status.role;
    setState(status.state);
    $("about").textContent = "version " + status.version + " · pid " + status.pid + " · up " +
      duration(status.uptime_s) + " · " + location.host;
    $("token-form").hidden = true;
    renderFlows(status, stats, clients);
    renderTargets(status, stats, clients);
    renderCounters(stats.counters);
    renderClients(clients);
    renderFiles(files);
    renderErrors(status.errors);
    plot(status.role);
  }

  function setState(state) {
    $("state").textContent = state;
    $("state").className = "badge " + state.replace(/\W/g, "-");
  }

  function renderFlows(status, stats, clients) {
    const items = [];
    if (status.role === "sender") {
      const src = status.source;
      const from = src.type + (src.root ? " at " + src.root : "");
      for (const m of stats.storage) {
        items.push([from + " → storage " + m.data + " ", [m.up ? "up" : "down", m.up ? "up" : "down"],
          m.receiver ? " (receiver " + m.receiver + ", beacon " + seconds(m.beacon_s_ago) + " ago)" : ""]);
      }
      for (const t of clients.targets) {
        items.push([from + " → analysis client " + t.id + " ",
          [t.connected ? "connected" : "not connected", t.connected ? "up" : "down"], ""]);
      }
      for (const p of stats.pipelines) {
        items.push(["pipeline " + p.index + " → storage member " + p.member + ": ",
          [p.sending ? "sending " + p.sending : "idle", "muted"], ""]);
      }
    } else {
      items.push(["senders to " + status.data + " → " + status.target + " (writers: " + status.writers.join(", ") + ")",
        ["", ""], ""]);
    }
    replaceRows($("flows"), items.map(([before, [word, cls], after]) => {
      const li = document.createElement("li");
      li.append(before, span(word, cls), after);
      return li;
    }));
  }

  function renderTargets(status, stats, clients) {
    const c = stats.counters;
    const rows = [];
    if (status.role === "sender") {
      rows.push(["storage", c.sent, rate("counter:sent"), c.bytes, rate("counter:bytes"),
        stats.in_flight + stats.queued + stats.retrying,
        problems({ failed: c.failed, refused: c.refused, lost: c.lost, unconfirmed: c.unconfirmed })]);
      for (const t of clients.targets) {
        rows.push(["client " + t.id, t.files, rate("client:" + t.id + ":files"), t.bytes,
          rate("client:" + t.id + ":bytes"), t.queued_messages,
          problems({ skipped: t.skipped, abandoned: t.abandoned, "cut off": t.cut_off })]);
      }
    } else {
      rows.push(["target " + status.target, c.stored, rate("counter:stored"), c.bytes, rate("counter:bytes"),
        stats.unfinished + stats.commit_backlog,
        problems({ failed: c.failed, refused: c.refused, malformed: c.malformed, unrouted: c.unrouted })]);
    }
    const classes = ["name", "files", "files-rate", "bytes", "bytes-rate", "waiting", "problems"];
    replaceRows($("targets").tBodies[0], rows.map((values) => {
      const tr = row(values.map((v, i) => i === 2 ? fixed(v, 1) : i === 3 ? bytes(v) : i === 4 ? fixed(v && v / MB, 2)
        : String(v)), classes);
      tr.dataset.target = values[0];
      return tr;
    }));
  }

  function renderCounters(counters) {
    replaceRows($("counters").tBodies[0], Object.entries(counters).map(([name, value]) => {
      const tr = row([name, String(value), fixed(rate("counter:" + name), 1)], ["name", "total", "rate"]);
      tr.dataset.counter = name;
      return tr;
    }));
  }

  function renderClients(clients) {
    $("clients-section").hidden = !clients || (clients.registrations.length === 0 && clients.targets.length === 0);
    if (!clients) return;
    replaceRows($("clients").tBodies[0], clients.registrations.map((r) => row([r.appid, r.kind,
      r.members.join(", "), r.delivery.join(", "), String(r.open_requests), duration(r.age_s) + " ago"])));
  }

  function renderFiles(files) {
    $("files-section").hidden = files === null;
    if (files === null) return;
    const list = files.files;
    $("files-count").textContent = list.length >= FILES_SHOWN ? "(the oldest " + list.length + ")"
      : "(" + list.length + ")";
    $("files-count").dataset.count = String(list.length);
    replaceRows($("files").tBodies[0], list.map((f) => row([f.file_id, f.state, String(f.attempts),
      f.reason || ""], ["file", "state", "attempts", "reason"])));
  }

  function renderErrors(errors) {
    const items = errors.slice().reverse().map((e) => {
      const li = document.createElement("li");
      li.className = e.level;
      li.textContent = e.time + " " + e.level + " " + e.logger + ": " + e.message;
      return li;
    });
    if (items.length === 0) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "none";
      items.push(li);
    }
    replaceRows($("errors"), items);
  }

  function plot(role) {
    const canvas = $("plot");
    const pts = points(role);
    canvas.dataset.samples = String(pts.length);
    $("second-label").textContent = role === "sender" ? "files waiting (queued, in flight, retrying)"
      : "latency to durable, ms (mean per second)";
    const scale = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || canvas.width, h = Math.round(w * 220 / 760);
    if (canvas.width !== Math.round(w * scale)) {
      canvas.width = Math.round(w * scale);
      canvas.height = Math.round(h * scale);
    }
    const g = canvas.getContext("2d");
    g.setTransform(scale, 0, 0, scale, 0, 0);
    g.clearRect(0, 0, w, h);
    const box = { left: 52, right: w - 52, top: 10, bottom: h - 22 };
    const now = pts.length ? pts[pts.length - 1].t : 0;
    const x = (t) => box.right - (now - t) / WINDOW_S * (box.right - box.left);
    const left = niceMax(pts.map((p) => p.rate)), right = niceMax(pts.map((p) => p.second));
    const style = getComputedStyle(document.documentElement);
    g.font = "11px system-ui, sans-serif";
    g.strokeStyle = style.getPropertyValue("--line");
    g.fillStyle = style.getPropertyValue("--muted");
    for (let i = 0; i <= 4; i++) {
      const y = box.bottom - i / 4 * (box.bottom - box.top);
      g.beginPath(); g.moveTo(box.left, y); g.lineTo(box.right, y); g.stroke();
      g.textAlign = "right"; g.fillText(short(left * i / 4), box.left - 6, y + 4);
      g.textAlign = "left"; g.fillText(short(right * i / 4), box.right + 6, y + 4);
    }
    g.textAlign = "center";
    for (let s = 0; s <= WINDOW_S; s += 30) g.fillText(s ? "−" + s + " s" : "now", x(now - s), h - 6);
    line(g, pts, "rate", x, (v) => box.bottom - v / left * (box.bottom - box.top), style.getPropertyValue("--rate"));
    line(g, pts, "second", x, (v) => box.bottom - v / right * (box.bottom - box.top),
      style.getPropertyValue("--second"));
  }

  function line(g, pts, key, x, y, colour) {
    g.strokeStyle = colour;
    g.lineWidth = 2;
    g.beginPath();
    let drawing = false;
    for (const p of pts) {
      if (p[key] === null) { drawing = false; continue; }  // NOTE: a gap: no file became durable that second
      if (drawing) g.lineTo(x(p.t), y(p[key])); else g.moveTo(x(p.t), y(p[key]));
      drawing = true;
    }
    g.stroke();
    g.lineWidth = 1;
  }

  // ---- small helpers

  function row(values, classes) {
    const tr = document.createElement("tr");
    values.forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = v;
      if (classes) td.className = classes[i];
      tr.append(td);
    });
    return tr;
  }

  function replaceRows(parent, children) {
    parent.replaceChildren(...children);
  }

  function span(text, cls) {
    const s = document.createElement("span");
    s.textContent = text;
    s.className = cls;
    return s;
  }

  function problems(counts) {
    const parts = Object.entries(counts).filter(([, n]) => n).map(([name, n]) => n + " " + name);
    return parts.length ? parts.join(", ") : "0";
  }

  function niceMax(values) {
    const top = Math.max(0, ...values.filter((v) => v !== null));
    if (top <= 0) return 1;
    const step = Math.pow(10, Math.floor(Math.log10(top)));
    for (const m of [1, 2, 4, 6, 8, 10]) if (top <= m * step) return m * step;  // NOTE: quarters read well
    return 10 * step;
  }

  function fixed(v, digits) { return v === null || v === undefined ? "–" : v.toFixed(digits); }
  function short(v) { return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : String(+v.toFixed(2)); }
  function seconds(v) { return v === null ? "never" : v.toFixed(1) + " s"; }

  function bytes(n) {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function duration(s) {
    if (s < 60) return Math.round(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
  }

  $("window").textContent = String(WINDOW_S);
  tick();
})();
