//! bitsandbytes' block-wise 8-bit quantization (`quantize_blockwise` /
//! `dequantize_blockwise`) on the GPU, and the kernels that build quantized tables.
//!
//! Semantics are those of bitsandbytes 0.50's CPU kernels: absmax per block of the
//! flattened tensor; each value scaled by `1 / absmax` goes to one of 65 536 evenly
//! spaced bins of [-1, 1], and the bin's code is the code nearest the bin's centre;
//! all-zero blocks give code 0. The code maps are bitsandbytes' signed dynamic map
//! (`create_dynamic_map`) and signed linear map (`create_linear_map`), built on the
//! host as the constants they are.

use wgpu::util::DeviceExt;

use crate::context::{Context, Kernel, Slot};
use crate::error::{Error, Result};
use crate::tensor::{DType, GpuTensor, Segment};

const SOURCE: &str = include_str!("../shaders/quantize.wgsl");

const QUANT_SLOTS: &[Slot] = &[Slot::Uniform, Slot::ReadWrite, Slot::Read, Slot::ReadWrite, Slot::ReadWrite];

pub(crate) const ABSMAX: Kernel = Kernel { family: "quantize", source: SOURCE, entry: "absmax", slots: QUANT_SLOTS };
pub(crate) const ENCODE: Kernel = Kernel { family: "quantize", source: SOURCE, entry: "encode", slots: QUANT_SLOTS };
pub(crate) const FINISH_SCALES: Kernel = Kernel { family: "quantize", source: SOURCE, entry: "finish_scales", slots: QUANT_SLOTS };
pub(crate) const SUM_PARTIALS: Kernel = Kernel { family: "quantize", source: SOURCE, entry: "sum_partials", slots: QUANT_SLOTS };
pub(crate) const MEAN_FINAL: Kernel = Kernel { family: "quantize", source: SOURCE, entry: "mean_final", slots: QUANT_SLOTS };
pub(crate) const DEQUANTIZE: Kernel = Kernel {
    family: "quantize",
    source: SOURCE,
    entry: "dequantize",
    slots: &[Slot::Uniform, Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite],
};

/// Words of the constants buffer (see the layout in `quantize.wgsl`).
pub(crate) const CONSTS_WORDS: usize = 576;
const C_THRESH: usize = 256;
const C_T4: usize = 512;
const C_MID4: usize = 528;
const C_ORDER4: usize = 544;

/// Values `sum_partials` adds up per workgroup (64 invocations × 16).
const SUM_CHUNK: u64 = 1024;

/// `encode` schemes (the SCHEME override).
pub(crate) const SCHEME_MAP: u32 = 0;
pub(crate) const SCHEME_ROWWISE: u32 = 1;
pub(crate) const SCHEME_4BIT: u32 = 2;
/// Input transforms (the PRE override).
pub(crate) const PRE_NONE: u32 = 0;
pub(crate) const PRE_F16: u32 = 1;
pub(crate) const PRE_OFFSET: u32 = 2;

/// Largest tensor the quantization kernels address (element indices are u32 there).
pub(crate) const MAX_ELEMENTS: u64 = 1 << 31;

/// One of bitsandbytes' signed 8-bit code maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodeMap {
    /// `create_dynamic_map(signed=True)`: dynamic exponent, the default of `quantize_blockwise`.
    Dynamic,
    /// `create_linear_map(signed=True)`: 255 evenly spaced values in [-1, 1] and an extra 0.
    Linear,
}

impl CodeMap {
    /// Parses `"dynamic"` or `"linear"`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "dynamic" => Ok(CodeMap::Dynamic),
            "linear" => Ok(CodeMap::Linear),
            _ => Err(Error::arg("code", format!("expected 'dynamic' or 'linear', got {s:?}"))),
        }
    }

    /// The 256 code values, sorted ascending.
    pub fn values(self) -> [f32; 256] {
        match self {
            CodeMap::Dynamic => dynamic_map(),
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
    (0..steps)
        .map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - i - 1) as f32, end) })
        .collect()
}

/// bitsandbytes' `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`.
fn dynamic_map() -> [f32; 256] {
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..7 {
        let bounds = linspace(0.1, 1.0, (1 << i) + 1);
        let scale = [1e-6f64, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0][i] as f32;
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-scale * mean);
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
    ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("quantization-constants"),
        contents: bytemuck::cast_slice(words),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}

/// Refuses block sizes bitsandbytes' kernels do not have.
pub fn check_blocksize(blocksize: usize) -> Result<()> {
    if !(64..=4096).contains(&blocksize) || !blocksize.is_power_of_two() {
        return Err(Error::arg(
            "blocksize",
            format!("blocksize {blocksize} is not supported (expected one of 64, 128, 256, 512, 1024, 2048, 4096)"),
        ));
    }
    Ok(())
}

/// Codes and block absmax of [`quantize_blockwise`].
#[derive(Debug, Clone)]
pub struct Blockwise {
    /// One code per element, U8, flat `[numel]`.
    pub codes: GpuTensor,
    /// One absmax per block, F32, `[ceil(numel / blocksize)]`.
    pub absmax: GpuTensor,
    pub blocksize: usize,
    pub code: CodeMap,
}

/// `bitsandbytes.functional.quantize_blockwise(x, code, blocksize)` over the elements of
/// `x` (any f32 tensor, taken flat).
pub fn quantize_blockwise(ctx: &Context, x: &GpuTensor, blocksize: usize, code: CodeMap) -> Result<Blockwise> {
    check_blocksize(blocksize)?;
    if x.dtype() != DType::F32 {
        return Err(Error::arg("x", format!("expected an F32 tensor, got {:?}", x.dtype())));
    }
    let numel = x.numel() as u64;
    if numel > MAX_ELEMENTS {
        return Err(Error::arg("x", format!("{numel} elements is more than the quantization kernels address (limit {MAX_ELEMENTS})")));
    }
    let blocks = numel.div_ceil(blocksize as u64) as usize;
    let codes = GpuTensor::zeros(ctx, &[numel as usize], DType::U8, 1)?;
    let absmax = GpuTensor::zeros(ctx, &[blocks], DType::F32, 1)?;
    let consts = constants_buffer(ctx, &constants(&code.values(), None));
    ctx.scoped(|| {
        let mut encoder = ctx.encoder();
        let step = Step { ctx, consts: &consts, group: blocksize as u64, numel };
        step.absmax(&mut encoder, x, &absmax, PRE_NONE);
        step.encode(&mut encoder, x, &absmax, &codes, SCHEME_MAP, PRE_NONE, 1);
        ctx.submit(encoder)
    })?;
    Ok(Blockwise { codes, absmax, blocksize, code })
}

/// `bitsandbytes.functional.dequantize_blockwise`: `out[i] = code[codes[i]] * absmax[i / blocksize]`.
/// `codes` is a U8 tensor (taken flat), `absmax` F32 with one value per block.
pub fn dequantize_blockwise(ctx: &Context, codes: &GpuTensor, absmax: &GpuTensor, blocksize: usize, code: CodeMap) -> Result<GpuTensor> {
    check_blocksize(blocksize)?;
    if codes.dtype() != DType::U8 || codes.row_len() != 1 {
        return Err(Error::arg("codes", format!("expected a flat U8 tensor, got {:?} with rows of {}", codes.dtype(), codes.row_len())));
    }
    if absmax.dtype() != DType::F32 {
        return Err(Error::arg("absmax", format!("expected an F32 tensor, got {:?}", absmax.dtype())));
    }
    let numel = codes.numel() as u64;
    if numel > MAX_ELEMENTS {
        return Err(Error::arg("codes", format!("{numel} codes is more than the quantization kernels address (limit {MAX_ELEMENTS})")));
    }
    let blocks = numel.div_ceil(blocksize as u64);
    if absmax.numel() as u64 != blocks {
        return Err(Error::arg(
            "absmax",
            format!("expected {blocks} values ({numel} codes in blocks of {blocksize}), got {}", absmax.numel()),
        ));
    }
    let out = GpuTensor::zeros(ctx, &[numel as usize], DType::F32, 1)?;
    let consts = constants_buffer(ctx, &constants(&code.values(), None));
    ctx.scoped(|| {
        let mut encoder = ctx.encoder();
        let planes = [Plane::new(codes, 1), Plane::new(absmax, blocksize as u64), Plane::new(&out, 1)];
        for piece in pieces(numel, &planes) {
            let [c, a, o] = [piece.segment(&planes, 0), piece.segment(&planes, 1), piece.segment(&planes, 2)];
            let params = QuantParams {
                lo: piece.lo as u32,
                hi: piece.hi as u32,
                in_first: c.first_row as u32,
                out_first: o.first_row as u32,
                scale_first: a.first_row as u32,
                group: blocksize as u32,
                numel: numel as u32,
                count: 0,
            };
            let uniform = ctx.uniform(&params);
            ctx.dispatch(
                &mut encoder,
                &DEQUANTIZE,
                &[],
                &[uniform.as_entire_binding(), consts.as_entire_binding(), c.binding(), a.binding(), o.binding()],
                piece.hi - piece.lo,
            );
        }
        ctx.submit(encoder)
    })?;
    Ok(out)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct QuantParams {
    lo: u32,
    hi: u32,
    in_first: u32,
    out_first: u32,
    scale_first: u32,
    group: u32,
    numel: u32,
    count: u32,
}

/// A tensor viewed as a flat run of elements, `per_row` elements per tensor row
/// (a code byte holds 1 or 2 elements, an absmax value a whole block).
#[derive(Clone, Copy)]
pub(crate) struct Plane<'a> {
    pub tensor: &'a GpuTensor,
    pub per_row: u64,
}

impl<'a> Plane<'a> {
    pub fn new(tensor: &'a GpuTensor, per_row: u64) -> Self {
        Plane { tensor, per_row }
    }
}

/// A run of elements that one segment of every plane holds.
pub(crate) struct Piece {
    pub lo: u64,
    pub hi: u64,
    segs: Vec<usize>,
}

impl Piece {
    pub fn segment<'a>(&self, planes: &[Plane<'a>], plane: usize) -> &'a Segment {
        &planes[plane].tensor.segments()[self.segs[plane]]
    }
}

/// Cuts `[0, numel)` at every segment boundary of every plane, so that each piece
/// lies inside one segment of each.
pub(crate) fn pieces(numel: u64, planes: &[Plane<'_>]) -> Vec<Piece> {
    let mut cuts: Vec<u64> = vec![0, numel];
    for plane in planes {
        for seg in plane.tensor.segments() {
            cuts.push((seg.first_row * plane.per_row).min(numel));
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .map(|w| {
            let segs = planes
                .iter()
                .map(|plane| {
                    plane
                        .tensor
                        .segments()
                        .iter()
                        .position(|s| s.rows > 0 && (s.first_row + s.rows) * plane.per_row > w[0])
                        .unwrap_or(0)
                })
                .collect();
            Piece { lo: w[0], hi: w[1], segs }
        })
        .collect()
}

/// Records the passes that build codes, sharing the constants and the grouping.
pub(crate) struct Step<'a> {
    pub ctx: &'a Context,
    pub consts: &'a wgpu::Buffer,
    /// Elements per absmax value.
    pub group: u64,
    /// Elements of the tensor being quantized.
    pub numel: u64,
}

impl Step<'_> {
    fn dummy(&self) -> wgpu::Buffer {
        self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    }

    fn params(&self, lo: u64, hi: u64) -> QuantParams {
        QuantParams {
            lo: lo as u32,
            hi: hi as u32,
            in_first: 0,
            out_first: 0,
            scale_first: 0,
            group: self.group as u32,
            numel: self.numel as u32,
            count: 0,
        }
    }

    /// absmax of every group of `input` (after `pre`) into `out` (F32, one per group, zeroed).
    pub fn absmax(&self, encoder: &mut wgpu::CommandEncoder, input: &GpuTensor, out: &GpuTensor, pre: u32) {
        let planes = [Plane::new(input, input.row_len() as u64), Plane::new(out, self.group)];
        let dummy = self.dummy();
        for piece in pieces(self.numel, &planes) {
            let (i, o) = (piece.segment(&planes, 0), piece.segment(&planes, 1));
            let params = QuantParams {
                in_first: (i.first_row * input.row_len() as u64) as u32,
                scale_first: o.first_row as u32,
                ..self.params(piece.lo, piece.hi)
            };
            let uniform = self.ctx.uniform(&params);
            let groups = (piece.hi - 1) / self.group + 1 - piece.lo / self.group;
            self.ctx.dispatch_groups(
                encoder,
                &ABSMAX,
                &[("PRE", pre as f64)],
                &[uniform.as_entire_binding(), self.consts.as_entire_binding(), i.binding(), o.binding(), dummy.as_entire_binding()],
                groups,
            );
        }
    }

    /// One code per element of `input` into `codes` (U8, zeroed; `per_byte` elements a byte),
    /// scaled by the group absmax in `scales`.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        input: &GpuTensor,
        scales: &GpuTensor,
        codes: &GpuTensor,
        scheme: u32,
        pre: u32,
        per_byte: u64,
    ) {
        let planes = [Plane::new(input, input.row_len() as u64), Plane::new(scales, self.group), Plane::new(codes, per_byte)];
        for piece in pieces(self.numel, &planes) {
            let (i, s, c) = (piece.segment(&planes, 0), piece.segment(&planes, 1), piece.segment(&planes, 2));
            let params = QuantParams {
                in_first: (i.first_row * input.row_len() as u64) as u32,
                scale_first: s.first_row as u32,
                out_first: c.first_row as u32,
                ..self.params(piece.lo, piece.hi)
            };
            let uniform = self.ctx.uniform(&params);
            self.ctx.dispatch(
                encoder,
                &ENCODE,
                &[("SCHEME", scheme as f64), ("PRE", pre as f64)],
                &[uniform.as_entire_binding(), self.consts.as_entire_binding(), i.binding(), s.binding(), c.binding()],
                piece.hi - piece.lo,
            );
        }
    }

    /// Row-wise scales become absmax / 127; a 4-bit partial last block's absmax is floored.
    pub fn finish_scales(&self, encoder: &mut wgpu::CommandEncoder, scales: &GpuTensor, scheme: u32) {
        let (d1, d2) = (self.dummy(), self.dummy());
        for seg in scales.segments() {
            let params = QuantParams { scale_first: seg.first_row as u32, count: seg.rows as u32, ..self.params(0, 0) };
            let uniform = self.ctx.uniform(&params);
            self.ctx.dispatch(
                encoder,
                &FINISH_SCALES,
                &[("SCHEME", scheme as f64)],
                &[uniform.as_entire_binding(), self.consts.as_entire_binding(), d1.as_entire_binding(), seg.binding(), d2.as_entire_binding()],
                seg.rows,
            );
        }
    }

    /// The mean of `values` (F32, flat) into the constants' offset slot.
    pub fn mean(&self, encoder: &mut wgpu::CommandEncoder, values: &GpuTensor) {
        let n = values.numel() as u64;
        let total: u64 = values.segments().iter().map(|s| s.rows.div_ceil(SUM_CHUNK)).sum();
        let partials = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("partial-sums"),
            size: (total.max(1) * 8).max(16),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let dummy = self.dummy();
        let mut base = 0u64;
        for seg in values.segments() {
            let workgroups = seg.rows.div_ceil(SUM_CHUNK);
            let params = QuantParams {
                in_first: seg.first_row as u32,
                out_first: base as u32,
                ..self.params(seg.first_row, seg.first_row + seg.rows)
            };
            let uniform = self.ctx.uniform(&params);
            self.ctx.dispatch_groups(
                encoder,
                &SUM_PARTIALS,
                &[],
                &[uniform.as_entire_binding(), self.consts.as_entire_binding(), seg.binding(), partials.as_entire_binding(), dummy.as_entire_binding()],
                workgroups,
            );
            base += workgroups;
        }
        let params = QuantParams { numel: n as u32, count: total as u32, ..self.params(0, 0) };
        let uniform = self.ctx.uniform(&params);
        let d2 = self.dummy();
        self.ctx.dispatch_groups(
            encoder,
            &MEAN_FINAL,
            &[],
            &[uniform.as_entire_binding(), self.consts.as_entire_binding(), d2.as_entire_binding(), partials.as_entire_binding(), dummy.as_entire_binding()],
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
