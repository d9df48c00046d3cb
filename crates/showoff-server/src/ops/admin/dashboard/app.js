// The operator dashboard: reads /dashboard/data every 2 s (the browser sends the admin
// credentials it was asked for) and redraws.
"use strict";

const $ = (id) => document.getElementById(id);

function cell(content, cls) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content); else td.textContent = content ?? "";
  if (cls) td.className = cls;
  return td;
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1048576) return `${(bytes / 1024).toFixed(1)} KB`;
  if (bytes < 1073741824) return `${(bytes / 1048576).toFixed(1)} MB`;
  return `${(bytes / 1073741824).toFixed(2)} GB`;
}

function duration(secs) {
  if (secs < 60) return `${secs} s`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min`;
  return `${Math.floor(secs / 3600)} h ${Math.floor((secs % 3600) / 60)} min`;
}

function percent(share) {
  return `${(share * 100).toFixed(share > 0 && share < 0.01 ? 2 : 1)} %`;
}

function spark(series, errors, buckets) {
  // Padded on the left to the whole window, so a young tunnel's bars stand at the right.
  const pad = Math.max(0, buckets - series.length);
  series = Array(pad).fill(0).concat(series);
  errors = Array(pad).fill(0).concat(errors);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = 150, height = 24, max = Math.max(1, ...series);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.classList.add("spark");
  const step = width / Math.max(1, series.length);
  series.forEach((n, i) => {
    const bar = document.createElementNS(ns, "rect");
    const h = Math.round((n / max) * (height - 2));
    bar.setAttribute("x", i * step);
    bar.setAttribute("y", height - h);
    bar.setAttribute("width", Math.max(1, step - 1));
    bar.setAttribute("height", h);
    bar.setAttribute("fill", errors[i] > 0 ? "#c62828" : "#3257d6");
    svg.append(bar);
  });
  return svg;
}

function rows(id, items, build) {
  $(id).querySelector("tbody").replaceChildren(...items.map(build));
  $(`no-${id}`).hidden = items.length > 0;
  $(id).hidden = items.length === 0;
}

let buckets = 30;

function tunnelRow(t) {
  const tr = document.createElement("tr");
  tr.dataset.name = t.name;
  const r = t.recent;
  const ms = (v) => (v === null || v === undefined ? "–" : `${v} ms`);
  tr.append(cell(t.name), cell(t.kind), cell(t.public_url), cell(t.principal),
    cell(r ? r.rate_1m.toFixed(2) : "0.00", "num rate"),
    cell(r ? percent(r.error_rate_1m) : "–", `num${r && r.error_rate_1m > 0 ? " bad" : ""}`),
    cell(ms(r && r.p50_ms), "num"), cell(ms(r && r.p99_ms), "num"),
    cell(r ? size(r.bytes_in_5m) : "–", "num"), cell(r ? size(r.bytes_out_5m) : "–", "num"),
    cell(r ? spark(r.series, r.error_series, buckets) : ""));
  return tr;
}

function sessionRow(s) {
  const tr = document.createElement("tr");
  tr.append(cell(s.principal), cell(s.transport), cell(s.peer), cell(duration(s.connected_secs)),
    cell(s.tunnels.join(", ")), cell(s.id.slice(0, 12)));
  return tr;
}

function refusedRow([code, count]) {
  const tr = document.createElement("tr");
  tr.append(cell(code), cell(String(count), "num"));
  return tr;
}

async function refresh() {
  try {
    const response = await fetch("/dashboard/data", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error(`${response.status}`);
    const d = await response.json();
    buckets = d.buckets;
    $("version").textContent = d.version ? `version ${d.version}` : "";
    $("state").textContent = d.draining ? "draining" : "serving";
    $("t-sessions").textContent = d.totals.sessions;
    $("t-tunnels").textContent = d.totals.tunnels;
    $("t-rate").textContent = d.totals.rate_1m.toFixed(2);
    $("t-errors").textContent = percent(d.totals.error_rate_1m);
    $("t-bytes").textContent = `${size(d.totals.bytes_in_5m)} / ${size(d.totals.bytes_out_5m)}`;
    rows("tunnels", d.tunnels, tunnelRow);
    rows("sessions", d.sessions, sessionRow);
    rows("refused", Object.entries(d.refused), refusedRow);
    $("live").classList.add("on");
  } catch (_) {
    $("live").classList.remove("on");
  }
}

refresh();
setInterval(refresh, 2000);
