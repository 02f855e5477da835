//! `torch.nn.EmbeddingBag` forward on the GPU: sum, mean and max over bags given by
//! offsets or by a 2-D input, with per-sample weights, padding and max-norm. Shader
//! family: `embedding_bag.wgsl` (with the bag helpers of `shaders/common/bag.wgsl`).

use crate::error::{Error, Result};
use crate::gpu::context::{Context, WORKGROUP_SIZE};
use crate::gpu::kernel::binding::{COUNTS, INPUT, OFFSETS, OUT, PARAMS, STATUS, TABLE, TEXTURE};
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::{BagPlan, Call, Grid, PassParams, MODE_MAX, MODE_MEAN, MODE_SUM, NO_PADDING};
use crate::gpu::recording::Recording;
use crate::gpu::status::Status;
use crate::gpu::table::TableAccess;
use crate::gpu::tensor::{DType, GpuTensor};
use crate::layers::embedding::renormalize;
use crate::layers::indices::Indices;
use crate::layers::init::Draw;
use crate::layers::table::{dense_table_methods, table_format, vec4_lanes, DenseTable, EmbeddingOptions};

pub(crate) static FAMILY: ShaderFamily = ShaderFamily {
    name: "embedding_bag",
    parts: &[common::GRID, common::PASS, common::TABLE, common::BAG, common::BAG_SCALAR, include_str!("../../shaders/embedding_bag.wgsl")],
};

const BAG_BINDINGS: &[(u32, Slot, Role)] = &[PARAMS, TABLE, INPUT, OUT, TEXTURE, OFFSETS, COUNTS, (7, Slot::Read, Role::Weights), STATUS];
const BAG: Kernel = Kernel::new(&FAMILY, "bag", BAG_BINDINGS);
const BAG_VEC4: Kernel = Kernel::new(&FAMILY, "bag_vec4", BAG_BINDINGS);

/// Table words one `bag_vec4` invocation accumulates per sweep (`CHUNK` in the shader):
/// on CPU adapters enough to amortise each lane's emulated index load (measured with
/// `examples/bench.rs`), but no more than a row has, so that narrow rows (D = 4: one
/// word) carry no per-index checks of words they lack; on GPUs few, leaving the row to
/// the lanes.
fn bag_chunk(ctx: &Context, row_words: usize) -> u32 {
    if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu {
        (row_words.next_power_of_two() as u32).clamp(1, 16)
    } else {
        1
    }
}

/// Consecutive bags one `bag_vec4` invocation reduces (`BAGS` in the shader): on CPU
/// adapters, where one invocation takes a whole row (narrow rows) and each emulated load
/// of offsets and index entries costs about as much as a row, small bags (4 indices or
/// fewer on average) go 16 at a time, sharing those loads and the invocation's set-up
/// (bags of one row at D = 4: 0.23x -> 0.4x the copy kernel on lavapipe); otherwise one.
fn bags_per_invocation(ctx: &Context, lanes: Option<u32>, bounds: &[u32]) -> u32 {
    let bags = bounds.len().saturating_sub(1).max(1);
    let entries = bounds.last().copied().unwrap_or(0) as usize;
    let small = entries <= 4 * bags;
    if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu && lanes == Some(1) && small {
        16
    } else {
        1
    }
}

/// `per_sample_weights` given from the host: values and shape (the input's).
pub type PerSampleWeights<'a> = Option<(&'a [f32], &'a [usize])>;

/// How a bag's rows are reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BagMode {
    /// `mode="sum"`: the (weighted) sum of the bag's rows.
    Sum,
    /// `mode="mean"`: their mean (empty bags give zeros).
    Mean,
    /// `mode="max"`: their element-wise maximum (empty bags give zeros).
    Max,
}

crate::names::spelled_enum!(BagMode, "mode", { Sum => "sum", Mean => "mean", Max => "max" });

impl BagMode {
    pub(crate) fn code(self) -> u32 {
        match self {
            BagMode::Sum => MODE_SUM,
            BagMode::Mean => MODE_MEAN,
            BagMode::Max => MODE_MAX,
        }
    }
}

/// `forward` of a bag layer (fields `mode`, `include_last_offset`; methods
/// `num_embeddings` and `reduce`, which takes the bags checked on the host).
macro_rules! bag_forward {
    () => {
        /// Reduces bags: 1-D `input` with `offsets`, or 2-D `input` `[B, N]` without.
        /// `per_sample_weights` (values and shape, same shape as `input`) only with sum.
        /// Returns `[B, D]`.
        pub fn forward(
            &self,
            ctx: &Context,
            input: Indices<'_>,
            offsets: Option<Indices<'_>>,
            per_sample_weights: PerSampleWeights<'_>,
        ) -> Result<GpuTensor> {
            let n = self.num_embeddings();
            self.reduce(ctx, plan_bags(input, offsets, per_sample_weights, self.mode, self.include_last_offset, n)?)
        }
    };
}
pub(crate) use bag_forward;

/// Bags resolved on the host: flat indices and `bags + 1` boundaries.
#[derive(Debug, Clone)]
pub(crate) struct HostBags {
    pub rows: Vec<i32>,
    pub bounds: Vec<u32>,
    pub weights: Option<Vec<f32>>,
}

impl HostBags {
    /// Number of bags.
    #[allow(dead_code)]
    pub fn bags(&self) -> usize {
        self.bounds.len() - 1
    }
}

/// Checks input, offsets and per-sample weights as `F.embedding_bag` does, in its order,
/// and resolves them into flat rows and bag boundaries.
pub(crate) fn plan_bags(
    input: Indices<'_>,
    offsets: Option<Indices<'_>>,
    per_sample_weights: PerSampleWeights<'_>,
    mode: BagMode,
    include_last_offset: bool,
    num_embeddings: usize,
) -> Result<HostBags> {
    input.check_shape("input")?;
    let weights_shape = per_sample_weights.map(|(w, shape)| (w.len(), shape));
    let bounds = plan_bounds(input.shape, input.data.len(), offsets, weights_shape, mode, include_last_offset)?;
    let rows = input.to_rows("input", num_embeddings as u64)?;
    Ok(HostBags { rows, bounds, weights: per_sample_weights.map(|(w, _)| w.to_vec()) })
}

/// The checks of [`plan_bags`] that need only the input's shape (`n` values), not its
/// values: the `bags + 1` boundaries. `per_sample_weights` is (values, shape).
pub(crate) fn plan_bounds(
    input_shape: &[usize],
    n: usize,
    offsets: Option<Indices<'_>>,
    per_sample_weights: Option<(usize, &[usize])>,
    mode: BagMode,
    include_last_offset: bool,
) -> Result<Vec<u32>> {
    if let Some((len, shape)) = per_sample_weights {
        if shape != input_shape || len != n {
            return Err(Error::arg(
                "per_sample_weights",
                format!(
                    "embedding_bag: If per_sample_weights ({shape:?}) is not None, then it must have the same shape as the input ({input_shape:?})"
                ),
            ));
        }
    }
    let starts: Vec<i64> = match (input_shape.len(), offsets) {
        (2, Some(o)) => {
            return Err(Error::arg(
                "offsets",
                format!("if input is 2D, then offsets has to be None, as input is treated is a mini-batch of fixed length sequences; got offsets of shape {:?}", o.shape),
            ))
        }
        (2, None) => {
            let (b, len) = (input_shape[0], input_shape[1]);
            (0..b).map(|i| (i * len) as i64).collect()
        }
        (1, None) => return Err(Error::arg("offsets", "offsets has to be a 1D Tensor but got None (input is 1-D)")),
        (1, Some(o)) => {
            if o.shape.len() != 1 {
                return Err(Error::arg("offsets", format!("offsets has to be a 1D Tensor, got shape {:?}", o.shape)));
            }
            o.check_shape("offsets")?;
            o.data.iter().collect()
        }
        (d, _) => return Err(Error::arg("input", format!("input has to be 1D or 2D Tensor, but got Tensor of dimension {d}"))),
    };
    if per_sample_weights.is_some() && mode != BagMode::Sum {
        return Err(Error::arg(
            "per_sample_weights",
            format!(
                "embedding_bag: per_sample_weights was not None. per_sample_weights is only supported for mode='sum' (got mode='{}')",
                mode.name()
            ),
        ));
    }
    if input_shape.len() == 1 {
        if let Some(&first) = starts.first() {
            if first != 0 {
                return Err(Error::arg("offsets", format!("offsets[0] has to be 0, i.e., the first sequence in the mini-batch has to start from position 0. However, got {first}")));
            }
        }
        if let Some(&last) = starts.last() {
            if last > n as i64 {
                return Err(Error::arg(
                    "offsets",
                    format!("offsets[-1] can not be greater than input's length {n} but got offsets[-1] of {last}"),
                ));
            }
        }
        for (i, w) in starts.windows(2).enumerate() {
            if w[1] < w[0] {
                return Err(Error::arg(
                    "offsets",
                    format!("offsets must be non-decreasing, but offsets[{}] = {} < offsets[{i}] = {}", i + 1, w[1], w[0]),
                ));
            }
        }
        if include_last_offset && starts.is_empty() {
            return Err(Error::arg("offsets", "include_last_offset: number of offsets should be at least 1"));
        }
    }
    let mut bounds: Vec<u32> = starts.iter().map(|&s| s as u32).collect();
    if !(include_last_offset && input_shape.len() == 1) {
        bounds.push(n as u32);
    }
    if bounds.is_empty() {
        bounds.push(0);
    }
    Ok(bounds)
}

/// [`plan_bounds`] for an input and per-sample weights already on the GPU (the weights
/// a flat F32 tensor).
pub(crate) fn plan_gpu_bounds(
    input: &GpuTensor,
    offsets: Option<Indices<'_>>,
    per_sample_weights: Option<&GpuTensor>,
    mode: BagMode,
    include_last_offset: bool,
) -> Result<Vec<u32>> {
    if let Some(w) = per_sample_weights {
        if w.dtype() != DType::F32 || w.row_len() != 1 {
            return Err(Error::arg(
                "per_sample_weights",
                format!("expected a flat F32 tensor on the GPU, got {:?} with rows of {}", w.dtype(), w.row_len()),
            ));
        }
    }
    let weights_shape = per_sample_weights.map(|w| (w.numel(), w.shape()));
    plan_bounds(input.shape(), input.numel(), offsets, weights_shape, mode, include_last_offset)
}

/// A table on the GPU reduced over bags, with PyTorch's `nn.EmbeddingBag` semantics.
#[derive(Debug, Clone)]
pub struct EmbeddingBag {
    table: DenseTable,
    mode: BagMode,
    include_last_offset: bool,
}

impl EmbeddingBag {
    /// A fresh `[num_embeddings, embedding_dim]` table as `torch.nn.EmbeddingBag(
    /// num_embeddings, embedding_dim, mode=mode, padding_idx=..., max_norm=...)` makes it:
    /// N(0, 1) drawn on the GPU (seeded by `options.seed`), the padding row zeroed.
    /// `include_last_offset` is set with [`EmbeddingBag::with_include_last_offset`].
    ///
    /// ```
    /// use wgpu_embed::{BagMode, Block, Context, EmbeddingBag, EmbeddingOptions, Indices};
    /// let ctx = Context::new().block()?;
    /// let bag = EmbeddingBag::new(&ctx, 100, 8, BagMode::Mean, EmbeddingOptions::default().seed(1))?;
    /// let out = bag.forward(&ctx, Indices::i64(&[1, 2, 3, 4], &[4]), Some(Indices::i64(&[0, 2], &[2])), None)?;
    /// assert_eq!(out.shape(), &[2, 8]);
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Embedding::new`](crate::Embedding::new).
    pub fn new(ctx: &Context, num_embeddings: usize, embedding_dim: usize, mode: BagMode, options: EmbeddingOptions) -> Result<Self> {
        let draw = Draw::Normal { mean: 0.0, std: 1.0 };
        Ok(Self { table: DenseTable::fresh(ctx, num_embeddings, embedding_dim, draw, &options)?, mode, include_last_offset: false })
    }

    /// Builds the layer from a row-major `[num_embeddings, embedding_dim]` table.
    pub fn from_pretrained(ctx: &Context, weight: &[f32], num_embeddings: usize, embedding_dim: usize, mode: BagMode) -> Result<Self> {
        Ok(Self { table: DenseTable::from_host(ctx, weight, num_embeddings, embedding_dim)?, mode, include_last_offset: false })
    }

    /// Builds the layer over a `[V, D]` table already on the GPU: F32, or F16 / BF16
    /// (read as f32, accumulated and output in f32).
    pub fn from_tensor(weight: GpuTensor, mode: BagMode) -> Result<Self> {
        Ok(Self { table: DenseTable::new(weight)?, mode, include_last_offset: false })
    }

    dense_table_methods!("Rows equal to it are left out of sums, means (and their counts) and maxima.");

    /// With `true`, `offsets` has one more entry than there are bags: the end of the last.
    pub fn with_include_last_offset(mut self, include_last_offset: bool) -> Self {
        self.include_last_offset = include_last_offset;
        self
    }

    /// The reduction.
    pub fn mode(&self) -> BagMode {
        self.mode
    }

    /// Whether `offsets` ends with the end of the last bag.
    pub fn include_last_offset(&self) -> bool {
        self.include_last_offset
    }

    bag_forward!();

    /// Uploads bags checked on the host and reduces them.
    fn reduce(&self, ctx: &Context, bags: HostBags) -> Result<GpuTensor> {
        ctx.run_now(|run| self.record_host_bags(run, &bags))
    }

    fn record_host_bags(&self, run: &mut Recording<'_>, bags: &HostBags) -> Result<GpuTensor> {
        let ctx = run.context();
        let idx = GpuTensor::flat(ctx, &bags.rows, DType::I32)?;
        let weights = bags.weights.as_deref().map(|w| GpuTensor::flat(ctx, w, DType::F32)).transpose()?;
        self.record_bounds(run, &idx, weights.as_ref(), &bags.bounds)
    }

    /// [`EmbeddingBag::forward`] recorded into `run`: the `[B, D]` output is usable by
    /// later calls of the recording at once.
    ///
    /// # Errors
    /// As [`EmbeddingBag::forward`]: PyTorch's refusals of the arguments, before any GPU work.
    pub fn record(
        &self,
        run: &mut Recording<'_>,
        input: Indices<'_>,
        offsets: Option<Indices<'_>>,
        per_sample_weights: PerSampleWeights<'_>,
    ) -> Result<GpuTensor> {
        let bags = plan_bags(input, offsets, per_sample_weights, self.mode, self.include_last_offset, self.num_embeddings())?;
        self.record_host_bags(run, &bags)
    }

    /// Like [`EmbeddingBag::forward`] with `input` (1-D with `offsets`, or 2-D) and
    /// `per_sample_weights` (F32, same shape) already on the GPU, as I32. A check kernel
    /// bounds-checks the indices in the same submission: the first bad one is reported
    /// as [`Error::IndexOutOfRange`] and nothing (not the max-norm table) is written.
    /// Resolves once the check is read ([`EmbeddingBag::record_gpu`] does not wait).
    ///
    /// # Errors
    /// PyTorch's refusals of the arguments; a bad index as above.
    pub async fn forward_gpu(
        &self,
        ctx: &Context,
        input: &GpuTensor,
        offsets: Option<Indices<'_>>,
        per_sample_weights: Option<&GpuTensor>,
    ) -> Result<GpuTensor> {
        ctx.run_checked(|run| self.record_gpu(run, input, offsets, per_sample_weights)).await
    }

    /// [`EmbeddingBag::forward_gpu`] recorded into `run`, without waiting: a bad index
    /// comes back from the submission's [`Submitted::finish`](crate::Submitted::finish).
    ///
    /// # Errors
    /// PyTorch's refusals of the arguments, at once.
    pub fn record_gpu(
        &self,
        run: &mut Recording<'_>,
        input: &GpuTensor,
        offsets: Option<Indices<'_>>,
        per_sample_weights: Option<&GpuTensor>,
    ) -> Result<GpuTensor> {
        let bounds = plan_gpu_bounds(input, offsets, per_sample_weights, self.mode, self.include_last_offset)?;
        run.check_indices("input", input, self.table.num_embeddings as u64)?;
        self.record_bounds(run, input, per_sample_weights, &bounds)
    }

    /// Records the reduction of checked indices over `bounds`.
    fn record_bounds(
        &self,
        run: &mut Recording<'_>,
        indices: &GpuTensor,
        weights: Option<&GpuTensor>,
        bounds: &[u32],
    ) -> Result<GpuTensor> {
        let ctx = run.context();
        let t = &self.table;
        let out = BagPlan::output(ctx, bounds.len() - 1, t.embedding_dim)?;
        let status = Status::new(ctx);
        // Indices and weights in segments alike, as flat host lists are.
        let per = GpuTensor::rows_per_segment(ctx, 1, DType::I32)?;
        run.scoped(|run| {
            let idx = &indices.resegment(ctx, run, per)?;
            let weights = weights.map(|w| w.resegment(ctx, run, per)).transpose()?;
            let weights = weights.as_ref();
            if let Some(mn) = t.max_norm {
                run.guarded(|run| renormalize(ctx, run, &t.weight, idx, mn))?;
            }
            let spec = BagSpec { mode: self.mode, padding_idx: t.padding_idx, num_embeddings: t.num_embeddings };
            record_bags(ctx, run, &t.weight, idx, weights, bounds, &out, &status, spec)
        })?;
        Ok(out)
    }
}

/// What the bag kernels need to know besides buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BagSpec {
    pub mode: BagMode,
    pub padding_idx: Option<u32>,
    pub num_embeddings: usize,
}

impl BagSpec {
    /// The pass fields of these bags over rows of `dim`.
    pub(crate) fn params(&self, dim: usize) -> PassParams {
        PassParams {
            dim: dim as u32,
            num_embeddings: self.num_embeddings as u32,
            padding_idx: self.padding_idx.unwrap_or(NO_PADDING),
            mode: self.mode.code(),
            ..Default::default()
        }
    }
}

/// Records the reduction of the bags `bounds` over `table` into `out` (segmented by
/// [`BagPlan::bags_per_segment`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_bags(
    ctx: &Context,
    encoder: &mut Recording<'_>,
    table: &GpuTensor,
    idx: &GpuTensor,
    weights: Option<&GpuTensor>,
    bounds: &[u32],
    out: &GpuTensor,
    status: &Status,
    spec: BagSpec,
) -> Result<()> {
    let d = out.row_len();
    let format = table_format(table.dtype())?;
    let row_words = match table.dtype() {
        DType::F32 => d.div_ceil(4),
        _ => d.div_ceil(8),
    };
    let chunk = bag_chunk(ctx, row_words);
    let lanes = vec4_lanes(ctx, table.dtype(), d, Some(chunk));
    // With a texture copy, the vectorised kernel reads every row from it in one pass.
    let access = match lanes {
        Some(_) => TableAccess::rows_or_texture(encoder, table),
        None => TableAccess::rows(table),
    };
    let textured = access.texture().is_some() as u32 as f64;
    let bags = bags_per_invocation(ctx, lanes, bounds);
    let constants = [
        ("TABLE_FORMAT", format),
        ("LANES", lanes.unwrap_or(1) as f64),
        ("CHUNK", chunk as f64),
        ("TABLE_TEXTURE", textured),
        ("BAGS", bags as f64),
        ("ONE_WORD_ROWS", (lanes == Some(1) && chunk == 1 && row_words == 1 && format == 0.0) as u32 as f64),
    ];
    let call = match lanes {
        Some(lanes) => Call::new(&BAG_VEC4, &constants, Grid::RowsPerGroup((WORKGROUP_SIZE / lanes * bags) as u64), spec.params(d)),
        None => Call::new(&BAG, &constants[..1], Grid::Elements(d as u64), spec.params(d)),
    };
    let plan = BagPlan { table: &access, entries: idx, weights, bounds, out, status: Some(status) };
    plan.record(ctx, encoder, &call);
    Ok(())
}
