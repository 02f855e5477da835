//! bitsandbytes' block-wise 8-bit quantization (`quantize_blockwise` /
//! `dequantize_blockwise`) on the GPU, and the kernels that build quantized tables.
//!
//! Semantics are those of bitsandbytes 0.50's CPU kernels: absmax per block of the
//! flattened tensor; each value scaled by `1 / absmax` goes to one of 65 536 evenly
//! spaced bins of [-1, 1], and the bin's code is the code nearest the bin's centre;
//! all-zero blocks give code 0. The code maps are bitsandbytes' signed dynamic map
//! (`create_dynamic_map`) and signed linear map (`create_linear_map`), built on the
//! host as the constants they are.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::recording::Recording;
use crate::gpu::table::{Plane, TableAccess};
use crate::gpu::tensor::{DType, GpuTensor};
use crate::quant::codes::{constants, constants_buffer, CodeMap};

pub(crate) static FAMILY: ShaderFamily =
    ShaderFamily { name: "quantize", parts: &[common::GRID, common::CODES, common::ENCODE, include_str!("../../shaders/quantize.wgsl")] };

/// The block-wise kernels bind their buffers themselves (binding `i` is the `i`-th
/// resource they pass): they walk elements of flat tensors, not a plan's rows.
const QUANT_BINDINGS: &[(u32, Slot, Role)] = &[
    (0, Slot::Uniform, Role::Extra(0)),
    (1, Slot::ReadWrite, Role::Extra(1)),
    (2, Slot::Read, Role::Extra(2)),
    (3, Slot::ReadWrite, Role::Extra(3)),
    (4, Slot::ReadWrite, Role::Extra(4)),
];

pub(crate) const ABSMAX: Kernel = Kernel::new(&FAMILY, "absmax", QUANT_BINDINGS);
pub(crate) const ENCODE: Kernel = Kernel::new(&FAMILY, "encode", QUANT_BINDINGS);
pub(crate) const FINISH_SCALES: Kernel = Kernel::new(&FAMILY, "finish_scales", QUANT_BINDINGS);
pub(crate) const SUM_PARTIALS: Kernel = Kernel::new(&FAMILY, "sum_partials", QUANT_BINDINGS);
pub(crate) const MEAN_FINAL: Kernel = Kernel::new(&FAMILY, "mean_final", QUANT_BINDINGS);
pub(crate) const DEQUANTIZE: Kernel = Kernel::new(
    &FAMILY,
    "dequantize",
    &[
        (0, Slot::Uniform, Role::Extra(0)),
        (1, Slot::Read, Role::Extra(1)),
        (2, Slot::Read, Role::Extra(2)),
        (3, Slot::Read, Role::Extra(3)),
        (4, Slot::ReadWrite, Role::Extra(4)),
    ],
);

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
    /// Elements per block.
    pub blocksize: usize,
    /// The code map the codes index.
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
    let consts = constants_buffer(ctx, &constants(&code.values(), None));
    let (codes, absmax) = blockwise_codes(ctx, x, numel, blocksize as u64, &consts)?;
    Ok(Blockwise { codes, absmax, blocksize, code })
}

/// Block-wise codes (one byte per element, `consts`' map) and absmax of the first
/// `numel` elements of `x`: `quantize_blockwise`'s two kernels, in one submission.
pub(crate) fn blockwise_codes(
    ctx: &Context,
    x: &GpuTensor,
    numel: u64,
    blocksize: u64,
    consts: &wgpu::Buffer,
) -> Result<(GpuTensor, GpuTensor)> {
    let codes = GpuTensor::zeros(ctx, &[numel as usize], DType::U8, 1)?;
    let absmax = GpuTensor::zeros(ctx, &[numel.div_ceil(blocksize) as usize], DType::F32, 1)?;
    Step { ctx, consts, group: blocksize, numel }.submit(|step, encoder| {
        step.absmax(encoder, x, &absmax, PRE_NONE);
        step.encode(encoder, x, &absmax, &codes, SCHEME_MAP, PRE_NONE, 1);
    })?;
    Ok((codes, absmax))
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
        for piece in TableAccess::planes(numel, planes.to_vec()).slices() {
            let [c, a, o] = [piece.plane_segment(0), piece.plane_segment(1), piece.plane_segment(2)];
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
/// Records the passes that build codes, sharing the constants and the grouping.
/// A small buffer for a slot a kernel does not use, where the shared placeholder is
/// already bound to another slot of the same dispatch (a buffer may not be bound both
/// read-only and writable in one dispatch).
fn unused(ctx: &Context) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("unused"),
        size: 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    })
}

pub(crate) struct Step<'a> {
    pub ctx: &'a Context,
    pub consts: &'a wgpu::Buffer,
    /// Elements per absmax value.
    pub group: u64,
    /// Elements of the tensor being quantized.
    pub numel: u64,
}

impl Step<'_> {
    /// Records `record`'s kernels into one encoder and submits it, inside error scopes.
    pub fn submit(&self, record: impl FnOnce(&Self, &mut Recording<'_>)) -> Result<()> {
        self.ctx.scoped(|| {
            let mut encoder = self.ctx.encoder();
            record(self, &mut encoder);
            self.ctx.submit(encoder)
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
    pub fn absmax(&self, encoder: &mut Recording<'_>, input: &GpuTensor, out: &GpuTensor, pre: u32) {
        let planes = [Plane::new(input, input.row_len() as u64), Plane::new(out, self.group)];
        let dummy = self.ctx.placeholder_buffer();
        for piece in TableAccess::planes(self.numel, planes.to_vec()).slices() {
            let (i, o) = (piece.plane_segment(0), piece.plane_segment(1));
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
        encoder: &mut Recording<'_>,
        input: &GpuTensor,
        scales: &GpuTensor,
        codes: &GpuTensor,
        scheme: u32,
        pre: u32,
        per_byte: u64,
    ) {
        let planes = [Plane::new(input, input.row_len() as u64), Plane::new(scales, self.group), Plane::new(codes, per_byte)];
        for piece in TableAccess::planes(self.numel, planes.to_vec()).slices() {
            let (i, s, c) = (piece.plane_segment(0), piece.plane_segment(1), piece.plane_segment(2));
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
    pub fn finish_scales(&self, encoder: &mut Recording<'_>, scales: &GpuTensor, scheme: u32) {
        let (d1, d2) = (self.ctx.placeholder_buffer(), unused(self.ctx));
        for seg in scales.segments() {
            let params = QuantParams { scale_first: seg.first_row as u32, count: seg.rows as u32, ..self.params(0, 0) };
            let uniform = self.ctx.uniform(&params);
            self.ctx.dispatch(
                encoder,
                &FINISH_SCALES,
                &[("SCHEME", scheme as f64)],
                &[
                    uniform.as_entire_binding(),
                    self.consts.as_entire_binding(),
                    d1.as_entire_binding(),
                    seg.binding(),
                    d2.as_entire_binding(),
                ],
                seg.rows,
            );
        }
    }

    /// The mean of `values` (F32, flat) into the constants' offset slot.
    pub fn mean(&self, encoder: &mut Recording<'_>, values: &GpuTensor) {
        let n = values.numel() as u64;
        let total: u64 = values.segments().iter().map(|s| s.rows.div_ceil(SUM_CHUNK)).sum();
        let partials = self.ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("partial-sums"),
            size: (total.max(1) * 8).max(16),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let dummy = self.ctx.placeholder_buffer();
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
                &[
                    uniform.as_entire_binding(),
                    self.consts.as_entire_binding(),
                    seg.binding(),
                    partials.as_entire_binding(),
                    dummy.as_entire_binding(),
                ],
                workgroups,
            );
            base += workgroups;
        }
        let params = QuantParams { numel: n as u32, count: total as u32, ..self.params(0, 0) };
        let uniform = self.ctx.uniform(&params);
        let d2 = unused(self.ctx);
        self.ctx.dispatch_groups(
            encoder,
            &MEAN_FINAL,
            &[],
            &[
                uniform.as_entire_binding(),
                self.consts.as_entire_binding(),
                d2.as_entire_binding(),
                partials.as_entire_binding(),
                dummy.as_entire_binding(),
            ],
            1,
        );
    }
}
