//! Backward of `Embedding` and `EmbeddingBag` on the GPU: the gradient of the table
//! (dense, or sparse and coalesced), `padding_idx`, `scale_grad_by_freq`, bag modes
//! sum / mean / max, and the gradient of per-sample weights. Shader family:
//! `embedding_backward.wgsl`.
//!
//! Deterministic, with no float atomics: index positions are sorted by row with the
//! integer sort of `gpu::sort`, then each table row sums its run of the sorted list
//! in a fixed order (`GroupPlan`), so two runs give identical bits. A hot row's run is
//! summed in chunks by many invocations first (PyTorch's CUDA backward splits runs the
//! same way).

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernel::binding::{INPUT, OFFSETS, OUT, PARAMS, TABLE};
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::{record_flat, BagPlan, Call, Grid, GroupPlan, PassParams, SlicePlan, HAS_WEIGHTS, MODE_MEAN, NO_PADDING};
use crate::gpu::sort::{check_list_len, record_exclusive_scan, record_lower_bounds, record_sort, upload, words};
use crate::gpu::table::TableAccess;
use crate::gpu::tensor::{DType, GpuTensor, Segment};
use crate::layers::embedding::Embedding;
use crate::layers::embedding_bag::{plan_bags, BagMode, EmbeddingBag, PerSampleWeights};
use crate::layers::indices::Indices;
use crate::layers::table::table_format;

pub static FAMILY: ShaderFamily = ShaderFamily {
    name: "embedding_backward",
    parts: &[common::GRID, common::PASS, common::TABLE, common::BAG, include_str!("../../shaders/embedding_backward.wgsl")],
};

const fn read(binding: u32, k: usize) -> (u32, Slot, Role) {
    (binding, Slot::Read, Role::Extra(k))
}
const fn write(binding: u32, k: usize) -> (u32, Slot, Role) {
    (binding, Slot::ReadWrite, Role::Extra(k))
}
const GRAD: (u32, Slot, Role) = (2, Slot::Read, Role::Input);
const ARGMAX: (u32, Slot, Role) = (9, Slot::Read, Role::Aux);

const POSITION_KEYS: Kernel = Kernel::new(&FAMILY, "position_keys", &[PARAMS, INPUT, write(10, 0), write(11, 1), write(12, 2)]);
const GATHER_ENTRIES: Kernel =
    Kernel::new(&FAMILY, "gather_entries", &[PARAMS, read(11, 0), read(14, 1), read(7, 2), read(15, 3), write(16, 4)]);
const CHUNK_SUMS: Kernel = Kernel::new(&FAMILY, "chunk_sums_of_rows", &[PARAMS, GRAD, ARGMAX, write(17, 0), read(16, 1), read(13, 2)]);
const REDUCE_ROWS: Kernel = Kernel::new(&FAMILY, "reduce_rows", &[PARAMS, GRAD, ARGMAX, OUT, OFFSETS, read(17, 0), read(16, 1)]);
const RUN_HEADS: Kernel = Kernel::new(&FAMILY, "run_heads", &[PARAMS, read(13, 0), write(12, 1)]);
const COMPACT_RUNS: Kernel =
    Kernel::new(&FAMILY, "compact_runs", &[PARAMS, read(13, 0), read(12, 1), read(15, 2), write(18, 3), write(19, 4)]);
const BAG_ARGMAX: Kernel = Kernel::new(&FAMILY, "bag_argmax", &[PARAMS, TABLE, INPUT, read(14, 0), write(20, 1), write(21, 2)]);
const SAMPLE_WEIGHT_GRADS: Kernel = Kernel::new(&FAMILY, "sample_weight_grads", &[PARAMS, TABLE, INPUT, OUT, read(14, 0), read(22, 1)]);

/// `FLAG_SCALE_BY_FREQ` and `MODE_POSITIONS` of the shader.
const FLAG_SCALE_BY_FREQ: u32 = 32;
const MODE_POSITIONS: u32 = 3;

/// A table's gradient, on the GPU.
#[derive(Debug, Clone)]
pub enum Gradient {
    /// `[num_embeddings, embedding_dim]`.
    Dense(GpuTensor),
    /// Coalesced, as `torch.sparse_coo_tensor(...).coalesce()`: `indices` (I32 `[nnz]`)
    /// are the distinct rows that received a gradient, ascending (never `padding_idx`);
    /// `values` (`[nnz, embedding_dim]`) their summed gradients.
    Sparse { indices: GpuTensor, values: GpuTensor, num_embeddings: usize },
}

/// The backward arguments of `nn.Embedding` / `nn.EmbeddingBag`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GradOptions {
    /// Divide each row's gradient by how often the row occurs in the batch.
    pub scale_grad_by_freq: bool,
    /// Return a sparse gradient.
    pub sparse: bool,
}

/// The gradients of an `EmbeddingBag` backward.
#[derive(Debug, Clone)]
pub struct BagGradients {
    pub weight: Gradient,
    /// With per-sample weights: their gradient, shaped like the input.
    pub per_sample_weights: Option<GpuTensor>,
}

/// Which output-gradient row an index position reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sources<'a> {
    /// Row `position / group` (Embedding: 1; the K interleaved indices of the BERT block: K).
    Positions { group: u32 },
    /// The position's bag (with its factor: weight, 1 / size, or the max's argmax).
    Bags { bounds: &'a [u32], mode: BagMode, weights: Option<&'a [f32]> },
}

/// What a table gradient scatters: host-checked rows and where their gradients come from.
pub(crate) struct Scatter<'a> {
    pub rows: &'a [i32],
    pub sources: Sources<'a>,
    pub padding_idx: Option<u32>,
    pub num_embeddings: usize,
    pub dim: usize,
    pub options: GradOptions,
}

fn flat_segment(buffer: &wgpu::Buffer, rows: u64) -> Segment {
    Segment { buffer: buffer.clone(), first_row: 0, rows }
}

/// Checks that `grad` is an F32 tensor of `shape`.
pub(crate) fn check_grad(grad: &GpuTensor, shape: &[usize]) -> Result<()> {
    if grad.dtype() != DType::F32 || grad.shape() != shape {
        return Err(Error::arg(
            "grad_out",
            format!("expected an F32 gradient of shape {shape:?} (the output's), got {:?} of shape {:?}", grad.dtype(), grad.shape()),
        ));
    }
    Ok(())
}

/// The gradient of the table that `s.rows` index, from the output gradient `grad`
/// (rows of `s.dim`) and, for max bags, the forward's argmax (`[B, D]` U32).
pub(crate) async fn table_gradient(ctx: &Context, s: &Scatter<'_>, grad: &GpuTensor, argmax: Option<&GpuTensor>) -> Result<Gradient> {
    let n = s.rows.len() as u64;
    check_list_len(ctx, "indices", n, 8)?;
    let v = s.num_embeddings as u32;
    let d = s.dim;
    let width = if d.is_multiple_of(4) { 4 } else { 1 };
    let constants = [("WIDTH", width as f64)];
    // Chunks short enough that a hot row is summed by many invocations, long enough that
    // a row walks few chunk sums (lavapipe stops loops at 65 535 iterations) and that the
    // chunk sums fit one binding.
    let chunk = 32u64.max(n.div_ceil(32_768)).max((n * d as u64 * 4).div_ceil(ctx.max_binding_size())).max(1);
    let base = PassParams {
        dim: d as u32,
        num_embeddings: v,
        padding_idx: s.padding_idx.unwrap_or(NO_PADDING),
        index_count: n as u32,
        ..Default::default()
    };
    let (mode, bag_bounds, weights, group, active_end, bags) = match s.sources {
        Sources::Positions { group } => (MODE_POSITIONS, None, None, group, n as u32, 0),
        Sources::Bags { bounds, mode, weights } => {
            (mode.code(), Some(bounds), weights, 1, bounds[bounds.len() - 1], bounds.len() as u32 - 1)
        }
    };
    let mut flags = 0;
    if s.options.scale_grad_by_freq {
        flags |= FLAG_SCALE_BY_FREQ;
    }
    let (entries, sorted_keys, chunk_sums, plan_parts) = ctx.scoped(|| {
        let mut encoder = ctx.encoder();
        let idx = upload(ctx, "indices", s.rows);
        let (keys, positions, counted) = (words(ctx, "keys", n), words(ctx, "positions", n), words(ctx, "counted", n + 1));
        let p = PassParams { arg0: active_end, ..base };
        let call =
            Call { extra: &[keys.clone(), positions.clone(), counted.clone()], ..Call::new(&POSITION_KEYS, &[], Grid::Elements(1), p) };
        record_flat(ctx, &mut encoder, &call, Some(&flat_segment(&idx, n)), None, n + 1);
        let (sorted_keys, sorted_positions) = record_sort(ctx, &mut encoder, &keys, &positions, n);
        let prefix = if mode == MODE_MEAN { record_exclusive_scan(ctx, &mut encoder, &counted, n + 1) } else { words(ctx, "unused", 1) };
        let bounds = upload(ctx, "bag-bounds", bag_bounds.unwrap_or(&[0]));
        let weights_buffer = upload(ctx, "sample-weights", weights.unwrap_or(&[0.0]));
        let entries = words(ctx, "entries", 2 * n);
        let p = PassParams { mode, arg2: group, arg3: bags, flags: if weights.is_some() { HAS_WEIGHTS } else { 0 }, ..base };
        let extra = [sorted_positions, bounds, weights_buffer, prefix, entries.clone()];
        record_flat(ctx, &mut encoder, &Call { extra: &extra, ..Call::new(&GATHER_ENTRIES, &[], Grid::Elements(1), p) }, None, None, n);
        let chunk_sums = words(ctx, "chunk-sums", (n / chunk) * d as u64);
        let plan = GroupPlan { source: grad, aux: argmax, entries: n, chunk };
        let extra = [chunk_sums.clone(), entries.clone(), sorted_keys.clone()];
        let p = PassParams { mode, ..base };
        plan.record_chunks(
            ctx,
            &mut encoder,
            &Call { extra: &extra, ..Call::new(&CHUNK_SUMS, &constants, Grid::Elements((d / width) as u64), p) },
        );
        let sparse_parts = if s.options.sparse {
            let heads = words(ctx, "heads", n + 1);
            let extra = [sorted_keys.clone(), heads.clone()];
            record_flat(
                ctx,
                &mut encoder,
                &Call { extra: &extra, ..Call::new(&RUN_HEADS, &[], Grid::Elements(1), base) },
                None,
                None,
                n + 1,
            );
            let slots = record_exclusive_scan(ctx, &mut encoder, &heads, n + 1);
            let (starts, rows) = (words(ctx, "run-starts", n + 1), words(ctx, "run-rows", n));
            let extra = [sorted_keys.clone(), heads, slots.clone(), starts.clone(), rows.clone()];
            record_flat(
                ctx,
                &mut encoder,
                &Call { extra: &extra, ..Call::new(&COMPACT_RUNS, &[], Grid::Elements(1), base) },
                None,
                None,
                n + 1,
            );
            Some((slots, starts, rows))
        } else {
            None
        };
        ctx.submit(encoder)?;
        Ok((entries, sorted_keys, chunk_sums, sparse_parts))
    })?;
    let plan = GroupPlan { source: grad, aux: argmax, entries: n, chunk };
    let extra = [chunk_sums, entries];
    let reduce = Call {
        extra: &extra,
        ..Call::new(&REDUCE_ROWS, &constants, Grid::Elements((d / width) as u64), PassParams { mode, flags, ..base })
    };
    match plan_parts {
        None => {
            let out = GpuTensor::zeros_with(ctx, &[s.num_embeddings, d], DType::F32, d, BagPlan::bags_per_segment(ctx, d)?)?;
            ctx.scoped(|| {
                let mut encoder = ctx.encoder();
                let bounds: Vec<(wgpu::Buffer, u32)> = out
                    .segments()
                    .iter()
                    .map(|seg| {
                        let b = words(ctx, "row-bounds", seg.rows + 1);
                        record_lower_bounds(ctx, &mut encoder, &sorted_keys, n, seg.first_row as u32, seg.rows + 1, &b);
                        (b, seg.first_row as u32)
                    })
                    .collect();
                plan.record_groups(ctx, &mut encoder, &reduce, &out, &bounds);
                ctx.submit(encoder)
            })?;
            Ok(Gradient::Dense(out))
        }
        Some((slots, starts, rows)) => {
            // How many distinct rows: the last of the scanned heads (one word read back).
            let count = GpuTensor::from_buffer(slots, &[n as usize + 1], DType::U32);
            let nnz = read_last_word(ctx, &count).await? as usize;
            let values = GpuTensor::zeros_with(ctx, &[nnz, d], DType::F32, d, BagPlan::bags_per_segment(ctx, d)?)?;
            ctx.scoped(|| {
                let mut encoder = ctx.encoder();
                let bounds: Vec<(wgpu::Buffer, u32)> = values.segments().iter().map(|_| (starts.clone(), 0)).collect();
                plan.record_groups(ctx, &mut encoder, &reduce, &values, &bounds);
                ctx.submit(encoder)
            })?;
            let indices = GpuTensor::from_buffer(rows, &[nnz], DType::I32);
            Ok(Gradient::Sparse { indices, values, num_embeddings: s.num_embeddings })
        }
    }
}

/// The last word of a flat U32 tensor (one buffer), read back alone.
async fn read_last_word(ctx: &Context, t: &GpuTensor) -> Result<u32> {
    let seg = &t.segments()[0];
    let word = ctx.scoped(|| {
        let word = words(ctx, "last-word", 1);
        let mut encoder = ctx.encoder();
        encoder.copy_buffer_to_buffer(&seg.buffer, (seg.rows - 1) * 4, &word, 0, 4);
        ctx.submit(encoder)?;
        Ok(word)
    })?;
    let bytes = GpuTensor::from_buffer(word, &[1], DType::U32).read_bytes(ctx).await?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// A `[B, D]` output gradient that the max / per-sample-weight kernels read whole.
fn whole_bag_grad<'a>(ctx: &Context, grad: &'a GpuTensor, what: &str) -> Result<&'a Segment> {
    match grad.segments() {
        [seg] => Ok(seg),
        _ => Err(Error::Unsupported(format!(
            "{what}: an output gradient of shape {:?} spans several bindings of {} bytes; this backward needs it in one",
            grad.shape(),
            ctx.max_binding_size()
        ))),
    }
}

impl Embedding {
    /// The gradient of `sum(forward(indices) * grad_out)` with respect to the table, as
    /// PyTorch's autograd gives it: `padding_idx` rows get none; with
    /// `scale_grad_by_freq` each row's gradient is divided by how often it occurs in
    /// `indices`; `sparse` returns it coalesced. `grad_out` has shape `[*indices, D]`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn backward(&self, ctx: &Context, indices: Indices<'_>, grad_out: &GpuTensor, options: GradOptions) -> Result<Gradient> {
        pollster::block_on(self.backward_async(ctx, indices, grad_out, options))
    }

    /// [`Embedding::backward`] without blocking (a sparse gradient awaits its row count;
    /// what browsers call).
    pub async fn backward_async(
        &self,
        ctx: &Context,
        indices: Indices<'_>,
        grad_out: &GpuTensor,
        options: GradOptions,
    ) -> Result<Gradient> {
        if options.sparse && options.scale_grad_by_freq {
            return Err(Error::arg("scale_grad_by_freq", "embedding_backward: scale_grad_by_freq not supported with sparse gradients"));
        }
        indices.check_shape("indices")?;
        let d = self.embedding_dim();
        let mut shape = indices.shape.to_vec();
        shape.push(d);
        check_grad(grad_out, &shape)?;
        let rows = indices.to_rows("indices", self.num_embeddings() as u64)?;
        let scatter = Scatter {
            rows: &rows,
            sources: Sources::Positions { group: 1 },
            padding_idx: self.padding_idx(),
            num_embeddings: self.num_embeddings(),
            dim: d,
            options,
        };
        table_gradient(ctx, &scatter, grad_out, None).await
    }
}

impl EmbeddingBag {
    /// The gradients of `sum(forward(input, offsets, per_sample_weights) * grad_out)`
    /// (`grad_out`: `[B, D]`) with respect to the table and the per-sample weights, as
    /// PyTorch's autograd gives them. Max sends each column's gradient to the row the
    /// forward chose (recomputed here from the table); PyTorch's refusals (sparse or
    /// `scale_grad_by_freq` with max) come back as errors.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn backward(
        &self,
        ctx: &Context,
        input: Indices<'_>,
        offsets: Option<Indices<'_>>,
        per_sample_weights: PerSampleWeights<'_>,
        grad_out: &GpuTensor,
        options: GradOptions,
    ) -> Result<BagGradients> {
        pollster::block_on(self.backward_async(ctx, input, offsets, per_sample_weights, grad_out, options))
    }

    /// [`EmbeddingBag::backward`] without blocking (what browsers call).
    pub async fn backward_async(
        &self,
        ctx: &Context,
        input: Indices<'_>,
        offsets: Option<Indices<'_>>,
        per_sample_weights: PerSampleWeights<'_>,
        grad_out: &GpuTensor,
        options: GradOptions,
    ) -> Result<BagGradients> {
        let mode = self.mode();
        if mode == BagMode::Max && options.sparse {
            return Err(Error::arg("sparse", "embedding_bag: max mode does not support sparse weights"));
        }
        if mode == BagMode::Max && options.scale_grad_by_freq {
            return Err(Error::arg("scale_grad_by_freq", "embedding_bag: max mode does not support scaling the gradient by the frequency"));
        }
        let (v, d) = (self.num_embeddings(), self.embedding_dim());
        let bags = plan_bags(input, offsets, per_sample_weights, mode, self.include_last_offset(), v)?;
        let b = bags.bounds.len() - 1;
        check_grad(grad_out, &[b, d])?;
        let n = bags.rows.len() as u64;
        check_list_len(ctx, "input", n, 8)?;
        let padding = self.padding_idx().unwrap_or(NO_PADDING);
        let table = self.weight();
        let format = table_format(table.dtype())?;
        let access = TableAccess::rows(table);
        let active_end = bags.bounds[b];
        let params = PassParams { rows: b as u32, dim: d as u32, num_embeddings: v as u32, padding_idx: padding, ..Default::default() };
        let needs_whole = mode == BagMode::Max || bags.weights.is_some();
        let whole =
            if needs_whole { Some(whole_bag_grad(ctx, grad_out, "embedding_bag backward (max, per_sample_weights)")?) } else { None };
        let (argmax, sample_grads) = ctx.scoped(|| {
            let mut encoder = ctx.encoder();
            let idx = upload(ctx, "indices", &bags.rows);
            let idx = flat_segment(&idx, n);
            let bounds = upload(ctx, "bag-bounds", &bags.bounds);
            let constants = [("TABLE_FORMAT", format)];
            let argmax = if mode == BagMode::Max {
                let (values, positions) = (words(ctx, "argmax-values", (b * d) as u64), words(ctx, "argmax", (b * d) as u64));
                let extra = [bounds.clone(), values, positions.clone()];
                let call = Call { extra: &extra, ..Call::new(&BAG_ARGMAX, &constants, Grid::Elements(d as u64), params) };
                SlicePlan { table: &access, input: Some(&idx), out: None }.record(ctx, &mut encoder, &call, b as u64);
                // Read beside the gradient's one segment, element for element.
                Some(GpuTensor::from_buffer(positions, &[b * d], DType::U32))
            } else {
                None
            };
            let sample_grads = if let (Some(w), Some(grad)) = (&bags.weights, whole) {
                let out = GpuTensor::zeros_with(ctx, &[w.len()], DType::F32, 1, n.max(1))?;
                let extra = [bounds, grad.buffer.clone()];
                let p = PassParams { index_count: n as u32, arg0: active_end, arg3: b as u32, ..params };
                let call = Call { extra: &extra, ..Call::new(&SAMPLE_WEIGHT_GRADS, &constants, Grid::Elements(1), p) };
                SlicePlan { table: &access, input: Some(&idx), out: Some(&out.segments()[0]) }.record(ctx, &mut encoder, &call, n);
                Some(out)
            } else {
                None
            };
            ctx.submit(encoder)?;
            Ok((argmax, sample_grads))
        })?;
        let scatter = Scatter {
            rows: &bags.rows,
            sources: Sources::Bags { bounds: &bags.bounds, mode, weights: bags.weights.as_deref() },
            padding_idx: self.padding_idx(),
            num_embeddings: v,
            dim: d,
            options,
        };
        let weight = table_gradient(ctx, &scatter, grad_out, argmax.as_ref()).await?;
        let per_sample_weights = match (sample_grads, per_sample_weights) {
            (Some(g), Some((_, shape))) => Some(g.reshape(shape)?),
            _ => None,
        };
        Ok(BagGradients { weight, per_sample_weights })
    }
}
