//! Axial position embeddings as Reformer uses them (`transformers`'
//! `AxialPositionEmbeddings`): the embedding of position `p` is
//! `weight0[p / n2] ++ weight1[p % n2]` for `axial_pos_shape = [n1, n2]`, and its
//! backward, the gradient of each axial weight summed over the positions that broadcast
//! it (the embedding backward's sort and run sums, on each half of the output gradient).

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernel::binding::{INPUT, OUT, PARAMS, TABLE};
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::{record_flat, Call, Grid, PassParams, RowPlan};
use crate::gpu::recording::Recording;
use crate::gpu::table::TableAccess;
use crate::gpu::tensor::{DType, GpuTensor};
use crate::layers::embedding::out_shape;
use crate::layers::embedding_backward::{check_grad, table_gradient, Flat, GradOptions, Gradient, Scatter, Sources};
use crate::layers::indices::{upload_rows, Indices};
use crate::optim::Optimizer;

pub(crate) static FAMILY: ShaderFamily =
    ShaderFamily { name: "axial", parts: &[common::GRID, common::PASS, common::TABLE, include_str!("../../shaders/axial.wgsl")] };

const AXIAL_PART: Kernel = Kernel::new(&FAMILY, "axial_part", &[PARAMS, TABLE, INPUT, OUT]);
const AXIAL_SPLIT: Kernel = Kernel::new(
    &FAMILY,
    "axial_split",
    &[
        PARAMS,
        INPUT,
        OUT,
        (10, Slot::Read, Role::Extra(0)),
        (11, Slot::ReadWrite, Role::Extra(1)),
        (12, Slot::ReadWrite, Role::Extra(2)),
        (13, Slot::ReadWrite, Role::Extra(3)),
    ],
);

/// The output gradient split by axis: each half's rows and each position's row of that
/// axis's weight.
struct Split {
    halves: [GpuTensor; 2],
    axis_rows: [GpuTensor; 2],
}

impl Split {
    /// What the embedding backward scatters for `axis`, in position order (`options`:
    /// dense for the gradients, sparse for a fused step, as the embedding's).
    fn scatter<'a>(&'a self, layer: &AxialPositionEmbedding, axis: usize, options: GradOptions) -> Scatter<'a> {
        Scatter {
            rows: Flat::Gpu(&self.axis_rows[axis]),
            sources: Sources::Positions { group: 1 },
            padding_idx: None,
            num_embeddings: layer.shape[axis],
            dim: layer.dims[axis],
            options,
        }
    }
}

/// Gradients of [`AxialPositionEmbedding`]'s two weights, dense.
#[derive(Debug, Clone)]
pub struct AxialGrads {
    /// `[n1, d1]`: transformers' `weights[0].grad` (`[1, n1, 1, d1]`) as rows.
    pub weight0: GpuTensor,
    /// `[n2, d2]`: `weights[1].grad` (`[1, 1, n2, d2]`) as rows.
    pub weight1: GpuTensor,
}

/// transformers' `AxialPositionEmbeddings` (Reformer): position `p` is
/// `weight0[p / n2] ++ weight1[p % n2]` for `axial_pos_shape = [n1, n2]`.
#[derive(Debug, Clone)]
pub struct AxialPositionEmbedding {
    weights: [GpuTensor; 2],
    shape: [usize; 2],
    dims: [usize; 2],
}

impl AxialPositionEmbedding {
    /// From the two trained weights: `weight0` holds `n1 × d1` values (transformers
    /// stores it as `[n1, 1, d1]`), `weight1` holds `n2 × d2` (`[1, n2, d2]`).
    ///
    /// ```
    /// use wgpu_embed::{AxialPositionEmbedding, Block, Context, Indices};
    /// let ctx = Context::new().block()?;
    /// // axial_pos_shape [2, 3]: position p is weight0[p / 3] ++ weight1[p % 3].
    /// let axial = AxialPositionEmbedding::from_pretrained(&ctx, &[10.0, 20.0], &[1.0, 2.0, 3.0], [2, 3], [1, 1])?;
    /// let out = axial.forward(&ctx, Indices::i64(&[0, 4], &[2]))?.read_f32(&ctx).block()?;
    /// assert_eq!(out, [10.0, 1.0, 20.0, 2.0]);
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty axis or
    /// weights of the wrong length.
    pub fn from_pretrained(
        ctx: &Context,
        weight0: &[f32],
        weight1: &[f32],
        axial_pos_shape: [usize; 2],
        axial_dims: [usize; 2],
    ) -> Result<Self> {
        let [n1, n2] = axial_pos_shape;
        if n1 == 0 || n2 == 0 {
            return Err(Error::arg("axial_pos_shape", format!("expected two positive factors, got {axial_pos_shape:?}")));
        }
        if (n1 as u64) * (n2 as u64) > i32::MAX as u64 {
            return Err(Error::arg("axial_pos_shape", format!("{n1} * {n2} positions is more than i32 position ids can address")));
        }
        for (k, (w, name)) in [(weight0, "weight0"), (weight1, "weight1")].into_iter().enumerate() {
            let (rows, dim) = (axial_pos_shape[k], axial_dims[k]);
            if dim == 0 {
                return Err(Error::arg("axial_pos_embds_dim", format!("expected positive dimensions, got {axial_dims:?}")));
            }
            if rows.checked_mul(dim) != Some(w.len()) {
                return Err(Error::arg(name, format!("expected {rows} x {dim} = {} values, got {}", rows.saturating_mul(dim), w.len())));
            }
        }
        let out_row = (axial_dims[0] + axial_dims[1]) as u64 * 4;
        if out_row > ctx.max_binding_size() {
            return Err(Error::arg(
                "axial_pos_embds_dim",
                format!("an output row of {out_row} bytes exceeds the device's storage binding size of {} bytes", ctx.max_binding_size()),
            ));
        }
        let weights = [GpuTensor::from_f32(ctx, weight0, &[n1, axial_dims[0]])?, GpuTensor::from_f32(ctx, weight1, &[n2, axial_dims[1]])?];
        Ok(AxialPositionEmbedding { weights, shape: axial_pos_shape, dims: axial_dims })
    }

    /// `[n1, n2]`.
    pub fn axial_pos_shape(&self) -> [usize; 2] {
        self.shape
    }

    /// `d1 + d2`, the width of each output row.
    pub fn embedding_dim(&self) -> usize {
        self.dims[0] + self.dims[1]
    }

    /// The two weights, `[n1, d1]` and `[n2, d2]`.
    pub fn weights(&self) -> [&GpuTensor; 2] {
        [&self.weights[0], &self.weights[1]]
    }

    /// Position ids checked as transformers checks them, as table rows.
    fn checked_positions(&self, position_ids: Indices<'_>) -> Result<Vec<i32>> {
        position_ids.check_shape("position_ids")?;
        let [n1, n2] = self.shape;
        let limit = (n1 * n2) as i64;
        if position_ids.shape.len() >= 2 && position_ids.shape[1] as i64 > limit {
            return Err(Error::arg(
                "position_ids",
                format!(
                    "Make sure that config.axial_pos_shape factors: {:?} multiply at least to max(sequence_length, least_common_mult_chunk_length): got sequence_length {}",
                    self.shape, position_ids.shape[1]
                ),
            ));
        }
        let mut rows = Vec::with_capacity(position_ids.data.len());
        for (position, value) in position_ids.data.iter().enumerate() {
            if value >= limit {
                return Err(Error::arg(
                    "position_ids",
                    format!("Position id exceeds axial_pos_shape[0] * axial_pos_shape[1]: got {value} at position {position}, expected a value below {n1} * {n2} = {limit}"),
                ));
            }
            if value < 0 {
                return Err(Error::IndexOutOfRange {
                    name: "position_ids",
                    position: position as u64,
                    value,
                    num_embeddings: limit as u64,
                });
            }
            rows.push(value as i32);
        }
        Ok(rows)
    }

    /// Embeddings of `position_ids` (any shape; for `[batch, sequence]` as in Reformer
    /// the sequence may not be longer than `n1 * n2`). Result: `[*position_ids, d1 + d2]`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a sequence longer than `n1 * n2` or a position id
    /// at or past it (transformers' messages); [`Error::IndexOutOfRange`] for a negative one.
    pub fn forward(&self, ctx: &Context, position_ids: Indices<'_>) -> Result<GpuTensor> {
        let rows = self.checked_positions(position_ids)?;
        let n2 = self.shape[1];
        let dim = self.embedding_dim();
        let per = GpuTensor::rows_per_segment(ctx, dim, DType::F32)?;
        let positions = upload_rows(ctx, &rows, per)?;
        let out = GpuTensor::zeros_with(ctx, &out_shape(position_ids.shape, dim), DType::F32, dim, per)?;
        let tables = [TableAccess::rows(&self.weights[0]), TableAccess::rows(&self.weights[1])];
        ctx.scoped(|| {
            let mut encoder = ctx.encoder();
            for (part, table) in tables.iter().enumerate() {
                let params = PassParams {
                    dim: self.dims[part] as u32,
                    arg0: n2 as u32,
                    arg1: part as u32,
                    arg2: dim as u32,
                    arg3: if part == 0 { 0 } else { self.dims[0] as u32 },
                    ..Default::default()
                };
                let call = Call::new(&AXIAL_PART, &[], Grid::Elements(self.dims[part] as u64), params);
                RowPlan { input: Some(&positions), aux: None, out: Some(&out), table: Some(table), status: None }.record(
                    ctx,
                    &mut encoder,
                    &call,
                    None,
                );
            }
            ctx.submit(encoder)
        })?;
        Ok(out)
    }

    /// The gradients of `sum(forward(position_ids) * grad_out)` with respect to the two
    /// weights, as transformers' `AxialPositionEmbeddings` gives them under autograd:
    /// `weight0[a]` sums the first `d1` columns of `grad_out` over every position `p`
    /// with `p / n2 == a`, `weight1[b]` the last `d2` over those with `p % n2 == b`
    /// (in training mode, where transformers takes the whole grid, `position_ids` is
    /// `arange(n1 * n2)`). `grad_out` has shape `[*position_ids, d1 + d2]`. One pass
    /// splits it into the halves and each position's two rows; each half is then summed
    /// per row as [`Embedding::backward`](crate::Embedding::backward) sums (in position
    /// order). Resolves at once.
    ///
    /// ```
    /// use wgpu_embed::{AxialPositionEmbedding, Block, Context, GpuTensor, Indices};
    /// let ctx = Context::new().block()?;
    /// let axial = AxialPositionEmbedding::from_pretrained(&ctx, &[0.0; 2], &[0.0; 3], [2, 3], [1, 1])?;
    /// // Positions 1 and 4 share weight1's row 1; 4 and 5 share weight0's row 1.
    /// let grad_out = GpuTensor::from_f32(&ctx, &[1.0, 10.0, 2.0, 20.0, 3.0, 30.0], &[3, 2])?;
    /// let grads = axial.backward(&ctx, Indices::i64(&[1, 4, 5], &[3]), &grad_out).block()?;
    /// assert_eq!(grads.weight0.read_f32(&ctx).block()?, [1.0, 5.0]);
    /// assert_eq!(grads.weight1.read_f32(&ctx).block()?, [0.0, 30.0, 30.0]);
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// What [`AxialPositionEmbedding::forward`] refuses, a `grad_out` of another shape,
    /// or [`Error::Unsupported`] for a `grad_out` over several bindings, before any GPU
    /// work.
    pub async fn backward(&self, ctx: &Context, position_ids: Indices<'_>, grad_out: &GpuTensor) -> Result<AxialGrads> {
        let rows = self.checked_positions(position_ids)?;
        check_grad(grad_out, &out_shape(position_ids.shape, self.embedding_dim()))?;
        let split = ctx.run_now(|run| self.record_split(run, &rows, grad_out))?;
        let mut grads = Vec::with_capacity(2);
        for axis in 0..2 {
            match table_gradient(ctx, &split.scatter(self, axis, GradOptions::default()), &split.halves[axis], None).await? {
                Gradient::Dense(g) => grads.push(g),
                Gradient::Sparse { .. } => unreachable!("dense options give a dense gradient"),
            }
        }
        let weight1 = grads.pop().expect("two axes");
        let weight0 = grads.pop().expect("two axes");
        Ok(AxialGrads { weight0, weight1 })
    }

    /// The backward and one step of each weight: `optimizers[k]` (made for
    /// `weights()[k]`) updates weight k in place. Optimizers that take sparse gradients
    /// (SGD, Adagrad, SparseAdam, row-wise Adagrad) step fused into the backward, as
    /// [`Optimizer::step_embedding`] does, when the weight's width is a multiple of 4:
    /// each touched row's gradient is summed in registers and the row updated at once,
    /// one submission for both. Others take the dense gradients of
    /// [`AxialPositionEmbedding::backward`] and [`Optimizer::step`]. Either way the
    /// result is that of `backward` then `step`.
    ///
    /// # Errors
    /// What [`AxialPositionEmbedding::backward`] and [`Optimizer::step`] refuse, or an
    /// optimizer made for another tensor, before any GPU work.
    pub async fn step(
        &self,
        ctx: &Context,
        optimizers: [&mut Optimizer; 2],
        position_ids: Indices<'_>,
        grad_out: &GpuTensor,
    ) -> Result<()> {
        let rows = self.checked_positions(position_ids)?;
        check_grad(grad_out, &out_shape(position_ids.shape, self.embedding_dim()))?;
        let [first, second] = optimizers;
        let mut optimizers = [first, second];
        let mut run = ctx.record();
        let split = self.record_split(&mut run, &rows, grad_out)?;
        let mut unfused = Vec::new();
        for (axis, opt) in optimizers.iter_mut().enumerate() {
            if opt.fuses(&self.weights[axis], &split.halves[axis]) {
                opt.record_fused_scatter(
                    &mut run,
                    &self.weights[axis],
                    &split.scatter(self, axis, GradOptions::default().sparse(true)),
                    &split.halves[axis],
                )?;
            } else {
                unfused.push(axis);
            }
        }
        run.submit()?.finish().await?;
        for axis in unfused {
            // Sparse for the optimizers that take it (SparseAdam, row-wise Adagrad refuse dense ones).
            let options = GradOptions::default().sparse(optimizers[axis].takes_sparse());
            let grad = table_gradient(ctx, &split.scatter(self, axis, options), &split.halves[axis], None).await?;
            optimizers[axis].step(ctx, &self.weights[axis], &grad).await?;
        }
        Ok(())
    }

    /// Records the split of `grad_out` (checked) into the halves' rows and each
    /// position's rows of the two weights.
    fn record_split(&self, run: &mut Recording<'_>, rows: &[i32], grad_out: &GpuTensor) -> Result<Split> {
        let ctx = run.context();
        let dim = self.embedding_dim();
        let [d1, d2] = self.dims;
        let n = rows.len();
        let [grad_seg] = grad_out.segments() else {
            return Err(Error::Unsupported(format!(
                "the axial backward reads grad_out from one binding; one of shape {:?} spans {}",
                grad_out.shape(),
                grad_out.segments().len()
            )));
        };
        // The halves, one buffer each (smaller than grad_out, which fits one).
        let half = |d: usize| GpuTensor::zeros_with(ctx, &[n, d], DType::F32, d, n.max(1) as u64);
        let halves = [half(d1)?, half(d2)?];
        let axis_rows = [GpuTensor::zeros(ctx, &[n], DType::I32, 1)?, GpuTensor::zeros(ctx, &[n], DType::I32, 1)?];
        if n > 0 {
            let positions = upload_rows(ctx, rows, n as u64)?;
            let params =
                PassParams { dim: dim as u32, index_count: n as u32, arg0: self.shape[1] as u32, arg1: d1 as u32, ..Default::default() };
            let extra = [
                grad_seg.buffer.clone(),
                halves[1].segments()[0].buffer.clone(),
                axis_rows[0].segments()[0].buffer.clone(),
                axis_rows[1].segments()[0].buffer.clone(),
            ];
            let call = Call { extra: &extra, ..Call::new(&AXIAL_SPLIT, &[], Grid::Elements(1), params) };
            record_flat(ctx, run, &call, Some(&positions.segments()[0]), Some(&halves[0].segments()[0]), (n * dim) as u64);
        }
        Ok(Split { halves, axis_rows })
    }
}
