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

// Backward: splits the output gradient [N, d1 + d2] (axial_grad) into its halves' rows,
// [N, d1] to `out` and [N, d2] to axial_half1, and writes each position's rows of the
// two weights (p / n2, p % n2), which the embedding backward's sort and run sums then
// scatter. dim = d1 + d2, arg0 = n2, arg1 = d1, index_count = N; one invocation per
// element of the output gradient. Positions were checked on the host.
@group(0) @binding(10) var<storage, read> axial_grad: array<f32>;
@group(0) @binding(11) var<storage, read_write> axial_half1: array<f32>;
@group(0) @binding(12) var<storage, read_write> axial_rows0: array<i32>;
@group(0) @binding(13) var<storage, read_write> axial_rows1: array<i32>;

@compute @workgroup_size(WG_SIZE)
fn axial_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = linear_id(wid, nwg, lid);
    let n = e / params.dim;
    if (n >= params.index_count) { return; }
    let c = e % params.dim;
    let d1 = params.arg1;
    if (c < d1) {
        out[n * d1 + c] = axial_grad[e];
    } else {
        axial_half1[n * (params.dim - d1) + (c - d1)] = axial_grad[e];
    }
    if (c == 0u) {
        let p = u32(indices[n]);
        axial_rows0[n] = i32(p / params.arg0);
        axial_rows1[n] = i32(p % params.arg0);
    }
}
