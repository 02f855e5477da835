// Bounds check of indices that already live on the GPU, run before any kernel that
// writes (max-norm renormalisation, lookups), so a bad index changes nothing.
// One invocation checks one index of one segment of the index tensor.

override WG_SIZE: u32 = 64u;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return ((wid.z * nwg.y + wid.y) * nwg.x + wid.x) * WG_SIZE + lid.x;
}

struct CheckParams {
    count: u32,       // indices in the bound segment
    index_base: u32,  // position of the segment's first index in the whole tensor
    limit: u32,       // valid indices are 0 <= i < limit
    _pad: u32,
}

@group(0) @binding(0) var<uniform> cp: CheckParams;
@group(0) @binding(1) var<storage, read> check_indices: array<i32>;
// [0]: smallest position of an out-of-range index (0xffffffff: none).
@group(0) @binding(2) var<storage, read_write> check_status: array<atomic<u32>>;

@compute @workgroup_size(WG_SIZE)
fn check(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= cp.count) { return; }
    let index = check_indices[id];
    if (index < 0 || u32(index) >= cp.limit) {
        atomicMin(&check_status[0], cp.index_base + id);
    }
}
