// wgpu-embed-web beside onnxruntime-web's WebGPU execution provider, in headless Chromium
// over SwiftShader, on one GPUDevice: the same table, indices and inputs, each call
// timed alone (upload, dispatch, read-back to JS), the two libraries alternated.
//
//   node bench/peers.mjs [--reps 15] [--n 16,4096]   (in web/, after wasm-pack build)
//
// Makes the graphs with make_peer_graphs.py (the onnx package), prints the table and
// writes it to examples/bench-results/peers-web.md.
import fs from "node:fs";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { runBenchPage } from "./page.mjs";

const webDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const reps = arg("reps", "15");
const sizes = arg("n", "16,4096");
const graphs = path.resolve(webDir, "..", "target", "web-artifacts", "peers");
execFileSync("python3", [path.join(webDir, "bench", "make_peer_graphs.py"), graphs], { stdio: "inherit" });

const result = await runBenchPage(`/bench/peers.html?reps=${reps}&n=${sizes}`);
if (!result.ok) {
  console.error(`peer bench failed: ${result.error}`);
  process.exit(1);
}

let md = `Adapter: **${result.adapter}** in headless Chromium (SwiftShader); onnxruntime-web ${result.ort}, WebGPU EP (JS backend), on our GPUDevice (\`gpu.sharedAdapter()\`). Table ${result.rowsInTable} x ${result.rows[0].d}; wall ms per call (indices or input from JS, dispatch, output read back to JS), median of ${result.reps}, the two alternated.\n\n`;
md += "| op | n | ours ms | theirs ms | ours / theirs (time) |\n|---|---|---|---|---|\n";
for (const r of result.rows) md += `| ${r.name} | ${r.n} | ${r.oursMs.toFixed(2)} | ${r.theirsMs.toFixed(2)} | ${(r.oursMs / r.theirsMs).toFixed(2)} |\n`;
const q = result.rows.find((r) => r.wrapped > 0);
md += `\nLayerNorm of rows 1000 + 3 sin(j), max |error| against float64: ours ${result.offsetRows.ours.toExponential(1)}, theirs ${result.offsetRows.theirs.toExponential(1)}.\n`;
if (q) md += `onnxruntime-web's GatherBlockQuantized wraps values below the zero point (${q.wrapped} of ${q.values} at n = ${q.n}; unsigned q - zero_point); they are left out of the value check, the timing is unaffected.\n`;
const out = path.resolve(webDir, "..", "examples", "bench-results", "peers-web.md");
fs.writeFileSync(out, md);
console.log(`\n${md}\nwritten to ${path.relative(process.cwd(), out)}`);
