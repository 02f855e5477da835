// After several accumulating bag passes (src/gpu/plan.rs): means divide by the bag
// sizes, empty maxima become 0. One invocation per output element.

@compute @workgroup_size(WG_SIZE)
fn finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= params.rows * params.dim) { return; }
    let n = counts[id / params.dim];
    if (params.mode == MODE_MEAN) {
        out[id] = select(0.0, out[id] / f32(n), n > 0u);
    } else if (params.mode == MODE_MAX && n == 0u) {
        out[id] = 0.0;
    }
}
