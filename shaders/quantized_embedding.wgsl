// Lookups and bags over a quantized table, dequantizing each element inside the
// kernel (the table is never expanded in memory).
//
// SCHEME picks the storage:
//   0  int8 block-wise: byte codes, f32 absmax per block; value = map[c] * absmax
//   1  int8 row-wise:   byte codes (int8), f32 scale per row = absmax / 127; value = c * scale
//   2  4-bit (nf4/fp4): nibbles (even element high), absmax per block stored nested as a
//      byte code of the dynamic map with an f32 absmax per 256 blocks plus an offset:
//      value = t4[c] * (map[q] * absmax2 + offset)
// A table is held in several buffers ("planes": codes, scales, scales2), each split
// into segments that fit a binding. A dispatch binds one segment of each plane and
// handles the table elements [lo, hi) that all of them hold; elements elsewhere are
// left to another dispatch.

override WG_SIZE: u32 = 64u;
override SCHEME: u32 = 0u; // values: 0, 1, 2

const MODE_SUM: u32 = 0u;
const MODE_MEAN: u32 = 1u;
const MODE_MAX: u32 = 2u;
const NO_PADDING: u32 = 0xffffffffu;

// Layout of the constants buffer (see quantize.wgsl).
const C_MAP: u32 = 0u;
const C_T4: u32 = 512u;
const C_OFFSET: u32 = 560u;
const C_ZERO: u32 = 561u;     // always 0; the compiler cannot know it

// x, rounded as it stands: a product passed through here cannot be fused with a later
// addition into an fma, which would round differently from bitsandbytes.
// -inf, the identity of the max reduction. Built from a `let`, not a constant
// expression: WGSL (Tint in browsers) refuses a constant that evaluates to -inf.
fn neg_inf() -> f32 {
    let bits = 0xff800000u;
    return bitcast<f32>(bits);
}

fn rounded(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) | consts[C_ZERO]);
}

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return ((wid.z * nwg.y + wid.y) * nwg.x + wid.x) * WG_SIZE + lid.x;
}

struct Params {
    rows: u32,           // output rows (lookup) or bags in the bound output segment
    dim: u32,
    lo: u32,             // table elements [lo, hi) are held by the bound plane segments
    hi: u32,
    codes_first: u32,    // first byte of the bound codes segment
    scales_first: u32,   // first scale of the bound scales segment
    scales2_first: u32,  // first scale of the bound scales2 segment
    group: u32,          // elements per scale (block size, or dim for row-wise)
    index_first: u32,    // position of the bound index segment's first entry
    index_count: u32,
    stride: u32,         // words per index entry: 1 (index) or 2 (index, weight bits)
    padding_idx: u32,    // NO_PADDING when there is none
    mode: u32,
    first_pass: u32,     // start from the initial value, not from `out`
    last_pass: u32,      // the only dispatch: finish the reduction here
    count_pass: u32,     // add this dispatch's bag sizes to `counts`
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> consts: array<u32>;
@group(0) @binding(2) var<storage, read> codes: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> scales2: array<f32>;
@group(0) @binding(5) var<storage, read> entries: array<i32>;

fn byte_at(words_index: u32) -> u32 {
    return (codes[words_index / 4u] >> (8u * (words_index & 3u))) & 0xffu;
}

// The dequantized table element e (lo <= e < hi).
fn element(e: u32) -> f32 {
    let g = e / p.group - p.scales_first;
    if (SCHEME == 0u) {
        let c = byte_at(e - p.codes_first);
        return bitcast<f32>(consts[C_MAP + c]) * bitcast<f32>(scales[g]);
    } else if (SCHEME == 1u) {
        let c = i32(byte_at(e - p.codes_first) << 24u) >> 24u;
        return f32(c) * bitcast<f32>(scales[g]);
    }
    let b = byte_at(e / 2u - p.codes_first);
    let c = select(b & 15u, b >> 4u, (e & 1u) == 0u);
    let q = (scales[g / 4u] >> (8u * (g & 3u))) & 0xffu;
    let absmax2 = scales2[e / (p.group * 256u) - p.scales2_first];
    let absmax = rounded(bitcast<f32>(consts[C_MAP + q]) * absmax2) + bitcast<f32>(consts[C_OFFSET]);
    return bitcast<f32>(consts[C_T4 + c]) * absmax;
}

@group(0) @binding(6) var<storage, read_write> lookup_out: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn lookup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= p.rows * p.dim) { return; }
    let row = id / p.dim;
    let col = id - row * p.dim;
    let e = u32(entries[row]) * p.dim + col;
    if (e < p.lo || e >= p.hi) { return; }
    lookup_out[id] = element(e);
}

// bags + 1 global positions into the whole index list.
@group(0) @binding(6) var<storage, read> offsets: array<u32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read_write> counts: array<u32>;

fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

@compute @workgroup_size(WG_SIZE)
fn bag(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= p.rows * p.dim) { return; }
    let b = id / p.dim;
    let col = id - b * p.dim;
    let lo = max(offsets[b], p.index_first);
    let hi = min(offsets[b + 1u], p.index_first + p.index_count);

    var acc: f32;
    if (p.first_pass != 0u) {
        acc = select(0.0, neg_inf(), p.mode == MODE_MAX);
    } else {
        acc = out[id];
    }
    var n = 0u;
    for (var pos = lo; pos < hi; pos++) {
        let local = (pos - p.index_first) * p.stride;
        let row = u32(entries[local]);
        if (row == p.padding_idx) { continue; }
        n += 1u;
        let e = row * p.dim + col;
        if (e < p.lo || e >= p.hi) { continue; }
        var v = element(e);
        if (p.stride == 2u) { v *= bitcast<f32>(entries[local + 1u]); }
        if (p.mode == MODE_MAX) {
            acc = select(acc, v, is_nan(v) || v > acc);
        } else {
            acc += v;
        }
    }
    if (p.last_pass != 0u) {
        if (p.mode == MODE_MEAN) {
            acc = select(0.0, acc / f32(n), n > 0u);
        } else if (p.mode == MODE_MAX && n == 0u) {
            acc = 0.0;
        }
    } else if (p.count_pass != 0u && col == 0u) {
        counts[b] += n;
    }
    out[id] = acc;
}

// After several accumulating bag dispatches: means divide by the bag sizes, empty
// maxima become 0.
@group(0) @binding(1) var<storage, read> final_counts: array<u32>;
@group(0) @binding(2) var<storage, read_write> final_out: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= p.rows * p.dim) { return; }
    let n = final_counts[id / p.dim];
    if (p.mode == MODE_MEAN) {
        final_out[id] = select(0.0, final_out[id] / f32(n), n > 0u);
    } else if (p.mode == MODE_MAX && n == 0u) {
        final_out[id] = 0.0;
    }
}
