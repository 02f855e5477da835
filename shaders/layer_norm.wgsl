// LayerNorm over the last dimension, alone or fused with the lookups that feed it
// (StableEmbedding: one lookup; BERT's embedding block: the sum of K lookups).
// One workgroup normalises one row of `out` in place (the plain LayerNorm first
// copies its input row there, the fused kernel parks its sums there). All f32.
// Parts: common/grid.wgsl, common/pass.wgsl, common/table.wgsl, then this file.
// The layer's values in `Pass`: arg0 eps (f32 bits), arg1 affine (bit 0: gamma at
// ln_affine[0 .. dim], bit 1: beta at ln_affine[dim .. 2 dim]), arg2 K (indices per
// output row), arg3 the one k an `accumulate` pass adds.
//
// Variance: each invocation folds its strided columns, shifted by the row's first
// value, into Welford statistics (count, mean, M2) and the workgroup merges them with
// Chan's formula, so rows like 1000 + 0.01·noise, where E[x²] − E[x]² cancels
// catastrophically, keep an accurate variance.
//
// Mean: in such rows the f32 mean alone moves every output by ~ulp(mean) · rstd, so a
// mean one ulp away from PyTorch's gives visibly different results. The mean is
// therefore computed in the order PyTorch's CPU kernel uses (RowwiseMoments with
// 8-wide vectors: per lane, Welford over chunks of 16 vectors, merged as a binary
// cascade; then the scalar tail; then the lanes), with fused multiply-adds where
// that kernel has them and correctly rounded divisions.

// Invocations per row (a power of two, 32 ..= MAX_ROW_THREADS).
override ROW_THREADS: u32 = 64u; // values: 32, 64, 128, 256

const MAX_ROW_THREADS: u32 = 256u;
// PyTorch's vector width (AVX2 floats) and chunk length in RowwiseMoments.
const LANES: u32 = 8u;
const CHUNK: u32 = 16u;
// f32(1 / (j + 1)), correctly rounded, as PyTorch's c_vecs.
const RECIP = array<u32, 16>(0x3f800000u, 0x3f000000u, 0x3eaaaaabu, 0x3e800000u, 0x3e4ccccdu, 0x3e2aaaabu,
    0x3e124925u, 0x3e000000u, 0x3de38e39u, 0x3dcccccdu, 0x3dba2e8cu, 0x3daaaaabu, 0x3d9d89d9u, 0x3d924925u,
    0x3d888889u, 0x3d800000u);

var<workgroup> wg_count: array<f32, MAX_ROW_THREADS>;
var<workgroup> wg_mean: array<f32, MAX_ROW_THREADS>;
var<workgroup> wg_m2: array<f32, MAX_ROW_THREADS>;
var<workgroup> wg_lane_mean: array<f32, LANES>;
var<workgroup> wg_row_mean: f32;

// Whether this device's fma() is fused (lavapipe's is not); set by normalize_row.
var<private> fused_fma: bool;

// a * b + c with one rounding: the device's fma when it is fused, else Dekker's exact
// product and Knuth's two-sum (correctly rounded but for rare double roundings).
fn fma_rn(a: f32, b: f32, c: f32) -> f32 {
    if (fused_fma) { return fma(a, b, c); }
    let prod = opaque(a * b);
    let ta = opaque(4097.0 * a);
    let ah = opaque(ta - opaque(ta - a));
    let al = opaque(a - ah);
    let tb = opaque(4097.0 * b);
    let bh = opaque(tb - opaque(tb - b));
    let bl = opaque(b - bh);
    let e = opaque(opaque(opaque(opaque(ah * bh) - prod) + opaque(ah * bl)) + opaque(al * bh)) + opaque(al * bl);
    let s = opaque(prod + c);
    let v = opaque(s - prod);
    let t = opaque(opaque(prod - opaque(s - v)) + opaque(c - v));
    return s + opaque(t + e);
}

// x, hidden from algebraic rewrites (a - (a - b) -> b and the like) that would
// undo the error-free transformations above: the condition is never true.
fn opaque(x: f32) -> f32 {
    return select(x, 0.0, params.rows == 0xffffffffu);
}

// a / b rounded to nearest: the GPU's division may be a few ulp off, so the
// neighbours of its quotient are checked with exact residuals.
fn div_rn(a: f32, b: f32) -> f32 {
    let q = a / b;
    if (q == 0.0 || b == 0.0) { return q; }
    var best = q;
    var best_r = abs(fma_rn(-q, b, a));
    let up = bitcast<f32>(bitcast<u32>(q) + 1u);
    let r_up = abs(fma_rn(-up, b, a));
    if (r_up < best_r) { best = up; best_r = r_up; }
    let down = bitcast<f32>(bitcast<u32>(q) - 1u);
    if (abs(fma_rn(-down, b, a)) < best_r) { best = down; }
    return best;
}

// Merges a mean over `n_add` values into one over `n` values (PyTorch's AddMoments).
fn merge_mean(n: u32, mean: f32, n_add: u32, mean_add: f32) -> f32 {
    let total = n + n_add;
    let c = select(div_rn(f32(n_add), f32(total)), 0.0, total == 0u);
    return fma_rn(c, mean_add - mean, mean);
}

// The mean of lane `lane` of the row at `base` (elements lane, lane + 8, ... of the
// whole 8-vectors), in PyTorch's cascade order.
fn lane_mean(base: u32, lane: u32, dim: u32) -> f32 {
    let n = dim / LANES;
    let chunks = (n + CHUNK - 1u) / CHUNK;
    var depth = 1u;
    if (chunks > 2u) { depth = 32u - countLeadingZeros(chunks - 1u); }
    var stack_n: array<u32, 32>;
    var stack_mean: array<f32, 32>;
    for (var i = 0u; i < chunks; i++) {
        let m0 = min(CHUNK, n - i * CHUNK);
        var m1 = 0.0;
        for (var j = 0u; j < m0; j++) {
            let x = out[base + (i * CHUNK + j) * LANES + lane];
            m1 = fma_rn(x - m1, bitcast<f32>(RECIP[j]), m1);
        }
        stack_mean[0] = merge_mean(stack_n[0], stack_mean[0], m0, m1);
        stack_n[0] += m0;
        var mask = i + 1u;
        for (var j = 1u; j < depth && (mask & 1u) == 0u; j++) {
            stack_mean[j] = merge_mean(stack_n[j], stack_mean[j], stack_n[j - 1u], stack_mean[j - 1u]);
            stack_n[j] += stack_n[j - 1u];
            stack_n[j - 1u] = 0u;
            stack_mean[j - 1u] = 0.0;
            mask = mask >> 1u;
        }
    }
    for (var i = 1u; i < depth; i++) {
        stack_mean[0] = merge_mean(stack_n[0], stack_mean[0], stack_n[i], stack_mean[i]);
        stack_n[0] += stack_n[i];
    }
    return stack_mean[0];
}

// The scalar tail, then the lanes merged in order.
fn combine_lanes(base: u32, dim: u32) -> f32 {
    let n = dim / LANES;
    var count = 0u;
    var mean = 0.0;
    for (var i = n * LANES; i < dim; i++) {
        count += 1u;
        mean = mean + div_rn(out[base + i] - mean, f32(count));
    }
    for (var lane = 0u; lane < LANES; lane++) {
        mean = merge_mean(count, mean, n, wg_lane_mean[lane]);
        count += n;
    }
    return mean;
}

// Normalises the row at `base` of `out` in place. Every invocation of the
// workgroup must call it; the row's values must be visible to all of them.
fn normalize_row(base: u32, lid: u32) {
    let dim = params.dim;
    // (1 + 2^-12)^2 - (1 + 2^-11) = 2^-24 exactly, 0 when rounded twice; the zero
    // term (dim >> 31 is 0) keeps the compiler from folding the probe.
    let probe = 1.000244140625 + f32(dim >> 31u);
    fused_fma = fma(probe, probe, -1.00048828125) != 0.0;
    // Statistics of x - x[0]: for rows far from zero that subtraction is exact and
    // keeps the digits of the spread that x - mean would round away.
    let pivot = out[base];
    var count = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var c = lid; c < dim; c += ROW_THREADS) {
        let x = out[base + c] - pivot;
        count += 1.0;
        let delta = x - mean;
        mean += delta / count;
        m2 += delta * (x - mean);
    }
    if (lid < LANES) { wg_lane_mean[lid] = lane_mean(base, lid, dim); }
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
    if (lid == 0u) { wg_row_mean = combine_lanes(base, dim); }
    workgroupBarrier();
    let row_mean = wg_row_mean;
    // Biased variance, as torch.nn.functional.layer_norm.
    let variance = max(wg_m2[0] / f32(dim), 0.0);
    let rstd = 1.0 / sqrt(variance + bitcast<f32>(params.arg0));
    for (var c = lid; c < dim; c += ROW_THREADS) {
        var y = (out[base + c] - row_mean) * rstd;
        if ((params.arg1 & 1u) != 0u) { y = y * ln_affine[c]; }
        if ((params.arg1 & 2u) != 0u) { y = y + ln_affine[dim + c]; }
        out[base + c] = y;
    }
}

// Gamma then beta in one buffer, so no entry point binds more than 4 storage buffers
// (the downlevel / GLES 3.1 minimum).
@group(0) @binding(5) var<storage, read> ln_affine: array<f32>;

// ---- layer_norm: out = LayerNorm(x) ----

@group(0) @binding(2) var<storage, read> ln_x: array<f32>;

@compute @workgroup_size(ROW_THREADS)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg);
    if (row >= params.rows) { return; }
    let base = row * params.dim;
    for (var c = lid; c < params.dim; c += ROW_THREADS) {
        out[base + c] = ln_x[base + c];
    }
    storageBarrier();
    normalize_row(base, lid);
}

// ---- lookup_sum_layer_norm: out = LayerNorm(Σ_k table[indices[row * K + k]]) ----
// The K tables are concatenated into one (the host offsets each index), bound whole.

@compute @workgroup_size(ROW_THREADS)
fn lookup_sum_layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg);
    if (row >= params.rows) { return; }
    let base = row * params.dim;
    for (var c = lid; c < params.dim; c += ROW_THREADS) {
        var v = 0.0;
        for (var k = 0u; k < params.arg2; k++) {
            // Indices were range-checked on the host before upload.
            let r = u32(indices[row * params.arg2 + k]);
            v += table_element(r, c);
        }
        out[base + c] = v;
    }
    storageBarrier();
    normalize_row(base, lid);
}

// ---- normalize_in_place: out = LayerNorm(out), after the accumulate passes ----

@compute @workgroup_size(ROW_THREADS)
fn normalize_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg);
    if (row >= params.rows) { return; }
    normalize_row(row * params.dim, lid);
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
