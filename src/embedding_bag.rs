//! `torch.nn.EmbeddingBag` forward on the GPU: sum, mean and max over bags given by
//! offsets or by a 2-D input, with per-sample weights, padding and max-norm.

use wgpu::util::DeviceExt;

use crate::context::{Context, Kernel, Slot, WORKGROUP_SIZE};
use crate::embedding::{check_renormalizable, check_table, renormalize, table_format, table_shape, vec4_lanes, MaxNorm};
use crate::error::{Error, Result};
use crate::indices::{normalize_padding_idx, Indices};
use crate::table_texture::{row_sources, table_texture, texture_binding, TableTexture};
use crate::tensor::{DType, GpuTensor};

const SOURCE: &str = include_str!("../shaders/embedding_bag.wgsl");

/// The vectorised bag kernel's slots; the scalar one has all but the last (the texture).
const BAG_VEC4_SLOTS: [Slot; 9] = [
    Slot::Uniform,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::ReadWrite,
    Slot::ReadWrite,
    Slot::ReadWrite,
    Slot::Texture,
];

pub(crate) const BAG: Kernel = Kernel { family: "embedding_bag", source: SOURCE, entry: "bag", slots: BAG_VEC4_SLOTS.split_at(8).0 };

pub(crate) const BAG_VEC4: Kernel = Kernel { entry: "bag_vec4", slots: &BAG_VEC4_SLOTS, ..BAG };

/// Table words one `bag_vec4` invocation accumulates per sweep (`CHUNK` in the shader):
/// on CPU adapters enough to amortise each lane's emulated index load (measured with
/// `examples/bench.rs`), on GPUs few, leaving the row to the lanes.
fn bag_chunk(ctx: &Context) -> u32 {
    if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu {
        16
    } else {
        4
    }
}

pub(crate) const FINALIZE: Kernel = Kernel {
    family: "embedding_bag",
    source: SOURCE,
    entry: "finalize",
    slots: &[Slot::Uniform, Slot::Read, Slot::ReadWrite],
};

/// How a bag's rows are reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BagMode {
    Sum,
    Mean,
    Max,
}

impl BagMode {
    /// Parses PyTorch's mode names.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sum" => Ok(BagMode::Sum),
            "mean" => Ok(BagMode::Mean),
            "max" => Ok(BagMode::Max),
            _ => Err(Error::arg("mode", format!("expected 'sum', 'mean' or 'max', got {s:?}"))),
        }
    }

    /// PyTorch's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            BagMode::Sum => "sum",
            BagMode::Mean => "mean",
            BagMode::Max => "max",
        }
    }

    pub(crate) fn code(self) -> u32 {
        match self {
            BagMode::Sum => 0,
            BagMode::Mean => 1,
            BagMode::Max => 2,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BagParams {
    bags: u32,
    dim: u32,
    table_first_row: u32,
    table_rows: u32,
    index_first: u32,
    index_count: u32,
    num_embeddings: u32,
    padding_idx: u32,
    mode: u32,
    first_pass: u32,
    last_pass: u32,
    count_pass: u32,
    has_weights: u32,
    report_bad: u32,
    tex_width_shift: u32,
    tex_layer_shift: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FinalizeParams {
    bags: u32,
    dim: u32,
    mode: u32,
    _pad: u32,
}

/// Bags resolved on the host: flat indices and `bags + 1` boundaries.
#[derive(Debug, Clone)]
pub(crate) struct BagPlan {
    pub rows: Vec<i32>,
    pub bounds: Vec<u32>,
    pub weights: Option<Vec<f32>>,
}

impl BagPlan {
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
    per_sample_weights: Option<(&[f32], &[usize])>,
    mode: BagMode,
    include_last_offset: bool,
    num_embeddings: usize,
) -> Result<BagPlan> {
    input.check_shape("input")?;
    let weights_shape = per_sample_weights.map(|(w, shape)| (w.len(), shape));
    let bounds = plan_bounds(input.shape, input.data.len(), offsets, weights_shape, mode, include_last_offset)?;
    let rows = input.to_rows("input", num_embeddings as u64)?;
    Ok(BagPlan { rows, bounds, weights: per_sample_weights.map(|(w, _)| w.to_vec()) })
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
            format!("embedding_bag: per_sample_weights was not None. per_sample_weights is only supported for mode='sum' (got mode='{}')", mode.name()),
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
                return Err(Error::arg("offsets", format!("offsets[-1] can not be greater than input's length {n} but got offsets[-1] of {last}")));
            }
        }
        for (i, w) in starts.windows(2).enumerate() {
            if w[1] < w[0] {
                return Err(Error::arg("offsets", format!("offsets must be non-decreasing, but offsets[{}] = {} < offsets[{i}] = {}", i + 1, w[1], w[0])));
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

/// A table on the GPU reduced over bags, with PyTorch's `nn.EmbeddingBag` semantics.
#[derive(Debug, Clone)]
pub struct EmbeddingBag {
    weight: GpuTensor,
    num_embeddings: usize,
    embedding_dim: usize,
    mode: BagMode,
    padding_idx: Option<u32>,
    max_norm: Option<MaxNorm>,
    include_last_offset: bool,
}

impl EmbeddingBag {
    /// Builds the layer from a row-major `[num_embeddings, embedding_dim]` table.
    pub fn from_pretrained(ctx: &Context, weight: &[f32], num_embeddings: usize, embedding_dim: usize, mode: BagMode) -> Result<Self> {
        check_table(weight.len(), num_embeddings, embedding_dim)?;
        let weight = GpuTensor::from_f32(ctx, weight, &[num_embeddings, embedding_dim])?;
        Self::from_tensor(weight, mode)
    }

    /// Builds the layer over a `[V, D]` table already on the GPU: F32, or F16 / BF16
    /// (read as f32, accumulated and output in f32).
    pub fn from_tensor(weight: GpuTensor, mode: BagMode) -> Result<Self> {
        let (v, d) = table_shape(&weight)?;
        Ok(Self { weight, num_embeddings: v, embedding_dim: d, mode, padding_idx: None, max_norm: None, include_last_offset: false })
    }

    /// Rows equal to `padding_idx` are left out of sums, means (and their counts) and maxima.
    pub fn with_padding_idx(mut self, padding_idx: Option<i64>) -> Result<Self> {
        self.padding_idx = normalize_padding_idx(padding_idx, self.num_embeddings)?;
        Ok(self)
    }

    /// Renormalise referenced rows in place before reducing (see `Embedding::with_max_norm`).
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

    /// With `true`, `offsets` has one more entry than there are bags: the end of the last.
    pub fn with_include_last_offset(mut self, include_last_offset: bool) -> Self {
        self.include_last_offset = include_last_offset;
        self
    }

    /// The table (after any renormalisation so far).
    pub fn weight(&self) -> &GpuTensor {
        &self.weight
    }

    /// The reduction.
    pub fn mode(&self) -> BagMode {
        self.mode
    }

    /// Reduces bags: 1-D `input` with `offsets`, or 2-D `input` `[B, N]` without.
    /// `per_sample_weights` (values and shape, same shape as `input`) only with sum.
    /// Returns `[B, D]`.
    pub fn forward(
        &self,
        ctx: &Context,
        input: Indices<'_>,
        offsets: Option<Indices<'_>>,
        per_sample_weights: Option<(&[f32], &[usize])>,
    ) -> Result<GpuTensor> {
        let plan = plan_bags(input, offsets, per_sample_weights, self.mode, self.include_last_offset, self.num_embeddings)?;
        let idx = GpuTensor::from_bytes(ctx, bytemuck::cast_slice(&plan.rows), &[plan.rows.len()], DType::I32, 1)?;
        let weights = match &plan.weights {
            Some(w) => Some(GpuTensor::from_bytes(ctx, bytemuck::cast_slice(w), &[w.len()], DType::F32, 1)?),
            None => None,
        };
        self.run(ctx, &idx, weights.as_ref(), &plan.bounds)
    }

    /// Like [`EmbeddingBag::forward`] with `input` (1-D with `offsets`, or 2-D) and
    /// `per_sample_weights` (F32, same shape) already on the GPU, as I32. A check kernel
    /// bounds-checks the indices before anything runs: the first bad one is reported as
    /// [`Error::IndexOutOfRange`] and nothing (not the max-norm table) is written.
    pub fn forward_gpu(
        &self,
        ctx: &Context,
        input: &GpuTensor,
        offsets: Option<Indices<'_>>,
        per_sample_weights: Option<&GpuTensor>,
    ) -> Result<GpuTensor> {
        if let Some(w) = per_sample_weights {
            if w.dtype() != DType::F32 || w.row_len() != 1 {
                return Err(Error::arg(
                    "per_sample_weights",
                    format!("expected a flat F32 tensor on the GPU, got {:?} with rows of {}", w.dtype(), w.row_len()),
                ));
            }
        }
        let weights_shape = per_sample_weights.map(|w| (w.numel(), w.shape()));
        let bounds = plan_bounds(input.shape(), input.numel(), offsets, weights_shape, self.mode, self.include_last_offset)?;
        crate::status::check_gpu_indices(ctx, "input", input, self.num_embeddings as u64)?;
        // Same segmentation as host-given lists, which `reduce_bags` expects of both.
        let per = GpuTensor::rows_per_segment(ctx, 1, DType::I32)?;
        let idx = input.resegment(ctx, per)?;
        let weights = per_sample_weights.map(|w| w.resegment(ctx, per)).transpose()?;
        self.run(ctx, &idx, weights.as_ref(), &bounds)
    }

    /// Records and submits the reduction of checked indices `idx` over `bounds`.
    fn run(&self, ctx: &Context, idx: &GpuTensor, weights: Option<&GpuTensor>, bounds: &[u32]) -> Result<GpuTensor> {
        let bags = bounds.len() - 1;
        let out = GpuTensor::zeros_with(
            ctx,
            &[bags, self.embedding_dim],
            DType::F32,
            self.embedding_dim,
            bags_per_segment(ctx, self.embedding_dim)?,
        )?;
        let status = crate::status::Status::new(ctx);
        ctx.scoped(|| {
            let mut encoder = ctx.encoder();
            if let Some(mn) = self.max_norm {
                renormalize(ctx, &mut encoder, &self.weight, idx, mn)?;
            }
            let spec = BagSpec { mode: self.mode, padding_idx: self.padding_idx, num_embeddings: self.num_embeddings };
            reduce_bags(ctx, &mut encoder, &self.weight, idx, weights, bounds, &out, status.buffer(), spec)?;
            ctx.submit(encoder)
        })?;
        Ok(out)
    }
}

/// Bags per output segment: each segment, and its `bags + 1` offsets, fit one binding.
pub(crate) fn bags_per_segment(ctx: &Context, dim: usize) -> Result<u64> {
    let per = GpuTensor::rows_per_segment(ctx, dim, DType::F32)?;
    Ok(per.min(ctx.max_binding_size() / 4 - 1))
}

/// What the bag kernel needs to know besides buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BagSpec {
    pub mode: BagMode,
    pub padding_idx: Option<u32>,
    pub num_embeddings: usize,
}

/// Records the reduction of the bags `bounds` over `table` into `out` (segmented by
/// [`bags_per_segment`]). Several dispatches accumulate when the table or the index
/// list spans several bindings; a final pass then divides means and zeroes empty maxima.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reduce_bags(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    table: &GpuTensor,
    idx: &GpuTensor,
    weights: Option<&GpuTensor>,
    bounds: &[u32],
    out: &GpuTensor,
    status: &wgpu::Buffer,
    spec: BagSpec,
) -> Result<()> {
    let d = out.row_len();
    let format = table_format(table.dtype())?;
    let chunk = bag_chunk(ctx);
    let lanes = vec4_lanes(ctx, table.dtype(), d, Some(chunk));
    // With a texture copy, the vectorised kernel reads every row from it in one pass.
    let texture = lanes.and_then(|_| table_texture(ctx, table));
    let sources = row_sources(table, texture.as_deref());
    let (tex_width_shift, tex_layer_shift) = TableTexture::shifts(texture.as_deref());
    for out_seg in out.segments() {
        let b0 = out_seg.first_row as usize;
        let b1 = b0 + out_seg.rows as usize;
        let seg_bounds = &bounds[b0..=b1];
        let offsets = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("offsets"),
            contents: bytemuck::cast_slice(seg_bounds),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let (span_lo, span_hi) = (seg_bounds[0] as u64, seg_bounds[seg_bounds.len() - 1] as u64);
        let mut idx_segs: Vec<(usize, &crate::tensor::Segment)> = idx
            .segments()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.first_row < span_hi && s.first_row + s.rows > span_lo)
            .collect();
        if idx_segs.is_empty() {
            // Every bag here is empty: one dispatch still writes their zeros.
            idx_segs.push((0, &idx.segments()[0]));
        }
        let passes = idx_segs.len() * sources.len();
        let counts = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bag-counts"),
            size: (out_seg.rows * 4).max(16),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let mut pass = 0;
        for (k, iseg) in &idx_segs {
            for (t, src) in sources.iter().enumerate() {
                let params = BagParams {
                    bags: out_seg.rows as u32,
                    dim: d as u32,
                    table_first_row: src.first_row as u32,
                    table_rows: src.rows as u32,
                    index_first: iseg.first_row as u32,
                    index_count: iseg.rows as u32,
                    num_embeddings: spec.num_embeddings as u32,
                    padding_idx: spec.padding_idx.unwrap_or(u32::MAX),
                    mode: spec.mode.code(),
                    first_pass: (pass == 0) as u32,
                    last_pass: (passes == 1) as u32,
                    count_pass: (t == 0) as u32,
                    has_weights: weights.is_some() as u32,
                    report_bad: (t == 0) as u32,
                    tex_width_shift,
                    tex_layer_shift,
                };
                let uniform = ctx.uniform(&params);
                let w = match weights {
                    Some(w) => w.segments()[*k].binding(),
                    None => ctx.placeholder_buffer().as_entire_binding(),
                };
                let bindings = [
                    uniform.as_entire_binding(),
                    src.buffer_binding(ctx),
                    iseg.binding(),
                    offsets.as_entire_binding(),
                    w,
                    out_seg.binding(),
                    counts.as_entire_binding(),
                    status.as_entire_binding(),
                ];
                match lanes {
                    Some(lanes) => {
                        let bindings: Vec<_> = bindings.into_iter().chain([texture_binding(ctx, texture.as_deref())]).collect();
                        let constants =
                            [
                            ("TABLE_FORMAT", format),
                            ("LANES", lanes as f64),
                            ("CHUNK", chunk as f64),
                            ("TABLE_TEXTURE", texture.is_some() as u32 as f64),
                        ];
                        ctx.dispatch_groups(
                            encoder,
                            &BAG_VEC4,
                            &constants,
                            &bindings,
                            out_seg.rows.div_ceil((WORKGROUP_SIZE / lanes) as u64),
                        )
                    }
                    None => ctx.dispatch(encoder, &BAG, &[("TABLE_FORMAT", format)], &bindings, out_seg.rows * d as u64),
                }
                pass += 1;
            }
        }
        if passes > 1 {
            let params = FinalizeParams { bags: out_seg.rows as u32, dim: d as u32, mode: spec.mode.code(), _pad: 0 };
            let uniform = ctx.uniform(&params);
            ctx.dispatch(
                encoder,
                &FINALIZE,
                &[],
                &[uniform.as_entire_binding(), counts.as_entire_binding(), out_seg.binding()],
                out_seg.rows * d as u64,
            );
        }
    }
    Ok(())
}
