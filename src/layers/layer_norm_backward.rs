//! Backward of `LayerNorm`, and through it of `StableEmbedding` and BERT's embedding
//! block (`EmbeddingSumLayerNorm`) into their tables: gradients of x, gamma and beta,
//! and of each table. Shader family: `layer_norm_backward.wgsl`; the tables' gradients
//! are the Embedding backward's (`embedding_backward.rs`) of the rows' input gradients.
//! Column sums (gamma, beta) go through chunk partials in a fixed order: two runs give
//! identical bits.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernel::binding::{INPUT, OUT, PARAMS};
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::{record_flat, rows_per_segment, Call, Grid, PassParams, RowPlan};
use crate::gpu::recording::Recording;
use crate::gpu::table::TableAccess;
use crate::gpu::tensor::{DType, GpuTensor};
use crate::layers::embedding_backward::{check_grad, table_gradient, Flat, GradOptions, Gradient, Scatter, Sources};
use crate::layers::indices::Indices;
use crate::layers::layer_norm::{Affine, LayerNorm, ACCUMULATE};
use crate::layers::stable_embedding::StableEmbedding;
use crate::layers::sum_layer_norm::EmbeddingSumLayerNorm;
use crate::layers::table::table_format;

pub(crate) static FAMILY: ShaderFamily = ShaderFamily {
    name: "layer_norm_backward",
    parts: &[common::GRID, common::PASS, include_str!("../../shaders/layer_norm_backward.wgsl")],
};

const GRAD: (u32, Slot, Role) = (9, Slot::Read, Role::Aux(0));
const AFFINE: (u32, Slot, Role) = (5, Slot::Read, Role::Extra(0));
const ROW_STATS: Kernel = Kernel::new(&FAMILY, "row_stats", &[PARAMS, INPUT, OUT]);
const INPUT_GRADS: Kernel = Kernel::new(&FAMILY, "input_grads", &[PARAMS, INPUT, GRAD, OUT, AFFINE]);
const COLUMN_PARTIALS: Kernel = Kernel::new(&FAMILY, "column_partials", &[PARAMS, INPUT, GRAD, (10, Slot::ReadWrite, Role::Extra(0))]);
const COLUMN_SUMS: Kernel = Kernel::new(&FAMILY, "column_sums", &[PARAMS, OUT, (10, Slot::Read, Role::Extra(0))]);

/// Gradients of a LayerNorm.
#[derive(Debug, Clone)]
pub struct LayerNormGrads {
    /// Shaped like the input.
    pub x: GpuTensor,
    /// `[dim]`, when the layer has gamma.
    pub gamma: Option<GpuTensor>,
    /// `[dim]`, when the layer has beta.
    pub beta: Option<GpuTensor>,
}

/// Gradients of `EmbeddingSumLayerNorm` (and `StableEmbedding`, K = 1).
#[derive(Debug, Clone)]
pub struct SumLayerNormGrads {
    /// Dense, one per table (`[rows_k, dim]`).
    pub tables: Vec<GpuTensor>,
    /// `[dim]`, when the block has gamma.
    pub gamma: Option<GpuTensor>,
    /// `[dim]`, when the block has beta.
    pub beta: Option<GpuTensor>,
}

/// Rows per segment of the backward's row tensors: x and the gradients (rows of
/// `dim`), the shifted rows (`dim + 2`) and indices (`k` per row) pair up.
fn backward_rows_per_segment(ctx: &Context, dim: usize, k: usize) -> Result<u64> {
    rows_per_segment(ctx, &[(dim + 2, DType::F32), (k.max(1), DType::I32)])
}

/// Records the LayerNorm backward of `x` with output gradient `grad` (both rows of
/// `dim`, segmented by `per`): returns grad_x and `[2 dim]` (grad_gamma, grad_beta).
fn record_backward(
    ctx: &Context,
    encoder: &mut Recording<'_>,
    x: &GpuTensor,
    grad: &GpuTensor,
    affine: &Affine,
    eps: f32,
    per: u64,
) -> Result<(GpuTensor, GpuTensor)> {
    let dim = x.row_len();
    let rows = x.rows();
    let shifted = GpuTensor::zeros_with(ctx, &[rows as usize, dim + 2], DType::F32, dim + 2, per)?;
    let grad_x = GpuTensor::zeros_with(ctx, x.shape(), DType::F32, dim, per)?;
    // Chunks of rows for the column sums: at most ~4096 partial rows in all.
    let chunk = 16u64.max(rows.div_ceil(4096)).min(per);
    let slots = (rows.div_ceil(per)) * per.div_ceil(chunk);
    let partials = crate::gpu::context::words(ctx, "ln-partials", slots * 2 * dim as u64);
    // Bound whole, against the device's own limit, as the forward's gamma and beta are.
    let gamma_beta = GpuTensor::zeros_with(ctx, &[2 * dim], DType::F32, 1, 2 * dim as u64)?;
    let params = PassParams {
        dim: dim as u32,
        arg0: eps.to_bits(),
        arg1: affine.flags(),
        arg2: per as u32,
        arg3: chunk as u32,
        ..Default::default()
    };
    RowPlan { input: Some(x), aux: None, out: Some(&shifted), table: None, status: None }.record(
        ctx,
        encoder,
        &Call::new(&ROW_STATS, &[], Grid::Elements(1), params),
        None,
    );
    let affine_buffer = [affine.buffer().clone()];
    let call = Call { extra: &affine_buffer, ..Call::new(&INPUT_GRADS, &[], Grid::Elements(1), params) };
    RowPlan { input: Some(&shifted), aux: Some(grad), out: Some(&grad_x), table: None, status: None }.record(ctx, encoder, &call, None);
    let partial_buffer = [partials.clone()];
    let call = Call { extra: &partial_buffer, ..Call::new(&COLUMN_PARTIALS, &[], Grid::Chunks { rows: chunk, width: dim as u64 }, params) };
    RowPlan { input: Some(&shifted), aux: Some(grad), out: None, table: None, status: None }.record(ctx, encoder, &call, None);
    let p = PassParams { rows: slots as u32, ..params };
    let call = Call { extra: &partial_buffer, ..Call::new(&COLUMN_SUMS, &[], Grid::Elements(1), p) };
    record_flat(ctx, encoder, &call, None, Some(&gamma_beta.segments()[0]), 2 * dim as u64);
    Ok((grad_x, gamma_beta))
}

/// gamma and beta out of the flat `[2 dim]`, as the layer has them.
fn split_affine(ctx: &Context, encoder: &mut Recording<'_>, both: &GpuTensor, affine: &Affine) -> Result<[Option<GpuTensor>; 2]> {
    let dim = both.numel() / 2;
    let (has_gamma, has_beta) = affine.has();
    let mut rows = |lo: usize| -> Result<GpuTensor> { both.copy_rows(ctx, encoder, lo as u64, (lo + dim) as u64)?.reshape(&[dim]) };
    Ok([if has_gamma { Some(rows(0)?) } else { None }, if has_beta { Some(rows(dim)?) } else { None }])
}

impl LayerNorm {
    /// The gradients of `sum(forward(x) * grad_out)` with respect to x, gamma and beta
    /// (those the layer has), as PyTorch's autograd gives them.
    pub fn backward(&self, ctx: &Context, x: &GpuTensor, grad_out: &GpuTensor) -> Result<LayerNormGrads> {
        let dim = self.dim();
        if x.dtype() != DType::F32 || x.shape().last() != Some(&dim) {
            return Err(Error::arg(
                "input",
                format!("expected an F32 input of shape [*, {dim}], got {:?} of shape {:?}", x.dtype(), x.shape()),
            ));
        }
        check_grad(grad_out, x.shape())?;
        let per = backward_rows_per_segment(ctx, dim, 1)?;
        ctx.scoped(|| {
            let mut encoder = ctx.encoder();
            let x = x.resegment(ctx, &mut encoder, per)?;
            let g = grad_out.resegment(ctx, &mut encoder, per)?;
            let (grad_x, both) = record_backward(ctx, &mut encoder, &x, &g, self.affine(), self.eps(), per)?;
            let [gamma, beta] = split_affine(ctx, &mut encoder, &both, self.affine())?;
            ctx.submit(encoder)?;
            Ok(LayerNormGrads { x: grad_x, gamma, beta })
        })
    }
}

impl EmbeddingSumLayerNorm {
    /// The gradients of `sum(forward(indices) * grad_out)` with respect to each table
    /// (dense), gamma and beta: the LayerNorm backward of the summed rows, then each
    /// row's input gradient scattered into the tables that fed it.
    pub fn backward(&self, ctx: &Context, indices: &[Indices<'_>], grad_out: &GpuTensor) -> Result<SumLayerNormGrads> {
        sum_layer_norm_backward(ctx, self, indices, grad_out, None)
    }
}

impl StableEmbedding {
    /// The gradients of `sum(forward(indices) * grad_out)` with respect to the table
    /// (dense; `padding_idx` gets none), gamma and beta.
    pub fn backward(&self, ctx: &Context, indices: Indices<'_>, grad_out: &GpuTensor) -> Result<SumLayerNormGrads> {
        sum_layer_norm_backward(ctx, self.block(), &[indices], grad_out, self.padding_idx())
    }
}

fn sum_layer_norm_backward(
    ctx: &Context,
    block: &EmbeddingSumLayerNorm,
    indices: &[Indices<'_>],
    grad_out: &GpuTensor,
    padding_idx: Option<u32>,
) -> Result<SumLayerNormGrads> {
    let (rows, mut shape) = block.interleave(indices)?;
    let dim = block.embedding_dim();
    let k_count = block.num_tables();
    shape.push(dim);
    check_grad(grad_out, &shape)?;
    let n = rows.len() / k_count;
    let per = backward_rows_per_segment(ctx, dim, k_count)?;
    let table = block.table();
    let format = table_format(table.dtype())?;
    let (grad_x, gamma, beta) = ctx.scoped(|| {
        let mut encoder = ctx.encoder();
        let idx = GpuTensor::from_bytes_with(ctx, bytemuck::cast_slice(&rows), &[n, k_count], DType::I32, k_count, per)?;
        // The rows' sums, as the forward's split-table path makes them: table k's rows
        // added in k order.
        let x = GpuTensor::zeros_with(ctx, &shape, DType::F32, dim, per)?;
        let access = TableAccess::rows(table);
        let params = PassParams { arg2: k_count as u32, ..block.affine().params(dim, block.eps()) };
        let constants = [("TABLE_FORMAT", format)];
        for k in 0..k_count {
            let call = Call {
                grid: Grid::Elements(dim as u64),
                ..block.affine().call(&ACCUMULATE, &constants, PassParams { arg3: k as u32, ..params })
            };
            RowPlan { input: Some(&idx), aux: None, out: Some(&x), table: Some(&access), status: None }.record(
                ctx,
                &mut encoder,
                &call,
                None,
            );
        }
        let g = grad_out.resegment(ctx, &mut encoder, per)?;
        let (grad_x, both) = record_backward(ctx, &mut encoder, &x, &g, block.affine(), block.eps(), per)?;
        let [gamma, beta] = split_affine(ctx, &mut encoder, &both, block.affine())?;
        ctx.submit(encoder)?;
        Ok((grad_x, gamma, beta))
    })?;
    let total: usize = block.table_rows().iter().sum();
    let scatter = Scatter {
        rows: Flat::Host(&rows),
        sources: Sources::Positions { group: k_count as u32 },
        padding_idx,
        num_embeddings: total,
        dim,
        options: GradOptions::default(),
    };
    let Gradient::Dense(all) = pollster::block_on(table_gradient(ctx, &scatter, &grad_x, None))? else {
        return Err(Error::Device("a dense gradient was asked for".into()));
    };
    let tables = if k_count == 1 {
        vec![all]
    } else {
        ctx.scoped(|| {
            let mut encoder = ctx.encoder();
            let tables = block
                .first_rows()
                .iter()
                .zip(block.table_rows())
                .map(|(&first, &rows)| all.copy_rows(ctx, &mut encoder, first, first + rows as u64))
                .collect::<Result<Vec<_>>>()?;
            ctx.submit(encoder)?;
            Ok(tables)
        })?
    };
    Ok(SumLayerNormGrads { tables, gamma, beta })
}
