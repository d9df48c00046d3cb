// The inspector page: the list follows /api/events live; a click loads /api/requests/{id}.
"use strict";

const $ = (id) => document.getElementById(id);
const entries = new Map(); // id -> summary
const checked = new Set();
let selected = null;
let current = null; // detail of the selected entry

function text(tag, content, cls) {
  const el = document.createElement(tag);
  if (content !== undefined && content !== null) el.textContent = String(content);
  if (cls) el.className = cls;
  return el;
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  if (bytes < 1024 * 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  return `${(bytes / 1024 / 1024 / 1024).toFixed(2)} GB`;
}

function statusText(e) {
  if (e.upgrade) return e.upgrade.open ? "101 open" : "101 closed";
  if (e.status === null || e.status === undefined) return e.error || "—";
  return String(e.status);
}

function statusClass(e) {
  return e.status ? `s${String(e.status)[0]}` : "sx";
}

function matches(e) {
  const method = $("method").value;
  if (method && e.method.toUpperCase() !== method) return false;
  const status = $("status").value;
  if (status === "none" && e.status !== null) return false;
  if (status && status !== "none" && !(e.status && String(e.status)[0] === status[0])) return false;
  const q = $("search").value.trim().toLowerCase();
  if (!q) return true;
  return [e.method, e.path, e.status, e.tunnel, e.remote_addr].some((v) => String(v ?? "").toLowerCase().includes(q));
}

function row(e) {
  const tr = document.createElement("tr");
  tr.dataset.id = e.id;
  if (e.id === selected) tr.classList.add("selected");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.checked = checked.has(e.id);
  box.setAttribute("aria-label", `select ${e.id}`);
  box.addEventListener("click", (ev) => {
    ev.stopPropagation();
    if (box.checked) checked.add(e.id); else checked.delete(e.id);
  });
  const pick = document.createElement("td");
  pick.append(box);
  const path = text("td", e.path, "path");
  path.title = e.path;
  const size_ = e.upgrade ? `${size(e.upgrade.bytes_in)} ↑ ${size(e.upgrade.bytes_out)} ↓` : size(e.response_size);
  tr.append(pick, text("td", e.method), path, text("td", statusText(e), statusClass(e)),
    text("td", `${e.duration_ms} ms`), text("td", size_), text("td", e.remote_addr || ""),
    text("td", new Date(e.started).toLocaleTimeString()));
  if (e.replay_of) path.textContent = `↻ ${e.path}`;
  tr.addEventListener("click", () => select(e.id));
  return tr;
}

function render() {
  const rows = $("rows");
  const shown = [...entries.values()].sort((a, b) => b.id - a.id).filter(matches);
  rows.replaceChildren(...shown.map(row));
  $("empty").classList.toggle("hidden", entries.size > 0);
}

async function json(url, options) {
  const response = await fetch(url, options);
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(body && body.message ? `${body.error}: ${body.message}` : response.statusText);
  return body;
}

async function load() {
  const list = await json("/api/requests");
  entries.clear();
  for (const e of list) entries.set(e.id, e);
  render();
}

function headersTable(headers) {
  const table = text("table", null, "headers");
  for (const [name, value] of headers) {
    const tr = document.createElement("tr");
    tr.append(text("td", name), text("td", value));
    table.append(tr);
  }
  return table;
}

function hexdump(bytes) {
  const lines = [];
  for (let i = 0; i < bytes.length && i < 4096; i += 16) {
    const chunk = bytes.slice(i, i + 16);
    const hex = [...chunk].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = [...chunk].map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${i.toString(16).padStart(8, "0")}  ${hex.padEnd(48)}  ${ascii}`);
  }
  if (bytes.length > 4096) lines.push(`… ${bytes.length - 4096} more bytes (download to see them)`);
  return lines.join("\n");
}

function bodyView(id, side, body) {
  const box = document.createElement("div");
  if (body.size === 0) {
    box.append(text("p", "No body", "meta"));
    return box;
  }
  const type = (body.content_type || "").toLowerCase();
  const url = `/api/requests/${id}/${side}/body`;
  const info = text("p", `${size(body.size)}${body.content_type ? ` · ${body.content_type}` : ""}`, "meta");
  const link = document.createElement("a");
  link.href = `${url}?download=1`;
  link.textContent = " · download";
  info.append(link);
  box.append(info);
  if (body.cut) {
    const why = { body_cap: "past the body cap", memory_budget: "the memory budget was full", stream_closed: "the stream closed first" }[body.cut] || body.cut;
    const spilled = body.spilled ? "; the whole body is on disk (download)" : "";
    box.append(text("p", `Cut after ${size(body.captured)} of ${size(body.size)}: ${why}${spilled}`, "cut"));
  }
  if (type.startsWith("image/") && body.complete) {
    const img = document.createElement("img");
    img.className = "preview";
    img.alt = "image body";
    img.src = url;
    box.append(img);
    return box;
  }
  if (body.encoding === "text") {
    let shown = body.data;
    if (type.includes("json")) {
      try { shown = JSON.stringify(JSON.parse(body.data), null, 2); } catch (_) { /* cut or invalid: as text */ }
    }
    box.append(text("pre", shown, "body"));
  } else {
    const raw = Uint8Array.from(atob(body.data), (c) => c.charCodeAt(0));
    const note = body.content_encoding ? ` (${body.content_encoding}-encoded)` : "";
    box.append(text("p", `Binary${note}`, "meta"), text("pre", hexdump(raw), "body hex"));
  }
  return box;
}

async function select(id) {
  selected = id;
  for (const tr of $("rows").children) tr.classList.toggle("selected", Number(tr.dataset.id) === id);
  let e;
  try { e = await json(`/api/requests/${id}`); } catch (err) { $("replay-result").textContent = String(err); return; }
  current = e;
  $("detail").classList.remove("hidden");
  $("editor").classList.add("hidden");
  $("replay-result").textContent = "";
  $("detail-title").textContent = `${e.method} ${e.path}`;
  const parts = [`#${e.id}`, `tunnel ${e.tunnel}`, `${statusText(e)}`, `${e.duration_ms} ms`];
  if (e.response) parts.push(`first byte after ${e.response.waited_ms} ms`);
  if (e.remote_addr) parts.push(`from ${e.remote_addr}`);
  if (e.replay_of) parts.push(`replay of #${e.replay_of}`);
  parts.push(new Date(e.started).toLocaleString());
  $("detail-meta").textContent = parts.join(" · ");
  const req = $("request");
  req.replaceChildren(text("p", `${e.request.method} ${e.request.path} ${e.request.version}`, "meta"),
    headersTable(e.request.headers), bodyView(id, "request", e.request.body));
  const res = $("response");
  if (e.response) {
    res.replaceChildren(text("p", `${e.response.version} ${e.response.status} ${e.response.reason}`, "meta"),
      headersTable(e.response.headers), bodyView(id, "response", e.response.body));
  } else {
    res.replaceChildren(text("p", e.error ? `No response: ${e.error}` : "No response yet", "meta"));
  }
  if (e.upgrade) {
    res.append(text("p", `Upgraded: ${size(e.upgrade.bytes_in)} in, ${size(e.upgrade.bytes_out)} out${e.upgrade.open ? ", still open" : ""}`, "meta"));
  }
}

async function replay(edits) {
  if (!current) return;
  $("replay-result").textContent = "Replaying…";
  try {
    const options = { method: "POST" };
    if (edits) {
      options.headers = { "content-type": "application/json" };
      options.body = JSON.stringify(edits);
    }
    const r = await json(`/api/requests/${current.id}/replay`, options);
    entries.set(r.id, r);
    render();
    $("replay-result").textContent = `Replayed as #${r.id}: ${statusText(r)} in ${r.duration_ms} ms`;
  } catch (err) {
    $("replay-result").textContent = `Replay failed: ${err.message}`;
  }
}

function openEditor() {
  if (!current) return;
  $("edit-method").value = current.request.method;
  $("edit-path").value = current.request.path;
  $("edit-headers").value = current.request.headers.map(([n, v]) => `${n}: ${v}`).join("\n");
  const body = current.request.body;
  $("edit-body").value = body.encoding === "text" ? body.data : "";
  $("editor").classList.remove("hidden");
}

function sendEdited(ev) {
  ev.preventDefault();
  const headers = $("edit-headers").value.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => {
    const at = l.indexOf(":");
    return at < 0 ? [l, ""] : [l.slice(0, at).trim(), l.slice(at + 1).trim()];
  });
  const body = current.request.body;
  const edits = { method: $("edit-method").value.trim(), path: $("edit-path").value.trim(), headers };
  if (body.encoding === "text" || $("edit-body").value) edits.body = $("edit-body").value;
  $("editor").classList.add("hidden");
  replay(edits);
}

function exportHar() {
  const ids = checked.size ? [...checked] : [...entries.values()].filter(matches).map((e) => e.id);
  const a = document.createElement("a");
  a.href = `/api/har?ids=${ids.join(",")}`;
  a.download = "showoff.har";
  document.body.append(a);
  a.click();
  a.remove();
}

async function clearAll() {
  await json("/api/requests", { method: "DELETE" });
  entries.clear();
  checked.clear();
  selected = null;
  current = null;
  $("detail").classList.add("hidden");
  render();
}

async function footer() {
  try {
    const s = await json("/api/status");
    const d = s.drops;
    const spill = s.spill_used === null ? "" : ` · spilled ${size(s.spill_used)}`;
    $("footer").textContent = `${s.entries} captured · memory ${size(s.memory_used)} of ${size(s.memory_budget)} · body cap ${size(s.body_cap)}${spill} · dropped: ${d.evicted} evicted, ${d.budget} bodies cut by the budget, ${d.unparsed} streams not followed, ${d.spill} spills incomplete`;
  } catch (_) { /* the client stopped */ }
}

let footerSoon = null;

/** Refreshes the footer shortly after a burst of events, not once per event. */
function footerLater() {
  if (footerSoon === null) footerSoon = setTimeout(() => { footerSoon = null; footer(); }, 300);
}

function follow() {
  const source = new EventSource("/api/events");
  source.onopen = () => { $("live").classList.add("on"); load(); };
  source.onerror = () => $("live").classList.remove("on");
  source.addEventListener("request", (ev) => {
    const e = JSON.parse(ev.data);
    entries.set(e.id, e);
    render();
    footerLater();
    if (e.id === selected) select(e.id);
  });
  source.addEventListener("clear", () => { entries.clear(); render(); });
  source.addEventListener("lagged", () => load());
}

for (const id of ["search", "method", "status"]) $(id).addEventListener("input", render);
$("select-all").addEventListener("change", (ev) => {
  for (const e of [...entries.values()].filter(matches)) { if (ev.target.checked) checked.add(e.id); else checked.delete(e.id); }
  render();
});
$("replay").addEventListener("click", () => replay(null));
$("edit").addEventListener("click", openEditor);
$("edit-cancel").addEventListener("click", () => $("editor").classList.add("hidden"));
$("editor").addEventListener("submit", sendEdited);
$("har").addEventListener("click", exportHar);
$("clear").addEventListener("click", clearAll);
follow();
footer();
setInterval(footer, 2000);
