// Encoding to an 8-bit code map as bitsandbytes' CPU quantize_blockwise does, shared by
// block-wise quantization (quantize.wgsl) and 8-bit optimizer states (optimizer.wgsl).
// Divisions that decide codes use `div_exact` (correctly rounded like the CPU's), since
// WGSL's `/` may be off by 2.5 ulp. Parts before this one: common/codes.wgsl (and the
// family's `consts`).

// The code of x in a block of absmax `am`, from the constants at consts[base ..]:
// scale by 1/absmax, map to one of 65 536 evenly spaced bins of [-1, 1] and take the
// code bitsandbytes' lookup table gives that bin (the nearest code to the bin's
// centre). An all-zero block (am = 0) gets code 0.
fn map_code(x: f32, am: f32, base: u32) -> u32 {
    if (am == 0.0) { return 0u; }
    return map_code_scaled(x, div_exact(1.0, am), base);
}

// map_code with the block's 1 / absmax (`div_exact(1.0, am)`) already computed.
fn map_code_scaled(x: f32, inv_absmax: f32, base: u32) -> u32 {
    let s = clamp(x * inv_absmax, -1.0, 1.0);
    // The product is kept from fusing with the + 0.5 (an fma would round differently).
    let bin = u32(rounded((s + 1.0) * 0.5 * 65535.0) + 0.5);
    // Number of thresholds <= bin (they are sorted; the last is 0xffffffff).
    var pos = 0u;
    for (var step = 128u; step > 0u; step = step / 2u) {
        if (consts[base + C_THRESH + pos + step - 1u] <= bin) {
            pos += step;
        }
    }
    return pos;
}

// ---- correctly rounded division -------------------------------------------------

struct Unpacked {
    m: u32,   // significand in [2^23, 2^24)
    e: i32,   // biased exponent (may be < 1 for subnormals)
}

fn unpack(bits: u32) -> Unpacked {
    let u = bits & 0x7fffffffu;
    let e = i32(u >> 23u);
    let m = u & 0x7fffffu;
    if (e == 0) {
        let shift = countLeadingZeros(m) - 8u;
        return Unpacked(m << shift, 1 - i32(shift));
    }
    return Unpacked(m | 0x800000u, e);
}

// a / b rounded to nearest even, for finite a and finite nonzero b (others fall back to
// the native division). Long division of the significands, one quotient bit per step.
fn div_exact(a: f32, b: f32) -> f32 {
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    let sign = (ua ^ ub) & 0x80000000u;
    if ((ua & 0x7fffffffu) == 0u) {
        return bitcast<f32>(sign);
    }
    if ((ua & 0x7f800000u) == 0x7f800000u || (ub & 0x7fffffffu) == 0u || (ub & 0x7f800000u) == 0x7f800000u) {
        return a / b;
    }
    let x = unpack(ua);
    let y = unpack(ub);
    var r = x.m;
    var e = x.e - y.e + 127;   // biased exponent of the quotient
    if (r < y.m) {
        r = r << 1u;
        e -= 1;
    }
    // 24 quotient bits for a normal result, fewer for a subnormal one.
    var nbits = 24;
    if (e < 1) {
        nbits = 23 + e;
    }
    if (nbits <= 0) {
        return bitcast<f32>(sign);
    }
    var q = 0u;
    for (var i = 0; i < nbits; i++) {
        q = q << 1u;
        if (r >= y.m) {
            r -= y.m;
            q |= 1u;
        }
        r = r << 1u;
    }
    // r is twice the remainder: round half to even.
    if (r > y.m || (r == y.m && (q & 1u) == 1u)) {
        q += 1u;
    }
    var bits = q;   // subnormal: a carry into bit 23 is the smallest normal
    if (e >= 1) {
        if (e >= 255) {
            return bitcast<f32>(sign | 0x7f800000u);
        }
        bits = (u32(e - 1) << 23u) + q;   // q holds the implicit bit; a carry bumps the exponent
    }
    if (bits >= 0x7f800000u) {
        return bitcast<f32>(sign | 0x7f800000u);
    }
    return bitcast<f32>(sign | bits);
}


// The largest of every lane's pair over the workgroup (an 8-bit optimizer's two states'
// block absmax; a quantized block's absmax in .x). Every lane calls it, once per kernel.
var<workgroup> lane_max: array<vec2<f32>, 64>;

fn workgroup_max(lane: u32, v: vec2<f32>) -> vec2<f32> {
    lane_max[lane] = v;
    workgroupBarrier();
    for (var stride = WG_SIZE / 2u; stride > 0u; stride = stride / 2u) {
        if (lane < stride) { lane_max[lane] = max(lane_max[lane], lane_max[lane + stride]); }
        workgroupBarrier();
    }
    return lane_max[0];
}
