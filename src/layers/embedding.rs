//! `torch.nn.Embedding` forward on the GPU: lookup, padding_idx, and max-norm
//! renormalisation of the referenced rows in place. Shader family: `embedding.wgsl`.

use crate::error::Result;
use crate::gpu::context::{Context, WORKGROUP_SIZE};
use crate::gpu::kernel::binding::{INPUT, OUT, PARAMS, STATUS, TABLE, TEXTURE};
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::{Call, Grid, PassParams, RowPlan, UsedSlices};
use crate::gpu::recording::Recording;
use crate::gpu::status::Status;
use crate::gpu::table::{refresh_table_texture, table_texture, TableAccess, TableSlice};
use crate::gpu::tensor::{DType, GpuTensor, Segment};
use crate::layers::indices::{upload_rows, Indices};
use crate::layers::init::Draw;
use crate::layers::table::{
    check_renormalizable, dense_table_methods, table_format, table_shape, vec4_lanes, DenseTable, EmbeddingOptions, MaxNorm,
};

pub(crate) static FAMILY: ShaderFamily =
    ShaderFamily { name: "embedding", parts: &[common::GRID, common::PASS, common::TABLE, include_str!("../../shaders/embedding.wgsl")] };

const LOOKUP_BINDINGS: &[(u32, Slot, Role)] = &[PARAMS, TABLE, INPUT, OUT, TEXTURE, STATUS];
const LOOKUP: Kernel = Kernel::new(&FAMILY, "lookup", LOOKUP_BINDINGS);
const LOOKUP_VEC4: Kernel = Kernel::new(&FAMILY, "lookup_vec4", LOOKUP_BINDINGS);
/// Rewrites table rows in place; one claimed-bit buffer per table slice.
const RENORM: Kernel =
    Kernel::new(&FAMILY, "renorm", &[PARAMS, (1, Slot::ReadWrite, Role::Table(0)), INPUT, (7, Slot::ReadWrite, Role::PerSlice), STATUS]);

/// A lookup table on the GPU with PyTorch's `nn.Embedding` semantics.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: DenseTable,
    /// `bnb.nn.Embedding`'s: its optimizers keep 32-bit states for the table.
    bitsandbytes: bool,
}

impl Embedding {
    /// A fresh `[num_embeddings, embedding_dim]` table as `torch.nn.Embedding(num_embeddings,
    /// embedding_dim, padding_idx, max_norm, norm_type)` makes it: every element drawn
    /// from N(0, 1) on the GPU (seeded by `options.seed`), the padding row zeroed.
    ///
    /// ```
    /// use wgpu_embed::{Block, Context, Embedding, EmbeddingOptions, Indices};
    /// let ctx = Context::new().block()?;
    /// let emb = Embedding::new(&ctx, 1000, 16, EmbeddingOptions::default().padding_idx(0))?;
    /// let out = emb.forward(&ctx, Indices::i64(&[0, 5], &[2]))?; // [2, 16]
    /// let rows = out.read_f32(&ctx).block()?;
    /// assert!(rows[..16].iter().all(|&x| x == 0.0)); // the padding row
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for `embedding_dim` 0,
    /// a `padding_idx` outside `[-num_embeddings, num_embeddings)`, or a `max_norm` or
    /// `norm_type` that is not positive; an allocation error when the table does not fit
    /// the device.
    pub fn new(ctx: &Context, num_embeddings: usize, embedding_dim: usize, options: EmbeddingOptions) -> Result<Self> {
        let draw = Draw::Normal { mean: 0.0, std: 1.0 };
        Ok(Self { table: DenseTable::fresh(ctx, num_embeddings, embedding_dim, draw, &options)?, bitsandbytes: false })
    }

    /// Builds the layer from a row-major `[num_embeddings, embedding_dim]` table, like
    /// `nn.Embedding.from_pretrained(weight, freeze=True)`.
    pub fn from_pretrained(ctx: &Context, weight: &[f32], num_embeddings: usize, embedding_dim: usize) -> Result<Self> {
        Ok(Self { table: DenseTable::from_host(ctx, weight, num_embeddings, embedding_dim)?, bitsandbytes: false })
    }

    /// Builds the layer over a table already on the GPU: `[V, D]` of F32, or of F16 / BF16
    /// (see [`GpuTensor::from_f16`]; read as f32, output f32, no `shader-f16` needed).
    pub fn from_tensor(weight: GpuTensor) -> Result<Self> {
        Ok(Self { table: DenseTable::new(weight)?, bitsandbytes: false })
    }

    /// A fresh table as `bnb.nn.Embedding(num_embeddings, embedding_dim, padding_idx)`
    /// makes it: drawn from xavier-uniform (`bound = sqrt(6 / (num_embeddings +
    /// embedding_dim))`) on the GPU, the padding row zeroed, and marked as bitsandbytes'
    /// layer: [`Optimizer::for_layer`](crate::Optimizer::for_layer) keeps 32-bit states
    /// for it, as bitsandbytes' `register_module_override(self, "weight", {"optim_bits":
    /// 32})` does.
    ///
    /// ```
    /// use wgpu_embed::{Block, Context, Embedding, EmbeddingOptions};
    /// let ctx = Context::new().block()?;
    /// let emb = Embedding::bitsandbytes(&ctx, 1000, 16, EmbeddingOptions::default())?;
    /// assert!(emb.is_bitsandbytes());
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Embedding::new`].
    pub fn bitsandbytes(ctx: &Context, num_embeddings: usize, embedding_dim: usize, options: EmbeddingOptions) -> Result<Self> {
        let draw = Draw::xavier_uniform(num_embeddings, embedding_dim);
        Ok(Self { table: DenseTable::fresh(ctx, num_embeddings, embedding_dim, draw, &options)?, bitsandbytes: true })
    }

    /// This layer marked as `bnb.nn.Embedding` (a trained table loaded into
    /// bitsandbytes' layer): its optimizers keep 32-bit states.
    pub fn into_bitsandbytes(mut self) -> Self {
        self.bitsandbytes = true;
        self
    }

    /// Whether the layer is bitsandbytes' (`bnb.nn.Embedding`).
    pub fn is_bitsandbytes(&self) -> bool {
        self.bitsandbytes
    }

    dense_table_methods!(
        "The forward returns the stored row for it, as PyTorch does; it only matters for gradients and for the bags, which skip it."
    );

    /// Looks up host indices of any shape; the result has shape `[*indices, D]`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`](crate::Error::IndexOutOfRange) for an index outside
    /// `[0, num_embeddings)`, before any GPU work.
    pub fn forward(&self, ctx: &Context, indices: Indices<'_>) -> Result<GpuTensor> {
        ctx.run_now(|run| self.record(run, indices))
    }

    /// [`Embedding::forward`] recorded into `run`: the output is usable by later calls
    /// of the recording at once.
    ///
    /// # Errors
    /// As [`Embedding::forward`].
    pub fn record(&self, run: &mut Recording<'_>, indices: Indices<'_>) -> Result<GpuTensor> {
        let ctx = run.context();
        let rows = indices.to_rows("indices", self.table.num_embeddings as u64)?;
        let idx = upload_rows(ctx, &rows, self.batch_rows(ctx)?)?;
        self.record_rows(run, &idx, &out_shape(indices.shape, self.table.embedding_dim), Some(&rows))
    }

    /// Looks up indices that already live on the GPU (an i32 tensor of any shape; the
    /// result has shape `[*indices, D]`). A check kernel bounds-checks them in the same
    /// submission, before the max-norm rewrite: the first bad one is reported and
    /// nothing (not the max-norm table) is written. Resolves once the check is read
    /// ([`Embedding::record_gpu`] does not wait).
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`](crate::Error::IndexOutOfRange) with the first bad
    /// position and its value; [`Error::InvalidArgument`](crate::Error::InvalidArgument)
    /// for a tensor that is not I32.
    pub async fn forward_gpu(&self, ctx: &Context, indices: &GpuTensor) -> Result<GpuTensor> {
        ctx.run_checked(|run| self.record_gpu(run, indices)).await
    }

    /// [`Embedding::forward_gpu`] recorded into `run`, without waiting: a bad index
    /// comes back from the submission's [`Submitted::finish`](crate::Submitted::finish),
    /// its rows read as zeros and the max-norm rewrite is skipped.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a tensor that is not
    /// a flat I32 one, at once.
    pub fn record_gpu(&self, run: &mut Recording<'_>, indices: &GpuTensor) -> Result<GpuTensor> {
        let indices = &indices.flat_rows();
        run.check_indices("indices", indices, self.table.num_embeddings as u64)?;
        self.record_rows(run, indices, &out_shape(indices.shape(), self.table.embedding_dim), None)
    }

    /// Indices per output segment: an output segment of that many rows fits one binding.
    fn batch_rows(&self, ctx: &Context) -> Result<u64> {
        GpuTensor::rows_per_segment(ctx, self.table.embedding_dim, DType::F32)
    }

    /// `host_rows`: the indices as checked on the host, when they came from the host.
    fn record_rows(&self, run: &mut Recording<'_>, indices: &GpuTensor, shape: &[usize], host_rows: Option<&[i32]>) -> Result<GpuTensor> {
        let ctx = run.context();
        let t = &self.table;
        let per = self.batch_rows(ctx)?;
        // Every element is written: the table's row, or 0 by the pass that reports a bad index.
        let out = GpuTensor::for_overwrite_with(ctx, shape, DType::F32, t.embedding_dim, per)?;
        let status = Status::new(ctx);
        run.scoped(|run| {
            // Index segments pair with output segments.
            let idx = &indices.resegment(ctx, run, per)?;
            if let Some(mn) = t.max_norm {
                run.guarded(|run| renormalize(ctx, run, &t.weight, idx, mn))?;
            }
            record_lookup(ctx, run, &t.weight, idx, &out, &status, host_rows)
        })?;
        // Host indices were checked before upload and GPU-resident ones by the check
        // kernel, so the lookup's own status report is not read.
        Ok(out)
    }
}

/// `[*index_shape, dim]`.
pub(crate) fn out_shape(index_shape: &[usize], dim: usize) -> Vec<usize> {
    let mut shape = index_shape.to_vec();
    shape.push(dim);
    shape
}

/// Records lookups of `idx` (segmented like `out`'s rows) into `out`. With
/// `host_rows` (the same indices, already checked on the host), a table slice that no
/// index of an output segment refers to gets no dispatch: a split table then costs
/// dispatches in proportion to the slices actually used, not to output segments ×
/// table segments.
pub(crate) fn record_lookup(
    ctx: &Context,
    encoder: &mut Recording<'_>,
    table: &GpuTensor,
    idx: &GpuTensor,
    out: &GpuTensor,
    status: &Status,
    host_rows: Option<&[i32]>,
) -> Result<()> {
    let (v, d) = table_shape(table)?;
    let format = table_format(table.dtype())?;
    let lanes = vec4_lanes(ctx, table.dtype(), d, None);
    // With a texture copy, the vectorised kernel reads every row from it in one pass.
    let access = match lanes {
        Some(_) => TableAccess::rows_or_texture(encoder, table),
        None => TableAccess::rows(table),
    };
    let params = PassParams { dim: d as u32, num_embeddings: v as u32, ..Default::default() };
    let textured = access.texture().is_some() as u32 as f64;
    let constants = [("TABLE_FORMAT", format), ("LANES", lanes.unwrap_or(1) as f64), ("TABLE_TEXTURE", textured)];
    let call = match lanes {
        Some(lanes) => Call::new(&LOOKUP_VEC4, &constants, Grid::RowsPerGroup((WORKGROUP_SIZE / lanes) as u64), params),
        None => Call::new(&LOOKUP, &constants[..1], Grid::Elements(d as u64), params),
    };
    let used = |seg: &Segment, slices: &[TableSlice<'_>]| -> Vec<bool> {
        let mut used = vec![false; slices.len()];
        for &r in &host_rows.unwrap_or_default()[seg.row_range().start as usize..seg.row_range().end as usize] {
            // Slices hold consecutive rows in order: the last one starting at or before `r`.
            used[slices.partition_point(|s| s.lo <= r as u64).saturating_sub(1)] = true;
        }
        used
    };
    let plan = RowPlan { input: Some(idx), aux: None, out: Some(out), table: Some(&access), status: Some(status) };
    plan.record(ctx, encoder, &call, host_rows.map(|_| &used as &UsedSlices<'_>));
    Ok(())
}

/// Records `embedding_renorm_`: every row referenced by `idx` whose norm exceeds
/// `max_norm` is scaled by `max_norm / (norm + 1e-7)`, once per row.
pub(crate) fn renormalize(ctx: &Context, encoder: &mut Recording<'_>, table: &GpuTensor, idx: &GpuTensor, mn: MaxNorm) -> Result<()> {
    let (v, d) = table_shape(table)?;
    check_renormalizable(table)?;
    // A texture copy that lookups will read is made (and its copy submitted) now, before
    // this encoder's rewrite; the rewrite is then copied over at the end.
    if vec4_lanes(ctx, table.dtype(), d, None).is_some() {
        table_texture(encoder, table);
    }
    let access = TableAccess::rows(table);
    // One bit per row of each slice: each referenced row is scaled once.
    let claimed: Vec<wgpu::Buffer> = access
        .slices()
        .iter()
        .map(|s| {
            ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("renorm-claimed"),
                size: ((s.hi - s.lo).div_ceil(32) * 4).max(16),
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        })
        .collect();
    let params = PassParams {
        dim: d as u32,
        num_embeddings: v as u32,
        arg0: mn.max_norm.to_bits(),
        arg1: mn.norm_type.to_bits(),
        ..Default::default()
    };
    let call = Call { per_slice: &claimed, ..Call::new(&RENORM, &[], Grid::Elements(1), params) };
    RowPlan { input: Some(idx), aux: None, out: None, table: Some(&access), status: None }.record(ctx, encoder, &call, None);
    refresh_table_texture(encoder, table);
    Ok(())
}
