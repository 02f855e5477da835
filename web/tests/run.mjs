// Browser tests: headless Debian Chromium with WebGPU over SwiftShader, driven by
// playwright-core, against pages served on 127.0.0.1. Fails (never skips) when the
// browser gives no WebGPU adapter. Keeps screenshots of the demo pages in
// target/web-artifacts/ (repository root).
//
//   node tests/run.mjs            (after `wasm-pack build --target web && node build-package.mjs` in web/)
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";
import { launchChromium } from "./browser.mjs";
import { startServer, sharedDir } from "./serve.mjs";

const webDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const artifacts = path.resolve(webDir, "..", "target", "web-artifacts");
const PAGE_TIMEOUT_MS = 240_000;

let failures = 0;
const fail = (msg) => {
  failures++;
  console.log(`FAIL ${msg}`);
};

if (!fs.existsSync(path.join(webDir, "pkg", "wgpu_embed_web.js"))) {
  console.error("web/pkg is missing: run `wasm-pack build --target web` in web/ first");
  process.exit(1);
}
// The shared conformance suite runs too when it is there (../shared or $WGPU_EMBED_SHARED).
const withShared = fs.existsSync(path.join(sharedDir, "conformance", "public.safetensors"));
if (!withShared) console.log(`(no shared suite at ${sharedDir}: the repository's reference cases only)`);
fs.mkdirSync(artifacts, { recursive: true });

const server = await startServer(0);
const base = `http://127.0.0.1:${server.address().port}`;
const context = await launchChromium();

/** Opens `url`, waits for `window[key]`, and returns it; page errors count as failures. */
async function runPage(name, url, key) {
  const page = await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") console.log(`  [${name} console] ${m.text()}`);
  });
  const t0 = Date.now();
  await page.goto(base + url);
  let result;
  try {
    await page.waitForFunction((k) => window[k] !== undefined, key, { timeout: PAGE_TIMEOUT_MS, polling: 200 });
    result = await page.evaluate((k) => window[k], key);
  } catch (e) {
    result = { error: `no result within ${PAGE_TIMEOUT_MS / 1000} s: ${e.message.split("\n")[0]}` };
  }
  for (const e of pageErrors) fail(`${name}: uncaught page error (a wasm trap?): ${e}`);
  console.log(`== ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  return { page, result };
}

try {
  // 1. WebGPU must be there: no adapter is a failure, not a skip.
  {
    const { page, result } = await runPage("adapter", "/tests/adapter.html", "testResult");
    if (!result?.ok) fail(`no WebGPU adapter in Chromium: ${result?.error ?? JSON.stringify(result)}`);
    else console.log(`  adapter: ${JSON.stringify(result.info)}`);
    await page.close();
  }

  // 2. Public conformance cases of the supported ops, in the page, also with every table split.
  // The training file's cases of the supported ops (backward passes, optimizer steps,
  // top-k retrieval), the same way.
  const forward = ["embedding", "embedding_bag"];
  const backward = [
    "embedding_backward",
    "embedding_bag_backward",
    "layer_norm_backward",
    "stable_embedding_backward",
    "embedding_sum_layer_norm_backward",
    "optimizer_step",
    "sparse_optimizer_step",
    "inner_product_topk",
  ];
  const suites = [
    ["reference", "/reference/forward.safetensors", "/reference/training.safetensors"],
    ...(withShared ? [["shared", "/shared/conformance/public.safetensors", "/shared/conformance/training.safetensors"]] : []),
  ];
  const runs = suites.flatMap(([suite, forwardFile, trainingFile]) => [
    [`${suite} cases`, `?cases=${forwardFile}`, forward],
    [`${suite} cases, 1 MiB bindings`, `?cases=${forwardFile}&maxBindingSize=1048576`, forward],
    [`${suite} backward cases`, `?cases=${trainingFile}`, backward],
    [`${suite} backward cases, 1 MiB bindings`, `?cases=${trainingFile}&maxBindingSize=1048576`, backward],
  ]);
  // Training parity: bitsandbytes' optimizer rules and the axial backward, both limits.
  const parity = ["layer_optimizer_steps", "optimizer_step", "axial_position_embedding_backward"];
  runs.push(["reference parity cases", "?cases=/reference/parity.safetensors", parity]);
  runs.push(["reference parity cases, 1 MiB bindings", "?cases=/reference/parity.safetensors&maxBindingSize=1048576", parity]);
  // Table-batched bags (tests/reference/OPS.md), both limits.
  runs.push(["reference tbe cases", "?cases=/reference/tbe.safetensors", ["tbe_forward"]]);
  runs.push(["reference tbe cases, 1 MiB bindings", "?cases=/reference/tbe.safetensors&maxBindingSize=1048576", ["tbe_forward"]]);
  const tbeTraining = ["tbe_backward", "tbe_step"];
  runs.push(["reference tbe training cases", "?cases=/reference/tbe_training.safetensors", tbeTraining]);
  runs.push(["reference tbe training cases, 1 MiB bindings", "?cases=/reference/tbe_training.safetensors&maxBindingSize=1048576", tbeTraining]);
  for (const [name, query, ops] of runs) {
    const { page, result } = await runPage(name, `/tests/conformance.html${query}`, "testResult");
    if (result.error) fail(`${name}: ${result.error}`);
    for (const f of result.failures ?? []) fail(`${name}: ${f}`);
    console.log(`  ${result.passed} passed, ${result.failed} failed; by op: ${JSON.stringify(result.ops ?? {})}`);
    for (const op of ops) {
      if (!(result.ops?.[op]?.passed > 0)) fail(`${name}: no ${op} case passed`);
    }
    await page.close();
  }

  // The README's JavaScript quick start, run as it is written: tests/quickstart.js holds
  // the README's block line for line (checked here), the page runs it.
  {
    const readme = fs.readFileSync(path.join(webDir, "..", "README.md"), "utf8");
    const block = readme.match(/```js\n([\s\S]*?)```/)?.[1] ?? "";
    const source = fs.readFileSync(path.join(webDir, "tests", "quickstart.js"), "utf8");
    const missing = block.split("\n").filter((line) => line.trim() && !source.includes(line));
    if (!block) fail("quickstart: README.md has no ```js block");
    for (const line of missing) fail(`quickstart: tests/quickstart.js lacks the README's line ${JSON.stringify(line)}`);
    const { page, result } = await runPage("quickstart", "/tests/quickstart.html", "quickstartResult");
    if (!result?.ok) fail(`quickstart: ${result?.error ?? JSON.stringify(result)}`);
    else console.log(`  the README's quick start gave ${JSON.stringify(result.values)}`);
    await page.close();
  }

  // 3. The JS API itself: values, errors as exceptions, tensors kept and released.
  {
    const { page, result } = await runPage("api", "/tests/api.html", "testResult");
    if (result.error) fail(`api: ${result.error}`);
    for (const t of result.tests ?? []) {
      if (t.ok) console.log(`  ok   ${t.name}`);
      else fail(`api: ${t.name}: ${t.message}`);
    }
    if (!(result.tests?.length > 0)) fail("api: no test ran");
    await page.close();
  }

  // 4. The demo page runs by itself; its screenshot is kept.
  {
    const { page, result } = await runPage("demo", "/index.html?autorun", "demoResult");
    if (!result?.ok) fail(`demo: ${result?.error ?? JSON.stringify(result)}`);
    else console.log(`  demo: ${JSON.stringify(result)}`);
    const shot = path.join(artifacts, "demo.png");
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`  screenshot: ${shot}`);
    await page.close();
  }

  // 5. The semantic-search page: the real checkpoint's word embeddings, a quantized
  // corpus table and a Retriever; its screenshot is kept.
  {
    const { page, result } = await runPage("search demo", "/search.html?autorun", "searchResult");
    if (!result?.ok) fail(`search demo: ${result?.error ?? JSON.stringify(result)}`);
    else {
      const top = result.hits[0];
      console.log(`  ${result.corpus} sentences ready in ${result.readyMs.toFixed(0)} ms; "${result.query}" in ${result.ms.toFixed(1)} ms:`);
      for (const h of result.hits) console.log(`    ${h.score.toFixed(3)}  ${h.name}: ${h.text}`);
      if (result.hits.length !== 5) fail(`search demo: ${result.hits.length} hits, expected 5`);
      if (!/line/i.test(top.text)) fail(`search demo: the best hit for "${result.query}" is about something else: ${top.text}`);
      if (result.hits.some((h, i) => i > 0 && h.score > result.hits[i - 1].score)) fail("search demo: hits not in descending order");
      const { firstMs, warmMs, floorMs, dispatches } = result;
      console.log(`  first query ${firstMs.toFixed(1)} ms, warm ${warmMs.toFixed(1)} ms (${(firstMs / warmMs).toFixed(2)}x), floor ${floorMs.toFixed(2)} ms (warm ${(warmMs / floorMs).toFixed(1)}x), ${dispatches} dispatches a query`);
      // Pipelines are made while the page loads: the first query is not the slowest by far.
      if (!(firstMs <= 2 * warmMs)) fail(`search demo: the first query took ${firstMs.toFixed(1)} ms, over twice the warm ${warmMs.toFixed(1)} ms`);
    }
    const shot = path.join(artifacts, "search.png");
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`  screenshot: ${shot}`);
    await page.close();
  }

  // 6. The npm package through a bundler: web/pkg packed by npm, the tarball installed
  // into a scratch project, a page importing "wgpu-embed-web" by name bundled by esbuild.
  {
    const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "wgpu-embed-bundler-"));
    const npm = (args, cwd) => execFileSync("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], { cwd }).toString();
    const tgz = npm(["pack", "--pack-destination", scratch], path.join(webDir, "pkg")).trim().split("\n").pop();
    fs.writeFileSync(path.join(scratch, "package.json"), JSON.stringify({ name: "bundler-test", private: true, type: "module" }));
    npm(["install", path.join(scratch, tgz)], scratch);
    fs.copyFileSync(path.join(webDir, "tests", "bundler", "main.js"), path.join(scratch, "main.js"));
    const outdir = path.join(webDir, "tests", "bundler-dist");
    fs.rmSync(outdir, { recursive: true, force: true });
    await esbuild.build({
      entryPoints: [path.join(scratch, "main.js")],
      absWorkingDir: scratch,
      bundle: true,
      format: "esm",
      outdir,
      loader: { ".wasm": "file" },
      logLevel: "error",
    });
    const { page, result } = await runPage("bundler (npm pack, esbuild)", "/tests/bundler.html", "testResult");
    if (!result?.ok) fail(`bundler: ${result?.error ?? JSON.stringify(result)}`);
    else console.log(`  ${tgz} installed and bundled; ${result.values} values right; wasm served as ${result.wasm}`);
    await page.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  }

  // 7. The layers in a Web Worker give what they give on the main thread.
  {
    const { page, result } = await runPage("worker", "/tests/worker.html", "testResult");
    if (!result?.ok) fail(`worker: ${result?.error ?? JSON.stringify(result)}`);
    else console.log(`  lookup (${result.lookupValues} values) and mean bag (${result.bagValues}) identical in the worker`);
    await page.close();
  }

  // 8. A safetensors file of over 300 MB streamed from a fetch Response to the GPU,
  // tensor by tensor, with progress events (the file is written here, then removed).
  {
    const file = path.join(artifacts, "stream.safetensors");
    const tensors = { big: ["F32", [300_000, 256], 4], small: ["F16", [1_001, 7], 2] };
    const header = {};
    let offset = 0;
    for (const [name, [dtype, shape, size]] of Object.entries(tensors)) {
      const bytes = shape[0] * shape[1] * size;
      header[name] = { dtype, shape, data_offsets: [offset, offset + bytes] };
      offset += bytes;
    }
    let json = Buffer.from(JSON.stringify(header));
    json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
    const fd = fs.openSync(file, "w");
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    fs.writeSync(fd, len);
    fs.writeSync(fd, json);
    // Element i of each tensor is (i % 1009) / 4, exact in f32 and f16.
    const f16 = (x) => {
      if (x === 0) return 0;
      const e = Math.floor(Math.log2(x));
      return ((e + 15) << 10) | Math.round((x / 2 ** e - 1) * 1024);
    };
    for (const [name, [dtype, shape]] of Object.entries(tensors)) {
      const n = shape[0] * shape[1];
      const piece = 1 << 20;
      for (let i0 = 0; i0 < n; i0 += piece) {
        const m = Math.min(piece, n - i0);
        const arr = dtype === "F32" ? new Float32Array(m) : new Uint16Array(m);
        for (let j = 0; j < m; j++) arr[j] = dtype === "F32" ? ((i0 + j) % 1009) / 4 : f16(((i0 + j) % 1009) / 4);
        fs.writeSync(fd, Buffer.from(arr.buffer));
      }
      if (name === "big") console.log(`  wrote ${(fs.fstatSync(fd).size / 2 ** 20).toFixed(0)} MiB so far`);
    }
    fs.closeSync(fd);
    const size = fs.statSync(file).size;
    const { page, result } = await runPage("streamed safetensors", "/tests/stream.html", "testResult");
    if (!result?.ok) fail(`stream: ${result?.error ?? JSON.stringify(result)}`);
    else {
      console.log(`  ${(size / 1e6).toFixed(0)} MB in ${result.ms.toFixed(0)} ms, ${result.events} progress events, tensors ${result.names}; JS heap after: ${result.heap === null ? "n/a" : (result.heap / 1e6).toFixed(0) + " MB"}`);
      if (size < 300e6) fail(`stream: the file has only ${size} bytes`);
      if (result.total !== size || result.loaded !== size) fail(`stream: progress ended at ${result.loaded} of ${result.total}, the file has ${size}`);
      if (!(result.events >= 10) || !result.monotonic) fail(`stream: ${result.events} progress events, monotonic: ${result.monotonic}`);
    }
    await page.close();
    fs.rmSync(file, { force: true });
  }

  // 9. GPU interop: the BERT block's output buffer fed to an onnxruntime-web session
  // (an encoder layer made by make_encoder.py with the onnx package) on our device.
  {
    const model = path.join(artifacts, "encoder.onnx");
    execFileSync("python3", [path.join(webDir, "tests", "make_encoder.py"), model], { stdio: "inherit" });
    const { page, result } = await runPage("ONNX Runtime Web interop", "/tests/ort.html", "testResult");
    if (!result?.ok) fail(`ort: ${result?.error ?? JSON.stringify(result)}`);
    else console.log(`  onnxruntime-web ${result.ortVersion}: [1, ${result.tokens}, ${result.dim}] from our GPUBuffer = from host values (max |diff| ${result.maxDiff}); the layer moved values by up to ${result.moved.toFixed(2)}`);
    await page.close();
  }
} finally {
  await context.close();
  server.close();
}

console.log(failures ? `browser tests: ${failures} failure(s)` : "browser tests: all passed");
process.exit(failures ? 1 : 0);
