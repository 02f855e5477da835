// Bounds check of indices that already live on the GPU, recorded before the kernels
// that write rows from them (src/gpu/recording.rs), and the gate of those kernels.
// Parts: common/grid.wgsl, common/pass.wgsl, then this file.

// [0]: set when any check of the recording found a bad index.
@group(0) @binding(9) var<storage, read_write> guard: array<u32>;
// Indirect arguments (x, y, z, unused) of the guarded dispatches after a gate.
@group(0) @binding(10) var<storage, read_write> gated_args: array<vec4<u32>>;

// One invocation checks one index of the bound input segment against `num_embeddings`:
// status[0] becomes the smallest bad position.
@compute @workgroup_size(WG_SIZE)
fn check(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= params.index_count) { return; }
    _ = checked_row(indices[id], params.index_first + id, true);
}

// After every segment's check, once per segment: the segment holding the bad position
// writes its value into status[1]; any bad position sets the guard.
@compute @workgroup_size(1)
fn report() {
    let position = atomicLoad(&status[0]);
    if (position == 0xffffffffu) { return; }
    guard[0] = 1u;
    if (position >= params.index_first && position - params.index_first < params.index_count) {
        atomicStore(&status[1], bitcast<u32>(indices[position - params.index_first]));
    }
}

// Before the guarded dispatches of a gate buffer: zero workgroups for each when the
// guard is set, so that they write nothing.
@compute @workgroup_size(WG_SIZE)
fn gate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= params.index_count || guard[0] == 0u) { return; }
    gated_args[id] = vec4<u32>(0u);
}
