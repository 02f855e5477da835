//! Quantized lookup tables: bitsandbytes' int8 block-wise, int8 row-wise
//! (`Embedding8bit`), NF4 and FP4 (`Embedding4bit`) — quantized on the GPU from an f32
//! table, and looked up or reduced over bags by kernels that dequantize each element
//! as they read it, so the table is never expanded in memory.
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

use crate::context::{Context, Kernel, Slot};
use crate::embedding::check_table;
use crate::embedding_bag::{bags_per_segment, plan_bags, BagMode};
use crate::error::{Error, Result};
use crate::indices::{normalize_padding_idx, Indices};
use crate::quantize::{
    check_blocksize, constants, constants_buffer, pieces, CodeMap, FourBit, Plane, Step, MAX_ELEMENTS, PRE_F16, PRE_NONE,
    PRE_OFFSET, SCHEME_4BIT, SCHEME_MAP, SCHEME_ROWWISE,
};
use crate::tensor::{DType, GpuTensor};

const SOURCE: &str = include_str!("../shaders/quantized_embedding.wgsl");

const LOOKUP: Kernel = Kernel {
    family: "quantized_embedding",
    source: SOURCE,
    entry: "lookup",
    slots: &[Slot::Uniform, Slot::Read, Slot::Read, Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite],
};

const BAG: Kernel = Kernel {
    family: "quantized_embedding",
    source: SOURCE,
    entry: "bag",
    slots: &[
        Slot::Uniform,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
        Slot::ReadWrite,
    ],
};

const FINALIZE: Kernel = Kernel {
    family: "quantized_embedding",
    source: SOURCE,
    entry: "finalize",
    slots: &[Slot::Uniform, Slot::Read, Slot::ReadWrite],
};

/// Absmax blocks per second-level absmax in nested 4-bit statistics (bitsandbytes' 256).
const NESTED_BLOCKSIZE: u64 = 256;

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

impl Scheme {
    /// Parses `int8_blockwise`, `int8_rowwise`, `nf4` or `fp4`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "int8_blockwise" => Ok(Scheme::Int8Blockwise),
            "int8_rowwise" => Ok(Scheme::Int8Rowwise),
            "nf4" => Ok(Scheme::Nf4),
            "fp4" => Ok(Scheme::Fp4),
            _ => Err(Error::arg("scheme", format!("expected 'int8_blockwise', 'int8_rowwise', 'nf4' or 'fp4', got {s:?}"))),
        }
    }

    /// The scheme's name.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Int8Blockwise => "int8_blockwise",
            Scheme::Int8Rowwise => "int8_rowwise",
            Scheme::Nf4 => "nf4",
            Scheme::Fp4 => "fp4",
        }
    }

    /// bitsandbytes' default block size: 4096 for `quantize_blockwise`, 64 for 4-bit;
    /// row-wise has no blocks (0).
    pub fn default_blocksize(self) -> usize {
        match self {
            Scheme::Int8Blockwise => 4096,
            Scheme::Int8Rowwise => 0,
            Scheme::Nf4 | Scheme::Fp4 => 64,
        }
    }

    fn four_bit(self) -> Option<FourBit> {
        match self {
            Scheme::Nf4 => Some(FourBit::Nf4),
            Scheme::Fp4 => Some(FourBit::Fp4),
            _ => None,
        }
    }

    /// The SCHEME override of `quantized_embedding.wgsl`.
    fn kernel_scheme(self) -> u32 {
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
    /// Code map, 4-bit table and the nested statistics' offset.
    consts: wgpu::Buffer,
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
        let table = GpuTensor::from_bytes(ctx, bytemuck::cast_slice(weight), &[weight.len()], DType::F32, 1)?;
        let q = Self::build(ctx, &table, num_embeddings, embedding_dim, scheme, blocksize);
        table.release();
        q
    }

    /// Quantizes a `[V, D]` f32 table already on the GPU (it is left as it is).
    pub fn from_tensor(ctx: &Context, weight: &GpuTensor, scheme: Scheme, blocksize: Option<usize>) -> Result<Self> {
        let (v, d) = match weight.shape() {
            [v, d] if weight.dtype() == DType::F32 && *d > 0 => (*v, *d),
            s => return Err(Error::arg("weight", format!("expected a 2-D F32 table [num_embeddings, embedding_dim], got {s:?} of {:?}", weight.dtype()))),
        };
        check_table(v * d, v, d)?;
        let blocksize = Self::check(scheme, blocksize, v * d)?;
        Self::build(ctx, weight, v, d, scheme, blocksize)
    }

    fn check(scheme: Scheme, blocksize: Option<usize>, numel: usize) -> Result<usize> {
        if numel as u64 > MAX_ELEMENTS {
            return Err(Error::arg("weight", format!("{numel} elements is more than the quantization kernels address (limit {MAX_ELEMENTS})")));
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
        let consts = constants_buffer(ctx, &constants(&CodeMap::Dynamic.values(), scheme.four_bit()));
        let q = match scheme {
            Scheme::Int8Blockwise => {
                let scales = GpuTensor::zeros(ctx, &[numel.div_ceil(blocksize as u64) as usize], DType::F32, 1)?;
                let codes = GpuTensor::zeros(ctx, &[numel as usize], DType::U8, 1)?;
                ctx.scoped(|| {
                    let mut encoder = ctx.encoder();
                    let step = Step { ctx, consts: &consts, group: blocksize as u64, numel };
                    step.absmax(&mut encoder, table, &scales, PRE_NONE);
                    step.encode(&mut encoder, table, &scales, &codes, SCHEME_MAP, PRE_NONE, 1);
                    ctx.submit(encoder)
                })?;
                (codes, scales, None)
            }
            Scheme::Int8Rowwise => {
                let scales = GpuTensor::zeros(ctx, &[v], DType::F32, 1)?;
                let codes = GpuTensor::zeros(ctx, &[numel as usize], DType::U8, 1)?;
                ctx.scoped(|| {
                    let mut encoder = ctx.encoder();
                    let step = Step { ctx, consts: &consts, group: d as u64, numel };
                    step.absmax(&mut encoder, table, &scales, PRE_F16);
                    step.encode(&mut encoder, table, &scales, &codes, SCHEME_ROWWISE, PRE_F16, 1);
                    step.finish_scales(&mut encoder, &scales, SCHEME_ROWWISE);
                    ctx.submit(encoder)
                })?;
                (codes, scales, None)
            }
            Scheme::Nf4 | Scheme::Fp4 => {
                let blocks = numel.div_ceil(blocksize as u64);
                let absmax = GpuTensor::zeros(ctx, &[blocks as usize], DType::F32, 1)?;
                let codes = GpuTensor::zeros(ctx, &[numel.div_ceil(2) as usize], DType::U8, 1)?;
                let nested = GpuTensor::zeros(ctx, &[blocks as usize], DType::U8, 1)?;
                let scales2 = GpuTensor::zeros(ctx, &[blocks.div_ceil(NESTED_BLOCKSIZE) as usize], DType::F32, 1)?;
                let built = ctx.scoped(|| {
                    let mut encoder = ctx.encoder();
                    let step = Step { ctx, consts: &consts, group: blocksize as u64, numel };
                    step.absmax(&mut encoder, table, &absmax, PRE_NONE);
                    step.encode(&mut encoder, table, &absmax, &codes, SCHEME_4BIT, PRE_NONE, 2);
                    step.finish_scales(&mut encoder, &absmax, SCHEME_4BIT);
                    // compress_statistics: quantize_blockwise(absmax - absmax.mean(), blocksize=256).
                    let nested_step = Step { ctx, consts: &consts, group: NESTED_BLOCKSIZE, numel: blocks };
                    nested_step.mean(&mut encoder, &absmax);
                    nested_step.absmax(&mut encoder, &absmax, &scales2, PRE_OFFSET);
                    nested_step.encode(&mut encoder, &absmax, &scales2, &nested, SCHEME_MAP, PRE_OFFSET, 1);
                    ctx.submit(encoder)
                });
                absmax.release();
                built?;
                (codes, nested, Some(scales2))
            }
        };
        let (codes, scales, scales2) = q;
        Ok(Self { scheme, blocksize, num_embeddings: v, embedding_dim: d, codes, scales, scales2, consts })
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
        self.codes.gpu_bytes() + self.scales.gpu_bytes() + self.scales2.as_ref().map_or(0, |s| s.gpu_bytes()) + self.consts.size()
    }

    /// Bytes the same table takes as f32.
    pub fn f32_bytes(&self) -> u64 {
        (self.num_embeddings * self.embedding_dim * 4) as u64
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

    fn group(&self) -> u32 {
        match self.scheme {
            Scheme::Int8Rowwise => self.embedding_dim as u32,
            _ => self.blocksize as u32,
        }
    }

    fn numel(&self) -> u64 {
        (self.num_embeddings * self.embedding_dim) as u64
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct TableParams {
    rows: u32,
    dim: u32,
    lo: u32,
    hi: u32,
    codes_first: u32,
    scales_first: u32,
    scales2_first: u32,
    group: u32,
    index_first: u32,
    index_count: u32,
    stride: u32,
    padding_idx: u32,
    mode: u32,
    first_pass: u32,
    last_pass: u32,
    count_pass: u32,
}

fn dummy(ctx: &Context) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("unused"),
        size: 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    })
}

/// An `Embedding8bit` / `Embedding4bit`-style lookup over a quantized table.
#[derive(Debug, Clone)]
pub struct QuantizedEmbedding {
    table: QuantizedTable,
}

impl QuantizedEmbedding {
    /// Quantizes `weight` (`[num_embeddings, embedding_dim]`, row-major) on the GPU.
    pub fn from_pretrained(
        ctx: &Context,
        weight: &[f32],
        num_embeddings: usize,
        embedding_dim: usize,
        scheme: Scheme,
        blocksize: Option<usize>,
    ) -> Result<Self> {
        Ok(Self { table: QuantizedTable::from_pretrained(ctx, weight, num_embeddings, embedding_dim, scheme, blocksize)? })
    }

    /// Looks up in a table quantized before.
    pub fn new(table: QuantizedTable) -> Self {
        Self { table }
    }

    /// The quantized table.
    pub fn table(&self) -> &QuantizedTable {
        &self.table
    }

    /// Bytes of the table on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.table.gpu_bytes()
    }

    /// Looks up host indices of any shape; the result (f32) has shape `[*indices, D]`.
    pub fn forward(&self, ctx: &Context, indices: Indices<'_>) -> Result<GpuTensor> {
        let d = self.table.embedding_dim;
        let rows = indices.to_rows("indices", self.table.num_embeddings as u64)?;
        let per = GpuTensor::rows_per_segment(ctx, d, DType::F32)?;
        let idx = GpuTensor::from_bytes_with(ctx, bytemuck::cast_slice(&rows), &[rows.len()], DType::I32, 1, per)?;
        self.run(ctx, &idx, indices.shape)
    }

    /// Looks up indices already on the GPU (a flat-rowed I32 tensor of any shape). A check
    /// kernel bounds-checks them first: the first bad one is reported as
    /// [`Error::IndexOutOfRange`](crate::Error::IndexOutOfRange) and nothing is looked up.
    pub fn forward_gpu(&self, ctx: &Context, indices: &GpuTensor) -> Result<GpuTensor> {
        crate::status::check_gpu_indices(ctx, "indices", indices, self.table.num_embeddings as u64)?;
        let idx = indices.resegment(ctx, GpuTensor::rows_per_segment(ctx, self.table.embedding_dim, DType::F32)?)?;
        self.run(ctx, &idx, indices.shape())
    }

    /// Looks up checked indices `idx`, segmented like the output's rows.
    fn run(&self, ctx: &Context, idx: &GpuTensor, index_shape: &[usize]) -> Result<GpuTensor> {
        let t = &self.table;
        let d = t.embedding_dim;
        let per = GpuTensor::rows_per_segment(ctx, d, DType::F32)?;
        let mut shape = index_shape.to_vec();
        shape.push(d);
        let out = GpuTensor::zeros_with(ctx, &shape, DType::F32, d, per)?;
        let planes = t.planes();
        let scheme = [("SCHEME", t.scheme.kernel_scheme() as f64)];
        ctx.scoped(|| {
            let no_scales2 = dummy(ctx);
            let mut encoder = ctx.encoder();
            for (iseg, oseg) in idx.segments().iter().zip(out.segments()) {
                for piece in pieces(t.numel(), &planes) {
                    let (c, s) = (piece.segment(&planes, 0), piece.segment(&planes, 1));
                    let s2 = (planes.len() > 2).then(|| piece.segment(&planes, 2));
                    let params = TableParams {
                        rows: oseg.rows as u32,
                        dim: d as u32,
                        lo: piece.lo as u32,
                        hi: piece.hi as u32,
                        codes_first: c.first_row as u32,
                        scales_first: s.first_row as u32,
                        scales2_first: s2.map_or(0, |s| s.first_row as u32),
                        group: t.group(),
                        stride: 1,
                        ..Default::default()
                    };
                    let uniform = ctx.uniform(&params);
                    ctx.dispatch(
                        &mut encoder,
                        &LOOKUP,
                        &scheme,
                        &[
                            uniform.as_entire_binding(),
                            t.consts.as_entire_binding(),
                            c.binding(),
                            s.binding(),
                            s2.map_or(no_scales2.as_entire_binding(), |s| s.binding()),
                            iseg.binding(),
                            oseg.binding(),
                        ],
                        oseg.rows * d as u64,
                    );
                }
            }
            ctx.submit(encoder)
        })?;
        Ok(out)
    }
}

/// `F.embedding_bag` (sum, mean, max) over a quantized table.
#[derive(Debug, Clone)]
pub struct QuantizedEmbeddingBag {
    table: QuantizedTable,
    mode: BagMode,
    padding_idx: Option<u32>,
    include_last_offset: bool,
}

impl QuantizedEmbeddingBag {
    /// Quantizes `weight` (`[num_embeddings, embedding_dim]`, row-major) on the GPU.
    pub fn from_pretrained(
        ctx: &Context,
        weight: &[f32],
        num_embeddings: usize,
        embedding_dim: usize,
        scheme: Scheme,
        blocksize: Option<usize>,
        mode: BagMode,
    ) -> Result<Self> {
        Ok(Self::new(QuantizedTable::from_pretrained(ctx, weight, num_embeddings, embedding_dim, scheme, blocksize)?, mode))
    }

    /// Reduces bags over a table quantized before.
    pub fn new(table: QuantizedTable, mode: BagMode) -> Self {
        Self { table, mode, padding_idx: None, include_last_offset: false }
    }

    /// Rows equal to `padding_idx` are left out of sums, means (and their counts) and maxima.
    pub fn with_padding_idx(mut self, padding_idx: Option<i64>) -> Result<Self> {
        self.padding_idx = normalize_padding_idx(padding_idx, self.table.num_embeddings)?;
        Ok(self)
    }

    /// With `true`, `offsets` has one more entry than there are bags: the end of the last.
    pub fn with_include_last_offset(mut self, include_last_offset: bool) -> Self {
        self.include_last_offset = include_last_offset;
        self
    }

    /// The quantized table.
    pub fn table(&self) -> &QuantizedTable {
        &self.table
    }

    /// Bytes of the table on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.table.gpu_bytes()
    }

    /// Reduces bags: 1-D `input` with `offsets`, or 2-D `input` `[B, N]` without;
    /// `per_sample_weights` (values and shape, as `input`) only with sum. Returns `[B, D]`.
    pub fn forward(
        &self,
        ctx: &Context,
        input: Indices<'_>,
        offsets: Option<Indices<'_>>,
        per_sample_weights: Option<(&[f32], &[usize])>,
    ) -> Result<GpuTensor> {
        let t = &self.table;
        let d = t.embedding_dim;
        let plan = plan_bags(input, offsets, per_sample_weights, self.mode, self.include_last_offset, t.num_embeddings)?;
        let n = plan.rows.len();
        // Index entries: the row, then (with weights) the weight's bits, so one binding holds both.
        let (entries, stride) = match &plan.weights {
            Some(w) => {
                let pairs: Vec<i32> = plan.rows.iter().zip(w).flat_map(|(&r, &w)| [r, w.to_bits() as i32]).collect();
                (GpuTensor::from_bytes(ctx, bytemuck::cast_slice(&pairs), &[n, 2], DType::I32, 2)?, 2u32)
            }
            None => (GpuTensor::from_bytes(ctx, bytemuck::cast_slice(&plan.rows), &[n], DType::I32, 1)?, 1u32),
        };
        let bags = plan.bounds.len() - 1;
        let out = GpuTensor::zeros_with(ctx, &[bags, d], DType::F32, d, bags_per_segment(ctx, d)?)?;
        let planes = t.planes();
        let table_pieces = pieces(t.numel(), &planes);
        let scheme = [("SCHEME", t.scheme.kernel_scheme() as f64)];
        ctx.scoped(|| {
            let no_scales2 = dummy(ctx);
            let mut encoder = ctx.encoder();
            for oseg in out.segments() {
                let b0 = oseg.first_row as usize;
                let bounds = &plan.bounds[b0..=b0 + oseg.rows as usize];
                let offsets = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("offsets"),
                    contents: bytemuck::cast_slice(bounds),
                    usage: wgpu::BufferUsages::STORAGE,
                });
                let (span_lo, span_hi) = (bounds[0] as u64, bounds[bounds.len() - 1] as u64);
                let mut iseg: Vec<_> = entries
                    .segments()
                    .iter()
                    .filter(|s| s.first_row < span_hi && s.first_row + s.rows > span_lo)
                    .collect();
                if iseg.is_empty() {
                    // Every bag here is empty: one dispatch still writes their values.
                    iseg.push(&entries.segments()[0]);
                }
                let passes = iseg.len() * table_pieces.len();
                let counts = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("bag-counts"),
                    size: (oseg.rows * 4).max(16),
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                });
                let mut pass = 0;
                for is in &iseg {
                    for (k, piece) in table_pieces.iter().enumerate() {
                        let (c, s) = (piece.segment(&planes, 0), piece.segment(&planes, 1));
                        let s2 = (planes.len() > 2).then(|| piece.segment(&planes, 2));
                        let params = TableParams {
                            rows: oseg.rows as u32,
                            dim: d as u32,
                            lo: piece.lo as u32,
                            hi: piece.hi as u32,
                            codes_first: c.first_row as u32,
                            scales_first: s.first_row as u32,
                            scales2_first: s2.map_or(0, |s| s.first_row as u32),
                            group: t.group(),
                            index_first: is.first_row as u32,
                            index_count: is.rows as u32,
                            stride,
                            padding_idx: self.padding_idx.unwrap_or(u32::MAX),
                            mode: self.mode.code(),
                            first_pass: (pass == 0) as u32,
                            last_pass: (passes == 1) as u32,
                            count_pass: (k == 0) as u32,
                        };
                        let uniform = ctx.uniform(&params);
                        ctx.dispatch(
                            &mut encoder,
                            &BAG,
                            &scheme,
                            &[
                                uniform.as_entire_binding(),
                                t.consts.as_entire_binding(),
                                c.binding(),
                                s.binding(),
                                s2.map_or(no_scales2.as_entire_binding(), |s| s.binding()),
                                is.binding(),
                                offsets.as_entire_binding(),
                                oseg.binding(),
                                counts.as_entire_binding(),
                            ],
                            oseg.rows * d as u64,
                        );
                        pass += 1;
                    }
                }
                if passes > 1 {
                    let params = TableParams { rows: oseg.rows as u32, dim: d as u32, mode: self.mode.code(), ..Default::default() };
                    let uniform = ctx.uniform(&params);
                    ctx.dispatch(
                        &mut encoder,
                        &FINALIZE,
                        &scheme,
                        &[uniform.as_entire_binding(), counts.as_entire_binding(), oseg.binding()],
                        oseg.rows * d as u64,
                    );
                }
            }
            ctx.submit(encoder)
        })?;
        Ok(out)
    }
}
