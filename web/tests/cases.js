// Running one conformance case (FORMAT.md) through the package's JS API, and the
// comparison of check.py.

const opt = (v) => (v === undefined ? null : v);

/** The table-batched layer of a TBE case: the packed weights cut into the tables its embedding_specs give. */
async function tbeLayer(gpu, file, c) {
  const p = c.params;
  if (p.weights_precision) {
    // Inference tables: each table's rows in FBGEMM's layout for its precision.
    const bytes = file.uint8(c.inputs.weights);
    const rowBytes = { fp32: (d) => 4 * d, fp16: (d) => 2 * d, int8: (d) => 4 + d, int4: (d) => 4 + Math.ceil(d / 2) };
    const tables = [];
    let start = 0;
    p.embedding_specs.forEach(([rows, dim], t) => tables.push(bytes.subarray(start, (start += rows * rowBytes[p.weights_precision[t]](dim)))));
    return await gpu.tableBatchedEmbeddingBagsFromRows(tables, p.embedding_specs, p.weights_precision, p.feature_table_map, { mode: p.pooling_mode });
  }
  const weights = file.float32(c.inputs.weights);
  const tables = [];
  let start = 0;
  for (const [rows, dim] of p.embedding_specs) tables.push(weights.subarray(start, (start += rows * dim)));
  return await gpu.tableBatchedEmbeddingBags(tables, p.embedding_specs, p.feature_table_map, { mode: p.pooling_mode });
}

/** Runs case `c` of `file` on `gpu`; returns {name: {data: Float32Array, shape}}. */
export async function runCase(gpu, file, c) {
  const p = c.params ?? {};
  const inputs = c.inputs;
  const owned = [];
  const keep = (x) => (owned.push(x), x);
  try {
    const weight = c.op === "embedding" || c.op === "embedding_bag" ? keep(await file.upload(gpu, inputs.weight)) : null;
    const common = { paddingIdx: opt(p.padding_idx), maxNorm: opt(p.max_norm), normType: p.norm_type ?? 2.0 };
    let layer, out;
    if (c.op === "embedding") {
      layer = keep(gpu.embedding(weight, common));
      out = keep(await layer.forward(file.indices(inputs.indices), file.info(inputs.indices).shape));
    } else if (c.op === "embedding_bag") {
      layer = keep(gpu.embeddingBag(weight, { ...common, mode: p.mode ?? "mean", includeLastOffset: p.include_last_offset ?? false }));
      const psw = inputs.per_sample_weights;
      out = keep(
        await layer.forward(
          file.indices(inputs.indices),
          inputs.offsets ? file.indices(inputs.offsets) : null,
          psw ? file.float32(psw) : null,
          file.info(inputs.indices).shape,
          psw ? file.info(psw).shape : undefined,
        ),
      );
    } else {
      return await otherOp(gpu, file, c, keep);
    }
    const outputs = { out: { data: await out.toFloat32Array(), shape: out.shape } };
    if (p.max_norm !== null && p.max_norm !== undefined) {
      const w = keep(layer.weight);
      outputs.weight = { data: await w.toFloat32Array(), shape: w.shape };
    }
    return outputs;
  } finally {
    // Layers first, so that releasing the tensors frees the GPU memory at once.
    for (const x of owned.reverse()) (x.release ?? x.free).call(x);
  }
}

const read = async (t) => ({ data: await t.toFloat32Array(), shape: t.shape });

/** The tensors of a backward's result object, read back under the case's output names. */
async function named(g, keep, names) {
  const out = {};
  for (const [key, name] of Object.entries(names)) if (g[key]) out[name] = await read(keep(g[key]));
  return out;
}

/** A table gradient: grad_weight, or grad_indices (I32 on the GPU) and grad_values; and
 * grad_per_sample_weights when there is one. */
async function gradOutputs(g, keep) {
  const out = await named(g, keep, { weight: "grad_weight", values: "grad_values", perSampleWeights: "grad_per_sample_weights" });
  if (g.indices) {
    const t = keep(g.indices);
    const bytes = await t.toUint8Array();
    out.grad_indices = { data: new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4), shape: t.shape };
  }
  return out;
}
const maybe = (file, name) => (name ? file.float32(name) : undefined);

/** The ops besides the two lookups, as ops.rs runs them. */
async function otherOp(gpu, file, c, keep) {
  const p = c.params ?? {};
  const inputs = c.inputs;
  const shapeOf = (role) => file.info(inputs[role]).shape;
  const affine = { gamma: maybe(file, inputs.gamma), beta: maybe(file, inputs.beta) };
  switch (c.op) {
    case "layer_norm": {
      const shape = shapeOf("x");
      const layer = keep(gpu.layerNorm(shape[shape.length - 1] ?? 0, { ...affine, eps: p.eps ?? 1e-5 }));
      return { out: await read(keep(await layer.forward(file.float32(inputs.x), shape))) };
    }
    case "stable_embedding": {
      const opts = { ...affine, paddingIdx: opt(p.padding_idx), eps: opt(p.eps) ?? undefined };
      const layer = keep(await gpu.stableEmbedding(file.float32(inputs.weight), shapeOf("weight"), opts));
      return { out: await read(keep(await layer.forward(file.indices(inputs.indices), shapeOf("indices")))) };
    }
    case "embedding_sum_layer_norm": {
      const tables = [], shapes = [], indices = [], indexShapes = [];
      for (let k = 0; inputs[`weight${k}`] && inputs[`indices${k}`]; k++) {
        tables.push(file.float32(inputs[`weight${k}`]));
        shapes.push(shapeOf(`weight${k}`));
        indices.push(file.indices(inputs[`indices${k}`]));
        indexShapes.push(shapeOf(`indices${k}`));
      }
      const block = keep(await gpu.embeddingSumLayerNorm(tables, shapes, { ...affine, eps: p.eps ?? 1e-12 }));
      return { out: await read(keep(await block.forward(indices, indexShapes))) };
    }
    case "tbe_forward": {
      const tbe = keep(await tbeLayer(gpu, file, c));
      const psw = inputs.per_sample_weights ? file.float32(inputs.per_sample_weights) : null;
      const [indices, offsets] = [file.indices(inputs.indices), file.indices(inputs.offsets)];
      const sizes = p.batch_size_per_feature_per_rank;
      const out = sizes ? await tbe.forwardVbe(indices, offsets, psw, sizes) : await tbe.forward(indices, offsets, psw);
      return { out: await read(keep(out)) };
    }
    case "tbe_backward":
    case "tbe_step": {
      const tbe = keep(await tbeLayer(gpu, file, c));
      const psw = inputs.per_sample_weights ? file.float32(inputs.per_sample_weights) : null;
      const [indices, offsets] = [file.indices(inputs.indices), file.indices(inputs.offsets)];
      const flat = async (t) => ({ data: await t.toFloat32Array(), shape: [t.shape.reduce((a, b) => a * b, 1)] });
      if (c.op === "tbe_backward") {
        return { grad_weights: await flat(keep(await tbe.backward(indices, offsets, psw, keep(await file.upload(gpu, inputs.grad_out))))) };
      }
      const table = keep(tbe.weights);
      // FBGEMM's optimizer names and hyper-parameters as the library's optimizers take them.
      const hyper = { lr: p.learning_rate, eps: p.eps ?? 1e-8, betas: [p.beta1 ?? 0.9, p.beta2 ?? 0.999], weight_decay: p.weight_decay ?? 0 };
      const optimizer = {
        exact_sgd: { optimizer: "sgd", lr: p.learning_rate },
        exact_adagrad: { optimizer: "adagrad", lr: p.learning_rate, eps: hyper.eps },
        exact_rowwise_adagrad: { optimizer: "rowwise_adagrad", lr: p.learning_rate, eps: hyper.eps, weight_decay: hyper.weight_decay },
        adam: { optimizer: "tbe_adam", ...hyper },
        partial_rowwise_adam: { optimizer: "partial_rowwise_adam", ...hyper },
      }[p.optimizer];
      if (!optimizer) throw new Error(`TBE optimizer ${p.optimizer} is not run by this page`);
      const opt = keep(gpu.optimizer(table, optimizer));
      const [steps, ...gshape] = shapeOf("grad_out");
      const grads = file.float32(inputs.grad_out);
      const per = gshape.reduce((a, b) => a * b, 1);
      for (let t = 0; t < steps; t++) {
        const g = keep(await gpu.tensor(grads.subarray(t * per, (t + 1) * per), gshape));
        await tbe.step(opt, indices, offsets, psw, g, p.batch_size_per_feature_per_rank);
      }
      const out = { weights: await flat(table) };
      // FBGEMM's names for the states: momentum1, momentum2.
      for (const [k, name] of opt.stateNames.entries()) out[`momentum${k + 1}`] = await flat(keep(opt.state(name)));
      return out;
    }
    case "embedding_backward": {
      const gshape = shapeOf("grad_out");
      const d = gshape[gshape.length - 1] ?? 0;
      // The table's values do not enter the gradient: zeros of the right shape.
      const weight = keep(await gpu.tensor(new Float32Array(p.num_weights * d), [p.num_weights, d]));
      const layer = keep(gpu.embedding(weight, { paddingIdx: opt(p.padding_idx) }));
      const grad = keep(await file.upload(gpu, inputs.grad_out));
      const opts = { scaleGradByFreq: p.scale_grad_by_freq ?? false, sparse: p.sparse ?? false };
      return await gradOutputs(await layer.backward(file.indices(inputs.indices), grad, shapeOf("indices"), opts), keep);
    }
    case "embedding_bag_backward": {
      const weight = keep(await file.upload(gpu, inputs.weight));
      const bagOpts = { paddingIdx: opt(p.padding_idx), mode: p.mode ?? "mean", includeLastOffset: p.include_last_offset ?? false };
      const layer = keep(gpu.embeddingBag(weight, bagOpts));
      const grad = keep(await file.upload(gpu, inputs.grad_out));
      const psw = inputs.per_sample_weights;
      const opts = { scaleGradByFreq: p.scale_grad_by_freq ?? false, sparse: p.sparse ?? false };
      const g = await layer.backward(
        file.indices(inputs.indices),
        inputs.offsets ? file.indices(inputs.offsets) : null,
        psw ? file.float32(psw) : null,
        grad,
        shapeOf("indices"),
        psw ? shapeOf("per_sample_weights") : undefined,
        opts,
      );
      return await gradOutputs(g, keep);
    }
    case "layer_norm_backward": {
      const shape = shapeOf("x");
      const layer = keep(gpu.layerNorm(shape[shape.length - 1] ?? 0, { ...affine, eps: p.eps ?? 1e-5 }));
      const g = await layer.backward(keep(await file.upload(gpu, inputs.x)), keep(await file.upload(gpu, inputs.grad_out)));
      return await named(g, keep, { x: "grad_x", gamma: "grad_gamma", beta: "grad_beta" });
    }
    case "stable_embedding_backward": {
      const opts = { ...affine, paddingIdx: opt(p.padding_idx), eps: opt(p.eps) ?? undefined };
      const layer = keep(await gpu.stableEmbedding(file.float32(inputs.weight), shapeOf("weight"), opts));
      const g = await layer.backward(file.indices(inputs.indices), keep(await file.upload(gpu, inputs.grad_out)), shapeOf("indices"));
      return await named(g, keep, { weight: "grad_weight", gamma: "grad_gamma", beta: "grad_beta" });
    }
    case "embedding_sum_layer_norm_backward": {
      const tables = [], shapes = [], indices = [], indexShapes = [];
      for (let k = 0; inputs[`weight${k}`] && inputs[`indices${k}`]; k++) {
        tables.push(file.float32(inputs[`weight${k}`]));
        shapes.push(shapeOf(`weight${k}`));
        indices.push(file.indices(inputs[`indices${k}`]));
        indexShapes.push(shapeOf(`indices${k}`));
      }
      const block = keep(await gpu.embeddingSumLayerNorm(tables, shapes, { ...affine, eps: p.eps ?? 1e-12 }));
      const g = await block.backward(indices, keep(await file.upload(gpu, inputs.grad_out)), indexShapes);
      const out = await named(g, keep, { gamma: "grad_gamma", beta: "grad_beta" });
      for (const [k, t] of g.tables.entries()) out[`grad_weight${k}`] = await read(keep(t));
      return out;
    }
    case "optimizer_step":
    case "sparse_optimizer_step": {
      const table = keep(await file.upload(gpu, inputs.weight));
      const [v, d] = shapeOf("weight");
      const opt = keep(gpu.optimizer(table, p));
      if (c.op === "optimizer_step") {
        const grads = file.float32(inputs.grads);
        const steps = shapeOf("grads")[0];
        for (let t = 0; t < steps; t++) {
          const g = keep(await gpu.tensor(grads.subarray(t * v * d, (t + 1) * v * d), [v, d]));
          await opt.step(table, g);
        }
      } else {
        const [steps, n] = shapeOf("grad_indices");
        const rows = file.indices(inputs.grad_indices);
        const values = file.float32(inputs.grad_values);
        for (let t = 0; t < steps; t++) {
          const idx = keep(await gpu.indexTensor(rows.subarray(t * n, (t + 1) * n), [n]));
          const vals = keep(await gpu.tensor(values.subarray(t * n * d, (t + 1) * n * d), [n, d]));
          await opt.stepSparse(table, idx, vals);
        }
      }
      const out = { weight: await read(table) };
      for (const name of opt.stateNames) {
        const s = keep(opt.state(name));
        out[name] = s.dtype === "U8" ? { data: await s.toUint8Array(), shape: s.shape } : await read(s);
      }
      return out;
    }
    case "inner_product_topk": {
      const [n, d] = shapeOf("table");
      const retriever = keep(
        await gpu.retriever(file.float32(inputs.table), [n, d], { metric: p.metric ?? "dot", scheme: p.scheme ?? "f32", blocksize: opt(p.blocksize) }),
      );
      const top = await retriever.search(file.float32(inputs.queries), p.k);
      keep(top.scores), keep(top.indices);
      const rows = new Int32Array((await top.indices.toUint8Array()).buffer);
      return { scores: await read(top.scores), indices: { data: Array.from(rows), shape: top.indices.shape } };
    }
    case "axial_position_embedding_backward": {
      const [w0, w1] = [shapeOf("weight0"), shapeOf("weight1")];
      const dims = [w0[w0.length - 1] ?? 0, w1[w1.length - 1] ?? 0];
      const layer = keep(await gpu.axialPositionEmbedding(file.float32(inputs.weight0), file.float32(inputs.weight1), p.axial_pos_shape, dims));
      const g = await layer.backward(file.indices(inputs.position_ids), keep(await file.upload(gpu, inputs.grad_out)), shapeOf("position_ids"));
      return await named(g, keep, { weight0: "grad_weight0", weight1: "grad_weight1" });
    }
    case "layer_optimizer_steps": {
      // bitsandbytes' rules (tests/reference/OPS.md): the module's registration, else
      // the case's overrides, for the weight; gamma / beta as tensors of their own.
      const [v, d] = shapeOf("weight");
      const params = [];
      let table;
      if (p.module === "stable_embedding") {
        const layer = keep(await gpu.stableEmbedding(file.float32(inputs.weight), [v, d], { ...affine, eps: 1e-5 }));
        table = keep(layer.weight);
        params.push(["weight", table, keep(layer.optimizer(p)), "weight_grads"]);
      } else {
        table = keep(await file.upload(gpu, inputs.weight));
        const overrides = p.module === "bnb_embedding" ? { optim_bits: 32 } : p.overrides;
        params.push(["weight", table, keep(gpu.optimizer(table, { ...p, overrides })), "weight_grads"]);
      }
      for (const name of ["gamma", "beta"]) {
        if (!inputs[name]) continue;
        const t = keep(await file.upload(gpu, inputs[name]));
        params.push([name, t, keep(gpu.optimizer(t, { ...p, overrides: undefined })), `${name}_grads`]);
      }
      const steps = shapeOf("weight_grads")[0];
      const out = {};
      for (let t = 0; t < steps; t++) {
        for (const [name, tensor, optimizer, gradsRole] of params) {
          const numel = tensor.shape.reduce((a, b) => a * b, 1);
          const grads = file.float32(inputs[gradsRole]);
          const g = keep(await gpu.tensor(grads.subarray(t * numel, (t + 1) * numel), tensor.shape));
          await optimizer.step(tensor, g);
          for (const [key, value] of [[name, tensor], [`${name}_state1`, keep(optimizer.state("state1"))], [`${name}_state2`, keep(optimizer.state("state2"))]]) {
            out[key] ??= { data: [], shape: [steps, ...tensor.shape] };
            out[key].data.push(...(await value.toFloat32Array()));
          }
        }
      }
      return out;
    }
    case "axial_position_embedding": {
      const [w0, w1] = [shapeOf("weight0"), shapeOf("weight1")];
      const dims = [w0[w0.length - 1] ?? 0, w1[w1.length - 1] ?? 0];
      const layer = keep(await gpu.axialPositionEmbedding(file.float32(inputs.weight0), file.float32(inputs.weight1), p.axial_pos_shape, dims));
      return { out: await read(keep(await layer.forward(file.indices(inputs.position_ids), shapeOf("position_ids")))) };
    }
    case "quantize_blockwise": {
      const q = await gpu.quantizeBlockwise(file.float32(inputs.x), { blocksize: opt(p.blocksize), code: p.code ?? "dynamic" });
      keep(q.codes), keep(q.absmax);
      return { codes: { data: await q.codes.toUint8Array(), shape: q.codes.shape }, absmax: await read(q.absmax) };
    }
    case "dequantize_blockwise": {
      const out = keep(await gpu.dequantizeBlockwise(file.uint8(inputs.codes), file.float32(inputs.absmax), { blocksize: opt(p.blocksize), code: p.code ?? "dynamic" }));
      return { out: await read(out) };
    }
    case "quantized_embedding": {
      const weight = keep(await file.upload(gpu, inputs.weight));
      const layer = keep(await gpu.quantizedEmbedding(weight, { scheme: p.scheme ?? "int8_blockwise", blocksize: opt(p.blocksize) }));
      return { out: await read(keep(await layer.forward(file.indices(inputs.indices), shapeOf("indices")))) };
    }
    case "quantized_embedding_bag": {
      const weight = keep(await file.upload(gpu, inputs.weight));
      const opts = {
        scheme: p.scheme ?? "int8_blockwise",
        blocksize: opt(p.blocksize),
        mode: p.mode ?? "mean",
        paddingIdx: opt(p.padding_idx),
        includeLastOffset: p.include_last_offset ?? false,
      };
      const layer = keep(await gpu.quantizedEmbeddingBag(weight, opts));
      const psw = inputs.per_sample_weights;
      const out = keep(
        await layer.forward(
          file.indices(inputs.indices),
          inputs.offsets ? file.indices(inputs.offsets) : null,
          psw ? file.float32(psw) : null,
          shapeOf("indices"),
          psw ? file.info(psw).shape : undefined,
        ),
      );
      return { out: await read(out) };
    }
    default:
      throw new Error(`op ${c.op} is not run by this page`);
  }
}

const QUANT_OPS = new Set(["quantize_blockwise", "quantized_embedding", "quantized_embedding_bag"]);

/** check.py's comparison: null when `got` matches the expected tensor, or (LayerNorm
 * family, FORMAT.md) the exact float64 result `exact` when given. */
export function compare(c, got, file, expectedName, name, exact) {
  if (!got) return `output ${name} missing`;
  const dtype = file.info(expectedName).dtype;
  const want =
    dtype === "U8" ? file.uint8(expectedName)
    : dtype === "I64" || dtype === "I32" ? Array.from(file.indices(expectedName), Number)
    : file.float32(expectedName);
  const wantShape = file.info(expectedName).shape;
  if (JSON.stringify(got.shape) !== JSON.stringify(wantShape))
    return `${name}: shape [${got.shape}], expected [${wantShape}]`;
  if (got.data.length !== want.length) return `${name}: ${got.data.length} values, expected ${want.length}`;
  if (c.op === "inner_product_topk" && name === "indices") {
    // Rows of tied scores may come in another order (FORMAT.md): each query's rows distinct.
    const k = wantShape[wantShape.length - 1] ?? 1;
    for (let q = 0; q * k < got.data.length; q++) {
      if (new Set(got.data.slice(q * k, (q + 1) * k)).size !== k) return `indices: query ${q} repeats a row`;
    }
    return null;
  }
  let miss = 0, worst = -1, worstErr = -1;
  for (let i = 0; i < want.length; i++) {
    const w = want[i], g = got.data[i];
    if (Number.isNaN(w) || Number.isNaN(g)) {
      if (Number.isNaN(w) !== Number.isNaN(g)) miss++;
      continue;
    }
    const err = Math.abs(g - w);
    const nearExact = exact?.length === want.length && Math.abs(g - exact[i]) <= c.atol + c.rtol * Math.abs(exact[i]);
    if (!(err <= c.atol + c.rtol * Math.abs(w)) && !nearExact) {
      miss++;
      if (err > worstErr) (worstErr = err), (worst = i);
    }
  }
  let allowed = QUANT_OPS.has(c.op) ? Math.floor(1e-3 * want.length) : 0;
  // FORMAT.md: 8-bit optimizer states may be one code off in up to 1% of places.
  if (c.op === "optimizer_step" && (name === "state1" || name === "state2")) {
    if (worstErr > 1) return `${name}: a code ${worstErr} off at ${worst}`;
    allowed = Math.floor(0.01 * want.length);
  }
  if (miss > allowed)
    return `${name}: ${miss} of ${want.length} values off (max |err| ${worstErr.toPrecision(3)} at ${worst}: got ${got.data[worst]}, expected ${want[worst]})`;
  return null;
}
