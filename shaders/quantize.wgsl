// bitsandbytes block-wise quantization, as its CPU kernels of 0.50 compute it:
// absmax per group of the flattened tensor, then one code per element.
//
// SCHEME picks the code:
//   0  8-bit code map (dynamic or linear): scale by 1/absmax, map to one of 65 536
//      evenly spaced bins of [-1, 1] and take the code bitsandbytes' lookup table gives
//      that bin (the nearest code to the bin's centre), as quantize_cpu does;
//   1  int8 row-wise (Embedding8bit / int8_vectorwise_quant): round(x * (127 / absmax));
//   2  4-bit (nf4 / fp4, quantize_4bit): scale by 1/absmax (x / absmax in a partial last
//      block), bucket by the midpoints of the sorted 4-bit table; two codes per byte,
//      the even element in the high nibble.
// Parts: common/grid.wgsl, common/codes.wgsl, common/encode.wgsl, then this file.
//
// PRE transforms each input first: 0 none, 1 round to f16 (Int8Params casts the table
// to half before quantizing), 2 subtract the offset stored in the constants (nested
// 4-bit statistics quantize absmax - mean(absmax)).
//
// Every dispatch covers the element range [lo, hi) that lies inside each bound segment.
// Divisions that decide codes use `div_exact` (common/encode.wgsl).

override SCHEME: u32 = 0u; // values: 0, 1, 2
override PRE: u32 = 0u; // values: 0, 1, 2


// f32(1e-38): quantize_4bit's floor on absmax (a subnormal, so built from its bits).
const MIN_ABSMAX_BITS: u32 = 0x006ce3eeu;

struct Params {
    lo: u32,            // first element of this dispatch
    hi: u32,            // one past its last element
    in_first: u32,      // first element held by the bound input segment
    out_first: u32,     // first unit (byte, code word byte, or value) of the bound output segment
    scale_first: u32,   // first group held by the bound absmax segment
    group: u32,         // elements per absmax value
    numel: u32,         // elements in the whole tensor
    count: u32,         // kernel-specific count (values to reduce, units to finish)
}

// f32 -> f16 -> f32, rounding to nearest even (as `tensor.to(torch.float16)`).
fn round_f16(x: f32) -> f32 {
    let u = bitcast<u32>(x);
    let sign = u & 0x80000000u;
    let a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) {
        return x;
    }
    if (a >= 0x477ff000u) {   // 65520 and above round to infinity
        return bitcast<f32>(sign | 0x7f800000u);
    }
    if (a < 0x38800000u) {    // below 2^-14: f16 subnormals, steps of 2^-24 (scaling is exact)
        let r = round(bitcast<f32>(a) * 16777216.0) / 16777216.0;
        return bitcast<f32>(sign | bitcast<u32>(r));
    }
    let r16 = (a + 0xfffu + ((a >> 13u) & 1u)) & 0xffffe000u;
    return bitcast<f32>(sign | r16);
}

// ---- bindings -----------------------------------------------------------------------

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> consts: array<u32>;
@group(0) @binding(2) var<storage, read> input: array<f32>;
@group(0) @binding(3) var<storage, read_write> scales: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> codes: array<atomic<u32>>;

fn load(e: u32) -> f32 {
    let x = input[e - p.in_first];
    if (PRE == 1u) {
        return round_f16(x);
    }
    if (PRE == 2u) {
        return x - bitcast<f32>(consts[C_OFFSET]);
    }
    return x;
}

// Reductions below assume WG_SIZE is 64, as the context always sets it.
var<workgroup> partial: array<f32, 64>;

// absmax of each group over the elements of [lo, hi): one workgroup per group; groups
// cut by a segment boundary combine their parts with atomicMax on the (non-negative)
// float bits, which order like the floats.
@compute @workgroup_size(WG_SIZE)
fn absmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = p.lo / p.group + group_index(wid, nwg);
    let start = max(g * p.group, p.lo);
    let end = min(g * p.group + p.group, p.hi);
    var m = 0.0;
    if (start < end) {
        for (var e = start + lid.x; e < end; e += WG_SIZE) {
            m = max(m, abs(load(e)));
        }
    }
    let block_absmax = workgroup_max(lid.x, vec2<f32>(m, 0.0)).x;
    if (lid.x == 0u && start < end) {
        atomicMax(&scales[g - p.scale_first], bitcast<u32>(block_absmax));
    }
}

// The code of one element, ORed into its byte (several dispatches may fill one word).
@compute @workgroup_size(WG_SIZE)
fn encode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = p.lo + group_index(wid, nwg) * WG_SIZE + lid.x;
    if (e >= p.hi) { return; }
    let x = load(e);
    let block = e / p.group;
    let am = bitcast<f32>(atomicLoad(&scales[block - p.scale_first]));
    var byte_index = e;
    var value = 0u;
    if (SCHEME == 0u) {
        value = map_code(x, am, 0u);
    } else if (SCHEME == 1u) {
        if (am == 0.0) { return; }
        let c = i32(round(x * div_exact(127.0, am)));
        value = u32(c) & 0xffu;
    } else {
        let amc = max(am, bitcast<f32>(MIN_ABSMAX_BITS));
        var s: f32;
        if (block * p.group + p.group <= p.numel) {
            s = x * div_exact(1.0, amc);
        } else {
            s = div_exact(x, amc);   // the partial last block divides
        }
        s = clamp(s, -1.0, 1.0);
        var pos = 0u;
        for (var k = 0u; k < 15u; k++) {
            if (bitcast<f32>(consts[C_MID4 + k]) < s) {
                pos += 1u;
            }
        }
        value = consts[C_ORDER4 + pos];
        byte_index = e / 2u;
        if ((e & 1u) == 0u) {
            value = value << 4u;
        }
    }
    if (value != 0u) {
        let local = byte_index - p.out_first;
        atomicOr(&codes[local / 4u], value << (8u * (local & 3u)));
    }
}

// After encoding: row-wise scales become absmax / 127 (what Embedding8bit multiplies
// by); the partial last block of a 4-bit table keeps absmax floored at 1e-38.
@compute @workgroup_size(WG_SIZE)
fn finish_scales(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = group_index(wid, nwg) * WG_SIZE + lid.x;
    if (i >= p.count) { return; }
    let am = bitcast<f32>(atomicLoad(&scales[i]));
    if (SCHEME == 1u) {
        atomicStore(&scales[i], bitcast<u32>(div_exact(am, 127.0)));
    } else if (SCHEME == 2u) {
        let g = p.scale_first + i;
        if (g * p.group + p.group > p.numel) {
            atomicStore(&scales[i], bitcast<u32>(max(am, bitcast<f32>(MIN_ABSMAX_BITS))));
        }
    }
}

// Mean of absmax, in two passes: partial sums of up to WG_SIZE * 16 values per
// workgroup, then one workgroup adds them up and divides. Sums are carried as
// unevaluated pairs hi + lo (error-free two-sum), so the mean comes out correctly
// rounded as bitsandbytes' does, whatever the order of the additions.
var<workgroup> partial_lo: array<f32, 64>;

fn two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = rounded(a + b);
    let bb = rounded(s - a);
    return vec2<f32>(s, rounded(a - rounded(s - bb)) + rounded(b - bb));
}

fn add_pair(x: vec2<f32>, y: vec2<f32>) -> vec2<f32> {
    let s = two_sum(x.x, y.x);
    return two_sum(s.x, s.y + x.y + y.y);
}

fn reduce_pairs(lid: u32, v: vec2<f32>) -> vec2<f32> {
    partial[lid] = v.x;
    partial_lo[lid] = v.y;
    workgroupBarrier();
    for (var stride = WG_SIZE / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let r = add_pair(vec2<f32>(partial[lid], partial_lo[lid]), vec2<f32>(partial[lid + stride], partial_lo[lid + stride]));
            partial[lid] = r.x;
            partial_lo[lid] = r.y;
        }
        workgroupBarrier();
    }
    return vec2<f32>(partial[0], partial_lo[0]);
}

@compute @workgroup_size(WG_SIZE)
fn sum_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let w = group_index(wid, nwg);
    let base = p.lo + w * WG_SIZE * 16u;
    var s = vec2<f32>(0.0, 0.0);
    for (var k = 0u; k < 16u; k++) {
        let e = base + k * WG_SIZE + lid.x;
        if (e < p.hi) {
            s = add_pair(s, vec2<f32>(input[e - p.in_first], 0.0));
        }
    }
    let total = reduce_pairs(lid.x, s);
    if (lid.x == 0u) {
        atomicStore(&scales[2u * (p.out_first + w)], bitcast<u32>(total.x));
        atomicStore(&scales[2u * (p.out_first + w) + 1u], bitcast<u32>(total.y));
    }
}

@compute @workgroup_size(WG_SIZE)
fn mean_final(@builtin(local_invocation_id) lid: vec3<u32>) {
    var s = vec2<f32>(0.0, 0.0);
    for (var i = lid.x; i < p.count; i += WG_SIZE) {
        let part = vec2<f32>(bitcast<f32>(atomicLoad(&scales[2u * i])), bitcast<f32>(atomicLoad(&scales[2u * i + 1u])));
        s = add_pair(s, part);
    }
    let total = reduce_pairs(lid.x, s);
    if (lid.x == 0u) {
        consts[C_OFFSET] = bitcast<u32>(div_pair(total, p.numel));
    }
}

// (hi + lo) / n rounded to nearest even, for hi > 0 (or 0), |lo| <= ulp(hi) / 2 and
// 0 < n < 2^25. The numerator becomes the integer N = mh·2^32 + floor(lo / 2^(e-182))
// (in units of 2^(e-182), mh the significand of hi), which long division by n turns
// into 25 significant quotient bits, a sticky bit and an exponent.
fn div_pair(total: vec2<f32>, n: u32) -> f32 {
    let hi = total.x;
    let lo = total.y;
    if (hi <= 0.0 || (bitcast<u32>(hi) & 0x7f800000u) == 0x7f800000u) {
        return div_exact(hi, f32(n)) + div_exact(lo, f32(n));
    }
    let h = unpack(bitcast<u32>(hi));
    let scaled = ldexp(lo, 182 - h.e);   // |scaled| <= 2^31
    let whole = floor(scaled);
    var frac_nonzero = scaled != whole;
    var n1 = h.m;
    var n0: u32;
    if (whole >= 0.0) {
        n0 = u32(whole);
    } else {
        n1 -= 1u;                          // borrow from the significand
        n0 = 0u - u32(-whole);
    }
    var r = 0u;
    var q = 0u;
    var extra = 0;
    var sticky = frac_nonzero;
    for (var i = 0u; i < 56u; i++) {
        var bit: u32;
        if (i < 24u) {
            bit = (n1 >> (23u - i)) & 1u;
        } else {
            bit = (n0 >> (55u - i)) & 1u;
        }
        r = (r << 1u) | bit;
        var qb = 0u;
        if (r >= n) {
            r -= n;
            qb = 1u;
        }
        if (q < 0x1000000u) {
            q = (q << 1u) | qb;
        } else {
            sticky = sticky || qb != 0u;
            extra += 1;
        }
    }
    sticky = sticky || r != 0u;
    var mant = q >> 1u;
    if ((q & 1u) != 0u && (sticky || (mant & 1u) != 0u)) {
        mant += 1u;
    }
    return ldexp(f32(mant), extra + 1 + h.e - 182);
}

// dequantize_blockwise: out = code[c] * absmax[block].
@group(0) @binding(0) var<uniform> dp: Params;
@group(0) @binding(1) var<storage, read> dq_consts: array<u32>;
@group(0) @binding(2) var<storage, read> dq_codes: array<u32>;
@group(0) @binding(3) var<storage, read> dq_absmax: array<f32>;
@group(0) @binding(4) var<storage, read_write> dq_out: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn dequantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = dp.lo + group_index(wid, nwg) * WG_SIZE + lid.x;
    if (e >= dp.hi) { return; }
    let local = e - dp.in_first;
    let c = (dq_codes[local / 4u] >> (8u * (local & 3u))) & 0xffu;
    dq_out[e - dp.out_first] = bitcast<f32>(dq_consts[C_MAP + c]) * dq_absmax[e / dp.group - dp.scale_first];
}
