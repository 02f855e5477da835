// The invocation grid. Dispatches past 65 535 workgroups are spread over y and z
// (src/gpu/context.rs), so kernels recover linear indices from `num_workgroups` and
// skip the excess.

override WG_SIZE: u32 = 64u;

fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.z * nwg.y + wid.y) * nwg.x + wid.x;
}

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return group_index(wid, nwg) * WG_SIZE + lid.x;
}
