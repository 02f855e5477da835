// Dense tables: f32 (TABLE_FORMAT 0), or f16 (1) and bf16 (2) packed two to a 32-bit
// word (element i of a segment is half i & 1 of word i >> 1, low half first), so no
// `shader-f16` is needed; values are widened to f32. Rows are read from the bound
// table segment (binding 1, rows [lo, hi) of the table from row `first0`) or from
// the table's texture copy (binding 4, TABLE_TEXTURE; src/gpu/texture.rs).

override TABLE_FORMAT: u32 = 0u; // values: 0, 1, 2
// On CPU adapters a texel fetch is one gather for all SIMD lanes where a buffer load is
// emulated lane by lane. The host then passes the whole table as one slice and binds a
// placeholder to the slot a kernel does not read.
override TABLE_TEXTURE: bool = false;

@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(1) var<storage, read> table4: array<vec4<u32>>;
@group(0) @binding(4) var table_texture: texture_2d_array<u32>;

// Whether table row `row` is in the bound slice.
fn slice_holds_row(row: u32) -> bool {
    return row >= params.lo && row < params.hi;
}

// Element `i` of the bound table segment, widened to f32.
fn table_value(i: u32) -> f32 {
    if (TABLE_FORMAT == 0u) { return bitcast<f32>(table[i]); }
    let shifted = table[i >> 1u] >> ((i & 1u) * 16u);
    if (TABLE_FORMAT == 1u) { return unpack2x16float(shifted).x; }
    return bitcast<f32>(shifted << 16u);
}

// Column `col` of table row `row` (held by the bound slice), widened to f32.
fn table_element(row: u32, col: u32) -> f32 {
    return table_value((row - params.first0) * params.dim + col);
}

// vec4 word `t` of the bound rows. In the texture copy word t of the table is texel
// (t mod W, (t / W) mod H) of layer t / (W * H), with W = 2^tex_width_shift and
// H = 2^tex_layer_shift.
fn table_word(t: u32) -> vec4<u32> {
    if (TABLE_TEXTURE) {
        let r = t >> params.tex_width_shift;
        let xy = vec2<u32>(t & ((1u << params.tex_width_shift) - 1u), r & ((1u << params.tex_layer_shift) - 1u));
        return textureLoad(table_texture, xy, r >> params.tex_layer_shift, 0);
    }
    return table4[t];
}

// Values 0..3 (`upper` false) or 4..7 of a vec4 word holding eight packed halves.
fn widen_half4(w: vec4<u32>, upper: bool) -> vec4<f32> {
    let a = select(w.x, w.z, upper);
    let b = select(w.y, w.w, upper);
    if (TABLE_FORMAT == 1u) { return vec4<f32>(unpack2x16float(a), unpack2x16float(b)); }
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
}
