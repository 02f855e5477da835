// The pipelines section of the bench in headless Chromium over SwiftShader: runs
// bench/pipelines.html and puts its rows (`pipeline_chromium_*`, the native bench's
// columns) into examples/bench-results/results.csv, replacing the browser's rows of an
// earlier run and keeping the native ones; writes the table to
// examples/bench-results/pipelines-web.md.
//
//   node bench/pipelines.mjs [--reps 15]   (in web/, after wasm-pack build)
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { runBenchPage } from "./page.mjs";

const webDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const i = process.argv.indexOf("--reps");
const reps = i > 0 ? process.argv[i + 1] : "15";

const result = await runBenchPage(`/bench/pipelines.html?reps=${reps}`);
if (!result.ok) {
  console.error(`pipelines bench failed: ${result.error}`);
  process.exit(1);
}

const results = path.resolve(webDir, "..", "examples", "bench-results");
const csvPath = path.join(results, "results.csv");
const header =
  "kernel,rows,dim,bag,dist,bytes,gpu_ms,wall_ms,gpu_gbps,copy_gbps,ratio_to_copy,cpu_ms,cpu_gbps,gpu_speedup_vs_cpu,submissions,waits,wall_us,floor_us,dispatches";
const kept = fs.existsSync(csvPath)
  ? fs.readFileSync(csvPath, "utf8").split("\n").slice(1).filter((l) => l && !l.startsWith("pipeline_chromium_"))
  : [];
const ours = result.rows.map(
  (r) => `${r.name},,,,,,,,,,,,,,${r.submissions},${r.waits},${r.wallUs.toFixed(1)},${r.floorUs.toFixed(1)},${r.dispatches}`,
);
fs.writeFileSync(csvPath, [header, ...kept, ...ours].join("\n") + "\n");

let md = `Adapter: **${result.adapter}** in headless Chromium (SwiftShader). Recorded pipelines, one call of each (median of ${result.reps} wall times until the device finished; reads included), against the floor: one dispatch of a one-word copy plus its read-back in one submission, same page, same device (measured after each pipeline's runs).\n\n`;
md += "| pipeline | submissions | waits | dispatches | µs | floor µs | × floor |\n|---|---|---|---|---|---|---|\n";
for (const r of result.rows) {
  md += `| ${r.name} | ${r.submissions} | ${r.waits} | ${r.dispatches} | ${r.wallUs.toFixed(0)} | ${r.floorUs.toFixed(0)} | ${(r.wallUs / r.floorUs).toFixed(2)} |\n`;
}
fs.writeFileSync(path.join(results, "pipelines-web.md"), md);
console.log(`\n${md}\nrows written to ${path.relative(process.cwd(), csvPath)}`);
