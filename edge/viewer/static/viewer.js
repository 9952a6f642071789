// samfed viewer: uploads go to /api/segment; thresholding, overlay and statistics run here.
// The server sends an 8-bit probability map whose codes >= foreground_code are exactly the
// model's mask at its threshold (edge/viewer/segment.py); other thresholds are mapped through the
// same piecewise-linear coding. Manifest and file names are inserted as text, never as HTML.
"use strict";

const TINT = [0, 200, 80];
const CONTOUR = [255, 230, 0];
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
function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot display this image"));
    img.src = url;
  });
}

async function decodeMap(r) {
  const bytes = Uint8Array.from(atob(r.map_png), (c) => c.charCodeAt(0));
  const blob = new Blob([bytes], { type: "image/png" });
  const bmp = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const c = document.createElement("canvas");
  c.width = r.map_width;
  c.height = r.map_height;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bmp, 0, 0);
  const rgba = ctx.getImageData(0, 0, c.width, c.height).data;
  const codes = new Uint8Array(c.width * c.height);
  for (let i = 0; i < codes.length; i++) codes[i] = rgba[4 * i];
  return codes;
}

// Mask pixels within `thickness` px of the background (4-neighbour; outside counts as background).
function contour(mask, w, h, thickness) {
  let inner = mask;
  for (let k = 0; k < thickness; k++) {
    const next = new Uint8Array(w * h);
    for (let y = 1; y < h - 1; y++) {
      const row = y * w;
      for (let x = 1; x < w - 1; x++) {
        const i = row + x;
        next[i] = inner[i] & inner[i - 1] & inner[i + 1] & inner[i - w] & inner[i + w];
      }
    }
    inner = next;
  }
  const edge = new Uint8Array(w * h);
  for (let i = 0; i < edge.length; i++) edge[i] = mask[i] & (1 - inner[i]);
  return edge;
}

// ---- analysing uploads ----------------------------------------------------------------------
async function analyse(file) {
  const t0 = performance.now();
  const limit = state.card ? state.card.max_upload_bytes : Infinity;
  if (file.size > limit) throw new Error(`${file.name} is larger than the viewer's limit of ${(limit / 2 ** 20).toFixed(0)} MB.`);
  const url = URL.createObjectURL(file);
  const shown = loadImage(url);
  shown.catch(() => {});
  const resp = await fetch("/api/segment", {
    method: "POST",
    body: file,
    headers: { "X-Samfed-Viewer": "1", "X-File-Name": encodeURIComponent(file.name), "Content-Type": "application/octet-stream" },
  });
  let body;
  try {
    body = await resp.json();
  } catch {
    body = { error: `the viewer answered ${resp.status} without a reason` };
  }
  if (!resp.ok) throw new Error(body.error || `the viewer answered ${resp.status}`);
  let img;
  try {
    img = await shown;
  } catch (e) {
    throw new Error(`${file.name}: ${e.message}.`);
  }
  const r = { ...body, file, url, img, codes: await decodeMap(body), lut: probabilityTable(body.threshold) };
  prepare(r);
  state.results.push(r);
  addThumbnail(r);
  show(r);
  r.uploadToOverlayMs = performance.now() - t0;
  showTiming(r);
  $("detail").dataset.uploadToOverlayMs = r.uploadToOverlayMs.toFixed(1);
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
  $("detail").dataset.pending = "0";
}

// Cache the original pixels at the map's size (the map is the image's size unless it is very large).
function prepare(r) {
  const w = r.map_width, h = r.map_height;
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(r.img, 0, 0, w, h);
  r.base = ctx.getImageData(0, 0, w, h);
  r.thickness = Math.max(1, Math.round(Math.min(w, h) / 256));
  r.exactMap = w === r.width && h === r.height;
}

function threshold() {
  const r = state.current;
  const v = Number($("threshold").value);
  return r && Math.abs(v - r.threshold) < 0.005 ? r.threshold : v;
}

function updateMask(r, t) {
  if (r.maskThreshold === t) return;
  const q0 = firstForegroundCode(t, r);
  const n = r.codes.length;
  const mask = new Uint8Array(n);
  let area = 0, sum = 0;
  for (let i = 0; i < n; i++) {
    const q = r.codes[i];
    if (q >= q0) {
      mask[i] = 1;
      area++;
      sum += r.lut[q];
    }
  }
  r.mask = mask;
  r.edge = contour(mask, r.map_width, r.map_height, r.thickness);
  r.maskThreshold = t;
  if (!r.exactMap && t === r.threshold) {
    r.area = r.stats.area_px; // exact, computed at full size by the server
    r.areaFraction = r.stats.area_fraction;
    r.confidence = r.stats.mean_confidence === "" ? null : r.stats.mean_confidence;
  } else {
    r.area = Math.round((area * r.width * r.height) / n);
    r.areaFraction = area / n;
    r.confidence = area ? sum / area : null;
  }
}

function render() {
  const r = state.current;
  if (!r) return;
  const t = threshold();
  updateMask(r, t);
  const alpha = Number($("opacity").value);
  const fill = $("fill").checked, outline = $("outline").checked;
  const out = new ImageData(new Uint8ClampedArray(r.base.data), r.map_width, r.map_height);
  const d = out.data;
  for (let i = 0; i < r.mask.length; i++) {
    if (!r.mask[i]) continue;
    const j = 4 * i;
    if (outline && r.edge[i]) {
      d[j] = CONTOUR[0]; d[j + 1] = CONTOUR[1]; d[j + 2] = CONTOUR[2];
    } else if (fill) {
      d[j] += (TINT[0] - d[j]) * alpha;
      d[j + 1] += (TINT[1] - d[j + 1]) * alpha;
      d[j + 2] += (TINT[2] - d[j + 2]) * alpha;
    }
  }
  const canvas = $("overlay");
  canvas.width = r.map_width;
  canvas.height = r.map_height;
  canvas.getContext("2d").putImageData(out, 0, 0);
  $("threshold-value").textContent = t.toFixed(2);
  $("opacity-value").textContent = alpha.toFixed(2);
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
  original.width = r.map_width;
  original.height = r.map_height;
  original.getContext("2d").putImageData(r.base, 0, 0);
  $("threshold").value = r.threshold;
  $("image-name").textContent = r.name;
  $("image-size").textContent = `${r.width} × ${r.height} px`;
  $("detail").dataset.name = r.name;
  for (const el of document.querySelectorAll("#uploads figure")) el.classList.toggle("selected", el.result === r);
  render();
  showTiming(r);
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

function downloadMask() {
  const r = state.current;
  if (!r) return;
  const c = document.createElement("canvas");
  c.width = r.map_width;
  c.height = r.map_height;
  const ctx = c.getContext("2d");
  const im = ctx.createImageData(c.width, c.height);
  for (let i = 0; i < r.mask.length; i++) {
    const v = r.mask[i] ? 255 : 0;
    im.data[4 * i] = im.data[4 * i + 1] = im.data[4 * i + 2] = v;
    im.data[4 * i + 3] = 255;
  }
  ctx.putImageData(im, 0, 0);
  download(c, `${stem(r.name)}_mask.png`);
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
    $("detail").dataset.pending = "1";
    await analyseAll(input.files);
    input.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    $("detail").dataset.pending = "1";
    analyseAll(e.dataTransfer ? e.dataTransfer.files : []);
  });
  for (const id of ["opacity", "threshold", "fill", "outline"]) $(id).addEventListener("input", render);
  $("model-threshold").addEventListener("click", () => {
    if (state.current) $("threshold").value = state.current.threshold;
    render();
  });
  $("download-mask").addEventListener("click", downloadMask);
  $("download-overlay").addEventListener("click", () => state.current && download($("overlay"), `${stem(state.current.name)}_overlay.png`));
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
