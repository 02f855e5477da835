// torch.nn.EmbeddingBag: sum / mean / max over bags, accumulated in f32.
// One invocation reduces one column of one bag. A dispatch covers one output
// segment of bags against one index segment and one table segment; when a call
// needs several dispatches they accumulate into the output, and `finalize`
// turns sums into means and empty maxima into zeros.

override WG_SIZE: u32 = 64u;
// Storage format of the table, as in embedding.wgsl: 0 = f32, 1 = f16, 2 = bf16
// (the half formats packed two to a word, low half first); accumulation is f32.
override TABLE_FORMAT: u32 = 0u; // values: 0, 1, 2

const MODE_SUM: u32 = 0u;
const MODE_MEAN: u32 = 1u;
const MODE_MAX: u32 = 2u;
const NO_PADDING: u32 = 0xffffffffu;

// -inf, the identity of the max reduction. Built from a `let`, not a constant
// expression: WGSL (Tint in browsers) refuses a constant that evaluates to -inf.
fn neg_inf() -> f32 {
    let bits = 0xff800000u;
    return bitcast<f32>(bits);
}

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return ((wid.z * nwg.y + wid.y) * nwg.x + wid.x) * WG_SIZE + lid.x;
}

struct BagParams {
    bags: u32,            // bags in this output segment
    dim: u32,
    table_first_row: u32,
    table_rows: u32,
    index_first: u32,     // position of the bound index segment's first index
    index_count: u32,
    num_embeddings: u32,
    padding_idx: u32,     // NO_PADDING when there is none
    mode: u32,
    first_pass: u32,      // start from the initial value, not from `out`
    last_pass: u32,       // the only dispatch: finish the reduction here
    count_pass: u32,      // add this dispatch's bag sizes to `counts`
    has_weights: u32,
    report_bad: u32,
    tex_width_shift: u32, // texture copy of the table (TABLE_TEXTURE): log2 of its width
    tex_layer_shift: u32, // and log2 of its rows per layer
}

@group(0) @binding(0) var<uniform> bp: BagParams;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> indices: array<i32>;
// bags + 1 global positions into the whole index list.
@group(0) @binding(3) var<storage, read> offsets: array<u32>;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> counts: array<u32>;
@group(0) @binding(7) var<storage, read_write> status: array<atomic<u32>>;

// Element `i` of the bound table segment, widened to f32.
fn table_value(i: u32) -> f32 {
    if (TABLE_FORMAT == 0u) { return bitcast<f32>(table[i]); }
    let shifted = table[i >> 1u] >> ((i & 1u) * 16u);
    if (TABLE_FORMAT == 1u) { return unpack2x16float(shifted).x; }
    return bitcast<f32>(shifted << 16u);
}

fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// Max that propagates NaN, as PyTorch's does.
fn max_nan(acc: f32, v: f32) -> f32 {
    return select(acc, v, is_nan(v) || v > acc);
}

@compute @workgroup_size(WG_SIZE)
fn bag(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= bp.bags * bp.dim) { return; }
    let b = id / bp.dim;
    let col = id - b * bp.dim;
    let lo = max(offsets[b], bp.index_first);
    let hi = min(offsets[b + 1u], bp.index_first + bp.index_count);

    var acc: f32;
    if (bp.first_pass != 0u) {
        acc = select(0.0, neg_inf(), bp.mode == MODE_MAX);
    } else {
        acc = out[id];
    }
    var n = 0u;
    for (var pos = lo; pos < hi; pos++) {
        let local_pos = pos - bp.index_first;
        let index = indices[local_pos];
        if (index < 0 || u32(index) >= bp.num_embeddings) {
            if (bp.report_bad != 0u && col == 0u) { atomicMin(&status[0], pos); }
            continue;
        }
        let row = u32(index);
        if (row == bp.padding_idx) { continue; }
        n += 1u;
        let local = row - bp.table_first_row;
        if (row < bp.table_first_row || local >= bp.table_rows) { continue; }
        var v = table_value(local * bp.dim + col);
        if (bp.has_weights != 0u) { v *= weights[local_pos]; }
        if (bp.mode == MODE_MAX) {
            acc = max_nan(acc, v);
        } else {
            acc += v;
        }
    }
    if (bp.last_pass != 0u) {
        // Single dispatch: `n` is the whole bag.
        if (bp.mode == MODE_MEAN) {
            acc = select(0.0, acc / f32(n), n > 0u);
        } else if (bp.mode == MODE_MAX && n == 0u) {
            acc = 0.0;
        }
    } else if (bp.count_pass != 0u && col == 0u) {
        counts[b] += n;
    }
    out[id] = acc;
}

// Vectorised bags, for tables whose rows are whole vec4 words (F32 with D % 4 == 0,
// F16 / BF16 with D % 8 == 0). LANES invocations share one bag: each owns the vec4
// columns lane, lane + LANES, ... and walks the bag's indices keeping its sums in
// registers, so every table row is read once with contiguous 16-byte loads (the
// warp-per-bag scheme of FBGEMM's TBE forward and PyTorch's embedding_bag kernel).
override LANES: u32 = 16u; // values: 1, 2, 4, 8, 16, 32, 64
// Read rows from the table's texture copy (binding 8) instead of its buffer segment
// (binding 1), as in embedding.wgsl's lookup_vec4: on CPU adapters a texel fetch is one
// gather for all SIMD lanes where a buffer load is emulated lane by lane. The host then
// passes the whole table as one segment and binds a placeholder to the unread slot.
override TABLE_TEXTURE: bool = false;

@group(0) @binding(1) var<storage, read> table4: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> out4: array<vec4<f32>>;
// vec4 word t of the table is texel (t mod W, (t / W) mod H) of layer t / (W * H), with
// W = 2^tex_width_shift and H = 2^tex_layer_shift (see src/table_texture.rs).
@group(0) @binding(8) var table_texture: texture_2d_array<u32>;

fn table_word(t: u32) -> vec4<u32> {
    if (TABLE_TEXTURE) {
        let r = t >> bp.tex_width_shift;
        let xy = vec2<u32>(t & ((1u << bp.tex_width_shift) - 1u), r & ((1u << bp.tex_layer_shift) - 1u));
        return textureLoad(table_texture, xy, r >> bp.tex_layer_shift, 0);
    }
    return table4[t];
}

fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.z * nwg.y + wid.y) * nwg.x + wid.x;
}

// Values 0..3 (`upper` false) or 4..7 of a vec4 word holding eight packed halves.
fn widen_half4(w: vec4<u32>, upper: bool) -> vec4<f32> {
    let a = select(w.x, w.z, upper);
    let b = select(w.y, w.w, upper);
    if (TABLE_FORMAT == 1u) { return vec4<f32>(unpack2x16float(a), unpack2x16float(b)); }
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
}

fn max_nan4(acc: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    let nan = (bitcast<vec4<u32>>(v) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
    return select(acc, v, nan | (v > acc));
}

fn reduce4(acc: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    if (bp.mode == MODE_MAX) { return max_nan4(acc, v); }
    return acc + v;
}

// Turns a single dispatch's sum into a mean, or an empty max into zeros.
fn finish4(acc: vec4<f32>, n: u32) -> vec4<f32> {
    if (bp.last_pass == 0u) { return acc; }
    if (bp.mode == MODE_MEAN) { return select(vec4<f32>(0.0), acc / f32(n), n > 0u); }
    if (bp.mode == MODE_MAX && n == 0u) { return vec4<f32>(0.0); }
    return acc;
}

// Table words one invocation accumulates per sweep over a bag's indices: each index
// (and its checks) is read once per CHUNK words rather than once per word. GPUs spread
// a row over lanes (4); CPU adapters give an invocation a whole row or more of it (16),
// where each lane's index load is emulated and costs as much as several rows of texels.
override CHUNK: u32 = 4u; // values: 4, 16
const MAX_CHUNK: u32 = 16u;

// Adds word c0 + k * LANES of the table row at `base` (when k < CHUNK and the row has
// it) to the accumulators of its output words. Called once per k with a constant k,
// not from a loop: lavapipe ends an invocation's loops after 65 535 iterations in all,
// and a loop over k that its compiler keeps would spend CHUNK of them per index.
fn accumulate_word(acc: ptr<function, array<vec4<f32>, 32>>, k: u32, c0: u32, base: u32, in_words: u32, scale: f32) {
    let c = c0 + k * LANES;
    if (k >= CHUNK || c >= in_words) { return; }
    let w = table_word(base + c);
    if (TABLE_FORMAT != 0u) {
        (*acc)[2u * k] = reduce4((*acc)[2u * k], widen_half4(w, false) * scale);
        (*acc)[2u * k + 1u] = reduce4((*acc)[2u * k + 1u], widen_half4(w, true) * scale);
    } else {
        (*acc)[k] = reduce4((*acc)[k], bitcast<vec4<f32>>(w) * scale);
    }
}

@compute @workgroup_size(WG_SIZE)
fn bag_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = group_index(wid, nwg) * (WG_SIZE / LANES) + lid.x / LANES;
    let lane = lid.x % LANES;
    if (b >= bp.bags) { return; }
    let out_words = bp.dim / 4u;
    let half = TABLE_FORMAT != 0u;
    let in_words = select(out_words, out_words / 2u, half);
    let dst = b * out_words;
    let lo = max(offsets[b], bp.index_first);
    let hi = min(offsets[b + 1u], bp.index_first + bp.index_count);
    let init = vec4<f32>(select(0.0, neg_inf(), bp.mode == MODE_MAX));
    // Table word c holds output word c (f32) or output words 2c and 2c + 1 (halves);
    // this invocation's words are c0 + k * LANES for k < CHUNK.
    let per_word = select(1u, 2u, half);

    for (var c0 = lane; c0 < in_words; c0 += CHUNK * LANES) {
        var acc: array<vec4<f32>, 32>; // 2 * MAX_CHUNK output words; 2 * CHUNK are used
        for (var k = 0u; k < 2u * CHUNK; k++) {
            let o = dst + per_word * (c0 + (k / per_word) * LANES) + k % per_word;
            if (bp.first_pass == 0u && k < per_word * CHUNK && c0 + (k / per_word) * LANES < in_words) {
                acc[k] = out4[o];
            } else {
                acc[k] = init;
            }
        }
        var n = 0u;
        for (var pos = lo; pos < hi; pos++) {
            let local_pos = pos - bp.index_first;
            let index = indices[local_pos];
            if (index < 0 || u32(index) >= bp.num_embeddings) {
                // Never read outside the table; the host turns the report into an error.
                if (bp.report_bad != 0u && c0 == 0u) { atomicMin(&status[0], pos); }
                continue;
            }
            let row = u32(index);
            if (row == bp.padding_idx) { continue; }
            n += 1u;
            let local = row - bp.table_first_row;
            if (row < bp.table_first_row || local >= bp.table_rows) { continue; }
            var scale = 1.0;
            if (bp.has_weights != 0u) { scale = weights[local_pos]; }
            let base = local * in_words;
            // k = 0 .. MAX_CHUNK - 1, one call each (see accumulate_word).
            accumulate_word(&acc, 0u, c0, base, in_words, scale);
            accumulate_word(&acc, 1u, c0, base, in_words, scale);
            accumulate_word(&acc, 2u, c0, base, in_words, scale);
            accumulate_word(&acc, 3u, c0, base, in_words, scale);
            accumulate_word(&acc, 4u, c0, base, in_words, scale);
            accumulate_word(&acc, 5u, c0, base, in_words, scale);
            accumulate_word(&acc, 6u, c0, base, in_words, scale);
            accumulate_word(&acc, 7u, c0, base, in_words, scale);
            accumulate_word(&acc, 8u, c0, base, in_words, scale);
            accumulate_word(&acc, 9u, c0, base, in_words, scale);
            accumulate_word(&acc, 10u, c0, base, in_words, scale);
            accumulate_word(&acc, 11u, c0, base, in_words, scale);
            accumulate_word(&acc, 12u, c0, base, in_words, scale);
            accumulate_word(&acc, 13u, c0, base, in_words, scale);
            accumulate_word(&acc, 14u, c0, base, in_words, scale);
            accumulate_word(&acc, 15u, c0, base, in_words, scale);
        }
        for (var k = 0u; k < per_word * CHUNK; k++) {
            let c = c0 + (k / per_word) * LANES;
            if (c < in_words) { out4[dst + per_word * c + k % per_word] = finish4(acc[k], n); }
        }
        if (c0 == 0u && bp.last_pass == 0u && bp.count_pass != 0u) { counts[b] += n; }
    }
}

struct FinalizeParams {
    bags: u32,
    dim: u32,
    mode: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> fp: FinalizeParams;
@group(0) @binding(1) var<storage, read> final_counts: array<u32>;
@group(0) @binding(2) var<storage, read_write> final_out: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= fp.bags * fp.dim) { return; }
    let n = final_counts[id / fp.dim];
    if (fp.mode == MODE_MEAN) {
        final_out[id] = select(0.0, final_out[id] / f32(n), n > 0u);
    } else if (fp.mode == MODE_MAX && n == 0u) {
        final_out[id] = 0.0;
    }
}
