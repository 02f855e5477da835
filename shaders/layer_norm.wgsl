// LayerNorm over the last dimension, alone or fused with the lookups that feed it
// (StableEmbedding: one lookup; BERT's embedding block: the sum of K lookups).
// One workgroup normalises one row: each invocation folds its strided columns into
// Welford statistics (count, mean, M2), the workgroup merges them with Chan's
// formula, so the variance stays accurate for rows like 1000 + 0.01·noise where
// E[x²] − E[x]² cancels catastrophically. All arithmetic is f32.

override WG_SIZE: u32 = 64u;
// Invocations per row (a power of two, at most MAX_ROW_THREADS).
override ROW_THREADS: u32 = 64u;
// Storage format of lookup tables: 0 = f32; 1 = f16 and 2 = bf16, packed two to a
// 32-bit word (element i of a segment is half i & 1 of word i >> 1, low half first),
// so no `shader-f16` is needed. Values are widened to f32.
override TABLE_FORMAT: u32 = 0u;

const MAX_ROW_THREADS: u32 = 256u;

struct Params {
    rows: u32,            // rows in the bound output segment
    dim: u32,
    eps: f32,
    affine: u32,          // bit 0: gamma bound, bit 1: beta bound
    lookups: u32,         // K: indices per output row
    lookup: u32,          // accumulate: which of the K indices this dispatch adds
    table_first_row: u32, // first table row held by the bound table segment
    table_rows: u32,
}

var<workgroup> wg_count: array<f32, MAX_ROW_THREADS>;
var<workgroup> wg_mean: array<f32, MAX_ROW_THREADS>;
var<workgroup> wg_m2: array<f32, MAX_ROW_THREADS>;

// Running statistics of one invocation's columns.
struct Stats {
    count: f32,
    mean: f32,
    m2: f32,
}

fn welford_add(s: Stats, x: f32) -> Stats {
    let count = s.count + 1.0;
    let delta = x - s.mean;
    let mean = s.mean + delta / count;
    return Stats(count, mean, s.m2 + delta * (x - mean));
}

fn row_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.z * nwg.y + wid.y) * nwg.x + wid.x;
}

// Merges every invocation's statistics (Chan et al.) and returns (mean, 1/sqrt(var + eps)).
// Must be reached by the whole workgroup.
fn row_moments(s: Stats, lid: u32, dim: u32, eps: f32) -> vec2<f32> {
    wg_count[lid] = s.count;
    wg_mean[lid] = s.mean;
    wg_m2[lid] = s.m2;
    for (var stride = ROW_THREADS / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride) {
            let na = wg_count[lid];
            let nb = wg_count[lid + stride];
            let n = na + nb;
            if (nb > 0.0) {
                let delta = wg_mean[lid + stride] - wg_mean[lid];
                let wb = nb / n;
                wg_mean[lid] = wg_mean[lid] + delta * wb;
                wg_m2[lid] = wg_m2[lid] + wg_m2[lid + stride] + delta * delta * na * wb;
                wg_count[lid] = n;
            }
        }
    }
    workgroupBarrier();
    let mean = wg_mean[0];
    // Biased variance, as torch.nn.functional.layer_norm.
    let variance = max(wg_m2[0] / f32(dim), 0.0);
    let rstd = 1.0 / sqrt(variance + eps);
    return vec2<f32>(mean, rstd);
}

// ---- layer_norm: out = LayerNorm(x) ----

@group(0) @binding(0) var<uniform> ln: Params;
@group(0) @binding(1) var<storage, read> ln_x: array<f32>;
@group(0) @binding(2) var<storage, read> ln_gamma: array<f32>;
@group(0) @binding(3) var<storage, read> ln_beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> ln_out: array<f32>;

@compute @workgroup_size(ROW_THREADS)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg);
    if (row >= ln.rows) { return; }
    let base = row * ln.dim;
    var s = Stats(0.0, 0.0, 0.0);
    for (var c = lid; c < ln.dim; c += ROW_THREADS) {
        s = welford_add(s, ln_x[base + c]);
    }
    let m = row_moments(s, lid, ln.dim, ln.eps);
    for (var c = lid; c < ln.dim; c += ROW_THREADS) {
        var y = (ln_x[base + c] - m.x) * m.y;
        if ((ln.affine & 1u) != 0u) { y = y * ln_gamma[c]; }
        if ((ln.affine & 2u) != 0u) { y = y + ln_beta[c]; }
        ln_out[base + c] = y;
    }
}

// ---- lookup_sum_layer_norm: out = LayerNorm(Σ_k table[indices[row * K + k]]) ----
// The K tables are concatenated into one (the host offsets each index), bound whole.

@group(0) @binding(0) var<uniform> fp: Params;
@group(0) @binding(1) var<storage, read> fused_table: array<u32>;
@group(0) @binding(2) var<storage, read> fused_indices: array<i32>;
@group(0) @binding(3) var<storage, read> fused_gamma: array<f32>;
@group(0) @binding(4) var<storage, read> fused_beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> fused_out: array<f32>;

fn fused_value(i: u32) -> f32 {
    if (TABLE_FORMAT == 0u) { return bitcast<f32>(fused_table[i]); }
    let shifted = fused_table[i >> 1u] >> ((i & 1u) * 16u);
    if (TABLE_FORMAT == 1u) { return unpack2x16float(shifted).x; }
    return bitcast<f32>(shifted << 16u);
}

@compute @workgroup_size(ROW_THREADS)
fn lookup_sum_layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg);
    if (row >= fp.rows) { return; }
    let base = row * fp.dim;
    var s = Stats(0.0, 0.0, 0.0);
    for (var c = lid; c < fp.dim; c += ROW_THREADS) {
        var v = 0.0;
        for (var k = 0u; k < fp.lookups; k++) {
            // Indices were range-checked on the host before upload.
            let r = u32(fused_indices[row * fp.lookups + k]);
            v += fused_value(r * fp.dim + c);
        }
        // Park the sum in the output; this invocation reads it back below.
        fused_out[base + c] = v;
        s = welford_add(s, v);
    }
    let m = row_moments(s, lid, fp.dim, fp.eps);
    for (var c = lid; c < fp.dim; c += ROW_THREADS) {
        var y = (fused_out[base + c] - m.x) * m.y;
        if ((fp.affine & 1u) != 0u) { y = y * fused_gamma[c]; }
        if ((fp.affine & 2u) != 0u) { y = y + fused_beta[c]; }
        fused_out[base + c] = y;
    }
}

// ---- Multi-pass path for tables split over several bindings ----
// accumulate: out[row, :] += table[indices[row * K + k]] for the one k of this
// dispatch, where that row lies in the bound table segment. Dispatching k in order
// keeps the sum's order the same as the fused kernel's.

@group(0) @binding(0) var<uniform> ap: Params;
@group(0) @binding(1) var<storage, read> acc_table: array<u32>;
@group(0) @binding(2) var<storage, read> acc_indices: array<i32>;
@group(0) @binding(3) var<storage, read_write> acc_out: array<f32>;

fn acc_value(i: u32) -> f32 {
    if (TABLE_FORMAT == 0u) { return bitcast<f32>(acc_table[i]); }
    let shifted = acc_table[i >> 1u] >> ((i & 1u) * 16u);
    if (TABLE_FORMAT == 1u) { return unpack2x16float(shifted).x; }
    return bitcast<f32>(shifted << 16u);
}

@compute @workgroup_size(WG_SIZE)
fn accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let id = row_index(wid, nwg) * WG_SIZE + lid;
    if (id >= ap.rows * ap.dim) { return; }
    let row = id / ap.dim;
    let col = id - row * ap.dim;
    let r = u32(acc_indices[row * ap.lookups + ap.lookup]);
    if (r < ap.table_first_row || r - ap.table_first_row >= ap.table_rows) { return; }
    acc_out[id] = acc_out[id] + acc_value((r - ap.table_first_row) * ap.dim + col);
}

// normalize_in_place: out = LayerNorm(out), after the accumulate passes.

@group(0) @binding(0) var<uniform> np: Params;
@group(0) @binding(1) var<storage, read> np_gamma: array<f32>;
@group(0) @binding(2) var<storage, read> np_beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> np_out: array<f32>;

@compute @workgroup_size(ROW_THREADS)
fn normalize_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg);
    if (row >= np.rows) { return; }
    let base = row * np.dim;
    var s = Stats(0.0, 0.0, 0.0);
    for (var c = lid; c < np.dim; c += ROW_THREADS) {
        s = welford_add(s, np_out[base + c]);
    }
    let m = row_moments(s, lid, np.dim, np.eps);
    for (var c = lid; c < np.dim; c += ROW_THREADS) {
        var y = (np_out[base + c] - m.x) * m.y;
        if ((np.affine & 1u) != 0u) { y = y * np_gamma[c]; }
        if ((np.affine & 2u) != 0u) { y = y + np_beta[c]; }
        np_out[base + c] = y;
    }
}
