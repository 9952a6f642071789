// samfed viewer: uploads go to /api/segment; thresholding, overlay and statistics run here.
// The server sends an 8-bit probability map whose codes >= foreground_code are exactly the
// model's mask at its threshold (edge/viewer/segment.py); other thresholds are mapped through the
// same piecewise-linear coding. Fill and outline are two layers drawn over the image, so opacity
// changes redraw without touching pixels. Manifest and file names are inserted as text, never as HTML.
"use strict";

const TINT = [0, 200, 80];
const CONTOUR = [255, 230, 0];
const MAX_RESULTS = 24;
const VIEW_MAX_SIDE = 1024; // px of the on-screen overlay (downloads are full size)
const $ = (id) => document.getElementById(id);

const state = { card: null, results: [], current: null, gallery: [], galleryIndex: -1 };

// ---- messages -------------------------------------------------------------------------------
function say(text, kind = "error") {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  $("messages").prepend(li);
  while ($("messages").children.length > 8) $("messages").lastChild.remove();
}

// ---- probability coding ---------------------------------------------------------------------
// Probability p -> code scale u in [0, 255]: [0, t] -> [0, 127.5], [t, 1] -> [127.5, 255].
function toCodeScale(p, t) {
  return p <= t ? (127.5 * p) / t : 127.5 + (127.5 * (p - t)) / (1 - t);
}

// The smallest code that is foreground at threshold `p` (exact at the model's threshold).
function firstForegroundCode(p, r) {
  if (Math.abs(p - r.threshold) < 1e-9) return r.foreground_code;
  return Math.floor(toCodeScale(p, r.threshold) - 0.5) + 1;
}

// code -> probability at the middle of its bin (for the mean confidence).
function probabilityTable(t) {
  const lut = new Float64Array(256);
  for (let q = 0; q < 256; q++) lut[q] = q <= 127.5 ? (q / 127.5) * t : t + ((q - 127.5) / 127.5) * (1 - t);
  return lut;
}

// ---- image helpers --------------------------------------------------------------------------
// The file decoded off the main thread (upright, as the browser shows it), while the server works.
async function decodeImage(file) {
  try {
    return await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    throw new Error("the browser cannot display this image");
  }
}

// The answer of /api/segment: uint32 n (little-endian), n bytes of JSON, then one code per pixel.
function unpack(buffer) {
  const n = new DataView(buffer).getUint32(0, true);
  const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  const codes = new Uint8Array(buffer, 4 + n);
  if (codes.length !== meta.map_width * meta.map_height) throw new Error("the viewer sent an incomplete map");
  return { ...meta, codes };
}

// Fill and outline layers of `mask` inside its bounding box `box` = [x0, y0, x1, y1). Outline:
// mask pixels within `thickness` px (4-neighbour steps) of the background, outside the image
// counting as background, as edge/outputs.py draws it; found with a two-pass city-block distance
// transform truncated at thickness + 1.
function layers(mask, w, box, thickness) {
  const [x0, y0, x1, y1] = box, bw = x1 - x0, bh = y1 - y0, far = thickness + 1;
  const d = new Uint8Array(bw * bh);
  for (let y = 0, j = 0; y < bh; y++) {
    for (let x = 0, i = (y + y0) * w + x0; x < bw; x++, i++, j++) {
      if (!mask[i]) continue;
      const up = y > 0 ? d[j - bw] : 0, left = x > 0 ? d[j - 1] : 0;
      d[j] = Math.min(far, up + 1, left + 1);
    }
  }
  const fill = new ImageData(bw, bh), line = new ImageData(bw, bh);
  const fill32 = new Uint32Array(fill.data.buffer), line32 = new Uint32Array(line.data.buffer);
  for (let y = bh - 1, j = bw * bh - 1; y >= 0; y--) {
    for (let x = bw - 1; x >= 0; x--, j--) {
      if (!d[j]) continue;
      const down = y < bh - 1 ? d[j + bw] : 0, right = x < bw - 1 ? d[j + 1] : 0;
      const v = Math.min(d[j], down + 1, right + 1);
      d[j] = v;
      if (v <= thickness) line32[j] = CONTOUR32;
      else fill32[j] = TINT32;
    }
  }
  return [fill, line];
}

// ---- analysing uploads ----------------------------------------------------------------------
async function analyse(file) {
  const t0 = performance.now();
  const limit = state.card ? state.card.max_upload_bytes : Infinity;
  if (file.size > limit) throw new Error(`${file.name} is larger than the viewer's limit of ${(limit / 2 ** 20).toFixed(0)} MB.`);
  const shown = decodeImage(file);
  shown.catch(() => {});
  const resp = await fetch("/api/segment", {
    method: "POST",
    body: file,
    headers: { "X-Samfed-Viewer": "1", "X-File-Name": encodeURIComponent(file.name), "Content-Type": "application/octet-stream" },
  });
  if (!resp.ok) {
    let reason = `the viewer answered ${resp.status}`;
    try {
      reason = (await resp.json()).error || reason;
    } catch {}
    throw new Error(reason);
  }
  const r = unpack(await resp.arrayBuffer());
  const tResponse = performance.now();
  try {
    r.img = await shown;
  } catch (e) {
    throw new Error(`${file.name}: ${e.message}.`);
  }
  const url = URL.createObjectURL(file);
  const tImage = performance.now();
  Object.assign(r, { file, url, lut: probabilityTable(r.threshold) });
  prepare(r);
  keep(r);
  show(r);
  r.uploadToOverlayMs = performance.now() - t0;
  showTiming(r);
  const detail = $("detail");
  detail.dataset.uploadToOverlayMs = r.uploadToOverlayMs.toFixed(1);
  // where the time went: answer received, image decoded by the browser, overlay drawn
  detail.dataset.stages = JSON.stringify({ response: tResponse - t0, image: tImage - t0, overlay: r.uploadToOverlayMs });
  detail.dataset.analysed = String(Number(detail.dataset.analysed || 0) + 1);
  return r;
}

async function analyseAll(files) {
  const list = Array.from(files || []);
  if (!list.length) {
    say("Nothing to analyse: the drop held no image files; drop or choose JPEG or PNG images.");
    return;
  }
  for (const file of list) {
    try {
      await analyse(file);
    } catch (e) {
      say(e.message.startsWith(file.name) ? e.message : `${file.name}: ${e.message}`);
    }
  }
}

// Per result: a histogram of the full map's codes (statistics at any threshold in 256 steps) and
// a view of the codes at display size (at most VIEW_MAX_SIDE px, nearest neighbour) that the
// overlay is drawn from. Downloads are drawn from the full map.
function prepare(r) {
  const w = r.map_width, h = r.map_height;
  r.exactMap = w === r.width && h === r.height;
  r.hist = new Uint32Array(256);
  for (let i = 0; i < r.codes.length; i++) r.hist[r.codes[i]]++;
  const f = Math.min(1, VIEW_MAX_SIDE / Math.max(w, h));
  const vw = Math.max(1, Math.round(w * f)), vh = Math.max(1, Math.round(h * f));
  let view = r.codes;
  if (vw !== w || vh !== h) {
    view = new Uint8Array(vw * vh);
    const xs = Int32Array.from({ length: vw }, (_, x) => Math.min(w - 1, Math.floor(((x + 0.5) * w) / vw)));
    for (let y = 0; y < vh; y++) {
      const src = Math.min(h - 1, Math.floor(((y + 0.5) * h) / vh)) * w, row = y * vw;
      for (let x = 0; x < vw; x++) view[row + x] = r.codes[src + xs[x]];
    }
  }
  r.view = { codes: view, w: vw, h: vh };
}

function threshold() {
  const r = state.current;
  const v = Number($("threshold").value);
  return r && Math.abs(v - r.threshold) < 0.005 ? r.threshold : v;
}

// Pixels as 32-bit RGBA words (the platform's byte order).
const LITTLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
function rgba32(rgb, a) {
  return LITTLE ? ((a << 24) | (rgb[2] << 16) | (rgb[1] << 8) | rgb[0]) >>> 0 : ((rgb[0] << 24) | (rgb[1] << 16) | (rgb[2] << 8) | a) >>> 0;
}
const TINT32 = rgba32(TINT, 255), CONTOUR32 = rgba32(CONTOUR, 255);

// Mask of (w x h) `codes` at first foreground code q0, and its fill and outline layers as canvases
// (outline about 1 px per 256 px of the shorter side, as `samfed predict` draws it).
function drawLayers(codes, w, h, q0) {
  const mask = new Uint8Array(w * h);
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let y = 0; y < h; y++) {
    const row = y * w;
    let first = -1, last = -1;
    for (let x = 0; x < w; x++) {
      if (codes[row + x] >= q0) {
        mask[row + x] = 1;
        if (first < 0) first = x;
        last = x;
      }
    }
    if (first >= 0) {
      if (first < x0) x0 = first;
      if (last > x1) x1 = last;
      if (y < y0) y0 = y;
      y1 = y;
    }
  }
  const fillCanvas = document.createElement("canvas"), edgeCanvas = document.createElement("canvas");
  for (const c of [fillCanvas, edgeCanvas]) {
    c.width = w;
    c.height = h;
  }
  if (x1 >= 0) {
    const thickness = Math.max(1, Math.round(Math.min(w, h) / 256));
    const [fill, line] = layers(mask, w, [x0, y0, x1 + 1, y1 + 1], thickness);
    fillCanvas.getContext("2d").putImageData(fill, x0, y0);
    edgeCanvas.getContext("2d").putImageData(line, x0, y0);
  }
  return { mask, fillCanvas, edgeCanvas };
}

// Statistics and display layers for threshold t (only when t changed).
function updateMask(r, t) {
  if (r.maskThreshold === t) return;
  const q0 = firstForegroundCode(t, r);
  r.layers = drawLayers(r.view.codes, r.view.w, r.view.h, q0);
  r.maskThreshold = t;
  let area = 0, sum = 0;
  for (let q = Math.max(0, q0); q < 256; q++) {
    area += r.hist[q];
    sum += r.hist[q] * r.lut[q];
  }
  if (!r.exactMap && t === r.threshold) {
    r.area = r.stats.area_px; // exact, computed at full size by the server
    r.areaFraction = r.stats.area_fraction;
    r.confidence = r.stats.mean_confidence === "" ? null : r.stats.mean_confidence;
  } else {
    const n = r.codes.length;
    r.area = Math.round((area * r.width * r.height) / n);
    r.areaFraction = area / n;
    r.confidence = area ? sum / area : null;
  }
}

// Draw image + layers on `canvas` (w x h) with the page's opacity and fill/outline choices.
function compose(canvas, r, layers, w, h) {
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext("2d");
  ctx.globalAlpha = 1;
  ctx.drawImage(r.img, 0, 0, w, h);
  if ($("fill").checked) {
    ctx.globalAlpha = Number($("opacity").value);
    ctx.drawImage(layers.fillCanvas, 0, 0);
    ctx.globalAlpha = 1;
  }
  if ($("outline").checked) ctx.drawImage(layers.edgeCanvas, 0, 0);
}

function render() {
  const r = state.current;
  if (!r) return;
  const t = threshold();
  updateMask(r, t);
  compose($("overlay"), r, r.layers, r.view.w, r.view.h);
  $("threshold-value").textContent = t.toFixed(2);
  $("opacity-value").textContent = Number($("opacity").value).toFixed(2);
  const approx = r.exactMap || t === r.threshold ? "" : "≈ ";
  $("area-px").textContent = approx + r.area.toLocaleString("en-US");
  $("area-px").dataset.value = String(r.area);
  $("area-pct").textContent = (100 * r.areaFraction).toFixed(2);
  $("confidence").textContent = r.confidence === null ? "— (no lesion found)" : r.confidence.toFixed(3);
  $("confidence").dataset.value = r.confidence === null ? "" : String(r.confidence);
  const detail = $("detail");
  detail.dataset.threshold = String(t);
  detail.dataset.renders = String(Number(detail.dataset.renders || 0) + 1);
}

function showTiming(r) {
  const s = r.timing_ms;
  const page = r.uploadToOverlayMs === undefined ? "" : `, upload to overlay ${r.uploadToOverlayMs.toFixed(0)} ms`;
  $("timing").textContent = `model ${s.model.toFixed(0)} ms, server ${s.server.toFixed(0)} ms${page}`;
}

function show(r) {
  state.current = r;
  $("detail").hidden = false;
  const original = $("original");
  original.width = r.view.w;
  original.height = r.view.h;
  original.getContext("2d").drawImage(r.img, 0, 0, r.view.w, r.view.h);
  $("threshold").value = r.threshold;
  $("image-name").textContent = r.name;
  $("image-size").textContent = `${r.width} × ${r.height} px`;
  $("detail").dataset.name = r.name;
  for (const el of document.querySelectorAll("#uploads figure")) el.classList.toggle("selected", el.result === r);
  render();
  showTiming(r);
}

// Add a result to the strip, dropping the oldest beyond MAX_RESULTS (each holds full-size pixels).
function keep(r) {
  state.results.push(r);
  addThumbnail(r);
  while (state.results.length > MAX_RESULTS) {
    const old = state.results.shift();
    URL.revokeObjectURL(old.url);
    old.img.close();
    for (const el of document.querySelectorAll("#uploads figure")) if (el.result === old) el.remove();
  }
}

function addThumbnail(r) {
  const fig = document.createElement("figure");
  fig.result = r;
  const img = document.createElement("img");
  img.src = r.url;
  img.alt = r.name;
  const cap = document.createElement("figcaption");
  cap.textContent = r.name;
  fig.append(img, cap);
  fig.addEventListener("click", () => show(r));
  $("uploads").append(fig);
}

// ---- downloads ------------------------------------------------------------------------------
function stem(name) {
  return name.replace(/\.[^.]*$/, "") || "image";
}

function download(canvas, filename) {
  canvas.toBlob((blob) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = filename;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }, "image/png");
}

// The full-size mask and overlay at the current threshold (the map's size: the image's own size
// unless it is over 2048 px).
function fullSize(r) {
  const t = threshold();
  if (r.full && r.full.threshold === t) return r.full;
  r.full = { threshold: t, ...drawLayers(r.codes, r.map_width, r.map_height, firstForegroundCode(t, r)) };
  return r.full;
}

function downloadMask() {
  const r = state.current;
  if (!r) return;
  const { mask } = fullSize(r);
  const c = document.createElement("canvas");
  c.width = r.map_width;
  c.height = r.map_height;
  const ctx = c.getContext("2d");
  const im = ctx.createImageData(c.width, c.height);
  const px = new Uint32Array(im.data.buffer), white = rgba32([255, 255, 255], 255), black = rgba32([0, 0, 0], 255);
  for (let i = 0; i < mask.length; i++) px[i] = mask[i] ? white : black;
  ctx.putImageData(im, 0, 0);
  download(c, `${stem(r.name)}_mask.png`);
}

function downloadOverlay() {
  const r = state.current;
  if (!r) return;
  const c = document.createElement("canvas");
  compose(c, r, fullSize(r), r.map_width, r.map_height);
  download(c, `${stem(r.name)}_overlay.png`);
}

// ---- gallery --------------------------------------------------------------------------------
const SORTS = {
  "area-desc": (a, b) => b.area_px - a.area_px,
  "area-asc": (a, b) => a.area_px - b.area_px,
  "conf-desc": (a, b) => conf(b) - conf(a),
  "conf-asc": (a, b) => conf(a) - conf(b),
  id: (a, b) => a.id.localeCompare(b.id),
};

function conf(row) {
  return row.mean_confidence === "" ? -1 : row.mean_confidence;
}

function fileUrl(kind, row) {
  return `/api/gallery/${kind}?id=${encodeURIComponent(row.id)}`;
}

function rowStats(row) {
  const c = row.mean_confidence === "" ? "no lesion found" : `mean confidence ${Number(row.mean_confidence).toFixed(3)}`;
  return `${row.width} × ${row.height} px, area ${row.area_px.toLocaleString("en-US")} px (${(100 * row.area_fraction).toFixed(2)} %), ${c}`;
}

function renderGallery() {
  const rows = state.gallery.slice().sort(SORTS[$("sort").value]);
  state.sorted = rows;
  const grid = $("gallery-grid");
  grid.replaceChildren();
  rows.forEach((row, k) => {
    const fig = document.createElement("figure");
    fig.dataset.id = row.id;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = row.id;
    if (row.overlay || row.mask) img.src = fileUrl(row.overlay ? "overlay" : "mask", row);
    const cap = document.createElement("figcaption");
    cap.textContent = `${row.id} · ${(100 * row.area_fraction).toFixed(1)} %`;
    fig.append(img, cap);
    fig.addEventListener("click", () => openGallery(k));
    grid.append(fig);
  });
  $("gallery-count").textContent = `${rows.length} images`;
}

function openGallery(k) {
  const rows = state.sorted;
  if (!rows.length) return;
  state.galleryIndex = (k + rows.length) % rows.length;
  const row = rows[state.galleryIndex];
  $("gallery-grid").hidden = true;
  $("gallery-detail").hidden = false;
  $("gallery-name").textContent = row.id;
  $("gallery-stats").textContent = rowStats(row);
  $("gallery-overlay").src = row.overlay ? fileUrl("overlay", row) : "";
  $("gallery-overlay").hidden = !row.overlay;
  $("gallery-mask").src = row.mask ? fileUrl("mask", row) : "";
  $("gallery-mask").hidden = !row.mask;
}

function closeGallery() {
  $("gallery-detail").hidden = true;
  $("gallery-grid").hidden = false;
  state.galleryIndex = -1;
}

async function loadGallery() {
  const resp = await fetch("/api/gallery");
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error);
  state.gallery = body.rows;
  renderGallery();
}

// ---- model card -----------------------------------------------------------------------------
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fmt(v, digits = 3) {
  return v === null || v === undefined ? "—" : typeof v === "number" ? v.toFixed(digits) : String(v);
}

function definitionList(pairs) {
  const dl = el("dl", null, "stats");
  for (const [k, v] of pairs) {
    if (v === null || v === undefined || v === "") continue;
    dl.append(el("dt", k), el("dd", v));
  }
  return dl;
}

function describeSet(s) {
  if (!s) return null;
  return `${fmt(s.n, 0)} images from ${s.source || "?"}${s.has_masks ? " (with masks)" : ""}`;
}

function renderCard(card) {
  const body = $("card-body");
  body.replaceChildren();
  body.append(el("p", card.notice, "notice"));
  const u = card.in_use;
  body.append(el("h2", "In use"));
  body.append(definitionList([
    ["Model file", u.artefact],
    ["Backend", u.backend],
    ["Precision", u.precision ? u.precision.toUpperCase() : "unknown"],
    ["Threads", u.threads],
    ["Input size", `${u.input_size} px`],
    ["Threshold", u.threshold],
  ]));
  const m = card.model || {};
  body.append(el("h2", "The model"));
  if (!card.verified) {
    body.append(el("p", "A bare model file without an export manifest: its integrity, preprocessing and accuracy are not known.", "warning"));
    return;
  }
  body.append(definitionList([
    ["Architecture", `${m.arch || "?"} (${m.norm || "?"} normalisation)`],
    ["Exported", m.created ? `${m.created} with samfed ${m.samfed_version || "?"}` : null],
    ["Signature", m.signer ? `signed by ${m.signer}` : "not signed: files intact, producer not verified"],
    ["Recommended", m.recommended ? `${m.recommended}: ${m.recommendation_reason || ""}` : null],
  ]));
  const d = card.data || {};
  body.append(el("h2", "Data"));
  const training = d.training ? Object.entries(d.training).map(([k, v]) => `${k}: ${v}`).join(", ") : "not recorded in this export";
  body.append(definitionList([
    ["Training run", d.source_run],
    ["Training data", training],
    ["Calibration (INT8)", describeSet(d.calibration)],
    ["Held-out check", describeSet(d.heldout)],
    ["Dice of the torch model", d.torch_dice_vs_gt === null ? null : fmt(d.torch_dice_vs_gt)],
  ]));
  body.append(el("h2", "Measured at export"));
  const table = el("table");
  const head = el("tr");
  for (const h of ["model file", "backend", "precision", "Dice vs ground truth", "agreement with torch", "INT8 vs FP32", "latency p50"]) head.append(el("th", h));
  table.append(head);
  for (const a of card.artefacts) {
    const tr = el("tr", null, a.key === u.artefact ? "selected" : "");
    for (const v of [a.key, a.backend, a.precision, fmt(a.dice_vs_gt), fmt(a.dice_vs_torch), fmt(a.dice_vs_fp32), a.p50_ms === null ? "—" : `${a.p50_ms.toFixed(1)} ms`]) tr.append(el("td", v));
    table.append(tr);
  }
  body.append(table);
  const where = m.measured_on ? `on ${m.measured_on}${m.measured_threads ? `, ${m.measured_threads} threads` : ""}` : "";
  body.append(el("p", `Dice on the held-out images, latency for one image ${where}.`, "muted"));
}

// ---- wiring ---------------------------------------------------------------------------------
function selectTab(name) {
  for (const b of document.querySelectorAll("nav [role=tab]")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== name;
}

async function init() {
  for (const b of document.querySelectorAll("nav [role=tab]")) b.addEventListener("click", () => selectTab(b.dataset.tab));
  const input = $("file-input");
  input.addEventListener("change", async () => {
    await analyseAll(input.files);
    input.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    analyseAll(e.dataTransfer ? e.dataTransfer.files : []);
  });
  for (const id of ["opacity", "threshold", "fill", "outline"]) $(id).addEventListener("input", render);
  $("model-threshold").addEventListener("click", () => {
    if (state.current) $("threshold").value = state.current.threshold;
    render();
  });
  $("download-mask").addEventListener("click", downloadMask);
  $("download-overlay").addEventListener("click", downloadOverlay);
  $("sort").addEventListener("change", () => { renderGallery(); closeGallery(); });
  $("gallery-back").addEventListener("click", closeGallery);
  $("gallery-prev").addEventListener("click", () => openGallery(state.galleryIndex - 1));
  $("gallery-next").addEventListener("click", () => openGallery(state.galleryIndex + 1));
  document.addEventListener("keydown", (e) => {
    if (state.galleryIndex < 0 || $("gallery").hidden) return;
    if (e.key === "ArrowLeft") openGallery(state.galleryIndex - 1);
    if (e.key === "ArrowRight") openGallery(state.galleryIndex + 1);
    if (e.key === "Escape") closeGallery();
  });
  try {
    const resp = await fetch("/api/card");
    state.card = await resp.json();
    $("notice").textContent = state.card.notice;
    const u = state.card.in_use;
    const prec = u.precision ? ` ${u.precision.toUpperCase()}` : "";
    $("model-line").textContent = `${(state.card.model && state.card.model.arch) || u.artefact} · ${u.backend}${prec}`;
    renderCard(state.card);
    if (state.card.gallery) {
      $("gallery-tab").hidden = false;
      await loadGallery();
    }
  } catch (e) {
    say(`Cannot reach the viewer: ${e.message}`);
  }
  document.body.dataset.ready = "1";
}

init();
