// Lookups and bags over a quantized table, dequantizing each element inside the
// kernel (the table is never expanded in memory).
//
// Index entries are a row, or (arg0 = 2) a row and its weight's bits. Parts:
// common/grid.wgsl, common/pass.wgsl, common/bag.wgsl, common/bag_scalar.wgsl,
// common/codes.wgsl, common/quantized_table.wgsl, then this file.

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
