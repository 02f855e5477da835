// Initialisation of fresh tables, on the GPU: each element drawn from a counter-based
// generator keyed by (seed, element index), so a table's values do not depend on how it
// is split into segments, nor on the device. Not torch's generator: seeded, not
// bit-compatible with torch.manual_seed.

// Parts: common/grid.wgsl, then this file.

struct InitParams {
    count: u32,        // elements in the bound segment
    first_lo: u32,     // index of its first element in the whole table (64-bit)
    first_hi: u32,
    seed_lo: u32,
    seed_hi: u32,
    kind: u32,         // KIND_NORMAL or KIND_UNIFORM
    dim: u32,          // row length, to find the padding row
    padding_row: u32,  // row of the bound segment zeroed (NO_ROW: none)
    scale: f32,        // normal: std; uniform: the bound b of U(-b, b)
    mean: f32,
    pad0: u32,
    pad1: u32,
}

const KIND_NORMAL: u32 = 0u;
const KIND_UNIFORM: u32 = 1u;
const NO_ROW: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> ip: InitParams;
@group(0) @binding(1) var<storage, read_write> init_out: array<f32>;

// PCG's output permutation (O'Neill): a well-mixed 32-bit hash.
fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// The `lane`-th 32-bit draw of element (hi, lo): the hash chained over the seed and the
// 64-bit counter.
fn draw(lo: u32, hi: u32, lane: u32) -> u32 {
    return pcg_hash(pcg_hash(pcg_hash(pcg_hash(ip.seed_lo ^ lane) ^ ip.seed_hi) ^ hi) ^ lo);
}

// A uniform value in (0, 1], from 24 bits.
fn unit(bits: u32) -> f32 {
    return f32((bits >> 8u) + 1u) * (1.0 / 16777216.0);
}

@compute @workgroup_size(WG_SIZE)
fn fill_random(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= ip.count) { return; }
    if (ip.padding_row != NO_ROW && id / ip.dim == ip.padding_row) {
        init_out[id] = 0.0;
        return;
    }
    let lo = ip.first_lo + id;
    let hi = ip.first_hi + select(0u, 1u, lo < id); // carry
    var value: f32;
    if (ip.kind == KIND_NORMAL) {
        // Box-Muller on two independent draws.
        let r = sqrt(-2.0 * log(unit(draw(lo, hi, 0u))));
        let theta = 6.283185307179586 * unit(draw(lo, hi, 1u));
        value = ip.mean + ip.scale * r * cos(theta);
    } else {
        value = ip.scale * (2.0 * unit(draw(lo, hi, 0u)) - 1.0);
    }
    init_out[id] = value;
}
