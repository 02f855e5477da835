// Lookups and bags over a quantized table, dequantizing each element inside the
// kernel (the table is never expanded in memory).
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
// (src/gpu/table.rs). Index entries are a row, or (arg0 = 2) a row and its weight's bits.
// Parts: common/grid.wgsl, common/pass.wgsl, common/bag.wgsl, common/bag_scalar.wgsl,
// common/codes.wgsl, then
// this file.

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

fn bag_row(entry: u32, pos: u32, report: bool) -> u32 {
    return table_row(indices[entry * params.arg0]);
}

fn bag_weight(entry: u32) -> f32 {
    if (params.arg0 == 2u) { return bitcast<f32>(indices[entry * 2u + 1u]); }
    return 1.0;
}

fn bag_holds(row: u32, col: u32) -> bool {
    let e = row * params.dim + col;
    return e >= params.lo && e < params.hi;
}

fn bag_value(row: u32, col: u32) -> f32 {
    return element(row * params.dim + col);
}

@compute @workgroup_size(WG_SIZE)
fn lookup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = output_element(wid, nwg, lid);
    if (e.x == NO_ELEMENT) { return; }
    // Indices were checked on the host; a bad one is still never read.
    let index = table_row(indices[e.y]);
    if (index != BAD_ROW && bag_holds(index, e.z)) { out[e.x] = bag_value(index, e.z); }
}

// One invocation reduces one column of one bag.
@compute @workgroup_size(WG_SIZE)
fn bag(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_id) lid: vec3<u32>) {
    bag_element(output_element(wid, nwg, lid));
}
