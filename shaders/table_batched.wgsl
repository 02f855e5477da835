// Table-batched embedding bags (FBGEMM's TBE forward, `SplitTableBatchedEmbeddingBagsCodegen`):
// the bags of every feature, each over its own table (several features may share one),
// in one dispatch. The tables are packed one after another in one buffer; feature
// f's bag b is indices[offsets[f * B + b] .. offsets[f * B + b + 1]] (feature-major, as
// FBGEMM lays the offsets out), and goes to columns [col_f, col_f + dim_f) of output row
// b, whose width is the sum of the features' dims. One invocation per output element:
// consecutive invocations read consecutive columns of one table row.
// Parts: common/grid.wgsl, common/pass.wgsl, then this file.
// Pass fields: rows = B, dim = the output's width (Σ dims), mode = MODE_SUM / MODE_MEAN,
// flags: FLAG_HAS_WEIGHTS.

const MODE_MEAN: u32 = 1u;

// Per feature: (first word of its table in `tables`, its dim, its table's rows, its
// first output column).
// The packed tables as words: f32 values, or rows of other precisions (MIXED).
@group(0) @binding(1) var<storage, read> table_words: array<u32>;
@group(0) @binding(5) var<storage, read> bag_offsets: array<u32>;
@group(0) @binding(7) var<storage, read> sample_weights: array<f32>;
@group(0) @binding(9) var<storage, read> features: array<vec4<u32>>;
// The feature each output column belongs to.
@group(0) @binding(10) var<storage, read> column_features: array<u32>;

// Tables stored as FBGEMM's inference TBE stores them (fp16, int8, int4 rows beside f32
// ones): per feature (precision, words per row), each row starting on a word. Int rows
// hold their f16 scale and bias in the first word, then the codes (int4: low nibble
// first); value = scale * code + bias, in f32 as FBGEMM's CPU and CUDA kernels compute it.
override MIXED: u32 = 0u; // values: 0, 1
@group(0) @binding(13) var<storage, read> formats: array<vec2<u32>>;

const PRECISION_F16: u32 = 1u;
const PRECISION_INT8: u32 = 2u;
const PRECISION_INT4: u32 = 3u;

// Value c of row `index` of feature f's table.
fn table_value(f: u32, feature: vec4<u32>, index: u32, c: u32) -> f32 {
    if (MIXED == 0u) { return bitcast<f32>(table_words[feature.x + index * feature.y + c]); }
    let format = formats[f];
    let row = feature.x + index * format.y;
    switch format.x {
        case PRECISION_F16: { return unpack2x16float(table_words[row + c / 2u])[c % 2u]; }
        case PRECISION_INT8: {
            let scale_bias = unpack2x16float(table_words[row]);
            let code = (table_words[row + 1u + c / 4u] >> (8u * (c % 4u))) & 0xffu;
            return scale_bias.x * f32(code) + scale_bias.y;
        }
        case PRECISION_INT4: {
            let scale_bias = unpack2x16float(table_words[row]);
            let code = (table_words[row + 1u + c / 8u] >> (4u * (c % 8u))) & 0xfu;
            return scale_bias.x * f32(code) + scale_bias.y;
        }
        default: { return bitcast<f32>(table_words[row + c]); }
    }
}

// Column c of `bag` pooled over its rows of feature f's table.
fn pool_column(f: u32, feature: vec4<u32>, bag: u32, c: u32) -> f32 {
    let start = bag_offsets[bag];
    let end = bag_offsets[bag + 1u];
    var acc = 0.0;
    for (var p = start; p < end; p++) {
        // Indices were range-checked on the host; a bad one is still never read.
        let index = indices[p];
        if (index < 0 || u32(index) >= feature.z) { continue; }
        var x = table_value(f, feature, u32(index), c);
        if (has_flag(FLAG_HAS_WEIGHTS)) { x *= sample_weights[p]; }
        acc += x;
    }
    if (params.mode == MODE_MEAN && end > start) { acc /= f32(end - start); }
    return acc;
}

@compute @workgroup_size(WG_SIZE)
fn tbe_pooled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = output_element(wid, nwg, lid);
    if (e.x == NO_ELEMENT) { return; }
    let f = column_features[e.z];
    let feature = features[f];
    let c = e.z - feature.w;
    let bag = f * params.rows + e.y;
    out[e.x] = pool_column(f, feature, bag, c);
}

// The same over vec4 words, when every feature's dim is a multiple of 4 (as FBGEMM
// requires): an invocation sums CHUNK consecutive words of one feature's bag, so each
// index is loaded once per CHUNK words. GPUs take one word per invocation (consecutive
// invocations read consecutive words of a row); CPU adapters a whole row or more of it,
// where each lane's index load is emulated. Invocation i of output row b is chunk
// `chunks[i]` = (feature, its first word); `params.arg0` = chunks per output row,
// `params.dim` = the output's width in words.
override CHUNK: u32 = 1u; // values: 1, 2, 4, 8, 16
@group(0) @binding(1) var<storage, read> tables4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out_words: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> chunks: array<vec2<u32>>;

// Adds word w0 + k of the table row at `base` (when k < CHUNK and the feature's row has
// it) to accumulator k. Called once per k with a constant k, not from a loop: lavapipe
// ends an invocation's loops after 65 535 iterations in all.
fn accumulate_chunk(acc: ptr<function, array<vec4<f32>, 16>>, k: u32, w0: u32, words: u32, base: u32, scale: f32) {
    if (k >= CHUNK || w0 + k >= words) { return; }
    (*acc)[k] += tables4[base + w0 + k] * scale;
}

@compute @workgroup_size(WG_SIZE)
fn tbe_pooled4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    let per_row = params.arg0;
    if (id >= params.rows * per_row) { return; }
    let b = id / per_row;
    let chunk = chunks[id - b * per_row];
    let feature = features[chunk.x];
    let words = feature.y / 4u;
    let w0 = chunk.y;
    let bag = chunk.x * params.rows + b;
    let start = bag_offsets[bag];
    let end = bag_offsets[bag + 1u];
    var acc: array<vec4<f32>, 16>;
    for (var p = start; p < end; p++) {
        let index = indices[p];
        if (index < 0 || u32(index) >= feature.z) { continue; }
        var scale = 1.0;
        if (has_flag(FLAG_HAS_WEIGHTS)) { scale = sample_weights[p]; }
        let base = feature.x / 4u + u32(index) * words;
        accumulate_chunk(&acc, 0u, w0, words, base, scale);
        accumulate_chunk(&acc, 1u, w0, words, base, scale);
        accumulate_chunk(&acc, 2u, w0, words, base, scale);
        accumulate_chunk(&acc, 3u, w0, words, base, scale);
        accumulate_chunk(&acc, 4u, w0, words, base, scale);
        accumulate_chunk(&acc, 5u, w0, words, base, scale);
        accumulate_chunk(&acc, 6u, w0, words, base, scale);
        accumulate_chunk(&acc, 7u, w0, words, base, scale);
        accumulate_chunk(&acc, 8u, w0, words, base, scale);
        accumulate_chunk(&acc, 9u, w0, words, base, scale);
        accumulate_chunk(&acc, 10u, w0, words, base, scale);
        accumulate_chunk(&acc, 11u, w0, words, base, scale);
        accumulate_chunk(&acc, 12u, w0, words, base, scale);
        accumulate_chunk(&acc, 13u, w0, words, base, scale);
        accumulate_chunk(&acc, 14u, w0, words, base, scale);
        accumulate_chunk(&acc, 15u, w0, words, base, scale);
    }
    let dst = b * params.dim + feature.w / 4u + w0;
    for (var k = 0u; k < CHUNK; k++) {
        if (w0 + k < words) {
            var v = acc[k];
            if (params.mode == MODE_MEAN && end > start) { v /= f32(end - start); }
            out_words[dst + k] = v;
        }
    }
}

// No pooling (FBGEMM's sequence embeddings): each index's row, in index order, one
// invocation per output element. Position p's row starts at row_firsts[p] and reads the
// table of feature position_features[p]. Pass fields: dim = the output's values,
// index_count = positions, arg0 = the common dim (0 when features differ: the position
// is then found by binary search over row_firsts).
@group(0) @binding(10) var<storage, read> position_features: array<u32>;
@group(0) @binding(11) var<storage, read> row_firsts: array<u32>;

@compute @workgroup_size(WG_SIZE)
fn tbe_sequence(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_id(wid, nwg, lid);
    if (e >= params.dim) { return; }
    var p = 0u;
    if (params.arg0 != 0u) {
        p = e / params.arg0;
    } else {
        var lo = 0u;
        var hi = params.index_count;
        while (hi - lo > 1u) {
            let mid = (lo + hi) / 2u;
            if (row_firsts[mid] <= e) { lo = mid; } else { hi = mid; }
        }
        p = lo;
    }
    let f = position_features[p];
    let feature = features[f];
    let index = indices[p];
    var v = 0.0;
    // Indices were range-checked on the host; a bad one is still never read.
    if (index >= 0 && u32(index) < feature.z) { v = table_value(f, feature, u32(index), e - row_firsts[p]); }
    out[e] = v;
}

// Variable batch size per feature (FBGEMM's VBE): feature f has B_f bags, one invocation
// per element in the bags' (feature-major) order, so consecutive invocations read
// consecutive columns of one table row; each bag's row goes to the output element
// vbe_layout[2 (F + 1) + bag] (FBGEMM's rank-major layout). vbe_layout[2 f] and
// [2 f + 1]: the feature's first element in that order and its first bag, F + 1 of them
// (one buffer for both, leaving the kernel at WebGPU's 8 storage buffers). Pass fields:
// dim = the elements, arg0 = F, mode, flags.
@group(0) @binding(11) var<storage, read> vbe_layout: array<u32>;

@compute @workgroup_size(WG_SIZE)
fn tbe_vbe(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_id(wid, nwg, lid);
    if (e >= params.dim) { return; }
    // The last feature starting at or before e (features without bags start where the
    // next one does).
    var lo = 0u;
    var hi = params.arg0;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (vbe_layout[2u * mid] <= e) { lo = mid; } else { hi = mid; }
    }
    let feature = features[lo];
    let local = e - vbe_layout[2u * lo];
    let j = local / feature.y;
    let c = local - j * feature.y;
    let bag = vbe_layout[2u * lo + 1u] + j;
    out[vbe_layout[2u * (params.arg0 + 1u) + bag] + c] = pool_column(lo, feature, bag, c);
}

// Backward, every table of one dim D: the output gradient [B, F * D] laid out as the
// bags are, feature-major: row f * B + b of `out` is feature f's columns of row b, which
// the embedding backward's sort and run sums then scatter into the packed tables.
// Pass fields: rows = B, dim = D, arg0 = F; one invocation per element of `out`.
@group(0) @binding(12) var<storage, read> tbe_grad_out: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn tbe_bag_grads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_id(wid, nwg, lid);
    let bags = params.arg0 * params.rows;
    if (e >= bags * params.dim) { return; }
    let bag = e / params.dim;
    let c = e - bag * params.dim;
    let f = bag / params.rows;
    let b = bag - f * params.rows;
    out[e] = tbe_grad_out[(b * params.arg0 + f) * params.dim + c];
}

// The same from a variable-batch (VBE) output gradient, flat in FBGEMM's rank-major
// layout: row `bag` of `out` is read from vbe_layout[2 (F + 1) + bag]. Pass fields:
// rows = the bags, dim = D, arg0 = F.
@compute @workgroup_size(WG_SIZE)
fn tbe_vbe_bag_grads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_id(wid, nwg, lid);
    if (e >= params.rows * params.dim) { return; }
    let bag = e / params.dim;
    out[e] = tbe_grad_out[vbe_layout[2u * (params.arg0 + 1u) + bag] + (e - bag * params.dim)];
}
