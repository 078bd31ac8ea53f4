// resail serve: the label-map editor and the region editing views. Plain JS, no build step.
// The label map lives in `S.ids` (native class ids, row-major W×H, 0 = void) at the model size;
// "Generate" encodes it as a grey PNG in the dataset's label-file format, the same file
// `resail synthesize --label` reads.
"use strict";

const S = {
  info: null, W: 0, H: 0, ids: null, undo: [], tool: "brush", classId: 0, colors: new Map(), names: new Map(),
  state: null, segmentMap: null, selected: -1, busy: false,
};
window.resail = S;  // for the browser test and for poking around in the console

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- messages and requests

function message(text, ok = false) {
  const m = $("message");
  m.textContent = text || "";
  m.hidden = !text;
  m.classList.toggle("ok", ok);
}

async function api(url, options = {}) {
  const r = await fetch(url, options);
  const type = r.headers.get("content-type") || "";
  const body = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

async function busy(fn) {
  if (S.busy) return;
  S.busy = true;
  $("busy").hidden = false;
  document.querySelectorAll(".actions button").forEach((b) => (b.dataset.was = b.disabled, b.disabled = true));
  try {
    message("");
    await fn();
  } catch (e) {
    message(e.message);
  } finally {
    S.busy = false;
    $("busy").hidden = true;
    document.querySelectorAll(".actions button").forEach((b) => (b.disabled = b.dataset.was === "true"));
    updateButtons();
  }
}

// ---------------------------------------------------------------- PNG encoding (grey, 8 or 16 bit)

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

async function greyPNG(values, W, H) {
  let max = 0;
  for (const v of values) if (v > max) max = v;
  const bpp = max > 255 ? 2 : 1;
  const stride = 1 + W * bpp;
  const raw = new Uint8Array(H * stride);  // filter byte 0 (none) at the start of each row
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const v = values[y * W + x];
      if (bpp === 2) { raw[y * stride + 1 + 2 * x] = v >> 8; raw[y * stride + 2 + 2 * x] = v & 255; }
      else raw[y * stride + 1 + x] = v;
    }
  }
  const z = new Uint8Array(await new Response(new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"))).arrayBuffer());
  const ihdr = new Uint8Array(13);
  const dv = new DataView(ihdr.buffer);
  dv.setUint32(0, W); dv.setUint32(4, H);
  ihdr[8] = 8 * bpp;  // bit depth; colour type 0 (grey), no interlace
  const sig = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  return new Blob([sig, pngChunk("IHDR", ihdr), pngChunk("IDAT", z), pngChunk("IEND", new Uint8Array(0))], { type: "image/png" });
}

function labelFileValues() {
  // COCO-Stuff label files hold stuffthingmap values: class id − 1, void = 255.
  if (S.info.label_format !== "cocostuff") return S.ids;
  return S.ids.map((v) => (v === 0 ? 255 : v - 1));
}

// ---------------------------------------------------------------- the editor

function decodeIds(b64, dtype) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return dtype === "i16" ? new Int16Array(bytes.buffer) : new Uint16Array(bytes.buffer);
}

function drawEditor() {
  const ctx = $("editor").getContext("2d");
  const img = ctx.createImageData(S.W, S.H);
  for (let i = 0; i < S.ids.length; i++) {
    const c = S.colors.get(S.ids[i]) || [0, 0, 0];
    img.data.set(c, 4 * i);
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function pushUndo() {
  S.undo.push(S.ids.slice());
  if (S.undo.length > 50) S.undo.shift();
}

function setLabelMap(ids) {
  pushUndo();
  S.ids = ids;
  drawEditor();
}

function canvasXY(ev, el) {
  const r = el.getBoundingClientRect();
  return [Math.floor(((ev.clientX - r.left) / r.width) * S.W), Math.floor(((ev.clientY - r.top) / r.height) * S.H)];
}

function paintDisc(cx, cy, value) {
  const rad = Number($("brush-size").value) / 2;
  const r2 = rad * rad;
  for (let y = Math.floor(cy - rad); y <= Math.ceil(cy + rad); y++) {
    if (y < 0 || y >= S.H) continue;
    for (let x = Math.floor(cx - rad); x <= Math.ceil(cx + rad); x++) {
      if (x < 0 || x >= S.W) continue;
      if ((x - cx) ** 2 + (y - cy) ** 2 <= r2 || (x === Math.round(cx) && y === Math.round(cy))) S.ids[y * S.W + x] = value;
    }
  }
}

function paintLine(a, b, value) {
  const steps = Math.max(1, Math.ceil(Math.hypot(b[0] - a[0], b[1] - a[1])));
  for (let s = 0; s <= steps; s++) paintDisc(a[0] + ((b[0] - a[0]) * s) / steps, a[1] + ((b[1] - a[1]) * s) / steps, value);
}

function floodFill(x, y, value) {
  const from = S.ids[y * S.W + x];
  if (from === value) return;
  const stack = [y * S.W + x];
  while (stack.length) {
    const p = stack.pop();
    if (S.ids[p] !== from) continue;
    S.ids[p] = value;
    const px = p % S.W;
    if (px > 0) stack.push(p - 1);
    if (px < S.W - 1) stack.push(p + 1);
    if (p >= S.W) stack.push(p - S.W);
    if (p < S.W * (S.H - 1)) stack.push(p + S.W);
  }
}

function setupEditor() {
  const el = $("editor");
  let last = null;
  el.addEventListener("pointerdown", (ev) => {
    const p = canvasXY(ev, el);
    pushUndo();
    const value = S.tool === "eraser" ? 0 : S.classId;
    if (S.tool === "fill") floodFill(p[0], p[1], value);
    else { paintDisc(p[0], p[1], value); last = p; el.setPointerCapture(ev.pointerId); }
    drawEditor();
  });
  el.addEventListener("pointermove", (ev) => {
    const p = canvasXY(ev, el);
    const v = p[0] >= 0 && p[0] < S.W && p[1] >= 0 && p[1] < S.H ? S.ids[p[1] * S.W + p[0]] : null;
    $("hover-class").textContent = v === null ? "\u00a0" : `${v} ${v === 0 ? "void" : S.names.get(v) || "?"}`;
    if (!last) return;
    paintLine(last, p, S.tool === "eraser" ? 0 : S.classId);
    last = p;
    drawEditor();
  });
  const stop = () => (last = null);
  el.addEventListener("pointerup", stop);
  el.addEventListener("pointercancel", stop);
}

function selectTool(tool) {
  S.tool = tool;
  document.querySelectorAll("[data-tool]").forEach((b) => b.classList.toggle("active", b.dataset.tool === tool));
}

function swatch(id) {
  const c = S.colors.get(id) || [0, 0, 0];
  return `<span class="swatch" style="background: rgb(${c.join(",")})"></span>`;
}

function selectClass(id) {
  S.classId = id;
  document.querySelectorAll("#classes li").forEach((li) => li.classList.toggle("selected", Number(li.dataset.id) === id));
  $("current-class").innerHTML = `${swatch(id)} ${escapeHtml(S.names.get(id))} <small>id ${id}</small>`;
  if (S.tool === "eraser") selectTool("brush");
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function buildClassList() {
  const ul = $("classes");
  ul.innerHTML = S.info.classes.map((c) =>
    `<li data-id="${c.id}" data-name="${escapeHtml(c.name.toLowerCase())}">${swatch(c.id)}${escapeHtml(c.name)}` +
    `<small>${c.is_thing ? "thing " : ""}${c.id}</small></li>`).join("");
  ul.addEventListener("click", (ev) => {
    const li = ev.target.closest("li");
    if (li) selectClass(Number(li.dataset.id));
  });
  $("class-filter").addEventListener("input", (ev) => {
    const q = ev.target.value.toLowerCase();
    ul.querySelectorAll("li").forEach((li) => (li.hidden = q && !li.dataset.name.includes(q) && li.dataset.id !== q));
  });
}

// ---------------------------------------------------------------- label maps in

async function loadEditorMap(answer) {
  setLabelMap(decodeIds(answer.ids, "u16"));
}

async function uploadFile(file) {
  await busy(async () => {
    const q = new URLSearchParams({ format: $("upload-format").value });
    const answer = await api(`/api/label?${q}`, { method: "POST", body: file, headers: { "Content-Type": "image/png" } });
    await loadEditorMap(answer);
    message([`loaded ${file.name} (${answer.read_as})`, ...answer.notes].join(" · "), true);
  });
  $("upload").value = "";
}

async function loadVal(i) {
  await busy(async () => loadEditorMap(await api(`/api/val/${i}`)));
}

// ---------------------------------------------------------------- generate and region editing

function showState(state) {
  S.state = state;
  S.segmentMap = decodeIds(state.segment_map, "i16");
  $("guidance").src = state.images.guidance;
  $("output").src = state.images.output;
  const t = state.timings || {};
  const ms = (v) => (v === undefined ? "" : `${Math.round(v)} ms`);
  $("t-retrieve").textContent = t.retrieve_ms !== undefined ? `decompose + retrieve ${ms(t.retrieve_ms)}, compose ${ms(t.compose_ms)}` : `compose ${ms(t.compose_ms)}`;
  $("t-generate").textContent = `G ${ms(t.generate_ms)}`;
  const matched = state.segments.filter((s) => s.match_id >= 0).length;
  $("timings").textContent = `${state.segments.length} regions, ${matched} with a retrieved match · version ${state.version}`;
  if (S.selected >= state.segments.length) S.selected = -1;
  drawOverlays();
  if (S.selected >= 0) showRegion(S.selected);
  updateButtons();
}

function updateButtons() {
  const has = !!S.state;
  $("variants").disabled = !has || S.busy;
  $("download").disabled = !has || S.busy;
  $("resample").disabled = S.busy || S.selected < 0;
}

async function generate() {
  await busy(async () => {
    const png = await greyPNG(labelFileValues(), S.W, S.H);
    const q = new URLSearchParams({ format: "ids" });  // the canvas, in the dataset's label-file format
    if ($("seed").value !== "") q.set("seed", $("seed").value);
    if ($("k").value !== "") q.set("k", $("k").value);
    S.selected = -1;
    $("region").hidden = true;
    $("variants-panel").hidden = true;
    showState(await api(`/api/generate?${q}`, { method: "POST", body: png, headers: { "Content-Type": "image/png" } }));
  });
}

function drawOverlays() {
  for (const id of ["guidance-overlay", "output-overlay"]) {
    const c = $(id);
    c.width = S.state ? S.state.width : 1;
    c.height = S.state ? S.state.height : 1;
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    if (S.selected < 0 || !S.segmentMap) continue;
    const img = ctx.createImageData(c.width, c.height);
    const W = c.width;
    for (let p = 0; p < S.segmentMap.length; p++) {
      if (S.segmentMap[p] !== S.selected) continue;
      const x = p % W;
      const edge = x === 0 || x === W - 1 || p < W || p >= S.segmentMap.length - W ||
        S.segmentMap[p - 1] !== S.selected || S.segmentMap[p + 1] !== S.selected ||
        S.segmentMap[p - W] !== S.selected || S.segmentMap[p + W] !== S.selected;
      img.data.set(edge ? [255, 255, 0, 255] : [255, 255, 255, 50], 4 * p);
    }
    ctx.putImageData(img, 0, 0);
  }
}

async function clickResult(ev) {
  if (!S.state) return;
  const r = ev.target.getBoundingClientRect();
  const x = Math.floor(((ev.clientX - r.left) / r.width) * S.state.width);
  const y = Math.floor(((ev.clientY - r.top) / r.height) * S.state.height);
  const i = S.segmentMap[y * S.state.width + x];
  if (i < 0) { message("void pixel: no region here"); return; }
  S.selected = i;
  drawOverlays();
  updateButtons();
  await busy(() => showRegion(i));
}

async function showRegion(i) {
  const info = await api(`/api/session/${S.state.session}/segment/${i}`);
  $("region").hidden = false;
  $("region-title").innerHTML = `#${i}: ${swatch(info.class_id)} ${escapeHtml(info.class_name)} <small>(class ${info.class_id}${info.is_thing ? ", thing" : ""})</small>`;
  $("region-meta").textContent = info.match_id >= 0
    ? `${info.area} px · pasting training segment ${info.match_id}, rank ${info.rank + 1} of ${info.candidates.length}`
    : `${info.area} px · no match (${info.reason || "no candidate"}): black guidance`;
  $("candidates").innerHTML = info.candidates.map((c) =>
    `<div class="cand${c.rank === info.rank ? " chosen" : ""}" data-rank="${c.rank}" title="training segment ${c.match_id}">` +
    `<img src="${c.thumb}" alt="segment ${c.match_id}"><span>#${c.rank + 1} · ${c.score.toFixed(3)}</span></div>`).join("");
}

async function regionAction(path) {
  await busy(async () => showState(await api(`/api/session/${S.state.session}/segment/${S.selected}/${path}`, { method: "POST" })));
}

async function variants() {
  await busy(async () => {
    const n = Math.max(1, Math.min(Number($("n-variants").value) || 4, S.info.max_variants));
    const answer = await api(`/api/session/${S.state.session}/variants?n=${n}`, { method: "POST" });
    $("variants-panel").hidden = false;
    $("variant-list").innerHTML = answer.variants.map((v) =>
      `<div class="variant" data-index="${v.index}" title="guidance | output"><img src="${v.output}" alt="variant ${v.index}"><span>variant ${v.index + 1}</span></div>`).join("") +
      `<div class="hint">${Math.round(answer.variants_ms)} ms for ${answer.variants.length}</div>`;
  });
}

function download() {
  const base = `/api/session/${S.state.session}`;
  for (const name of ["label", "label_color", "guidance", "output"]) {
    const a = document.createElement("a");
    a.href = `${base}/${name}.png?v=${S.state.version}`;
    a.download = `resail_${name}.png`;
    document.body.appendChild(a);
    a.click();
    a.remove();
  }
}

// ---------------------------------------------------------------- start

async function start() {
  try {
    S.info = await api("/api/info");
  } catch (e) {
    message(`cannot reach the server: ${e.message}`);
    return;
  }
  const info = S.info;
  S.W = info.width;
  S.H = info.height;
  for (const c of info.classes) { S.colors.set(c.id, c.color); S.names.set(c.id, c.name); }
  S.colors.set(0, [0, 0, 0]);
  $("run-info").textContent = `run ${info.run} · ${info.snapshot} · ${info.dataset} · ${info.width}×${info.height}`;
  $("canvas-size").textContent = `${info.width}×${info.height}`;
  $("k").value = info.k;
  $("n-variants").max = info.max_variants;
  const ed = $("editor");
  ed.width = S.W;
  ed.height = S.H;
  const aspect = `${S.W} / ${S.H}`;
  for (const el of [ed, $("guidance"), $("output")]) el.style.aspectRatio = aspect;
  buildClassList();
  selectClass(info.classes[0].id);
  S.ids = new Uint16Array(S.W * S.H).fill(info.classes[0].id);
  drawEditor();
  for (const f of info.label_formats) $("upload-format").insertAdjacentHTML("beforeend", `<option value="${f}">${f}</option>`);
  const sel = $("val-select");
  info.val.forEach((id, i) => sel.insertAdjacentHTML("beforeend", `<option value="${i}">${escapeHtml(id)}</option>`));
  sel.disabled = !info.val.length;

  setupEditor();
  document.querySelectorAll("[data-tool]").forEach((b) => b.addEventListener("click", () => selectTool(b.dataset.tool)));
  $("brush-size").addEventListener("input", (ev) => ($("brush-size-out").textContent = ev.target.value));
  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", () => setLabelMap(new Uint16Array(S.W * S.H).fill(S.classId)));
  $("upload").addEventListener("change", (ev) => ev.target.files[0] && uploadFile(ev.target.files[0]));
  sel.addEventListener("change", (ev) => ev.target.value !== "" && loadVal(Number(ev.target.value)));
  $("generate").addEventListener("click", generate);
  $("guidance").addEventListener("click", clickResult);
  $("output").addEventListener("click", clickResult);
  $("resample").addEventListener("click", () => regionAction("resample"));
  $("candidates").addEventListener("click", (ev) => {
    const c = ev.target.closest(".cand");
    if (c) regionAction(`choose?rank=${c.dataset.rank}`);
  });
  $("variants").addEventListener("click", variants);
  $("variant-list").addEventListener("click", async (ev) => {
    const v = ev.target.closest(".variant");
    if (v) await busy(async () => showState(await api(`/api/session/${S.state.session}/variants/${v.dataset.index}/adopt`, { method: "POST" })));
  });
  $("download").addEventListener("click", download);
  document.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT") return;
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "z") { ev.preventDefault(); undo(); }
    else if (ev.key === "b") selectTool("brush");
    else if (ev.key === "f") selectTool("fill");
    else if (ev.key === "e") selectTool("eraser");
  });
  if (info.val.length) { sel.value = "0"; await loadVal(0); S.undo = []; }
  document.body.dataset.ready = "1";
}

function undo() {
  if (!S.undo.length) return;
  S.ids = S.undo.pop();
  drawEditor();
}

start();
