// Reading a quantized table's elements, dequantized in the kernel (the table is never
// expanded in memory); quantized lookups and bags, and retrieval, read it.
//
// SCHEME picks the storage:
//   0  int8 block-wise: byte codes, f32 absmax per block; value = map[c] * absmax
//   1  int8 row-wise:   byte codes (int8), f32 scale per row = absmax / 127; value = c * scale
//   2  4-bit (nf4/fp4): nibbles (even element high), absmax per block stored nested as a
//      byte code of the dynamic map with an f32 absmax per 256 blocks plus an offset:
//      value = t4[c] * (map[q] * absmax2 + offset)
// A table is held in three planes (codes, scales, scales2), each split into segments
// that fit a binding. A pass binds one segment of each plane and handles the table
// elements [lo, hi) that all of them hold; elements elsewhere are left to another pass
// (src/gpu/table.rs). Parts before this one: common/pass.wgsl, common/codes.wgsl.

override SCHEME: u32 = 0u; // values: 0, 1, 2

@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(9) var<storage, read> consts: array<u32>;
@group(0) @binding(10) var<storage, read> scales: array<u32>;
@group(0) @binding(11) var<storage, read> scales2: array<f32>;

fn byte_at(words_index: u32) -> u32 {
    return (codes[words_index / 4u] >> (8u * (words_index & 3u))) & 0xffu;
}

// The dequantized table element e (lo <= e < hi).
fn element(e: u32) -> f32 {
    let g = e / params.group - params.first1;
    if (SCHEME == 0u) {
        let c = byte_at(e - params.first0);
        return bitcast<f32>(consts[C_MAP + c]) * bitcast<f32>(scales[g]);
    } else if (SCHEME == 1u) {
        let c = i32(byte_at(e - params.first0) << 24u) >> 24u;
        return f32(c) * bitcast<f32>(scales[g]);
    }
    let b = byte_at(e / 2u - params.first0);
    let c = select(b & 15u, b >> 4u, (e & 1u) == 0u);
    let q = (scales[g / 4u] >> (8u * (g & 3u))) & 0xffu;
    let absmax2 = scales2[e / (params.group * 256u) - params.first2];
    let absmax = rounded(bitcast<f32>(consts[C_MAP + q]) * absmax2) + bitcast<f32>(consts[C_OFFSET]);
    return bitcast<f32>(consts[C_T4 + c]) * absmax;
}


