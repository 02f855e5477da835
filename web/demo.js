// The demo page: uploads a table, runs lookups and bags on the GPU through the
// package, and shows the adapter, the timings and the results. With `?autorun` it
// runs everything once by itself and leaves a summary in window.demoResult (the
// browser tests screenshot the page afterwards).
import init, { Gpu, SafetensorsFile } from "./pkg/wgpu_embed_web.js";

const $ = (id) => document.getElementById(id);
const autorun = new URLSearchParams(location.search).has("autorun");
let gpu = null;
let weight = null; // the table, on the GPU
let shape = null;
let file = null;

function showError(e) {
  $("errors").textContent = `⚠ ${e?.message ?? e}`;
}
function clearError() {
  $("errors").textContent = "";
}
const ms = (t) => `${t < 10 ? t.toFixed(2) : t.toFixed(1)} ms`;
const fmt = (x) => (x >= 0 ? " " : "") + x.toFixed(4);

function setAdapter(rows) {
  const dl = $("adapter");
  dl.replaceChildren();
  for (const [k, v] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
}

/** A table whose rows are smooth colourful waves, so that lookups are easy to see. */
function makeTable(v, d) {
  const t = new Float32Array(v * d);
  for (let r = 0; r < v; r++) {
    const f = 0.05 + (r % 97) / 97, p = r * 0.61803;
    for (let c = 0; c < d; c++) t[r * d + c] = Math.sin(c * f + p) * Math.cos(c * 0.07 + r * 0.0013);
  }
  return t;
}

/** Paints `[n, d]` values as rows of coloured cells (blue < 0 < red). */
function heatmap(canvas, values, n, d) {
  const cell = Math.max(2, Math.min(24, Math.floor(960 / Math.max(d, 1))));
  const rowH = Math.max(8, Math.min(22, cell));
  canvas.width = d * cell;
  canvas.height = Math.max(1, n) * rowH;
  const g = canvas.getContext("2d");
  let max = 1e-12;
  for (const x of values) max = Math.max(max, Math.abs(x));
  for (let i = 0; i < n; i++)
    for (let c = 0; c < d; c++) {
      const x = values[i * d + c] / max;
      const a = Math.min(1, Math.abs(x));
      g.fillStyle = x >= 0 ? `rgb(${40 + 215 * a},${40 + 60 * a},${60})` : `rgb(${40},${80 + 100 * a},${60 + 195 * a})`;
      g.fillRect(c * cell, i * rowH, cell - 1, rowH - 1);
    }
}

function showValues(el, labels, values, d) {
  const cols = Math.min(d, 8);
  const lines = labels.map((label, i) => {
    const row = Array.from(values.subarray(i * d, i * d + cols), fmt).join(" ");
    return `${label.padEnd(14)} [${row}${d > cols ? ` … (${d} values)` : ""}]`;
  });
  el.textContent = lines.join("\n");
}

function parseIndices(text) {
  const parts = text.split(/[\s,]+/).filter(Boolean);
  return parts.map((p) => {
    const n = Number(p);
    if (!Number.isInteger(n)) throw new Error(`${JSON.stringify(p)} is not an integer index`);
    return n;
  });
}

async function upload(values, v, d, label) {
  weight?.release();
  weight = null;
  const t0 = performance.now();
  weight = await gpu.tensor(values, [v, d]);
  const t = performance.now() - t0;
  shape = [v, d];
  $("table-info").textContent =
    `${label}: ${v.toLocaleString()} × ${d} f32 (${(weight.gpuBytes / 1e6).toFixed(1)} MB on the GPU, ` +
    `${weight.segments} buffer${weight.segments > 1 ? "s" : ""}), uploaded in ${ms(t)}`;
  return t;
}

async function lookup() {
  clearError();
  const idx = parseIndices($("indices").value);
  const emb = gpu.embedding(weight);
  const t0 = performance.now();
  const out = await emb.forward(Int32Array.from(idx));
  const values = await out.toFloat32Array();
  const t = performance.now() - t0;
  out.release();
  emb.free();
  const d = shape[1];
  $("lookup-timing").textContent = `${idx.length} rows looked up on ${adapterName()} in ${ms(t)} (forward + read-back)`;
  heatmap($("lookup-heat"), values, idx.length, d);
  showValues($("lookup-values"), idx.map((i) => `row ${i}`), values, d);
  return { ms: t, first: Array.from(values.subarray(0, 4)) };
}

async function bags() {
  clearError();
  const groups = $("bags").value.split("|").map((g) => parseIndices(g));
  const input = groups.flat();
  const offsets = [];
  let at = 0;
  for (const g of groups) (offsets.push(at), (at += g.length));
  const mode = $("mode").value;
  const bag = gpu.embeddingBag(weight, { mode });
  const t0 = performance.now();
  const out = await bag.forward(Int32Array.from(input), Int32Array.from(offsets));
  const values = await out.toFloat32Array();
  const t = performance.now() - t0;
  out.release();
  bag.free();
  const d = shape[1];
  $("bag-timing").textContent = `${groups.length} bags (${input.length} rows, ${mode}) reduced on ${adapterName()} in ${ms(t)}`;
  heatmap($("bag-heat"), values, groups.length, d);
  showValues($("bag-values"), groups.map((g) => `${mode}(${g.join(",")})`.slice(0, 14)), values, d);
  return { ms: t, first: Array.from(values.subarray(0, 4)) };
}

async function bench() {
  clearError();
  const n = Number($("batch").value), runs = Number($("runs").value);
  const idx = new Int32Array(n);
  for (let i = 0; i < n; i++) idx[i] = (i * 2654435761) % shape[0];
  const emb = gpu.embedding(weight);
  const times = [];
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    const out = await emb.forward(idx);
    await out.toFloat32Array();
    times.push(performance.now() - t0);
    out.release();
  }
  emb.free();
  times.sort((a, b) => a - b);
  const median = times[times.length >> 1];
  const mb = (n * shape[1] * 4) / 1e6;
  $("bench-result").textContent =
    `${runs} × ${n.toLocaleString()} lookups: median ${ms(median)}, best ${ms(times[0])} ` +
    `(${((n / median) * 1000 / 1e6).toFixed(2)} M rows/s, ${(mb / median * 1000 / 1000).toFixed(2)} GB/s incl. read-back)`;
  return { medianMs: median };
}

let adapterLabel = "the GPU";
const adapterName = () => adapterLabel;

async function loadFile(f) {
  clearError();
  file = new SafetensorsFile(new Uint8Array(await f.arrayBuffer()));
  const names = file.names().filter((n) => {
    const i = file.info(n);
    return i.dtype === "F32" && i.shape.length === 2;
  });
  if (!names.length) throw new Error(`${f.name} holds no 2-D F32 tensor`);
  const sel = $("tensor-name");
  sel.replaceChildren(...names.map((n) => Object.assign(document.createElement("option"), { textContent: n })));
  sel.hidden = false;
  await useFileTensor(names[0], f.name);
}

async function useFileTensor(name, fileName = "file") {
  weight?.release();
  weight = null;
  const t0 = performance.now();
  weight = await file.upload(gpu, name);
  const t = performance.now() - t0;
  shape = weight.shape;
  $("table-info").textContent = `${fileName} / ${name}: ${shape[0].toLocaleString()} × ${shape[1]} f32, uploaded in ${ms(t)}`;
}

function guard(fn) {
  return async () => {
    const buttons = document.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    try {
      await fn();
    } catch (e) {
      showError(e);
    } finally {
      buttons.forEach((b) => (b.disabled = !gpu));
    }
  };
}

async function main() {
  document.querySelectorAll("button").forEach((b) => (b.disabled = true));
  if (!navigator.gpu) {
    const msg =
      "This browser has no WebGPU, so this demo cannot run its shaders. " +
      "Use a recent Chrome or Edge (113+), Safari 26+, or Firefox 141+ on Windows — or enable WebGPU in your browser's settings.";
    $("nogpu").textContent = msg;
    $("nogpu").hidden = false;
    setAdapter([["status", "no WebGPU in this browser"]]);
    return { ok: false, error: msg };
  }
  await init();
  try {
    gpu = await Gpu.create();
  } catch (e) {
    $("nogpu").textContent = `WebGPU is there, but no GPU adapter could be had: ${e.message}`;
    $("nogpu").hidden = false;
    setAdapter([["status", "no adapter"]]);
    return { ok: false, error: e.message };
  }
  const info = gpu.adapterInfo();
  const js = await navigator.gpu.requestAdapter();
  const ji = js?.info ?? {};
  adapterLabel = info.name || ji.description || [ji.vendor, ji.architecture].filter(Boolean).join(" ") || "the GPU";
  setAdapter([
    ["adapter", adapterLabel],
    ["vendor", [ji.vendor, ji.architecture].filter(Boolean).join(" / ") || "(hidden by the browser)"],
    ["backend", `${info.backend} (${info.deviceType})`],
    ["max binding", `${(info.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB per storage buffer`],
  ]);
  document.querySelectorAll("button").forEach((b) => (b.disabled = false));
  $("generate").onclick = guard(() => upload(makeTable(Number($("rows").value), Number($("dim").value)), Number($("rows").value), Number($("dim").value), "generated table"));
  $("lookup").onclick = guard(lookup);
  $("bag").onclick = guard(bags);
  $("bench").onclick = guard(bench);
  $("file").onchange = guard(() => loadFile($("file").files[0]));
  $("tensor-name").onchange = guard(() => useFileTensor($("tensor-name").value));

  const v = Number($("rows").value), d = Number($("dim").value);
  const uploadMs = await upload(makeTable(v, d), v, d, "generated table");
  const l = await lookup();
  const b = await bags();
  if (autorun) $("batch").value = 4096;
  const r = autorun ? await bench() : null;
  return { ok: true, adapter: adapterLabel, uploadMs, lookup: l, bag: b, bench: r };
}

main().then(
  (r) => (window.demoResult = r),
  (e) => {
    showError(e);
    window.demoResult = { ok: false, error: String(e?.message ?? e) };
  },
);
