//! bitsandbytes' code maps (the signed dynamic and linear 8-bit maps, the NF4 and FP4
//! values) and the constants buffer the quantization and quantized-table kernels read
//! (its layout is `shaders/common/codes.wgsl`; a test checks that the two agree).

use wgpu::util::DeviceExt;

use crate::gpu::context::Context;

/// Words of the constants buffer (see the layout in `quantize.wgsl`).
pub(crate) const CONSTS_WORDS: usize = 576;
pub(crate) const C_THRESH: usize = 256;
pub(crate) const C_T4: usize = 512;
pub(crate) const C_MID4: usize = 528;
pub(crate) const C_ORDER4: usize = 544;

/// Where `mean` writes the offset of nested 4-bit statistics, and a word that stays 0.
pub(crate) const C_OFFSET: usize = 560;
pub(crate) const C_ZERO: usize = 561;

/// One of bitsandbytes' signed 8-bit code maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodeMap {
    /// `create_dynamic_map(signed=True)`: dynamic exponent, the default of `quantize_blockwise`.
    Dynamic,
    /// `create_linear_map(signed=True)`: 255 evenly spaced values in [-1, 1] and an extra 0.
    Linear,
    /// `create_dynamic_map(signed=False)`: the map of 8-bit Adam's second state (values >= 0).
    DynamicUnsigned,
}

crate::names::spelled_enum!(CodeMap, "code", { Dynamic => "dynamic", Linear => "linear", DynamicUnsigned => "dynamic_unsigned" });

impl CodeMap {
    /// The 256 code values, sorted ascending.
    pub fn values(self) -> [f32; 256] {
        match self {
            CodeMap::Dynamic => dynamic_map(true),
            CodeMap::DynamicUnsigned => dynamic_map(false),
            CodeMap::Linear => linear_map(),
        }
    }
}

/// `torch.linspace(start, end, steps)` in float32: the first half counts up from
/// `start`, the second down from `end`, each value one fused multiply-add (the maps
/// bitsandbytes produced for the reference cases carry exactly these roundings).
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - i - 1) as f32, end) }).collect()
}

/// bitsandbytes' `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`: the
/// unsigned map spends the sign bit on twice the fractions per exponent.
fn dynamic_map(signed: bool) -> [f32; 256] {
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..7 {
        let fractions = if signed { 1 << i } else { 1 << (i + 1) };
        let bounds = linspace(0.1, 1.0, fractions + 1);
        let scale = [1e-6f64, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0][i] as f32;
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-scale * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    data.try_into().expect("the dynamic map has 256 values")
}

/// bitsandbytes' `create_linear_map(signed=True, total_bits=8, add_zero=True)`.
fn linear_map() -> [f32; 256] {
    let values = linspace(-1.0, 1.0, 255);
    let mut data = Vec::with_capacity(256);
    data.extend_from_slice(&values[..127]);
    data.push(0.0);
    data.extend_from_slice(&values[127..]);
    data.try_into().expect("the linear map has 256 values")
}

/// bitsandbytes' 4-bit data types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FourBit {
    /// NormalFloat4 (`get_4bit_type("nf4")`).
    Nf4,
    /// 4-bit float, 1 sign, 2 exponent, 1 mantissa bit (`get_4bit_type("fp4")`).
    Fp4,
}

impl FourBit {
    /// The 16 values, by code.
    pub fn values(self) -> [f32; 16] {
        match self {
            FourBit::Nf4 => [
                -1.0,
                -0.696_192_8,
                -0.525_073_05,
                -0.394_917_5,
                -0.284_441_38,
                -0.184_773_43,
                -0.091_050_036,
                0.0,
                0.079_580_3,
                0.160_930_2,
                0.246_112_3,
                0.337_915_24,
                0.440_709_83,
                0.562_617,
                0.722_956_84,
                1.0,
            ],
            FourBit::Fp4 => {
                let raw: [f32; 16] = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0];
                raw.map(|x| x / 12.0)
            }
        }
    }
}

/// For each code `k`, the first of the 65 536 lookup bins whose code exceeds `k`:
/// bitsandbytes' CPU lookup table, stored as its 255 steps (the last entry never matches).
fn lut_thresholds(map: &[f32; 256]) -> [u32; 256] {
    const BINS: u32 = 65536;
    let mids: Vec<f32> = map.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let mut thresholds = [u32::MAX; 256];
    let mut code = 0usize;
    for i in 0..BINS {
        let value = -1.0f32 + (2.0f32 * i as f32) / (BINS - 1) as f32;
        while code < mids.len() && mids[code] < value {
            thresholds[code] = i;
            code += 1;
        }
    }
    thresholds
}

/// The constants a kernel reads: code map, its bin thresholds, and a 4-bit table.
pub(crate) fn constants(map: &[f32; 256], four_bit: Option<FourBit>) -> Vec<u32> {
    let mut c = vec![0u32; CONSTS_WORDS];
    for (i, v) in map.iter().enumerate() {
        c[i] = v.to_bits();
    }
    c[C_THRESH..C_THRESH + 256].copy_from_slice(&lut_thresholds(map));
    // The kernels write the offset; the zero word must stay 0 (see `rounded` in codes.wgsl).
    c[C_OFFSET] = 0;
    c[C_ZERO] = 0;
    if let Some(fb) = four_bit {
        let values = fb.values();
        let mut order: Vec<usize> = (0..16).collect();
        order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
        for i in 0..16 {
            c[C_T4 + i] = values[i].to_bits();
            c[C_ORDER4 + i] = order[i] as u32;
        }
        for i in 0..15 {
            c[C_MID4 + i] = ((values[order[i]] + values[order[i + 1]]) / 2.0).to_bits();
        }
    }
    c
}

pub(crate) fn constants_buffer(ctx: &Context, words: &[u32]) -> wgpu::Buffer {
    ctx.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("quantization-constants"),
        contents: bytemuck::cast_slice(words),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn constants_layout_matches_codes_wgsl() {
        let source = [include_str!("../../shaders/common/codes.wgsl"), "var<private> consts: array<u32, 576>;"].concat();
        let module = naga::front::wgsl::parse_str(&source).expect("codes.wgsl parses");
        let wgsl = |name: &str| crate::gpu::kernel::wgsl_u32_constant(&module, name).map(|v| v as usize);
        for (name, value) in [
            ("C_THRESH", C_THRESH),
            ("C_T4", C_T4),
            ("C_MID4", C_MID4),
            ("C_ORDER4", C_ORDER4),
            ("C_OFFSET", C_OFFSET),
            ("C_ZERO", C_ZERO),
            ("CONSTS_WORDS", CONSTS_WORDS),
        ] {
            assert_eq!(wgsl(name), Some(value), "{name}");
        }
        assert_eq!(wgsl("C_MAP"), Some(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blockwise::check_blocksize;

    #[test]
    fn dynamic_map_matches_bitsandbytes() {
        let m = CodeMap::Dynamic.values();
        // Values bitsandbytes 0.50 produced (checked against the conformance cases).
        assert_eq!(m[0], -0.992_968_74);
        assert_eq!(m[127], 0.0);
        assert_eq!(m[128], 5.500_000_4e-7);
        assert_eq!(m[255], 1.0);
        assert!(m.windows(2).all(|w| w[0] <= w[1]));
        for i in 0..127 {
            assert_eq!(m[i], -m[254 - i], "symmetric at {i}");
        }
    }

    #[test]
    fn linear_map_has_two_zeros() {
        let m = CodeMap::Linear.values();
        assert_eq!((m[0], m[127], m[255]), (-1.0, 0.0, 1.0));
        // linspace's midpoint: zero up to one rounding of the step (torch's exact
        // value depends on which of its vector/scalar paths computes it).
        assert!(m[128].abs() <= 4e-9, "{}", m[128]);
        assert!((m[129] - 1.0 / 127.0).abs() < 1e-8, "{}", m[129]);
        assert!(m.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn thresholds_reproduce_the_lookup_table() {
        // The lookup table bitsandbytes builds: nearest code to each bin's centre,
        // ties to the lower code.
        for map in [CodeMap::Dynamic.values(), CodeMap::Linear.values()] {
            let t = lut_thresholds(&map);
            assert!(t.windows(2).all(|w| w[0] <= w[1]));
            for bin in [0u32, 1, 100, 32767, 32768, 40000, 65534, 65535] {
                let v = -1.0f32 + (2.0 * bin as f32) / 65535.0;
                let mut best = 0;
                for k in 1..256 {
                    if 0.5 * (map[k - 1] + map[k]) < v {
                        best = k;
                    }
                }
                assert_eq!(t.iter().filter(|&&x| x <= bin).count(), best, "bin {bin}");
            }
        }
    }

    #[test]
    fn blocksizes() {
        for ok in [64, 128, 256, 512, 1024, 2048, 4096] {
            check_blocksize(ok).unwrap();
        }
        for bad in [0, 32, 100, 8192] {
            let e = check_blocksize(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("blocksize {bad} is not supported")), "{e}");
        }
    }
}
