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
use crate::gpu::context::{upload, words};
use crate::gpu::kernel::binding::{INPUT, OUT, PARAMS, TABLE};
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::{record_flat, BagPlan, Call, Grid, GroupPlan, PassParams, SlicePlan, HAS_WEIGHTS, MODE_MEAN, NO_PADDING};
use crate::gpu::recording::Recording;
use crate::gpu::sort::{check_list_len, record_exclusive_scan, record_sort};
use crate::gpu::table::TableAccess;
use crate::gpu::tensor::{DType, GpuTensor, Segment};
use crate::layers::embedding::Embedding;
use crate::layers::embedding_bag::{plan_bags, plan_gpu_bounds, BagMode, EmbeddingBag, HostBags, PerSampleWeights};
use crate::layers::indices::Indices;
use crate::layers::table::table_format;

pub(crate) static FAMILY: ShaderFamily = ShaderFamily {
    name: "embedding_backward",
    parts: &[common::GRID, common::PASS, common::TABLE, common::BAG, common::RUNS, include_str!("../../shaders/embedding_backward.wgsl")],
};

const fn read(binding: u32, k: usize) -> (u32, Slot, Role) {
    (binding, Slot::Read, Role::Extra(k))
}
const fn write(binding: u32, k: usize) -> (u32, Slot, Role) {
    (binding, Slot::ReadWrite, Role::Extra(k))
}
const GRAD: (u32, Slot, Role) = (2, Slot::Read, Role::Input);
const ARGMAX: (u32, Slot, Role) = (9, Slot::Read, Role::Aux(0));

const POSITION_KEYS: Kernel = Kernel::new(&FAMILY, "position_keys", &[PARAMS, INPUT, write(10, 0), write(11, 1), write(12, 2)]);
const GATHER_ENTRIES: Kernel =
    Kernel::new(&FAMILY, "gather_entries", &[PARAMS, read(11, 0), read(14, 1), read(7, 2), read(15, 3), write(16, 4)]);
const CHUNK_SUMS: Kernel = Kernel::new(&FAMILY, "chunk_sums_of_rows", &[PARAMS, GRAD, ARGMAX, write(17, 0), read(16, 1), read(13, 2)]);
const REDUCE_RUNS: Kernel =
    Kernel::new(&FAMILY, "reduce_runs", &[PARAMS, GRAD, ARGMAX, OUT, read(17, 0), read(16, 1), read(18, 2), read(23, 3)]);
const RUN_ROWS: Kernel = Kernel::new(&FAMILY, "run_rows", &[PARAMS, OUT, read(18, 0)]);
const REDUCE_RUNS4: Kernel =
    Kernel::new(&FAMILY, "reduce_runs4", &[PARAMS, GRAD, ARGMAX, OUT, read(17, 0), read(16, 1), read(18, 2), read(23, 3)]);
const SEGMENT_SLOTS: Kernel = Kernel::new(&FAMILY, "segment_slots", &[PARAMS, read(15, 0), read(18, 1), read(19, 2), write(23, 3)]);
/// Lists of at most this many positions are made ready by one workgroup
/// (`prepare_short_list`, `SMALL_LIST` of the shader): one dispatch instead of seven.
const SHORT_LIST: u64 = 1024;
const PREPARE_SHORT_LIST: Kernel = Kernel::new(
    &FAMILY,
    "prepare_short_list",
    &[PARAMS, INPUT, read(14, 0), read(7, 1), write(13, 2), write(15, 3), write(16, 4), write(18, 5)],
);
const RUN_HEADS: Kernel = Kernel::new(&FAMILY, "run_heads", &[PARAMS, read(13, 0), write(12, 1)]);
const COMPACT_RUNS: Kernel = Kernel::new(&FAMILY, "compact_runs", &[PARAMS, read(13, 0), read(12, 1), read(15, 2), write(18, 3)]);
const BAG_ARGMAX: Kernel = Kernel::new(&FAMILY, "bag_argmax", &[PARAMS, TABLE, INPUT, read(14, 0), write(20, 1), write(21, 2)]);
const SAMPLE_WEIGHT_GRADS: Kernel = Kernel::new(&FAMILY, "sample_weight_grads", &[PARAMS, TABLE, INPUT, OUT, read(14, 0), read(22, 1)]);

/// `FLAG_SCALE_BY_FREQ`, `FLAG_SPARSE` and `MODE_POSITIONS` of the shader.
const FLAG_SCALE_BY_FREQ: u32 = 32;
const FLAG_SPARSE: u32 = 128;
const MODE_POSITIONS: u32 = 3;

/// A table's gradient, on the GPU.
/// The gradient of a table: dense, or sparse as PyTorch's `sparse=True` gives it.
#[derive(Debug, Clone)]
pub enum Gradient {
    /// `[num_embeddings, embedding_dim]`.
    Dense(GpuTensor),
    /// Coalesced, as `torch.sparse_coo_tensor(...).coalesce()`: `indices` (I32 `[nnz]`)
    /// are the distinct rows that received a gradient, ascending (never `padding_idx`);
    /// `values` (`[nnz, embedding_dim]`) their summed gradients.
    Sparse {
        /// I32 `[nnz]`: the rows, distinct and ascending.
        indices: GpuTensor,
        /// `[nnz, embedding_dim]`: their gradients.
        values: GpuTensor,
        /// Rows of the table the gradient is for.
        num_embeddings: usize,
    },
}

/// The backward arguments of `nn.Embedding` / `nn.EmbeddingBag`:
/// `GradOptions::default()` and its setters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GradOptions {
    /// Divide each row's gradient by how often the row occurs in the batch.
    pub scale_grad_by_freq: bool,
    /// Return a sparse gradient.
    pub sparse: bool,
}

impl GradOptions {
    /// Sets `scale_grad_by_freq`.
    pub fn scale_grad_by_freq(mut self, scale: bool) -> Self {
        self.scale_grad_by_freq = scale;
        self
    }

    /// Sets `sparse`.
    pub fn sparse(mut self, sparse: bool) -> Self {
        self.sparse = sparse;
        self
    }
}

/// The gradients of an `EmbeddingBag` backward.
#[derive(Debug, Clone)]
pub struct BagGradients {
    /// The table's gradient.
    pub weight: Gradient,
    /// With per-sample weights: their gradient, shaped like the input.
    pub per_sample_weights: Option<GpuTensor>,
}

/// A flat list a backward reads: from the host, or already on the GPU (flat, checked).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Flat<'a, T> {
    Host(&'a [T]),
    Gpu(&'a GpuTensor),
}

impl<T: bytemuck::Pod> Flat<'_, T> {
    fn len(&self) -> u64 {
        match self {
            Flat::Host(v) => v.len() as u64,
            Flat::Gpu(t) => t.numel() as u64,
        }
    }

    /// One buffer holding the list: an upload, or the tensor's own (a one-segment copy
    /// recorded into `encoder` when it has several).
    fn buffer(&self, ctx: &Context, encoder: &mut Recording<'_>, label: &str) -> Result<wgpu::Buffer> {
        match self {
            Flat::Host(v) => Ok(upload(ctx, label, v)),
            Flat::Gpu(t) => Ok(t.resegment(ctx, encoder, self.len().max(1))?.segments()[0].buffer.clone()),
        }
    }
}

/// Which output-gradient row an index position reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sources<'a> {
    /// Row `position / group` (Embedding: 1; the K interleaved indices of the BERT block: K).
    Positions { group: u32 },
    /// The position's bag (with its factor: weight, 1 / size, or the max's argmax).
    Bags { bounds: &'a [u32], mode: BagMode, weights: Option<Flat<'a, f32>> },
}

/// What a table gradient scatters: host-checked rows and where their gradients come from.
pub(crate) struct Scatter<'a> {
    pub rows: Flat<'a, i32>,
    pub sources: Sources<'a>,
    pub padding_idx: Option<u32>,
    pub num_embeddings: usize,
    pub dim: usize,
    pub options: GradOptions,
}

fn flat_segment(buffer: &wgpu::Buffer, rows: u64) -> Segment {
    Segment { buffer: buffer.clone(), first_row: 0, rows, lease: None }
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

/// The runs of the sorted list (one per distinct row) on the GPU: the scanned run
/// heads (`[n + 1]`, the last is the count) and `(first entry, row)` per run.
struct Runs {
    prefix: wgpu::Buffer,
    runs: wgpu::Buffer,
}

/// An optimizer step fused into the backward (FBGEMM's fused sparse update): `kernel`
/// updates `table` (and `states`, segmented like it) in place from each run's gradient
/// sum, which is never written out. Its bindings are the run sums' (the output
/// gradient as the input, chunk sums, entries, runs and slot ranges as `Extra(0..4)`),
/// then `extra` from `Extra(4)` on.
pub(crate) struct FusedStep<'a> {
    pub table: &'a GpuTensor,
    pub states: [Option<&'a GpuTensor>; 2],
    pub kernel: &'a Kernel,
    /// `PassParams::mode` of the kernel (the optimizer).
    pub mode: u32,
    /// One invocation per run (row-wise optimizers), else per run and column block.
    pub per_row: bool,
    pub extra: &'a [wgpu::Buffer],
}

/// Records the run sums of `plan` (`reduce`, whose own extra buffers follow the run
/// buffers) into `out` (dense: the rows of the table; sparse: one row per run), after
/// `segment_slots` found each output segment's runs.
#[allow(clippy::too_many_arguments)]
fn record_runs(
    ctx: &Context,
    encoder: &mut Recording<'_>,
    plan: &GroupPlan<'_>,
    reduce: &Call<'_>,
    runs: &Runs,
    sums: &[wgpu::Buffer; 2],
    out: &GpuTensor,
    beside_out: [Option<&GpuTensor>; 2],
) {
    let segment_rows: Vec<[u32; 2]> = out.segments().iter().map(|s| [s.first_row as u32, s.rows as u32]).collect();
    let slot_ranges = words(ctx, "slot-ranges", 2 * segment_rows.len() as u64);
    let extra = [runs.prefix.clone(), runs.runs.clone(), upload(ctx, "segment-rows", &segment_rows), slot_ranges.clone()];
    let p =
        PassParams { rows: segment_rows.len() as u32, index_count: plan.entries as u32, flags: reduce.params.flags, ..Default::default() };
    let call = Call { extra: &extra, ..Call::new(&SEGMENT_SLOTS, &[], Grid::Elements(1), p) };
    record_flat(ctx, encoder, &call, None, None, segment_rows.len() as u64);
    let mut extra = sums.to_vec();
    extra.extend([runs.runs.clone(), slot_ranges]);
    extra.extend_from_slice(reduce.extra);
    let call = Call { extra: &extra, ..Call::new(reduce.kernel, reduce.constants, reduce.grid, reduce.params) };
    plan.record_groups(ctx, encoder, &call, out, beside_out);
}

/// The sorted list of a scatter, compacted into runs and ready to be summed: what
/// [`prepare_runs`] recorded.
struct PreparedRuns<'a> {
    plan: GroupPlan<'a>,
    runs: Runs,
    /// Chunk sums and entries (bindings 17 and 16 of the run sums).
    sums: [wgpu::Buffer; 2],
    reduce_kernel: &'static Kernel,
    /// `WIDTH` and `GROUPS`.
    constants: [(&'static str, f64); 2],
    /// Invocations per run: column groups / GROUPS.
    blocks: u64,
    /// The run sums' pass fields (bag mode, flags).
    params: PassParams,
}

impl PreparedRuns<'_> {
    fn reduce_call(&self) -> Call<'_> {
        Call::new(self.reduce_kernel, &self.constants, Grid::Elements(self.blocks), self.params)
    }
}

/// Records, into `encoder`, the sort of `s.rows` by row, the entries (source row,
/// factor) of the sorted list, the chunk sums of hot rows, and the runs of distinct
/// rows; `grad` is the output gradient (rows of `s.dim`), `argmax` the forward's for
/// max bags (`[B, D]` U32).
fn prepare_runs<'a>(
    ctx: &Context,
    encoder: &mut Recording<'_>,
    s: &Scatter<'_>,
    grad: &'a GpuTensor,
    argmax: Option<&'a GpuTensor>,
) -> Result<PreparedRuns<'a>> {
    let n = s.rows.len();
    check_list_len(ctx, "indices", n, 8)?;
    let v = s.num_embeddings as u32;
    let d = s.dim;
    let width = if d.is_multiple_of(4) { 4 } else { 1 };
    let column_groups = (d / width) as u64;
    // Column groups per run-sum invocation: several on CPU adapters, where an invocation
    // costs more than its loads. Chunks are short enough that a hot row is summed by many
    // invocations, long enough that an invocation walks few chunk sums (lavapipe stops
    // loops at 65 535 iterations; a run costs at most groups × (2 chunk + entries /
    // chunk) of them), and the chunk sums fit one binding.
    let chunk_for = |groups: u64| 32u64.max((n * groups).div_ceil(30_000)).max((n * d as u64 * 4).div_ceil(ctx.max_binding_size()));
    let mut groups = if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu { column_groups.min(8) } else { 1 };
    if 2 * chunk_for(groups) * groups > 30_000 {
        groups = 1;
    }
    let chunk = chunk_for(groups);
    let constants = [("WIDTH", width as f64)];
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
    let mut flags = if s.options.sparse { FLAG_SPARSE } else { 0 };
    if s.options.scale_grad_by_freq {
        flags |= FLAG_SCALE_BY_FREQ;
    }
    let plan = GroupPlan { source: grad, aux: argmax, entries: n, chunk };
    let idx = s.rows.buffer(ctx, encoder, "indices")?;
    let bounds = upload(ctx, "bag-bounds", bag_bounds.unwrap_or(&[0]));
    let weights_buffer = weights.unwrap_or(Flat::Host(&[0.0])).buffer(ctx, encoder, "sample-weights")?;
    let (sorted_keys, entries, runs) = if n <= SHORT_LIST {
        let (sorted_keys, entries) = (words(ctx, "sorted-keys", n), words(ctx, "entries", 2 * n));
        let runs = Runs { prefix: words(ctx, "run-heads", n + 1), runs: words(ctx, "runs", 2 * (n + 1)) };
        let p =
            PassParams { mode, arg0: active_end, arg2: group, arg3: bags, flags: if weights.is_some() { HAS_WEIGHTS } else { 0 }, ..base };
        let extra = [bounds, weights_buffer, sorted_keys.clone(), runs.prefix.clone(), entries.clone(), runs.runs.clone()];
        let call = Call { extra: &extra, ..Call::new(&PREPARE_SHORT_LIST, &[], Grid::RowsPerGroup(n.max(1)), p) };
        record_flat(ctx, encoder, &call, Some(&flat_segment(&idx, n)), None, n.max(1));
        (sorted_keys, entries, runs)
    } else {
        let (keys, positions, counted) = (words(ctx, "keys", n), words(ctx, "positions", n), words(ctx, "counted", n + 1));
        let p = PassParams { arg0: active_end, ..base };
        let call =
            Call { extra: &[keys.clone(), positions.clone(), counted.clone()], ..Call::new(&POSITION_KEYS, &[], Grid::Elements(1), p) };
        record_flat(ctx, encoder, &call, Some(&flat_segment(&idx, n)), None, n + 1);
        let (sorted_keys, sorted_positions) = record_sort(ctx, encoder, &keys, &positions, n);
        let prefix = if mode == MODE_MEAN { record_exclusive_scan(ctx, encoder, &counted, n + 1) } else { words(ctx, "unused", 1) };
        let entries = words(ctx, "entries", 2 * n);
        let p = PassParams { mode, arg2: group, arg3: bags, flags: if weights.is_some() { HAS_WEIGHTS } else { 0 }, ..base };
        let extra = [sorted_positions, bounds, weights_buffer, prefix, entries.clone()];
        record_flat(ctx, encoder, &Call { extra: &extra, ..Call::new(&GATHER_ENTRIES, &[], Grid::Elements(1), p) }, None, None, n);
        // The runs: heads of distinct rows (padding's sorted-last key excluded), scanned.
        let heads = words(ctx, "heads", n + 1);
        let extra = [sorted_keys.clone(), heads.clone()];
        record_flat(ctx, encoder, &Call { extra: &extra, ..Call::new(&RUN_HEADS, &[], Grid::Elements(1), base) }, None, None, n + 1);
        let prefix = record_exclusive_scan(ctx, encoder, &heads, n + 1);
        let runs = Runs { prefix: prefix.clone(), runs: words(ctx, "runs", 2 * (n + 1)) };
        let extra = [sorted_keys.clone(), heads, prefix, runs.runs.clone()];
        record_flat(ctx, encoder, &Call { extra: &extra, ..Call::new(&COMPACT_RUNS, &[], Grid::Elements(1), base) }, None, None, n + 1);
        (sorted_keys, entries, runs)
    };
    let chunk_sums = words(ctx, "chunk-sums", (n / chunk) * d as u64);
    let extra = [chunk_sums.clone(), entries.clone(), sorted_keys];
    let p = PassParams { mode, ..base };
    plan.record_chunks(ctx, encoder, &Call { extra: &extra, ..Call::new(&CHUNK_SUMS, &constants, Grid::Elements(column_groups), p) });
    Ok(PreparedRuns {
        plan,
        runs,
        sums: [chunk_sums, entries],
        reduce_kernel: if width == 4 { &REDUCE_RUNS4 } else { &REDUCE_RUNS },
        constants: [("WIDTH", width as f64), ("GROUPS", groups as f64)],
        blocks: column_groups.div_ceil(groups),
        params: PassParams { mode, flags, ..base },
    })
}

/// The gradient of the table that `s.rows` index, from the output gradient `grad`
/// (rows of `s.dim`) and, for max bags, the forward's argmax (`[B, D]` U32).
pub(crate) async fn table_gradient(ctx: &Context, s: &Scatter<'_>, grad: &GpuTensor, argmax: Option<&GpuTensor>) -> Result<Gradient> {
    let d = s.dim;
    let dense_out = if s.options.sparse {
        None
    } else {
        Some(GpuTensor::zeros_with(ctx, &[s.num_embeddings, d], DType::F32, d, BagPlan::bags_per_segment(ctx, d)?)?)
    };
    let prepared = ctx.scoped(|| {
        let mut encoder = ctx.encoder();
        let prepared = prepare_runs(ctx, &mut encoder, s, grad, argmax)?;
        if let Some(out) = &dense_out {
            record_runs(ctx, &mut encoder, &prepared.plan, &prepared.reduce_call(), &prepared.runs, &prepared.sums, out, [None, None]);
        }
        ctx.submit(encoder)?;
        Ok(prepared)
    })?;
    if let Some(out) = dense_out {
        return Ok(Gradient::Dense(out));
    }
    // Sparse: as many rows as runs (one word read back), then their sums.
    let n = s.rows.len();
    let count = GpuTensor::from_buffer(prepared.runs.prefix.clone(), &[n as usize + 1], DType::U32);
    let nnz = read_last_word(ctx, &count).await? as usize;
    let values = GpuTensor::zeros_with(ctx, &[nnz, d], DType::F32, d, BagPlan::bags_per_segment(ctx, d)?)?;
    let rows = GpuTensor::zeros(ctx, &[nnz], DType::I32, 1)?;
    ctx.scoped(|| {
        let mut encoder = ctx.encoder();
        let PreparedRuns { plan, runs, sums, .. } = &prepared;
        record_runs(ctx, &mut encoder, plan, &prepared.reduce_call(), runs, sums, &values, [None, None]);
        // The rows: the second word of each run.
        let p = PassParams { index_count: nnz as u32, ..prepared.params };
        let call = Call { extra: std::slice::from_ref(&runs.runs), ..Call::new(&RUN_ROWS, &[], Grid::Elements(1), p) };
        record_flat(ctx, &mut encoder, &call, None, Some(&rows.segments()[0]), nnz as u64);
        ctx.submit(encoder)
    })?;
    Ok(Gradient::Sparse { indices: rows, values, num_embeddings: s.num_embeddings })
}

/// Applies `step` to the table that `s.rows` index with their gradient from `grad`
/// (one source segment), without writing the gradient anywhere.
/// Only the step itself is guarded: on a bad GPU-resident index it writes nothing.
pub(crate) fn record_fused_table_step(run: &mut Recording<'_>, s: &Scatter<'_>, grad: &GpuTensor, step: &FusedStep<'_>) -> Result<()> {
    let ctx = run.context();
    if grad.segments().len() != 1 {
        return Err(Error::Unsupported(format!(
            "a fused step reads the output gradient from one binding; one of shape {:?} spans {}",
            grad.shape(),
            grad.segments().len()
        )));
    }
    run.scoped(|run| {
        let prepared = prepare_runs(ctx, run, s, grad, None)?;
        let grid = Grid::Elements(if step.per_row { 1 } else { prepared.blocks });
        // Table rows, not slots: the runs' own rows are updated.
        let params = PassParams { mode: step.mode, flags: 0, ..prepared.params };
        let call = Call { extra: step.extra, ..Call::new(step.kernel, &prepared.constants, grid, params) };
        run.guarded(|run| record_runs(ctx, run, &prepared.plan, &call, &prepared.runs, &prepared.sums, step.table, step.states));
        Ok(())
    })
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

/// The per-sample weights of host bags, with the shape they were given in.
fn host_weights<'a>(bags: &'a HostBags, per_sample_weights: PerSampleWeights<'a>) -> Option<(Flat<'a, f32>, &'a [usize])> {
    bags.weights.as_deref().zip(per_sample_weights.map(|(_, shape)| shape)).map(|(w, shape)| (Flat::Host(w), shape))
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

/// The gradient options of fused steps.
const SPARSE: GradOptions = GradOptions { sparse: true, scale_grad_by_freq: false };

/// PyTorch's refusal: `scale_grad_by_freq` with a sparse gradient.
fn check_embedding_options(options: GradOptions) -> Result<()> {
    if options.sparse && options.scale_grad_by_freq {
        return Err(Error::arg("scale_grad_by_freq", "embedding_backward: scale_grad_by_freq not supported with sparse gradients"));
    }
    Ok(())
}

impl Embedding {
    /// The gradient of `sum(forward(indices) * grad_out)` with respect to the table, as
    /// PyTorch's autograd gives it: `padding_idx` rows get none; with
    /// `scale_grad_by_freq` each row's gradient is divided by how often it occurs in
    /// `indices`; `sparse` returns it coalesced. `grad_out` has shape `[*indices, D]`.
    /// A sparse gradient awaits its row count (one read-back); a dense one resolves at
    /// once.
    ///
    /// # Errors
    /// An index outside the table, a `grad_out` of another shape, or PyTorch's refusal of
    /// `scale_grad_by_freq` with `sparse`, before any GPU work.
    pub async fn backward(&self, ctx: &Context, indices: Indices<'_>, grad_out: &GpuTensor, options: GradOptions) -> Result<Gradient> {
        check_embedding_options(options)?;
        let rows = self.checked_rows(indices, grad_out)?;
        table_gradient(ctx, &self.scatter(Flat::Host(&rows), options), grad_out, None).await
    }

    /// The rows of host `indices`, range-checked, with `grad_out` checked against them.
    fn checked_rows(&self, indices: Indices<'_>, grad_out: &GpuTensor) -> Result<Vec<i32>> {
        indices.check_shape("indices")?;
        let mut shape = indices.shape.to_vec();
        shape.push(self.embedding_dim());
        check_grad(grad_out, &shape)?;
        indices.to_rows("indices", self.num_embeddings() as u64)
    }

    /// Backward and `step` in one: the table rows `indices` read are updated from their
    /// gradient, which is never written out (the optimizer's fused sparse step).
    pub(crate) fn record_fused_step(
        &self,
        run: &mut Recording<'_>,
        indices: Indices<'_>,
        grad_out: &GpuTensor,
        step: &FusedStep<'_>,
    ) -> Result<()> {
        let rows = self.checked_rows(indices, grad_out)?;
        record_fused_table_step(run, &self.scatter(Flat::Host(&rows), SPARSE), grad_out, step)
    }

    /// [`Embedding::record_fused_step`] for indices already on the GPU: bounds-checked
    /// in the same recording, the step guarded by the check.
    pub(crate) fn record_fused_step_gpu(
        &self,
        run: &mut Recording<'_>,
        indices: &GpuTensor,
        grad_out: &GpuTensor,
        step: &FusedStep<'_>,
    ) -> Result<()> {
        let indices = &indices.flat_rows();
        let mut shape = indices.shape().to_vec();
        shape.push(self.embedding_dim());
        check_grad(grad_out, &shape)?;
        check_list_len(run.context(), "indices", indices.numel() as u64, 8)?;
        run.check_indices("indices", indices, self.num_embeddings() as u64)?;
        record_fused_table_step(run, &self.scatter(Flat::Gpu(indices), SPARSE), grad_out, step)
    }

    /// [`Embedding::backward`] for indices already on the GPU (a flat I32 tensor of any
    /// shape). A check kernel bounds-checks them first: the first bad one is reported as
    /// [`Error::IndexOutOfRange`] and nothing runs (one read-back of the check).
    pub async fn backward_gpu(&self, ctx: &Context, indices: &GpuTensor, grad_out: &GpuTensor, options: GradOptions) -> Result<Gradient> {
        check_embedding_options(options)?;
        let mut shape = indices.shape().to_vec();
        shape.push(self.embedding_dim());
        check_grad(grad_out, &shape)?;
        check_list_len(ctx, "indices", indices.numel() as u64, 8)?;
        ctx.run_checked(|run| run.check_indices("indices", indices, self.num_embeddings() as u64)).await?;
        table_gradient(ctx, &self.scatter(Flat::Gpu(indices), options), grad_out, None).await
    }

    fn scatter<'a>(&self, rows: Flat<'a, i32>, options: GradOptions) -> Scatter<'a> {
        Scatter {
            rows,
            sources: Sources::Positions { group: 1 },
            padding_idx: self.padding_idx(),
            num_embeddings: self.num_embeddings(),
            dim: self.embedding_dim(),
            options,
        }
    }
}

impl EmbeddingBag {
    /// The gradients of `sum(forward(input, offsets, per_sample_weights) * grad_out)`
    /// (`grad_out`: `[B, D]`) with respect to the table and the per-sample weights, as
    /// PyTorch's autograd gives them. Max sends each column's gradient to the row the
    /// forward chose (recomputed here from the table); PyTorch's refusals (sparse or
    /// `scale_grad_by_freq` with max) come back as errors.
    ///
    /// # Errors
    /// PyTorch's refusals of the arguments, before any GPU work.
    pub async fn backward(
        &self,
        ctx: &Context,
        input: Indices<'_>,
        offsets: Option<Indices<'_>>,
        per_sample_weights: PerSampleWeights<'_>,
        grad_out: &GpuTensor,
        options: GradOptions,
    ) -> Result<BagGradients> {
        let bags = self.checked_bags(input, offsets, per_sample_weights, options)?;
        self.bag_grads(ctx, Flat::Host(&bags.rows), &bags.bounds, host_weights(&bags, per_sample_weights), grad_out, options).await
    }

    /// Backward and `step` in one: the table rows the bags read are updated from their
    /// gradient, which is never written out (the optimizer's fused sparse step).
    /// Returns the gradient of the per-sample weights, if given (from the table before
    /// the step).
    pub(crate) fn record_fused_step(
        &self,
        run: &mut Recording<'_>,
        input: Indices<'_>,
        offsets: Option<Indices<'_>>,
        per_sample_weights: PerSampleWeights<'_>,
        grad_out: &GpuTensor,
        step: &FusedStep<'_>,
    ) -> Result<Option<GpuTensor>> {
        let bags = self.checked_bags(input, offsets, per_sample_weights, SPARSE)?;
        let weights = host_weights(&bags, per_sample_weights);
        let rows = Flat::Host(&bags.rows);
        let (_, sample_grads) = self.bag_side_grads(run, rows, &bags.bounds, weights, grad_out)?;
        record_fused_table_step(run, &self.scatter(rows, &bags.bounds, weights, SPARSE), grad_out, step)?;
        Ok(sample_grads)
    }

    /// [`EmbeddingBag::backward`] with `input` (1-D with `offsets`, or 2-D) and
    /// `per_sample_weights` (F32, same shape) already on the GPU, as I32. A check kernel
    /// bounds-checks the indices first: the first bad one is reported as
    /// [`Error::IndexOutOfRange`] and nothing runs (one read-back of the check).
    pub async fn backward_gpu(
        &self,
        ctx: &Context,
        input: &GpuTensor,
        offsets: Option<Indices<'_>>,
        per_sample_weights: Option<&GpuTensor>,
        grad_out: &GpuTensor,
        options: GradOptions,
    ) -> Result<BagGradients> {
        self.check_options(options)?;
        let bounds = plan_gpu_bounds(input, offsets, per_sample_weights, self.mode(), self.include_last_offset())?;
        check_list_len(ctx, "input", input.numel() as u64, 8)?;
        ctx.run_checked(|run| run.check_indices("input", input, self.num_embeddings() as u64)).await?;
        let weights = per_sample_weights.map(|w| (Flat::Gpu(w), w.shape()));
        self.bag_grads(ctx, Flat::Gpu(input), &bounds, weights, grad_out, options).await
    }

    /// Host bags of checked arguments (PyTorch's refusals first).
    fn checked_bags(
        &self,
        input: Indices<'_>,
        offsets: Option<Indices<'_>>,
        per_sample_weights: PerSampleWeights<'_>,
        options: GradOptions,
    ) -> Result<HostBags> {
        self.check_options(options)?;
        plan_bags(input, offsets, per_sample_weights, self.mode(), self.include_last_offset(), self.num_embeddings())
    }

    /// PyTorch's refusals: sparse or `scale_grad_by_freq` with max.
    fn check_options(&self, options: GradOptions) -> Result<()> {
        if self.mode() == BagMode::Max && options.sparse {
            return Err(Error::arg("sparse", "embedding_bag: max mode does not support sparse weights"));
        }
        if self.mode() == BagMode::Max && options.scale_grad_by_freq {
            return Err(Error::arg("scale_grad_by_freq", "embedding_bag: max mode does not support scaling the gradient by the frequency"));
        }
        Ok(())
    }

    /// The gradients of checked bags: `rows` in bags `bounds`, per-sample weights with
    /// the input's shape.
    async fn bag_grads(
        &self,
        ctx: &Context,
        rows: Flat<'_, i32>,
        bounds: &[u32],
        weights: Option<(Flat<'_, f32>, &[usize])>,
        grad_out: &GpuTensor,
        options: GradOptions,
    ) -> Result<BagGradients> {
        let (argmax, sample_grads) = ctx.run_now(|run| self.bag_side_grads(run, rows, bounds, weights, grad_out))?;
        let weight = table_gradient(ctx, &self.scatter(rows, bounds, weights, options), grad_out, argmax.as_ref()).await?;
        Ok(BagGradients { weight, per_sample_weights: sample_grads })
    }

    fn scatter<'a>(
        &self,
        rows: Flat<'a, i32>,
        bounds: &'a [u32],
        weights: Option<(Flat<'a, f32>, &[usize])>,
        options: GradOptions,
    ) -> Scatter<'a> {
        Scatter {
            rows,
            sources: Sources::Bags { bounds, mode: self.mode(), weights: weights.map(|(w, _)| w) },
            padding_idx: self.padding_idx(),
            num_embeddings: self.num_embeddings(),
            dim: self.embedding_dim(),
            options,
        }
    }

    /// What checked bags need besides the table's gradient: the argmax per (bag,
    /// column) of max bags, recomputed from the table, and the gradient of the
    /// per-sample weights (`[B, D]` `grad_out` checked).
    fn bag_side_grads(
        &self,
        run: &mut Recording<'_>,
        rows: Flat<'_, i32>,
        bounds: &[u32],
        weights: Option<(Flat<'_, f32>, &[usize])>,
        grad_out: &GpuTensor,
    ) -> Result<(Option<GpuTensor>, Option<GpuTensor>)> {
        let ctx = run.context();
        let mode = self.mode();
        let (v, d) = (self.num_embeddings(), self.embedding_dim());
        let b = bounds.len() - 1;
        check_grad(grad_out, &[b, d])?;
        let n = rows.len();
        check_list_len(ctx, "input", n, 8)?;
        let padding = self.padding_idx().unwrap_or(NO_PADDING);
        let table = self.weight();
        let format = table_format(table.dtype())?;
        let access = TableAccess::rows(table);
        let active_end = bounds[b];
        let params = PassParams { rows: b as u32, dim: d as u32, num_embeddings: v as u32, padding_idx: padding, ..Default::default() };
        let needs_whole = mode == BagMode::Max || weights.is_some();
        let whole =
            if needs_whole { Some(whole_bag_grad(ctx, grad_out, "embedding_bag backward (max, per_sample_weights)")?) } else { None };
        run.scoped(|encoder| {
            let idx = rows.buffer(ctx, encoder, "indices")?;
            let idx = flat_segment(&idx, n);
            let bounds = upload(ctx, "bag-bounds", bounds);
            let constants = [("TABLE_FORMAT", format)];
            let argmax = if mode == BagMode::Max {
                let (values, positions) = (words(ctx, "argmax-values", (b * d) as u64), words(ctx, "argmax", (b * d) as u64));
                let extra = [bounds.clone(), values, positions.clone()];
                let call = Call { extra: &extra, ..Call::new(&BAG_ARGMAX, &constants, Grid::Elements(d as u64), params) };
                SlicePlan { table: &access, input: Some(&idx), out: None }.record(ctx, encoder, &call, b as u64);
                // Read beside the gradient's one segment, element for element.
                Some(GpuTensor::from_buffer(positions, &[b * d], DType::U32))
            } else {
                None
            };
            let sample_grads = if let (Some((_, shape)), Some(grad)) = (weights, whole) {
                let out = GpuTensor::zeros_with(ctx, shape, DType::F32, 1, n.max(1))?;
                let extra = [bounds, grad.buffer.clone()];
                let p = PassParams { index_count: n as u32, arg0: active_end, arg3: b as u32, ..params };
                let call = Call { extra: &extra, ..Call::new(&SAMPLE_WEIGHT_GRADS, &constants, Grid::Elements(1), p) };
                SlicePlan { table: &access, input: Some(&idx), out: Some(&out.segments()[0]) }.record(ctx, encoder, &call, n);
                Some(out)
            } else {
                None
            };
            Ok((argmax, sample_grads))
        })
    }
}
