// Runs the public conformance cases of the supported ops in the page and checks them
// against the expected tensors (|got - want| <= atol + rtol * |want|, NaN where NaN; for
// the LayerNorm family also against the exact float64 result, as FORMAT.md allows).
// The result lands in window.testResult for tests/run.mjs.
import init, { Gpu, SafetensorsFile, supportedOps } from "../pkg/wgpu_embed_web.js";
import { runCase, compare } from "./cases.js";

const logEl = document.getElementById("log");
const log = (line, cls) => {
  const span = document.createElement("span");
  if (cls) span.className = cls;
  span.textContent = line + "\n";
  logEl.append(span);
};

async function main() {
  await init();
  const params = new URLSearchParams(location.search);
  const options = params.has("maxBindingSize") ? { maxBindingSize: Number(params.get("maxBindingSize")) } : undefined;
  const gpu = await Gpu.create(options);
  const adapter = gpu.adapterInfo();
  log(`adapter: ${adapter.name || "(unnamed)"} (${adapter.backend}), max binding ${adapter.maxBindingSize} bytes`);
  const response = await fetch(params.get("cases") ?? "/reference/forward.safetensors");
  if (!response.ok) throw new Error(`cannot fetch the case file: HTTP ${response.status}`);
  const file = new SafetensorsFile(new Uint8Array(await response.arrayBuffer()));
  const ops = new Set(supportedOps());
  const cases = JSON.parse(file.metadata().cases).filter((c) => ops.has(c.op));
  const result = { adapter, passed: 0, failed: 0, failures: [], ops: {} };
  for (const c of cases) {
    let problem = null;
    const t0 = performance.now();
    try {
      const outputs = await runCase(gpu, file, c);
      if (c.expect_error) {
        problem = `accepted an input that must be refused (${c.reference_error})`;
      } else {
        const exact = file.exactNorm(c.id);
        for (const name of c.outputs) {
          problem = compare(c, outputs[name], file, `${c.id}/expected/${name}`, name, exact);
          if (problem) break;
        }
      }
    } catch (e) {
      if (!c.expect_error) problem = `refused: ${e?.message ?? e}`;
      else if (!(e instanceof Error) || !e.message) problem = `refused without a message: ${e}`;
      else if (e instanceof WebAssembly.RuntimeError) problem = `wasm trap instead of an error: ${e.message}`;
    }
    const ms = (performance.now() - t0).toFixed(1);
    result.ops[c.op] ??= { passed: 0, failed: 0 };
    if (problem) {
      result.failed++;
      result.ops[c.op].failed++;
      result.failures.push(`${c.id} [${c.op}]: ${problem}`);
      log(`FAIL ${c.id} [${c.op}]: ${problem}`, "fail");
    } else {
      result.passed++;
      result.ops[c.op].passed++;
      log(`ok   ${c.id} [${c.op}]${c.expect_error ? " (refused, as expected)" : ""} ${ms} ms`);
    }
  }
  log(`${result.passed} passed, ${result.failed} failed`);
  return result;
}

main().then(
  (r) => (window.testResult = r),
  (e) => {
    log(`error: ${e?.message ?? e}`, "fail");
    window.testResult = { error: String(e?.message ?? e), passed: 0, failed: 1, failures: [String(e?.message ?? e)] };
  },
);
