//! `torch.nn.Embedding` forward on the GPU: lookup, padding_idx, and max-norm
//! renormalisation of the referenced rows in place.

use crate::context::{Context, Kernel, Slot, WORKGROUP_SIZE};
use crate::error::{Error, Result};
use crate::indices::{normalize_padding_idx, Indices};
use crate::table_texture::{refresh_table_texture, row_sources, table_texture, texture_binding, TableTexture};
use crate::tensor::{DType, GpuTensor};

const SOURCE: &str = include_str!("../shaders/embedding.wgsl");

/// The vectorised lookup's slots; the scalar one has all but the last (the texture).
const LOOKUP_VEC4_SLOTS: [Slot; 6] = [Slot::Uniform, Slot::Read, Slot::Read, Slot::ReadWrite, Slot::ReadWrite, Slot::Texture];

pub(crate) const LOOKUP: Kernel =
    Kernel { family: "embedding", source: SOURCE, entry: "lookup", slots: LOOKUP_VEC4_SLOTS.split_at(5).0 };

pub(crate) const LOOKUP_VEC4: Kernel = Kernel { entry: "lookup_vec4", slots: &LOOKUP_VEC4_SLOTS, ..LOOKUP };

pub(crate) const RENORM: Kernel = Kernel {
    family: "embedding",
    source: SOURCE,
    entry: "renorm",
    slots: &[Slot::Uniform, Slot::ReadWrite, Slot::Read, Slot::ReadWrite],
};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LookupParams {
    rows: u32,
    dim: u32,
    table_first_row: u32,
    table_rows: u32,
    num_embeddings: u32,
    report_bad: u32,
    index_base: u32,
    tex_width_shift: u32,
    tex_layer_shift: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RenormParams {
    count: u32,
    dim: u32,
    table_first_row: u32,
    table_rows: u32,
    num_embeddings: u32,
    max_norm: f32,
    norm_type: f32,
    _pad: u32,
}

/// Max-norm settings shared by `Embedding` and `EmbeddingBag`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxNorm {
    /// Rows whose norm exceeds this are scaled down to it.
    pub max_norm: f32,
    /// p of the p-norm (2 by default; `f32::INFINITY` for the max norm).
    pub norm_type: f32,
}

impl MaxNorm {
    pub(crate) fn validate(&self) -> Result<()> {
        if !self.max_norm.is_finite() || self.max_norm < 0.0 {
            return Err(Error::arg("max_norm", format!("expected a finite value >= 0, got {}", self.max_norm)));
        }
        if self.norm_type.is_nan() || self.norm_type < 0.0 {
            return Err(Error::arg("norm_type", format!("expected p >= 0 or inf, got {}", self.norm_type)));
        }
        Ok(())
    }
}

/// A lookup table on the GPU with PyTorch's `nn.Embedding` semantics.
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: GpuTensor,
    num_embeddings: usize,
    embedding_dim: usize,
    padding_idx: Option<u32>,
    max_norm: Option<MaxNorm>,
}

impl Embedding {
    /// Builds the layer from a row-major `[num_embeddings, embedding_dim]` table, like
    /// `nn.Embedding.from_pretrained(weight, freeze=True)`.
    pub fn from_pretrained(ctx: &Context, weight: &[f32], num_embeddings: usize, embedding_dim: usize) -> Result<Self> {
        check_table(weight.len(), num_embeddings, embedding_dim)?;
        let weight = GpuTensor::from_f32(ctx, weight, &[num_embeddings, embedding_dim])?;
        Ok(Self { weight, num_embeddings, embedding_dim, padding_idx: None, max_norm: None })
    }

    /// Builds the layer over a table already on the GPU: `[V, D]` of F32, or of F16 / BF16
    /// (see [`GpuTensor::from_f16`]; read as f32, output f32, no `shader-f16` needed).
    pub fn from_tensor(weight: GpuTensor) -> Result<Self> {
        let (v, d) = table_shape(&weight)?;
        Ok(Self { weight, num_embeddings: v, embedding_dim: d, padding_idx: None, max_norm: None })
    }

    /// Sets `padding_idx` (negative counts from the end, as in PyTorch). The forward
    /// returns the stored row for it, as PyTorch does; it only matters for gradients
    /// and for the bags, which skip it.
    pub fn with_padding_idx(mut self, padding_idx: Option<i64>) -> Result<Self> {
        self.padding_idx = normalize_padding_idx(padding_idx, self.num_embeddings)?;
        Ok(self)
    }

    /// Sets `max_norm` and `norm_type`: each forward first renormalises, in place on the
    /// GPU, every table row it references whose norm exceeds `max_norm`.
    pub fn with_max_norm(mut self, max_norm: Option<f32>, norm_type: f32) -> Result<Self> {
        self.max_norm = match max_norm {
            None => None,
            Some(m) => {
                let mn = MaxNorm { max_norm: m, norm_type };
                mn.validate()?;
                check_renormalizable(&self.weight)?;
                Some(mn)
            }
        };
        Ok(self)
    }

    /// The table (after any renormalisation so far).
    pub fn weight(&self) -> &GpuTensor {
        &self.weight
    }

    /// Rows in the table.
    pub fn num_embeddings(&self) -> usize {
        self.num_embeddings
    }

    /// Columns of the table.
    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// The normalised padding index.
    pub fn padding_idx(&self) -> Option<u32> {
        self.padding_idx
    }

    /// Looks up host indices of any shape; the result has shape `[*indices, D]`.
    pub fn forward(&self, ctx: &Context, indices: Indices<'_>) -> Result<GpuTensor> {
        let rows = indices.to_rows("indices", self.num_embeddings as u64)?;
        let per = self.batch_rows(ctx)?;
        let idx = GpuTensor::from_bytes_with(ctx, bytemuck::cast_slice(&rows), &[rows.len()], DType::I32, 1, per)?;
        let mut shape = indices.shape.to_vec();
        shape.push(self.embedding_dim);
        self.run(ctx, &idx, &shape, Some(&rows))
    }

    /// Looks up indices that already live on the GPU (an i32 tensor). A check kernel
    /// bounds-checks them first: the first bad one is reported as
    /// [`Error::IndexOutOfRange`] and nothing (not the max-norm table) is written.
    pub fn forward_gpu(&self, ctx: &Context, indices: &GpuTensor) -> Result<GpuTensor> {
        crate::status::check_gpu_indices(ctx, "indices", indices, self.num_embeddings as u64)?;
        let idx = indices.resegment(ctx, self.batch_rows(ctx)?)?;
        let mut shape = indices.shape().to_vec();
        shape.push(self.embedding_dim);
        // The lookup kernel still refuses to read out of range (its status goes unread).
        self.run(ctx, &idx, &shape, None)
    }

    /// Indices per output segment: an output segment of that many rows fits one binding.
    fn batch_rows(&self, ctx: &Context) -> Result<u64> {
        GpuTensor::rows_per_segment(ctx, self.embedding_dim, DType::F32)
    }

    /// `host_rows`: the indices as checked on the host, when they came from the host.
    fn run(&self, ctx: &Context, idx: &GpuTensor, shape: &[usize], host_rows: Option<&[i32]>) -> Result<GpuTensor> {
        let per = self.batch_rows(ctx)?;
        let out = GpuTensor::zeros_with(ctx, shape, DType::F32, self.embedding_dim, per)?;
        let status = crate::status::Status::new(ctx);
        ctx.scoped(|| {
            let mut encoder = ctx.encoder();
            if let Some(mn) = self.max_norm {
                renormalize(ctx, &mut encoder, &self.weight, idx, mn)?;
            }
            lookup_into(ctx, &mut encoder, &self.weight, idx, &out, status.buffer(), host_rows)?;
            ctx.submit(encoder)
        })?;
        // Host indices were checked before upload and GPU-resident ones by the check
        // kernel, so the lookup's own status report is not read.
        Ok(out)
    }
}

/// Records lookups of `idx` (segmented like `out`'s rows) into `out`. With
/// `host_rows` (the same indices, already checked on the host), a table segment that
/// no index of an output segment refers to gets no dispatch for it: a split table then
/// costs dispatches in proportion to the segments actually used, not to
/// output segments × table segments.
pub(crate) fn lookup_into(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    table: &GpuTensor,
    idx: &GpuTensor,
    out: &GpuTensor,
    status: &wgpu::Buffer,
    host_rows: Option<&[i32]>,
) -> Result<()> {
    let (v, d) = table_shape(table)?;
    let format = table_format(table.dtype())?;
    let lanes = vec4_lanes(ctx, table.dtype(), d, None);
    // With a texture copy, the vectorised kernel reads every row from it in one pass.
    let texture = lanes.and_then(|_| table_texture(ctx, table));
    let sources = row_sources(table, texture.as_deref());
    let (tex_width_shift, tex_layer_shift) = TableTexture::shifts(texture.as_deref());
    for (idx_seg, out_seg) in idx.segments().iter().zip(out.segments()) {
        let used: Option<Vec<bool>> = host_rows.filter(|_| sources.len() > 1).map(|rows| {
            let mut used = vec![false; sources.len()];
            for &r in &rows[idx_seg.first_row as usize..(idx_seg.first_row + idx_seg.rows) as usize] {
                // Sources hold consecutive rows in order: the last one starting at or before `r`.
                let t = sources.partition_point(|s| s.first_row <= r as u64).saturating_sub(1);
                used[t] = true;
            }
            used
        });
        for (t, src) in sources.iter().enumerate() {
            if used.as_ref().is_some_and(|u| !u[t]) {
                continue;
            }
            let params = LookupParams {
                rows: out_seg.rows as u32,
                dim: d as u32,
                table_first_row: src.first_row as u32,
                table_rows: src.rows as u32,
                num_embeddings: v as u32,
                report_bad: (t == 0) as u32,
                index_base: idx_seg.first_row as u32,
                tex_width_shift,
                tex_layer_shift,
                _pad: [0; 2],
            };
            let uniform = ctx.uniform(&params);
            let bindings =
                [uniform.as_entire_binding(), src.buffer_binding(ctx), idx_seg.binding(), out_seg.binding(), status.as_entire_binding()];
            match lanes {
                Some(lanes) => {
                    let bindings: Vec<_> = bindings.into_iter().chain([texture_binding(ctx, texture.as_deref())]).collect();
                    let constants = [("TABLE_FORMAT", format), ("LANES", lanes as f64), ("TABLE_TEXTURE", texture.is_some() as u32 as f64)];
                    ctx.dispatch_groups(encoder, &LOOKUP_VEC4, &constants, &bindings, out_seg.rows.div_ceil((WORKGROUP_SIZE / lanes) as u64))
                }
                None => ctx.dispatch(encoder, &LOOKUP, &[("TABLE_FORMAT", format)], &bindings, out_seg.rows * d as u64),
            }
        }
    }
    Ok(())
}

/// Records `embedding_renorm_`: every row referenced by `idx` whose norm exceeds
/// `max_norm` is scaled by `max_norm / (norm + 1e-7)`, once per row.
pub(crate) fn renormalize(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    table: &GpuTensor,
    idx: &GpuTensor,
    mn: MaxNorm,
) -> Result<()> {
    let (v, d) = table_shape(table)?;
    check_renormalizable(table)?;
    // A texture copy that lookups will read is made (and its copy submitted) now, before
    // this encoder's rewrite; the rewrite is then copied over at the end.
    if vec4_lanes(ctx, table.dtype(), d, None).is_some() {
        table_texture(ctx, table);
    }
    let max_rows = table.segments().iter().map(|s| s.rows).max().unwrap_or(0);
    let claimed = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("renorm-claimed"),
        size: (max_rows.div_ceil(32) * 4).max(16),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    for tseg in table.segments() {
        // Cleared once per table segment, so a row referenced from several index
        // segments is still scaled only once.
        encoder.clear_buffer(&claimed, 0, None);
        for iseg in idx.segments() {
            let params = RenormParams {
                count: iseg.rows as u32,
                dim: d as u32,
                table_first_row: tseg.first_row as u32,
                table_rows: tseg.rows as u32,
                num_embeddings: v as u32,
                max_norm: mn.max_norm,
                norm_type: mn.norm_type,
                _pad: 0,
            };
            let uniform = ctx.uniform(&params);
            ctx.dispatch(
                encoder,
                &RENORM,
                &[],
                &[uniform.as_entire_binding(), tseg.binding(), iseg.binding(), claimed.as_entire_binding()],
                iseg.rows,
            );
        }
    }
    refresh_table_texture(encoder, table);
    Ok(())
}

pub(crate) fn check_table(len: usize, rows: usize, dim: usize) -> Result<()> {
    if dim == 0 {
        return Err(Error::arg("embedding_dim", "expected a positive embedding_dim, got 0"));
    }
    if rows as u64 >= i32::MAX as u64 {
        return Err(Error::arg("num_embeddings", format!("{rows} rows is more than i32 indices can address")));
    }
    if rows.checked_mul(dim) != Some(len) {
        return Err(Error::arg("weight", format!("expected {rows} x {dim} = {} values, got {len}", rows.saturating_mul(dim))));
    }
    Ok(())
}

pub(crate) fn table_shape(t: &GpuTensor) -> Result<(usize, usize)> {
    match t.shape() {
        [v, d] if matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) && *d > 0 && t.row_len() == *d => Ok((*v, *d)),
        s => Err(Error::arg(
            "weight",
            format!("expected a 2-D F32, F16 or BF16 table [num_embeddings, embedding_dim], got {s:?} of {:?}", t.dtype()),
        )),
    }
}

/// Invocations per row (or bag) of the vectorised kernels, when the table's rows are whole
/// vec4 words; `None`: use the scalar kernels. On GPUs: enough lanes to cover a row's
/// words in one sweep (coalesced loads), a power of two so that a workgroup holds whole
/// rows, at most a workgroup. On CPU adapters (lavapipe, SwiftShader), where each
/// invocation is a SIMD lane and loads are per lane anyway, as few invocations per row
/// as possible move the most bytes per instruction (measured with `examples/bench.rs`):
/// one per row for lookups, and for bags (`words_per_sweep` = Some(CHUNK)) enough that
/// each invocation sweeps its bag's indices once; lavapipe stops any loop after 65 535
/// iterations per invocation, so a bag must not be walked several times.
pub(crate) fn vec4_lanes(ctx: &Context, dtype: DType, dim: usize, words_per_sweep: Option<u32>) -> Option<u32> {
    let words = match dtype {
        DType::F32 if dim % 4 == 0 => dim / 4,
        DType::F16 | DType::BF16 if dim % 8 == 0 => dim / 8,
        _ => return None,
    } as u32;
    if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu {
        return Some(words_per_sweep.map_or(1, |c| words.div_ceil(c).next_power_of_two().min(WORKGROUP_SIZE)));
    }
    Some(words.next_power_of_two().min(WORKGROUP_SIZE))
}

/// The shaders' `TABLE_FORMAT` override for a table's element type (see `embedding.wgsl`).
pub(crate) fn table_format(dtype: DType) -> Result<f64> {
    match dtype {
        DType::F32 => Ok(0.0),
        DType::F16 => Ok(1.0),
        DType::BF16 => Ok(2.0),
        other => Err(Error::arg("weight", format!("expected an F32, F16 or BF16 table, got {other:?}"))),
    }
}

/// `max_norm` rewrites table rows in place, which the packed half formats do not support.
pub(crate) fn check_renormalizable(table: &GpuTensor) -> Result<()> {
    if table.dtype() != DType::F32 {
        return Err(Error::arg(
            "max_norm",
            format!("max_norm renormalises the table in place and needs an F32 table, got a {:?} table", table.dtype()),
        ));
    }
    Ok(())
}
