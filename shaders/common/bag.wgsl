// Bag reductions (sum / mean / max, accumulated in f32), shared by the bag families and
// `finalize`. Offsets are the bags' bounds as positions into the whole index list;
// counts add up the bags' sizes over passes for `finalize` (src/gpu/plan.rs,
// bag_finalize.wgsl).

const MODE_SUM: u32 = 0u;
const MODE_MEAN: u32 = 1u;
const MODE_MAX: u32 = 2u;

@group(0) @binding(5) var<storage, read> offsets: array<u32>;
@group(0) @binding(6) var<storage, read_write> counts: array<u32>;

// -inf, the identity of the max reduction. Built from a `let`, not a constant
// expression: WGSL (Tint in browsers) refuses a constant that evaluates to -inf.
fn neg_inf() -> f32 {
    let bits = 0xff800000u;
    return bitcast<f32>(bits);
}

fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn bag_identity() -> f32 {
    return select(0.0, neg_inf(), params.mode == MODE_MAX);
}

// Max propagates NaN, as PyTorch's does.
fn reduce(acc: f32, v: f32) -> f32 {
    if (params.mode == MODE_MAX) { return select(acc, v, is_nan(v) || v > acc); }
    return acc + v;
}

fn reduce4(acc: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    if (params.mode == MODE_MAX) {
        let nan = (bitcast<vec4<u32>>(v) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
        return select(acc, v, nan | (v > acc));
    }
    return acc + v;
}

// The value of a bag of `n` rows whose reduction is `acc` (a mean divides, an empty
// max is 0): in the only pass; otherwise `finalize` does it after the last.
fn finish4(acc: vec4<f32>, n: u32) -> vec4<f32> {
    if (!has_flag(FLAG_LAST_PASS)) { return acc; }
    if (params.mode == MODE_MEAN) { return select(vec4<f32>(0.0), acc / f32(n), n > 0u); }
    if (params.mode == MODE_MAX && n == 0u) { return vec4<f32>(0.0); }
    return acc;
}

fn finish(acc: f32, n: u32) -> f32 {
    return finish4(vec4<f32>(acc), n).x;
}

// Adds this pass's size of bag `b` to its count (once per bag, not per column).
fn count_bag(b: u32, n: u32) {
    if (!has_flag(FLAG_LAST_PASS) && has_flag(FLAG_COUNT_PASS)) { counts[b] += n; }
}
