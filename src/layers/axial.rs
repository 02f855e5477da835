//! Axial position embeddings as Reformer uses them at inference
//! (`transformers`' `AxialPositionEmbeddings` in eval mode): the embedding of
//! position `p` is `weight0[p / n2] ++ weight1[p % n2]` for `axial_pos_shape = [n1, n2]`.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernel::binding::{INPUT, OUT, PARAMS, TABLE};
use crate::gpu::kernel::{common, Kernel, ShaderFamily};
use crate::gpu::plan::{Call, Grid, PassParams, RowPlan};
use crate::gpu::table::TableAccess;
use crate::gpu::tensor::{DType, GpuTensor};
use crate::layers::embedding::out_shape;
use crate::layers::indices::{upload_rows, Indices};

pub(crate) static FAMILY: ShaderFamily =
    ShaderFamily { name: "axial", parts: &[common::GRID, common::PASS, common::TABLE, include_str!("../../shaders/axial.wgsl")] };

const AXIAL_PART: Kernel = Kernel::new(&FAMILY, "axial_part", &[PARAMS, TABLE, INPUT, OUT]);

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

    /// Embeddings of `position_ids` (any shape; for `[batch, sequence]` as in Reformer
    /// the sequence may not be longer than `n1 * n2`). Result: `[*position_ids, d1 + d2]`.
    pub fn forward(&self, ctx: &Context, position_ids: Indices<'_>) -> Result<GpuTensor> {
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
}
