// The bundler test's entry: imports the package by name, as an application would; run.mjs
// packs web/pkg, installs the tarball into a scratch project and bundles this with
// esbuild (the .wasm as a file asset). Leaves its result in window.testResult.
import init, { Gpu } from "wgpu-embed-web";
import wasmUrl from "wgpu-embed-web/wgpu_embed_web_bg.wasm";

async function main() {
  // esbuild's file loader gives a path relative to the bundle: resolve it against it.
  await init({ module_or_path: new URL(wasmUrl, import.meta.url) });
  const gpu = await Gpu.create();
  const [v, d] = [100, 8];
  const table = Float32Array.from({ length: v * d }, (_, i) => i * 0.5);
  const bag = gpu.embeddingBag(await gpu.tensor(table, [v, d]), { mode: "sum" });
  const out = await (await bag.forward(new Int32Array([1, 2, 99]), new Int32Array([0, 2]))).toFloat32Array();
  // Bag 0 = rows 1 + 2, bag 1 = row 99.
  const want = [...Array(d).keys()].map((c) => (8 + c) * 0.5 + (16 + c) * 0.5).concat([...Array(d).keys()].map((c) => (792 + c) * 0.5));
  const bad = want.findIndex((w, i) => w !== out[i]);
  return bad < 0 ? { ok: true, values: out.length, wasm: String(wasmUrl) } : { ok: false, error: `value ${bad}: ${out[bad]} expected ${want[bad]}` };
}

main().then(
  (r) => (window.testResult = r),
  (e) => (window.testResult = { ok: false, error: String(e?.message ?? e) }),
);
