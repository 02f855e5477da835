// A plain vec4 copy: the bandwidth ceiling the benchmark compares every kernel with
// (bytes read + bytes written, as for the embedding kernels).

override WG_SIZE: u32 = 64u;

struct CopyParams {
    count: u32, // vec4 words to copy
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> cp: CopyParams;
@group(0) @binding(1) var<storage, read> copy_src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> copy_dst: array<vec4<u32>>;

@compute @workgroup_size(WG_SIZE)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = ((wid.z * nwg.y + wid.y) * nwg.x + wid.x) * WG_SIZE + lid.x;
    if (id < cp.count) { copy_dst[id] = copy_src[id]; }
}
