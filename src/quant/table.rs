//! Quantized tables: bitsandbytes' int8 block-wise, int8 row-wise
//! (`Embedding8bit`), NF4 and FP4 (`Embedding4bit`) — quantized on the GPU from an f32
//! table. `layers/quantized.rs` looks them up and reduces bags over them with kernels
//! that dequantize each element as they read it, so the table is never expanded.
//!
//! Layouts, each held in "planes" that are split into segments fitting a binding:
//! - `int8_blockwise`: a code byte per element (dynamic map), an f32 absmax per block of
//!   the row-major table (blocks may straddle rows);
//! - `int8_rowwise`: an int8 per element, an f32 `absmax / 127` per row, where absmax is
//!   taken over the table rounded to f16 (as `Int8Params` quantizes a half copy);
//! - `nf4` / `fp4`: two codes per byte, and the per-block absmax stored as bitsandbytes'
//!   `Params4bit` stores it (compress_statistics): `absmax - mean(absmax)` quantized with
//!   the dynamic map in blocks of 256, plus the mean.

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::table::{check_table, Plane, TableAccess};
use crate::gpu::tensor::{DType, GpuTensor};
use crate::quant::blockwise::{
    blockwise_codes, check_blocksize, Step, MAX_ELEMENTS, PRE_F16, PRE_NONE, PRE_OFFSET, SCHEME_4BIT, SCHEME_MAP, SCHEME_ROWWISE,
};
use crate::quant::codes::{constants, constants_buffer, CodeMap, FourBit, C_T4};

/// Absmax blocks per second-level absmax in nested 4-bit statistics (bitsandbytes' 256).
pub(crate) const NESTED_BLOCKSIZE: u64 = 256;

/// How a table is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `quantize_blockwise` with the dynamic map over the row-major table.
    Int8Blockwise,
    /// `Embedding8bit`: int8 per element, one absmax per row.
    Int8Rowwise,
    /// `Embedding4bit(quant_type="nf4")`.
    Nf4,
    /// `Embedding4bit(quant_type="fp4")`.
    Fp4,
}

crate::names::spelled_enum!(Scheme, "scheme", { Int8Blockwise => "int8_blockwise", Int8Rowwise => "int8_rowwise", Nf4 => "nf4", Fp4 => "fp4" });

impl Scheme {
    /// bitsandbytes' default block size: 4096 for `quantize_blockwise`, 64 for 4-bit;
    /// row-wise has no blocks (0).
    pub fn default_blocksize(self) -> usize {
        match self {
            Scheme::Int8Blockwise => 4096,
            Scheme::Int8Rowwise => 0,
            Scheme::Nf4 | Scheme::Fp4 => 64,
        }
    }

    pub(crate) fn four_bit(self) -> Option<FourBit> {
        match self {
            Scheme::Nf4 => Some(FourBit::Nf4),
            Scheme::Fp4 => Some(FourBit::Fp4),
            _ => None,
        }
    }

    /// The SCHEME override of `quantized_embedding.wgsl`.
    pub(crate) fn kernel_scheme(self) -> u32 {
        match self {
            Scheme::Int8Blockwise => 0,
            Scheme::Int8Rowwise => 1,
            Scheme::Nf4 | Scheme::Fp4 => 2,
        }
    }
}

/// A quantized `[num_embeddings, embedding_dim]` table on the GPU. Cloning shares it.
#[derive(Debug, Clone)]
pub struct QuantizedTable {
    scheme: Scheme,
    blocksize: usize,
    num_embeddings: usize,
    embedding_dim: usize,
    /// Code bytes: one element each, or two (4-bit, even element in the high nibble).
    codes: GpuTensor,
    /// Per-block f32 absmax, per-row f32 scale, or per-block nested byte codes (4-bit).
    scales: GpuTensor,
    /// 4-bit only: f32 absmax of each 256 nested codes.
    scales2: Option<GpuTensor>,
    /// Row-wise only: each row's absmax, before the division by 127 (bitsandbytes' `SCB`).
    row_absmax: Option<GpuTensor>,
    /// Code map, 4-bit table and the nested statistics' offset.
    pub(crate) consts: wgpu::Buffer,
    /// The same as a uniform block, for kernels whose lanes look codes up at once:
    /// CPU adapters load a uniform block's words without per-lane emulation.
    pub(crate) consts_uniform: wgpu::Buffer,
}

/// Code values spread one to a 16-byte word at the head of the uniform constants: the
/// 256 of the 8-bit map, then the 16 of the 4-bit codes.
const SPREAD_WORDS: usize = 256 + 16;

/// The constants as the `bag_words` kernel's uniform block (shaders/quantized_embedding.wgsl):
/// the code values spread one to a vec4, so that lanes looking codes up at once load a
/// word each with no component to pick, then the constants' words as they are, copied
/// from `consts` after the build wrote the nested statistics' offset there.
fn uniform_constants(ctx: &Context, host: &[u32], consts: &wgpu::Buffer) -> Result<wgpu::Buffer> {
    let mut block = vec![0u32; SPREAD_WORDS * 4];
    for (i, &v) in host[..256].iter().chain(&host[C_T4..C_T4 + 16]).enumerate() {
        block[4 * i] = v;
    }
    block.extend_from_slice(host);
    let uniform = ctx.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("quantization-constants-uniform"),
        contents: bytemuck::cast_slice(&block),
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    });
    ctx.scoped(|| {
        let mut encoder = ctx.encoder();
        encoder.copy_buffer_to_buffer(consts, 0, &uniform, (SPREAD_WORDS * 16) as u64, consts.size());
        ctx.submit(encoder)
    })?;
    Ok(uniform)
}

impl QuantizedTable {
    /// Quantizes a row-major `[num_embeddings, embedding_dim]` f32 table on the GPU.
    /// `blocksize` is for block-wise and 4-bit schemes (`None`: bitsandbytes' default);
    /// row-wise ignores it.
    pub fn from_pretrained(
        ctx: &Context,
        weight: &[f32],
        num_embeddings: usize,
        embedding_dim: usize,
        scheme: Scheme,
        blocksize: Option<usize>,
    ) -> Result<Self> {
        check_table(weight.len(), num_embeddings, embedding_dim)?;
        let blocksize = Self::check(scheme, blocksize, weight.len())?;
        // Uploaded flat: the quantization kernels read elements, not rows.
        let table = GpuTensor::flat(ctx, weight, DType::F32)?;
        let q = Self::build(ctx, &table, num_embeddings, embedding_dim, scheme, blocksize);
        table.release();
        q
    }

    /// Quantizes a `[V, D]` f32 table already on the GPU (it is left as it is).
    pub fn from_tensor(ctx: &Context, weight: &GpuTensor, scheme: Scheme, blocksize: Option<usize>) -> Result<Self> {
        let (v, d) = match weight.shape() {
            [v, d] if weight.dtype() == DType::F32 && *d > 0 => (*v, *d),
            s => {
                return Err(Error::arg(
                    "weight",
                    format!("expected a 2-D F32 table [num_embeddings, embedding_dim], got {s:?} of {:?}", weight.dtype()),
                ))
            }
        };
        check_table(v * d, v, d)?;
        let blocksize = Self::check(scheme, blocksize, v * d)?;
        Self::build(ctx, weight, v, d, scheme, blocksize)
    }

    fn check(scheme: Scheme, blocksize: Option<usize>, numel: usize) -> Result<usize> {
        if numel as u64 > MAX_ELEMENTS {
            return Err(Error::arg(
                "weight",
                format!("{numel} elements is more than the quantization kernels address (limit {MAX_ELEMENTS})"),
            ));
        }
        if scheme == Scheme::Int8Rowwise {
            return Ok(0);
        }
        let bs = blocksize.unwrap_or(scheme.default_blocksize());
        check_blocksize(bs)?;
        Ok(bs)
    }

    fn build(ctx: &Context, table: &GpuTensor, v: usize, d: usize, scheme: Scheme, blocksize: usize) -> Result<Self> {
        let numel = (v * d) as u64;
        let host_consts = constants(&CodeMap::Dynamic.values(), scheme.four_bit());
        let consts = constants_buffer(ctx, &host_consts);
        let q = match scheme {
            Scheme::Int8Blockwise => {
                let (codes, scales) = blockwise_codes(ctx, table, numel, blocksize as u64, &consts)?;
                (codes, scales, None, None)
            }
            Scheme::Int8Rowwise => {
                let scales = GpuTensor::zeros(ctx, &[v], DType::F32, 1)?;
                let row_absmax = GpuTensor::zeros(ctx, &[v], DType::F32, 1)?;
                let codes = GpuTensor::zeros(ctx, &[numel as usize], DType::U8, 1)?;
                Step { ctx, consts: &consts, group: d as u64, numel }.submit(|step, encoder| {
                    step.absmax(encoder, table, &scales, PRE_F16);
                    for (from, to) in scales.segments().iter().zip(row_absmax.segments()) {
                        encoder.copy_buffer_to_buffer(&from.buffer, 0, &to.buffer, 0, from.rows * 4);
                    }
                    step.encode(encoder, table, &scales, &codes, SCHEME_ROWWISE, PRE_F16, 1);
                    step.finish_scales(encoder, &scales, SCHEME_ROWWISE);
                })?;
                (codes, scales, None, Some(row_absmax))
            }
            Scheme::Nf4 | Scheme::Fp4 => {
                let blocks = numel.div_ceil(blocksize as u64);
                let absmax = GpuTensor::zeros(ctx, &[blocks as usize], DType::F32, 1)?;
                let codes = GpuTensor::zeros(ctx, &[numel.div_ceil(2) as usize], DType::U8, 1)?;
                let nested = GpuTensor::zeros(ctx, &[blocks as usize], DType::U8, 1)?;
                let scales2 = GpuTensor::zeros(ctx, &[blocks.div_ceil(NESTED_BLOCKSIZE) as usize], DType::F32, 1)?;
                let built = Step { ctx, consts: &consts, group: blocksize as u64, numel }.submit(|step, encoder| {
                    step.absmax(encoder, table, &absmax, PRE_NONE);
                    step.encode(encoder, table, &absmax, &codes, SCHEME_4BIT, PRE_NONE, 2);
                    step.finish_scales(encoder, &absmax, SCHEME_4BIT);
                    // compress_statistics: quantize_blockwise(absmax - absmax.mean(), blocksize=256).
                    let nested_step = Step { ctx, consts: &consts, group: NESTED_BLOCKSIZE, numel: blocks };
                    nested_step.mean(encoder, &absmax);
                    nested_step.absmax(encoder, &absmax, &scales2, PRE_OFFSET);
                    nested_step.encode(encoder, &absmax, &scales2, &nested, SCHEME_MAP, PRE_OFFSET, 1);
                });
                absmax.release();
                built?;
                (codes, nested, Some(scales2), None)
            }
        };
        let (codes, scales, scales2, row_absmax) = q;
        let consts_uniform = uniform_constants(ctx, &host_consts, &consts)?;
        Ok(Self { scheme, blocksize, num_embeddings: v, embedding_dim: d, codes, scales, scales2, row_absmax, consts, consts_uniform })
    }

    /// A table from planes already made (bitsandbytes' own, `quant/bitsandbytes.rs`):
    /// `host_consts` are the constants with the nested statistics' offset in place.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        ctx: &Context,
        scheme: Scheme,
        blocksize: usize,
        (v, d): (usize, usize),
        codes: GpuTensor,
        scales: GpuTensor,
        scales2: Option<GpuTensor>,
        row_absmax: Option<GpuTensor>,
        host_consts: &[u32],
    ) -> Result<Self> {
        let consts = constants_buffer(ctx, host_consts);
        let consts_uniform = uniform_constants(ctx, host_consts, &consts)?;
        Ok(Self { scheme, blocksize, num_embeddings: v, embedding_dim: d, codes, scales, scales2, row_absmax, consts, consts_uniform })
    }

    /// Row-wise only: each row's absmax (bitsandbytes' `SCB`).
    pub(crate) fn row_absmax(&self) -> Option<&GpuTensor> {
        self.row_absmax.as_ref()
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Elements per absmax (0 for row-wise).
    pub fn blocksize(&self) -> usize {
        self.blocksize
    }

    /// Rows in the table.
    pub fn num_embeddings(&self) -> usize {
        self.num_embeddings
    }

    /// Columns of the table.
    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// Bytes the quantized table occupies on the GPU (codes, scales, constants).
    pub fn gpu_bytes(&self) -> u64 {
        self.codes.gpu_bytes()
            + self.scales.gpu_bytes()
            + self.scales2.as_ref().map_or(0, |s| s.gpu_bytes())
            + self.row_absmax.as_ref().map_or(0, |s| s.gpu_bytes())
            + self.consts.size()
            + self.consts_uniform.size()
    }

    /// Bytes the same table takes as f32.
    pub fn f32_bytes(&self) -> u64 {
        (self.num_embeddings * self.embedding_dim * 4) as u64
    }

    /// How the kernels read the table: elements, held by the codes, scales and nested
    /// scales planes.
    /// The code bytes (one per element; two per byte for 4-bit schemes).
    pub(crate) fn codes(&self) -> &GpuTensor {
        &self.codes
    }

    /// The per-row or per-block scales (f32), or nested codes (4-bit).
    pub(crate) fn scales(&self) -> &GpuTensor {
        &self.scales
    }

    /// 4-bit only: the f32 absmax of each 256 nested codes.
    pub(crate) fn scales2(&self) -> Option<&GpuTensor> {
        self.scales2.as_ref()
    }

    pub(crate) fn access(&self) -> TableAccess<'_> {
        TableAccess::planes(self.numel(), self.planes())
    }

    /// The planes with the elements each row (of the plane's tensor) covers.
    fn planes(&self) -> Vec<Plane<'_>> {
        let group = match self.scheme {
            Scheme::Int8Rowwise => self.embedding_dim as u64,
            _ => self.blocksize as u64,
        };
        let per_byte = if self.scheme.four_bit().is_some() { 2 } else { 1 };
        let mut planes = vec![Plane::new(&self.codes, per_byte), Plane::new(&self.scales, group)];
        if let Some(s2) = &self.scales2 {
            planes.push(Plane::new(s2, group * NESTED_BLOCKSIZE));
        }
        planes
    }

    pub(crate) fn group(&self) -> u32 {
        match self.scheme {
            Scheme::Int8Rowwise => self.embedding_dim as u32,
            _ => self.blocksize as u32,
        }
    }

    pub(crate) fn numel(&self) -> u64 {
        (self.num_embeddings * self.embedding_dim) as u64
    }
}
