// A plain vec4 copy: the bandwidth ceiling the benchmark compares every kernel with
// (bytes read + bytes written, as for the embedding kernels).

// Parts: common/grid.wgsl, then this file.

struct CopyParams {
    count: u32,       // vec4 words to copy
    width_shift: u32, // copy_texture: the source texture's layout (src/gpu/texture.rs)
    layer_shift: u32,
    first: u32,       // copy_texture: the source texel of this destination segment's word 0
}

@group(0) @binding(0) var<uniform> cp: CopyParams;
@group(0) @binding(1) var<storage, read> copy_src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> copy_dst: array<vec4<u32>>;

@compute @workgroup_size(WG_SIZE)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id < cp.count) { copy_dst[id] = copy_src[id]; }
}

// The same copy reading a texture copy of the source (rgba32uint, laid out as tables' are
// in src/gpu/texture.rs): on CPU adapters a texel fetch costs less than a buffer load,
// so this tells how far the plain copy is from the memory's bandwidth there.
@group(0) @binding(1) var copy_src_texture: texture_2d_array<u32>;

@compute @workgroup_size(WG_SIZE)
fn copy_texture(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= cp.count) { return; }
    let t = cp.first + id;
    let r = t >> cp.width_shift;
    let xy = vec2<u32>(t & ((1u << cp.width_shift) - 1u), r & ((1u << cp.layer_shift) - 1u));
    copy_dst[id] = textureLoad(copy_src_texture, xy, r >> cp.layer_shift, 0);
}
