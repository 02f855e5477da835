// README.md's JavaScript quick start, run as a browser test: tests/quickstart.html loads
// this module (its import map points "wgpu-embed-web" at ../pkg/wgpu_embed_web.js), and
// the page's result is window.quickstartResult: { ok: true, values } (the looked-up
// rows, then the pooled bags) or { ok: false, error }. Exports nothing.
//
// The import below and the body of quickstart() are the README's code block line for
// line, left unindented so that they stay byte-identical to it: change both together.
import init, { Gpu } from "wgpu-embed-web";

const EXPECTED = [4, 5, 6, 7, 8, 9, 10, 11, 36, 37, 38, 39, 6, 7, 8, 9, 36, 37, 38, 39];

async function quickstart() {
// ---- README.md's JavaScript quick start, from the line after its import ----
await init();                                                  // with a bundler: init({ module_or_path: wasmUrl })
const gpu = await Gpu.create();                                // rejects when the browser has no WebGPU
const table = Float32Array.from({ length: 10 * 4 }, (_, i) => i);   // 10 rows of 4: row r = 4r..4r+3
const weight = await gpu.tensor(table, [10, 4]);               // stays on the GPU
const emb = gpu.embedding(weight);                             // torch.nn.Embedding.from_pretrained
const out = await emb.forward(new Int32Array([1, 2, 9]), [3]); // [3, 4] on the GPU
const rows = await out.toFloat32Array();                       // 4, 5, 6, 7, 8, 9, 10, 11, 36, 37, 38, 39
const bag = gpu.embeddingBag(weight, { mode: "mean" });        // torch.nn.EmbeddingBag(mode="mean")
const pooled = await (await bag.forward(new Int32Array([1, 2, 9]), new Int32Array([0, 2]))).toFloat32Array();
console.log(rows, pooled);                                     // pooled: 6, 7, 8, 9, 36, 37, 38, 39
out.release(); emb.free(); bag.free(); weight.release();       // free GPU memory now rather than at GC
// ---- end of the README's code block ----
  return [...rows, ...pooled];
}

async function run() {
  try {
    const values = await quickstart();
    const same = values.length === EXPECTED.length && values.every((x, i) => x === EXPECTED[i]);
    if (!same) throw new Error(`the quick start gave ${JSON.stringify(values)}, expected ${JSON.stringify(EXPECTED)}`);
    window.quickstartResult = { ok: true, values };
  } catch (e) {
    window.quickstartResult = { ok: false, error: String(e) };
  }
  const log = document.getElementById("log");
  if (log) log.textContent = JSON.stringify(window.quickstartResult);
}

run();
