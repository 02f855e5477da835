// torch.nn.Embedding: row lookup and in-place max-norm renormalisation.
// One dispatch handles one output segment against one table segment; rows whose
// index falls outside the bound table segment are left to another dispatch.

override WG_SIZE: u32 = 64u;
// Storage format of the lookup table: 0 = f32; 1 = f16 and 2 = bf16, packed two to a
// 32-bit word (element i of a segment is half i & 1 of word i >> 1, low half first),
// so no `shader-f16` is needed. Values are widened to f32; the output is f32.
override TABLE_FORMAT: u32 = 0u; // values: 0, 1, 2

// The linear invocation index; dispatches spread over y/z past 65 535 workgroups.
fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return ((wid.z * nwg.y + wid.y) * nwg.x + wid.x) * WG_SIZE + lid.x;
}

struct LookupParams {
    rows: u32,            // output rows in this segment
    dim: u32,
    table_first_row: u32, // first table row held by the bound table segment
    table_rows: u32,
    num_embeddings: u32,
    report_bad: u32,      // this dispatch zeroes and reports out-of-range indices
    index_base: u32,      // position of this segment's first index in the whole index list
    tex_width_shift: u32, // texture copy of the table (TABLE_TEXTURE): log2 of its width
    tex_layer_shift: u32, // and log2 of its rows per layer
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> lp: LookupParams;
@group(0) @binding(1) var<storage, read> lookup_table: array<u32>;
@group(0) @binding(2) var<storage, read> lookup_indices: array<i32>;
@group(0) @binding(3) var<storage, read_write> lookup_out: array<f32>;
// [0]: smallest position of an out-of-range index (0xffffffff: none).
@group(0) @binding(4) var<storage, read_write> lookup_status: array<atomic<u32>>;

// Element `i` of the bound table segment, widened to f32.
fn table_value(i: u32) -> f32 {
    if (TABLE_FORMAT == 0u) { return bitcast<f32>(lookup_table[i]); }
    let shifted = lookup_table[i >> 1u] >> ((i & 1u) * 16u);
    if (TABLE_FORMAT == 1u) { return unpack2x16float(shifted).x; }
    return bitcast<f32>(shifted << 16u);
}

@compute @workgroup_size(WG_SIZE)
fn lookup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= lp.rows * lp.dim) { return; }
    let row = id / lp.dim;
    let col = id - row * lp.dim;
    let index = lookup_indices[row];
    if (index < 0 || u32(index) >= lp.num_embeddings) {
        // Never read outside the table: write zeros and report the position.
        if (lp.report_bad != 0u) {
            lookup_out[id] = 0.0;
            if (col == 0u) { atomicMin(&lookup_status[0], lp.index_base + row); }
        }
        return;
    }
    let local = u32(index) - lp.table_first_row;
    if (u32(index) < lp.table_first_row || local >= lp.table_rows) { return; }
    lookup_out[id] = table_value(local * lp.dim + col);
}

// Vectorised lookup, for tables whose rows are whole vec4 words (F32 with D % 4 == 0,
// F16 / BF16 with D % 8 == 0). LANES invocations share one output row and move its
// vec4 words at stride LANES, so a workgroup copies WG_SIZE / LANES rows with
// contiguous 16-byte loads and stores (as FBGEMM's TBE forward gives a row to a warp).
override LANES: u32 = 16u; // values: 1, 2, 4, 8, 16, 32, 64
// Read rows from the table's texture copy (binding 5) instead of its buffer segment
// (binding 1): on CPU adapters a texel fetch is one gather for all SIMD lanes where a
// buffer load is emulated lane by lane. The host then passes the whole table as one
// segment and binds a placeholder to the slot this kernel does not read.
override TABLE_TEXTURE: bool = false;

@group(0) @binding(1) var<storage, read> lookup_table4: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> lookup_out4: array<vec4<f32>>;
// vec4 word t of the table is texel (t mod W, (t / W) mod H) of layer t / (W * H), with
// W = 2^tex_width_shift and H = 2^tex_layer_shift (see src/table_texture.rs).
@group(0) @binding(5) var lookup_table_texture: texture_2d_array<u32>;

fn table_word(t: u32) -> vec4<u32> {
    if (TABLE_TEXTURE) {
        let r = t >> lp.tex_width_shift;
        let xy = vec2<u32>(t & ((1u << lp.tex_width_shift) - 1u), r & ((1u << lp.tex_layer_shift) - 1u));
        return textureLoad(lookup_table_texture, xy, r >> lp.tex_layer_shift, 0);
    }
    return lookup_table4[t];
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

@compute @workgroup_size(WG_SIZE)
fn lookup_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = group_index(wid, nwg) * (WG_SIZE / LANES) + lid.x / LANES;
    let lane = lid.x % LANES;
    if (row >= lp.rows) { return; }
    let out_words = lp.dim / 4u;
    let in_words = select(out_words / 2u, out_words, TABLE_FORMAT == 0u);
    let dst = row * out_words;
    let index = lookup_indices[row];
    if (index < 0 || u32(index) >= lp.num_embeddings) {
        if (lp.report_bad != 0u) {
            for (var c = lane; c < out_words; c += LANES) { lookup_out4[dst + c] = vec4<f32>(0.0); }
            if (lane == 0u) { atomicMin(&lookup_status[0], lp.index_base + row); }
        }
        return;
    }
    let local = u32(index) - lp.table_first_row;
    if (u32(index) < lp.table_first_row || local >= lp.table_rows) { return; }
    let src = local * in_words;
    for (var c = lane; c < in_words; c += LANES) {
        let w = table_word(src + c);
        if (TABLE_FORMAT == 0u) {
            lookup_out4[dst + c] = bitcast<vec4<f32>>(w);
        } else {
            lookup_out4[dst + 2u * c] = widen_half4(w, false);
            lookup_out4[dst + 2u * c + 1u] = widen_half4(w, true);
        }
    }
}

struct RenormParams {
    count: u32,           // indices in the bound index segment
    dim: u32,
    table_first_row: u32,
    table_rows: u32,
    num_embeddings: u32,
    max_norm: f32,
    norm_type: f32,       // p of the p-norm; +inf for the max norm
    _pad: u32,
}

@group(0) @binding(0) var<uniform> rp: RenormParams;
@group(0) @binding(1) var<storage, read_write> renorm_table: array<f32>;
@group(0) @binding(2) var<storage, read> renorm_indices: array<i32>;
// One bit per table row of the segment: each referenced row is scaled once,
// as embedding_renorm_ does after taking the unique indices.
@group(0) @binding(3) var<storage, read_write> renorm_claimed: array<atomic<u32>>;

fn is_inf(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) == 0x7f800000u;
}

@compute @workgroup_size(WG_SIZE)
fn renorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= rp.count) { return; }
    let index = renorm_indices[id];
    if (index < 0 || u32(index) >= rp.num_embeddings) { return; }
    let local = u32(index) - rp.table_first_row;
    if (u32(index) < rp.table_first_row || local >= rp.table_rows) { return; }
    let bit = 1u << (local & 31u);
    let previous = atomicOr(&renorm_claimed[local >> 5u], bit);
    if ((previous & bit) != 0u) { return; }

    let base = local * rp.dim;
    let p = rp.norm_type;
    var acc = 0.0;
    for (var c = 0u; c < rp.dim; c++) {
        let a = abs(renorm_table[base + c]);
        if (is_inf(p)) {
            acc = max(acc, a);
        } else if (p == 1.0) {
            acc += a;
        } else if (p == 2.0) {
            acc += a * a;
        } else if (p == 0.0) {
            acc += select(0.0, 1.0, a != 0.0);
        } else {
            acc += pow(a, p);
        }
    }
    var norm = acc;
    if (p == 2.0) {
        norm = sqrt(acc);
    } else if (!is_inf(p) && p != 1.0 && p != 0.0) {
        norm = pow(acc, 1.0 / p);
    }
    if (norm > rp.max_norm) {
        let scale = rp.max_norm / (norm + 1e-7);
        for (var c = 0u; c < rp.dim; c++) {
            renorm_table[base + c] = renorm_table[base + c] * scale;
        }
    }
}
