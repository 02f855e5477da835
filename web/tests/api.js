// Tests of the package's JS API on the page's WebGPU device, against small CPU
// references written here: values, index types, split tables, errors as exceptions
// (with the library's message, never a wasm trap), tensors kept and released.
import init, { Gpu } from "../pkg/wgpu_embed_web.js";

const logEl = document.getElementById("log");
const tests = [];
const test = (name, fn) => tests.push({ name, fn });

function assert(cond, message) {
  if (!cond) throw new Error(message);
}
function assertClose(got, want, what, tol = 1e-5) {
  assert(got.length === want.length, `${what}: ${got.length} values, expected ${want.length}`);
  for (let i = 0; i < want.length; i++) {
    assert(Math.abs(got[i] - want[i]) <= tol + tol * Math.abs(want[i]), `${what}[${i}] = ${got[i]}, expected ${want[i]}`);
  }
}
async function assertThrows(promiseOrFn, pattern, what) {
  let error = null;
  try {
    await (typeof promiseOrFn === "function" ? promiseOrFn() : promiseOrFn);
  } catch (e) {
    error = e;
  }
  assert(error, `${what}: no exception`);
  assert(!(error instanceof WebAssembly.RuntimeError), `${what}: a wasm trap (${error.message}), expected an Error`);
  assert(error instanceof Error, `${what}: threw ${error}, expected an Error`);
  assert(pattern.test(error.message), `${what}: message ${JSON.stringify(error.message)} does not match ${pattern}`);
  return error;
}

/** A deterministic table: row r, column c holds values no two rows share. */
function table(v, d) {
  const t = new Float32Array(v * d);
  for (let r = 0; r < v; r++) for (let c = 0; c < d; c++) t[r * d + c] = Math.sin(r * 1.7 + c * 0.31) * (1 + r / v);
  return t;
}
const rowOf = (t, d, r) => Array.from(t.subarray(r * d, (r + 1) * d));
function lookupRef(t, d, idx) {
  return idx.flatMap((r) => rowOf(t, d, Number(r)));
}
function bagRef(t, d, idx, offsets, mode, paddingIdx = null) {
  const out = [];
  for (let b = 0; b < offsets.length; b++) {
    const lo = offsets[b], hi = b + 1 < offsets.length ? offsets[b + 1] : idx.length;
    const rows = idx.slice(lo, hi).filter((r) => r !== paddingIdx);
    for (let c = 0; c < d; c++) {
      const col = rows.map((r) => t[r * d + c]);
      if (mode === "sum") out.push(col.reduce((a, x) => a + x, 0));
      if (mode === "mean") out.push(col.length ? col.reduce((a, x) => a + x, 0) / col.length : 0);
      if (mode === "max") out.push(col.length ? Math.max(...col) : 0);
    }
  }
  return out;
}

let gpu;
const V = 37, D = 5;
const T = table(V, D);

test("Embedding with Int32Array, BigInt64Array and number[] indices of any shape", async () => {
  const weight = await gpu.tensor(T, [V, D]);
  assert(JSON.stringify(weight.shape) === JSON.stringify([V, D]) && weight.dtype === "F32", `weight ${weight.shape} ${weight.dtype}`);
  const emb = gpu.embedding(weight);
  assert(emb.numEmbeddings === V && emb.embeddingDim === D, "layer sizes");
  const idx = [0, 36, 5, 5, 17, 2];
  for (const given of [Int32Array.from(idx), BigInt64Array.from(idx.map(BigInt)), idx]) {
    const out = await emb.forward(given, [2, 3]);
    assert(JSON.stringify(out.shape) === JSON.stringify([2, 3, D]), `shape ${out.shape}`);
    assertClose(await out.toFloat32Array(), lookupRef(T, D, idx), `lookup via ${given.constructor.name}`, 0);
    out.release();
  }
  emb.free();
  weight.release();
});

test("EmbeddingBag sum / mean / max with offsets and padding_idx, and 2-D input", async () => {
  const weight = await gpu.tensor(T, [V, D]);
  const idx = [1, 2, 3, 7, 7, 30, 0, 36];
  const offsets = [0, 3, 3, 6];
  for (const mode of ["sum", "mean", "max"]) {
    const bag = gpu.embeddingBag(weight, { mode, paddingIdx: 7 });
    const out = await bag.forward(Int32Array.from(idx), Int32Array.from(offsets));
    assert(JSON.stringify(out.shape) === JSON.stringify([4, D]), `${mode}: shape ${out.shape}`);
    assertClose(await out.toFloat32Array(), bagRef(T, D, idx, offsets, mode, 7), `bag ${mode}`);
    out.release();
    bag.free();
  }
  const bag = gpu.embeddingBag(weight, { mode: "sum" });
  const out = await bag.forward(Int32Array.from(idx), null, Float32Array.from(idx.map((_, i) => i * 0.5)), [2, 4]);
  const want = [];
  for (let b = 0; b < 2; b++)
    for (let c = 0; c < D; c++) {
      let s = 0;
      for (let j = 0; j < 4; j++) s += (b * 4 + j) * 0.5 * T[idx[b * 4 + j] * D + c];
      want.push(s);
    }
  assertClose(await out.toFloat32Array(), want, "2-D bag with per_sample_weights");
  out.release();
  bag.free();
  weight.release();
});

test("tables larger than one binding are split and still give the reference values", async () => {
  const small = await Gpu.create({ maxBindingSize: 256 });
  const v = 100, d = 8; // 32-byte rows: 8 rows per 256-byte buffer
  const t = table(v, d);
  const weight = await small.tensor(t, [v, d]);
  assert(weight.segments === 13, `expected 13 segments, got ${weight.segments}`);
  const idx = Array.from({ length: 70 }, (_, i) => (i * 37) % v);
  const out = await small.embedding(weight).forward(idx);
  assert(out.segments > 1, "output not split");
  assertClose(await out.toFloat32Array(), lookupRef(t, d, idx), "split lookup", 0);
  const offsets = [0, 10, 11, 40];
  for (const mode of ["sum", "mean", "max"]) {
    const bag = await small.embeddingBag(weight, { mode }).forward(idx, offsets);
    assertClose(await bag.toFloat32Array(), bagRef(t, d, idx, offsets, mode), `split bag ${mode}`);
  }
});

test("max_norm renormalises the referenced rows of the shared table in place", async () => {
  const weight = await gpu.tensor(T, [V, D]);
  const emb = gpu.embedding(weight, { maxNorm: 1.0 });
  await emb.forward([3, 30]);
  const after = await weight.toFloat32Array();
  for (const r of [3, 30]) {
    const norm = Math.hypot(...rowOf(after, D, r));
    const before = Math.hypot(...rowOf(T, D, r));
    assert(Math.abs(norm - Math.min(before, 1.0)) < 1e-4, `row ${r}: norm ${norm} (was ${before})`);
  }
  assertClose(rowOf(after, D, 4), rowOf(T, D, 4), "untouched row 4", 0);
  emb.free();
  weight.release();
});

test("outputs stay on the GPU: read twice, and the table outlives its released handle", async () => {
  const weight = await gpu.tensor(T, [V, D]);
  const emb = gpu.embedding(weight);
  weight.release(); // the layer keeps its own handle
  const out = await emb.forward([4, 9]);
  const a = await out.toFloat32Array(), b = await out.toFloat32Array();
  assertClose(a, lookupRef(T, D, [4, 9]), "first read", 0);
  assertClose(b, a, "second read", 0);
  assert(out.gpuBytes >= 2 * D * 4, `gpuBytes ${out.gpuBytes}`);
  out.release();
  emb.free();
});

test("bad input is an exception with the library's message, and the device stays usable", async () => {
  const weight = await gpu.tensor(T, [V, D]);
  const emb = gpu.embedding(weight);
  await assertThrows(emb.forward([1, 37, 2]), /index out of range in self: `indices` holds 37 at position 1/, "index 37");
  await assertThrows(emb.forward(Int32Array.from([-1])), /index out of range.*-1/, "index -1");
  await assertThrows(emb.forward("abc"), /invalid argument `indices`/, "indices as a string");
  await assertThrows(emb.forward([1.5]), /`indices`.*1\.5/, "fractional index");
  await assertThrows(emb.forward([1, 2, 3], [2, 2]), /shape/, "shape mismatch");
  await assertThrows(() => gpu.embedding(weight, { paddingIdx: 99 }), /padding_idx.*99/, "padding_idx 99");
  await assertThrows(() => gpu.embeddingBag(weight, { mode: "median" }), /median/, "mode median");
  const bag = gpu.embeddingBag(weight, { mode: "mean" });
  await assertThrows(bag.forward([1, 2], [1, 0]), /offsets/, "offsets not starting at 0 / decreasing");
  await assertThrows(bag.forward([1, 2], [0], Float32Array.from([1, 1])), /per_sample_weights/, "weights with mean");
  await assertThrows(() => gpu.tensor(new Float32Array(6), [4, 2]), /6 values/, "data/shape mismatch");
  const out = await emb.forward([36]); // still works after all the refusals
  assertClose(await out.toFloat32Array(), rowOf(T, D, 36), "after errors", 0);
  bag.free();
  emb.free();
  weight.release();
});

test("WebGPU interop: the library's GPUDevice and an output's GPUBuffers, read by the page's own WebGPU calls", async () => {
  const device = gpu.device;
  assert(device instanceof GPUDevice, `gpu.device is ${device}`);
  const d = 3;
  const t = Float32Array.from({ length: 4 * d }, (_, i) => i + 0.5);
  const out = await gpu.embedding(await gpu.tensor(t, [4, d])).forward(new Int32Array([2, 0, 3]), [3]);
  const buffers = out.gpuBuffers;
  assert(buffers.length === 1 && buffers[0] instanceof GPUBuffer, `gpuBuffers: ${buffers}`);
  // The page copies the output on the library's device: no read-back through the library.
  const staging = device.createBuffer({ size: 3 * d * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const encoder = device.createCommandEncoder();
  encoder.copyBufferToBuffer(buffers[0], 0, staging, 0, 3 * d * 4);
  device.queue.submit([encoder.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const got = new Float32Array(staging.getMappedRange().slice(0));
  staging.unmap();
  assertClose(got, lookupRef(t, d, [2, 0, 3]), "copied by the page", 0);
});

test("fused backward + step gives what backward then step give (Embedding and EmbeddingBag)", async () => {
  const [v, d] = [50, 8];
  const t = table(v, d);
  const ids = Int32Array.from([3, 7, 3, 49, 0, 3]);
  const gradOut = await gpu.tensor(Float32Array.from({ length: ids.length * d }, (_, i) => Math.cos(i)), [ids.length, d]);
  const options = { optimizer: "sparse_adam", lr: 0.01 };
  const run = async (fused) => {
    const emb = gpu.embedding(await gpu.tensor(t, [v, d]));
    const opt = gpu.optimizer(emb.weight, options);
    for (let step = 0; step < 2; step++) {
      if (fused) await opt.stepEmbedding(emb, ids, gradOut, [ids.length]);
      else {
        const g = await emb.backward(ids, gradOut, [ids.length], { sparse: true });
        await opt.stepSparse(emb.weight, g.indices, g.values);
      }
    }
    return emb.weight.toFloat32Array();
  };
  const [unfused, fused] = [await run(false), await run(true)];
  assertClose(fused, unfused, "fused step", 0);
  assert(unfused.some((x, i) => x !== t[i]), "the table did not change");
  // A bag (mean) the same way; a dense-only optimizer is refused by name.
  const bagGrad = await gpu.tensor(Float32Array.from({ length: 2 * d }, (_, i) => i / 7), [2, d]);
  const runBag = async (fused) => {
    const bag = gpu.embeddingBag(await gpu.tensor(t, [v, d]), { mode: "mean" });
    const opt = gpu.optimizer(bag.weight, { optimizer: "adagrad", lr: 0.1 });
    if (fused) await opt.stepEmbeddingBag(bag, ids, [0, 4], null, bagGrad);
    else {
      const g = await bag.backward(ids, [0, 4], null, bagGrad, undefined, undefined, { sparse: true });
      await opt.stepSparse(bag.weight, g.indices, g.values);
    }
    return bag.weight.toFloat32Array();
  };
  assertClose(await runBag(true), await runBag(false), "fused bag step", 0);
  const dense = gpu.embedding(await gpu.tensor(t, [v, d]));
  const adam = gpu.optimizer(dense.weight, { optimizer: "adam", lr: 0.1 });
  await assertThrows(() => adam.stepEmbedding(dense, ids, gradOut), /sparse/, "dense-only optimizer");
});

test("axial step: both weights stepped as backward then step give them (SGD, lr 1: w - grad)", async () => {
  const [shape, dims] = [[4, 6], [8, 4]];
  const w0 = Float32Array.from({ length: 4 * 8 }, (_, i) => Math.sin(i));
  const w1 = Float32Array.from({ length: 6 * 4 }, (_, i) => Math.cos(i));
  const ids = Int32Array.from([0, 7, 7, 23, 12]);
  const gradOut = await gpu.tensor(Float32Array.from({ length: ids.length * 12 }, (_, i) => (i % 5) - 2), [ids.length, 12]);
  const axial = await gpu.axialPositionEmbedding(w0, w1, shape, dims);
  const grads = await axial.backward(ids, gradOut, [ids.length]);
  const [g0, g1] = [await grads.weight0.toFloat32Array(), await grads.weight1.toFloat32Array()];
  const sgd = { optimizer: "sgd", lr: 1 };
  const [o0, o1] = [gpu.optimizer(axial.weight(0), sgd), gpu.optimizer(axial.weight(1), sgd)];
  await axial.step(o0, o1, ids, gradOut, [ids.length]);
  assertClose(await axial.weight(0).toFloat32Array(), w0.map((x, i) => x - g0[i]), "weight 0 after the step", 1e-6);
  assertClose(await axial.weight(1).toFloat32Array(), w1.map((x, i) => x - g1[i]), "weight 1 after the step", 1e-6);
  assert(g0.some((x) => x !== 0) && g1.some((x) => x !== 0), "no gradient");
  await assertThrows(() => axial.weight(2), /0 or 1/, "a third weight");
});

test("one training step: sparse backward, then SGD changes exactly the rows present", async () => {
  const [v, d, lr] = [20, 8, 0.5];
  const t = table(v, d);
  const weight = await gpu.tensor(t, [v, d]);
  const emb = gpu.embedding(weight);
  const ids = Int32Array.from([3, 7, 3]);
  const gradOut = await gpu.tensor(Float32Array.from({ length: 3 * d }, (_, i) => (i % 5) - 2), [3, d]);
  const g = await emb.backward(ids, gradOut, [3], { sparse: true });
  const rows = new Int32Array((await g.indices.toUint8Array()).buffer);
  assert(JSON.stringify(Array.from(rows)) === "[3,7]", `sparse rows ${Array.from(rows)}`);
  const opt = gpu.optimizer(emb.weight, { optimizer: "sgd", lr });
  await opt.stepSparse(emb.weight, g.indices, g.values);
  const after = await emb.weight.toFloat32Array();
  const grad = (r) => Array.from({ length: d }, (_, c) => [0, 1, 2].filter((p) => ids[p] === r).reduce((s, p) => s + ((p * d + c) % 5) - 2, 0));
  for (let r = 0; r < v; r++) {
    const want = r === 3 || r === 7 ? rowOf(t, d, r).map((w, c) => w - lr * grad(r)[c]) : rowOf(t, d, r);
    assertClose(rowOf(after, d, r), want, `row ${r}`);
  }
  // The next lookup reads the updated table.
  assertClose(await (await emb.forward([7])).toFloat32Array(), rowOf(after, d, 7), "lookup after the step", 0);
  await assertThrows(() => gpu.optimizer(weight, { optimizer: "lamb", lr: 1 }), /lamb/, "unknown optimizer");
  opt.free();
  emb.free();
  weight.release();
});

const bytesOf = (u8) => Array.from(u8).join(",");
const diff = (a, b) => Object.fromEntries(Object.keys(b).map((k) => [k, b[k] - a[k]]));

test("recorded: BERT block -> masked-mean bag -> top-k is one submission and one read-back", async () => {
  const [v, p, d, n] = [200, 32, 16, 500];
  const [word, pos, typ] = [table(v, d), table(p, d).map((x) => x / 3), table(2, d).map((x) => -x)];
  const gamma = Float32Array.from({ length: d }, (_, i) => 1 + i / 10), beta = Float32Array.from({ length: d }, (_, i) => i / 20);
  const block = await gpu.embeddingSumLayerNorm([word, pos, typ], [[v, d], [p, d], [2, d]], { gamma, beta });
  const ids = Int32Array.from({ length: 16 }, (_, i) => (i * 37) % v), positions = Int32Array.from({ length: 16 }, (_, i) => i);
  const types = Int32Array.from({ length: 16 }, (_, i) => (i >= 10 ? 1 : 0)), kept = Int32Array.from({ length: 13 }, (_, i) => i);
  const retriever = await gpu.tensorRetriever(await gpu.tensor(table(n, d), [n, d]), { metric: "cosine", scheme: "int8_rowwise" });
  // One call at a time.
  const hidden = await block.forward([ids, positions, types], [16]);
  const pooled = await gpu.embeddingBag(hidden, { mode: "mean" }).forward(kept, [0]);
  const want = await retriever.searchTensor(pooled, 10);
  const [wantRows, wantScores] = [await want.indices.toUint8Array(), await want.scores.toUint8Array()];
  // Recorded.
  const before = gpu.stats();
  const run = gpu.record();
  const h = run.embeddingSumLayerNorm(block, [ids, positions, types], [16]);
  const p2 = run.bag(gpu.embeddingBag(h, { mode: "mean" }), kept, [0]);
  const top = run.search(retriever, p2, 10);
  run.read(top.indices);
  run.read(top.scores);
  const [rows, scores] = await run.submit();
  const cost = diff(before, gpu.stats());
  assert(cost.submissions === 1 && cost.readbacks === 1 && cost.waits === 0, `cost ${JSON.stringify(cost)}`);
  assert(cost.bytesReadBack === 80, `read back ${cost.bytesReadBack} bytes, expected the 10 rows and scores`);
  assert(bytesOf(rows) === bytesOf(wantRows), "top-k rows");
  assert(bytesOf(scores) === bytesOf(wantScores), "top-k scores");
});

test("recorded: a lookup and a fused step from GPU-resident top-k rows, one submission; a bad index changes nothing", async () => {
  const [v, d] = [120, 8];
  const t = table(v, d);
  const emb = gpu.embedding(await gpu.tensor(t, [v, d]));
  const retriever = await gpu.tensorRetriever(emb.weight, { metric: "dot" });
  const opt = gpu.optimizer(emb.weight, { optimizer: "sparse_adam", lr: 0.01 });
  const query = await gpu.tensor(Float32Array.from({ length: d }, (_, i) => Math.cos(i)), [1, d]);
  const grad = await gpu.tensor(Float32Array.from({ length: 4 * d }, (_, i) => Math.sin(i)), [1, 4, d]);
  const before = gpu.stats();
  const run = gpu.record();
  const top = run.search(retriever, query, 4);
  const rows = run.lookupTensor(emb, top.indices);
  run.read(top.indices);
  run.read(rows);
  run.stepEmbeddingTensor(opt, emb, top.indices, grad);
  const [idsBytes, rowBytes] = await run.submit();
  const cost = diff(before, gpu.stats());
  assert(cost.submissions === 1 && cost.readbacks === 1 && cost.waits === 0, `cost ${JSON.stringify(cost)}`);
  const ids = Array.from(new Int32Array(idsBytes.buffer));
  assertClose(new Float32Array(rowBytes.buffer), lookupRef(t, d, ids), "rows looked up before the step", 0);
  const after = await emb.weight.toFloat32Array();
  for (let r = 0; r < v; r++) {
    const changed = rowOf(after, d, r).some((x, c) => x !== t[r * d + c]);
    assert(changed === ids.includes(r), `row ${r} changed: ${changed}`);
  }
  // A bad index among GPU-resident ones: rejected with its position and value, nothing written.
  const bad = await gpu.indexTensor(Int32Array.from([5, 9, 500, 7]), [1, 4]);
  const run2 = gpu.record();
  run2.lookupTensor(emb, bad);
  run2.stepEmbeddingTensor(opt, emb, bad, grad);
  await assertThrows(() => run2.submit(), /position 2.*500|500.*position 2/, "bad GPU-resident index");
  assertClose(await emb.weight.toFloat32Array(), after, "table after the refused step", 0);
  // The one-call forms of GPU-resident indices: a lookup and a backward.
  const good = await gpu.indexTensor(Int32Array.from([4, 0, 4]), [3]);
  assertClose(await (await emb.forwardTensor(good)).toFloat32Array(), lookupRef(after, d, [4, 0, 4]), "forwardTensor", 0);
  await assertThrows(() => emb.forwardTensor(bad), /position 2.*500|500.*position 2/, "forwardTensor with a bad index");
  const g3 = await gpu.tensor(Float32Array.from({ length: 3 * d }, (_, i) => i), [3, d]);
  const sparse = await emb.backwardTensor(good, g3, { sparse: true });
  assert(Array.from(new Int32Array((await sparse.indices.toUint8Array()).buffer)).join() === "0,4", "backwardTensor rows");
  const bad3 = await gpu.indexTensor(Int32Array.from([1, 700, 2]), [3]);
  await assertThrows(() => emb.backwardTensor(bad3, g3), /position 1.*700|700.*position 1/, "backwardTensor with a bad index");
  // The device goes on: the next recording works.
  const run3 = gpu.record();
  run3.read(run3.lookup(emb, [1]));
  assertClose(new Float32Array((await run3.submit())[0].buffer), rowOf(after, d, 1), "after the refusal", 0);
});

test("recorded: a training step (lookup, fused step) is one submission and no wait", async () => {
  const [v, d] = [300, 16];
  const t = table(v, d);
  const ids = Int32Array.from({ length: 16 }, (_, i) => (i * 11) % v);
  const grad = await gpu.tensor(Float32Array.from({ length: 16 * d }, (_, i) => Math.sin(i / 3)), [16, d]);
  const one = gpu.embedding(await gpu.tensor(t, [v, d]));
  const optOne = gpu.optimizer(one.weight, { optimizer: "sparse_adam", lr: 0.01 });
  await one.forward(ids);
  await optOne.stepEmbedding(one, ids, grad, [16]);
  const emb = gpu.embedding(await gpu.tensor(t, [v, d]));
  const opt = gpu.optimizer(emb.weight, { optimizer: "sparse_adam", lr: 0.01 });
  const before = gpu.stats();
  const run = gpu.record();
  run.lookup(emb, ids);
  run.stepEmbedding(opt, emb, ids, grad, [16]);
  await run.submit();
  const cost = diff(before, gpu.stats());
  assert(cost.submissions === 1 && cost.waits === 0 && cost.readbacks === 0, `cost ${JSON.stringify(cost)}`);
  assertClose(await emb.weight.toFloat32Array(), await one.weight.toFloat32Array(), "recorded step = one-call step", 0);
});

test("saved: 3 steps, saved to a Blob, loaded, 3 more steps = 6 steps straight, bit for bit", async () => {
  const [v, d] = [120, 8];
  const t = table(v, d);
  const options = { optimizer: "sparse_adam", lr: 0.05 };
  const batch = (step) => Int32Array.from({ length: 12 }, (_, i) => (i * 7 + step * 13) % v);
  const gradOf = (step) => gpu.tensor(Float32Array.from({ length: 12 * d }, (_, i) => Math.sin(i + step)), [12, d]);
  const train = async (emb, opt, from, to) => {
    for (let step = from; step < to; step++) await opt.stepEmbedding(emb, batch(step), await gradOf(step), [12]);
  };
  const straight = gpu.embedding(await gpu.tensor(t, [v, d]));
  const straightOpt = gpu.optimizer(straight.weight, options);
  await train(straight, straightOpt, 0, 6);
  const first = gpu.embedding(await gpu.tensor(t, [v, d]));
  const firstOpt = gpu.optimizer(first.weight, options);
  await train(first, firstOpt, 0, 3);
  const saving = gpu.stateDict();
  saving.tensor("weight", first.weight);
  saving.optimizer("optimizer.", firstOpt);
  const blob = new Blob([await saving.toBytes()]);
  // Loaded back from the Blob: the table through loadSafetensors, the state through loadState.
  const loaded = await gpu.loadSafetensors(new Response(blob));
  assert(Object.keys(loaded).includes("weight"), `tensors ${Object.keys(loaded)}`);
  const resumed = gpu.embedding(loaded.weight);
  const resumedOpt = gpu.optimizer(resumed.weight, options);
  resumedOpt.loadState(new Uint8Array(await blob.arrayBuffer()), "optimizer.");
  await train(resumed, resumedOpt, 3, 6);
  const [a, b] = [await straight.weight.toFloat32Array(), await resumed.weight.toFloat32Array()];
  assert(a.every((x, i) => Object.is(x, b[i])), "the resumed table differs from six steps straight");
  assert(a.some((x, i) => x !== t[i]), "the table did not change");
  const bytes = new Uint8Array(await blob.arrayBuffer());
  await assertThrows(() => gpu.optimizer(resumed.weight, { optimizer: "adagrad", lr: 0.1 }).loadState(bytes, "optimizer."), /param_groups/, "another optimizer's state");
});

async function main() {
  await init();
  gpu = await Gpu.create();
  const results = [];
  for (const t of tests) {
    try {
      await t.fn();
      results.push({ name: t.name, ok: true });
      logEl.append(`ok   ${t.name}\n`);
    } catch (e) {
      results.push({ name: t.name, ok: false, message: e?.message ?? String(e) });
      const span = document.createElement("span");
      span.className = "fail";
      span.textContent = `FAIL ${t.name}: ${e?.message ?? e}\n`;
      logEl.append(span);
    }
  }
  return { tests: results };
}

main().then(
  (r) => (window.testResult = r),
  (e) => (window.testResult = { error: String(e?.message ?? e) }),
);
