// Bounds check of indices that already live on the GPU, run before any kernel that
// writes (max-norm renormalisation, lookups), so a bad index changes nothing. One
// invocation checks one index of the bound input segment against `num_embeddings`.
// Parts: common/grid.wgsl, common/pass.wgsl, then this file.

@compute @workgroup_size(WG_SIZE)
fn check(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= params.index_count) { return; }
    _ = checked_row(indices[id], params.index_first + id, true);
}
