// LayerNorm over the last dimension, alone or fused with the lookups that feed it
// (StableEmbedding: one lookup; BERT's embedding block: the sum of K lookups).
// One workgroup normalises one row. All f32.
// Parts: common/grid.wgsl, common/pass.wgsl, common/table.wgsl, then this file.
// The layer's values in `Pass`: arg0 eps (f32 bits), arg1 affine (bit 0: gamma at
// ln_affine[0 .. dim], bit 1: beta at ln_affine[dim .. 2 dim]), arg2 K (indices per
// output row), arg3 the one k an `accumulate` pass adds.
//
// The row is read once: each invocation keeps its strided columns (up to KEPT of
// them) in registers from the statistics to the write; longer rows read the columns
// past those again.
//
// Statistics of x - p, with p the row's first value: for rows far from zero (1000 +
// 0.01·noise) that subtraction is exact and keeps the digits of the spread. Each
// invocation folds its columns into Welford statistics (count, mean, M2) and the
// workgroup merges them with Chan's formula, so E[x²] − E[x]² never cancels. The
// output is ((x - p) - mean) · rstd: the mean of the shifted values is never rounded
// back to the row's magnitude, so the result stays within a few ulp of the exact one
// even where PyTorch's own f32 result is 0.016 away from it.

// Invocations per row (a power of two, 32 ..= MAX_ROW_THREADS).
override ROW_THREADS: u32 = 64u; // values: 32, 64, 128, 256

const MAX_ROW_THREADS: u32 = 256u;
// Columns one invocation keeps in registers: rows up to ROW_THREADS * KEPT wide are read once.
const KEPT: u32 = 16u;

var<workgroup> wg_count: array<f32, MAX_ROW_THREADS>;
var<workgroup> wg_mean: array<f32, MAX_ROW_THREADS>;
var<workgroup> wg_m2: array<f32, MAX_ROW_THREADS>;
var<workgroup> wg_pivot: f32;

// Gamma then beta in one buffer, so no entry point binds more than 4 storage buffers
// (the downlevel / GLES 3.1 minimum).
@group(0) @binding(5) var<storage, read> ln_affine: array<f32>;

// Where a kernel's row comes from.
const FROM_X: u32 = 0u;        // layer_norm: the input x (f32, bound as `indices`)
const FROM_LOOKUPS: u32 = 1u;  // lookup_sum_layer_norm: Σ_k table[indices[row * K + k]]
const FROM_OUT: u32 = 2u;      // normalize_in_place: the sums the accumulate passes left in `out`

// Column `c` of row `row`, before normalisation.
fn row_value(source: u32, row: u32, c: u32) -> f32 {
    let base = row * params.dim;
    if (source == FROM_X) { return bitcast<f32>(indices[base + c]); }
    if (source == FROM_OUT) { return out[base + c]; }
    var v = 0.0;
    for (var k = 0u; k < params.arg2; k++) {
        // Indices were range-checked on the host before upload.
        v += table_element(u32(indices[row * params.arg2 + k]), c);
    }
    return v;
}

// Normalises row `row` into `out`. Every invocation of the workgroup calls it.
fn normalize_row(source: u32, row: u32, lid: u32) {
    let dim = params.dim;
    if (lid == 0u) { wg_pivot = row_value(source, row, 0u); }
    workgroupBarrier();
    let pivot = wg_pivot;
    // This invocation's columns lid + k * ROW_THREADS, shifted by the pivot.
    var kept: array<f32, KEPT>;
    var count = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var c = lid; c < dim; c += ROW_THREADS) {
        let x = row_value(source, row, c) - pivot;
        let k = (c - lid) / ROW_THREADS;
        if (k < KEPT) { kept[k] = x; }
        count += 1.0;
        let delta = x - mean;
        mean += delta / count;
        m2 += delta * (x - mean);
    }
    wg_count[lid] = count;
    wg_mean[lid] = mean;
    wg_m2[lid] = m2;
    for (var stride = ROW_THREADS / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride) {
            let na = wg_count[lid];
            let nb = wg_count[lid + stride];
            if (nb > 0.0) {
                let n = na + nb;
                let delta = wg_mean[lid + stride] - wg_mean[lid];
                let wb = nb / n;
                wg_mean[lid] = wg_mean[lid] + delta * wb;
                wg_m2[lid] = wg_m2[lid] + wg_m2[lid + stride] + delta * delta * na * wb;
                wg_count[lid] = n;
            }
        }
    }
    workgroupBarrier();
    let row_mean = wg_mean[0];
    // Biased variance, as torch.nn.functional.layer_norm.
    let variance = max(wg_m2[0] / f32(dim), 0.0);
    let rstd = 1.0 / sqrt(variance + bitcast<f32>(params.arg0));
    let base = row * dim;
    for (var c = lid; c < dim; c += ROW_THREADS) {
        let k = (c - lid) / ROW_THREADS;
        var x: f32;
        if (k < KEPT) { x = kept[k]; } else { x = row_value(source, row, c) - pivot; }
        var y = (x - row_mean) * rstd;
        if ((params.arg1 & 1u) != 0u) { y = y * ln_affine[c]; }
        if ((params.arg1 & 2u) != 0u) { y = y + ln_affine[dim + c]; }
        out[base + c] = y;
    }
}

// The same for a row that one invocation normalises alone (rows up to a few hundred
// columns on CPU adapters, where workgroup barriers cost more than reading a row twice):
// statistics over the row, then a second read for the output.
fn normalize_row_alone(source: u32, row: u32) {
    let dim = params.dim;
    let pivot = row_value(source, row, 0u);
    var count = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var c = 0u; c < dim; c++) {
        let x = row_value(source, row, c) - pivot;
        count += 1.0;
        let delta = x - mean;
        mean += delta / count;
        m2 += delta * (x - mean);
    }
    let rstd = 1.0 / sqrt(max(m2 / f32(dim), 0.0) + bitcast<f32>(params.arg0));
    let base = row * dim;
    for (var c = 0u; c < dim; c++) {
        var y = ((row_value(source, row, c) - pivot) - mean) * rstd;
        if ((params.arg1 & 1u) != 0u) { y = y * ln_affine[c]; }
        if ((params.arg1 & 2u) != 0u) { y = y + ln_affine[dim + c]; }
        out[base + c] = y;
    }
}

// The same over vec4 words, for rows of whole words (D % 4 == 0, f32 tables) on CPU
// adapters, where each storage load is emulated lane by lane: one load brings four
// columns, the lookups' table words come from the texture copy, the K row indices of
// a lookup row are one word (the host pads them to 4), and gamma and beta come from a
// uniform block, which every lane reads at the same column at once (loaded once for
// the SIMD group). Four Welford streams (a word's lanes) merge by Chan's formula.
@group(0) @binding(2) var<storage, read> input4: array<vec4<u32>>;
@group(0) @binding(12) var<uniform> ln_affine_words: array<vec4<f32>, 4096>;
// Words of a row an invocation keeps between its two passes (rows up to 256 wide are read once).
const KEPT_WORDS: u32 = 64u;
// The words form's row length in vec4 words (dim / 4), fixed per pipeline: loops of a
// known count unroll, so `kept` stays in registers rather than in per-lane scratch memory.
// 0: read dim from the pass parameters.
override ROW_WORDS: u32 = 0u; // values: 0, 16

fn row_words() -> u32 {
    if (ROW_WORDS != 0u) { return ROW_WORDS; }
    return params.dim / 4u;
}

// Word w of row `row` before normalisation: of x, or of the sum of the lookups of the
// table rows `ids` (the first K of them).
fn row_word(source: u32, ids: vec4<u32>, row: u32, w: u32) -> vec4<f32> {
    let words = row_words();
    if (source == FROM_X) { return bitcast<vec4<f32>>(input4[row * words + w]); }
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < params.arg2; k++) {
        v += bitcast<vec4<f32>>(table_word((ids[k] - params.first0) * words + w));
    }
    return v;
}

fn normalize_row_words(source: u32, row: u32) {
    let words = row_words();
    var ids = vec4<u32>(0u);
    if (source == FROM_LOOKUPS) { ids = input4[row]; }
    let first = row_word(source, ids, row, 0u);
    let pivot = first.x;
    // x's first KEPT_WORDS words stay in registers for the output pass (an emulated
    // storage load each); table words are fetched again (a texel fetch is cheaper).
    let keep = source == FROM_X;
    var kept: array<vec4<f32>, KEPT_WORDS>;
    var row_mean: f32;
    var row_m2: f32;
    if (keep && words <= KEPT_WORDS) {
        // The whole row kept: the mean, then the squared deviations from it (two
        // passes over registers, no division per word).
        var sum = vec4<f32>(0.0);
        for (var w = 0u; w < words; w++) {
            var x = first - pivot;
            if (w > 0u) { x = row_word(source, ids, row, w) - pivot; }
            kept[w] = x;
            sum += x;
        }
        row_mean = ((sum.x + sum.y) + (sum.z + sum.w)) / f32(params.dim);
        var m2 = vec4<f32>(0.0);
        for (var w = 0u; w < words; w++) {
            let d = kept[w] - row_mean;
            m2 += d * d;
        }
        row_m2 = (m2.x + m2.y) + (m2.z + m2.w);
    } else {
        var mean = vec4<f32>(0.0);
        var m2 = vec4<f32>(0.0);
        for (var w = 0u; w < words; w++) {
            var x = first - pivot;
            if (w > 0u) { x = row_word(source, ids, row, w) - pivot; }
            if (keep && w < KEPT_WORDS) { kept[w] = x; }
            let delta = x - mean;
            mean += delta * (1.0 / f32(w + 1u));
            m2 += delta * (x - mean);
        }
        // Four streams of `words` values each.
        row_mean = 0.25 * ((mean.x + mean.y) + (mean.z + mean.w));
        let spread = mean - row_mean;
        row_m2 = (m2.x + m2.y) + (m2.z + m2.w) + f32(words) * dot(spread, spread);
    }
    let rstd = 1.0 / sqrt(max(row_m2 / f32(params.dim), 0.0) + bitcast<f32>(params.arg0));
    for (var w = 0u; w < words; w++) {
        var x: vec4<f32>;
        if (keep && w < KEPT_WORDS) { x = kept[w]; } else { x = row_word(source, ids, row, w) - pivot; }
        var y = (x - row_mean) * rstd;
        if ((params.arg1 & 1u) != 0u) { y = y * ln_affine_words[w]; }
        if ((params.arg1 & 2u) != 0u) { y = y + ln_affine_words[words + w]; }
        out4[row * words + w] = y;
    }
}

@compute @workgroup_size(WG_SIZE)
fn layer_norm_words(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_id(wid, nwg, lid);
    if (row < params.rows) { normalize_row_words(FROM_X, row); }
}

@compute @workgroup_size(WG_SIZE)
fn lookup_sum_layer_norm_words(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_id(wid, nwg, lid);
    if (row < params.rows) { normalize_row_words(FROM_LOOKUPS, row); }
}

// ---- layer_norm: out = LayerNorm(x) ----

@compute @workgroup_size(ROW_THREADS)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg);
    if (row < params.rows) { normalize_row(FROM_X, row, lid); }
}

@compute @workgroup_size(WG_SIZE)
fn layer_norm_alone(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_id(wid, nwg, lid);
    if (row < params.rows) { normalize_row_alone(FROM_X, row); }
}

// ---- lookup_sum_layer_norm: out = LayerNorm(Σ_k table[indices[row * K + k]]) ----
// The K tables are concatenated into one (the host offsets each index), bound whole.

@compute @workgroup_size(ROW_THREADS)
fn lookup_sum_layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg);
    if (row < params.rows) { normalize_row(FROM_LOOKUPS, row, lid); }
}

@compute @workgroup_size(WG_SIZE)
fn lookup_sum_layer_norm_alone(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_id(wid, nwg, lid);
    if (row < params.rows) { normalize_row_alone(FROM_LOOKUPS, row); }
}

// ---- normalize_in_place: out = LayerNorm(out), after the accumulate passes ----
// Each invocation reads a column before it writes it, and only it touches that column.

@compute @workgroup_size(ROW_THREADS)
fn normalize_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg);
    if (row < params.rows) { normalize_row(FROM_OUT, row, lid); }
}

@compute @workgroup_size(WG_SIZE)
fn normalize_in_place_alone(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_id(wid, nwg, lid);
    if (row < params.rows) { normalize_row_alone(FROM_OUT, row); }
}

// ---- Multi-pass path for tables split over several bindings ----
// accumulate: out[row, :] += table[indices[row * K + k]] for the one k of this
// pass, where that row lies in the bound table slice. Passing k in order keeps the
// sum's order the same as the fused kernel's.

@compute @workgroup_size(WG_SIZE)
fn accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = output_element(wid, nwg, lid);
    if (e.x == NO_ELEMENT) { return; }
    let r = u32(indices[e.y * params.arg2 + params.arg3]);
    if (slice_holds_row(r)) { out[e.x] = out[e.x] + table_element(r, e.z); }
}
