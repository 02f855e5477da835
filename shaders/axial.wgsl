// Axial position embeddings (Reformer, inference): row p of the output is
// weight0[p / n2] ++ weight1[p % n2]. A pass writes one half (`part`, arg1) of the
// rows of one output segment from one slice of that half's table; positions whose
// table row lies in another slice are left to another pass. arg0 = n2, arg2 = the
// output's width d1 + d2, arg3 = the half's first column (0 or d1); `dim` is the
// half's width. Parts: common/grid.wgsl, common/pass.wgsl, common/table.wgsl, then
// this file.

@compute @workgroup_size(WG_SIZE)
fn axial_part(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = output_element(wid, nwg, lid);
    if (e.x == NO_ELEMENT) { return; }
    // Positions were checked against n1 * n2 on the host.
    let position = u32(indices[e.y]);
    let r = select(position % params.arg0, position / params.arg0, params.arg1 == 0u);
    if (slice_holds_row(r)) { out[e.y * params.arg2 + params.arg3 + e.z] = table_element(r, e.z); }
}
