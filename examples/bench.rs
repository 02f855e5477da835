//! Bandwidth benchmark: a plain vec4 copy (the ceiling), Embedding lookup and
//! EmbeddingBag sum/mean/max over a grid of table rows, dims, bag sizes and index
//! distributions, each in GB/s counted as FBGEMM's TBE bench counts it (table rows
//! read plus output written) and as a ratio to the copy kernel measured in the same run, beside
//! a multithreaded CPU baseline. Writes `results.csv`, `summary.md` and SVG plots.
//!
//! ```text
//! cargo run --release --features bench --example bench -- [--full] [--out examples/bench-results]
//! ```
//!
//! GPU time comes from timestamp queries when the adapter has them (else wall clock
//! around submit + wait); each point is the median of `--reps` runs after a warm-up.

use std::fmt::Write as _;
use std::path::PathBuf;
use wgpu_embed::Block;

use clap::Parser;
use plotters::prelude::*;
use wgpu_embed::bench::{bag_tensors, lookup_tensors, GpuTimer, Recorder};
use wgpu_embed::Recording;
use wgpu_embed::{
    BagMode, Context, ContextOptions, Embedding, EmbeddingBag, EmbeddingSumLayerNorm, GpuTensor, GradOptions, Gradient, HostTable, Indices,
    LayerNorm, Metric, Optimizer, OptimizerKind, Pooling, QuantizedEmbeddingBag, QuantizedTable, Retriever, Scheme, StableEmbedding,
    TableBatchedEmbeddingBags, TableReads,
};

#[derive(Parser)]
#[command(about = "Embedding kernels against the device's copy bandwidth")]
struct Args {
    /// The full grid (rows 1e3..1e6, dims 4..1024, bags 1..1000); takes long on a CPU adapter.
    #[arg(long)]
    full: bool,
    /// Folder for results.csv, summary.md and the plots.
    #[arg(long, default_value = "examples/bench-results")]
    out: PathBuf,
    /// Timed repetitions per point (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 9)]
    reps: usize,
    /// Bytes each timed call moves (rows read + output written), in MiB.
    #[arg(long, default_value_t = 32)]
    budget_mib: usize,
    /// Adapter whose name contains this text.
    #[arg(long)]
    adapter: Option<String>,
    /// Override the grid's dims (comma-separated), for quick experiments.
    #[arg(long, value_delimiter = ',')]
    dims: Option<Vec<usize>>,
    /// Override the grid's table rows.
    #[arg(long, value_delimiter = ',')]
    rows: Option<Vec<usize>>,
    /// Override the grid's bag sizes.
    #[arg(long, value_delimiter = ',')]
    bags: Option<Vec<usize>>,
    /// Which parts to run (comma-separated): kernels (lookups and bags), layers (whole
    /// layers through the public API), optimizers, tbe (table-batched bags), topk, small (per-call latency),
    /// pipelines (recorded pipelines of calls against the floor).
    #[arg(long, value_delimiter = ',', default_value = "kernels,layers,optimizers,tbe,topk,small,pipelines")]
    sections: Vec<String>,
    /// Largest table to build, in MiB (bigger grid points are skipped).
    #[arg(long, default_value_t = 1024)]
    max_table_mib: usize,
    /// Where lookups and bags read table rows from: auto, buffer or texture. When it
    /// comes to texture copies, lookup and bag_sum are also timed reading buffers.
    #[arg(long, default_value = "auto")]
    table_reads: TableReads,
}

/// xorshift: fast, deterministic data and indices.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Dist {
    Uniform,
    Zipf,
}

impl Dist {
    fn name(self) -> &'static str {
        match self {
            Dist::Uniform => "uniform",
            Dist::Zipf => "zipf",
        }
    }
}

/// `n` indices below `rows`: uniform, or Zipf with exponent 1.05 (row 0 hottest).
fn indices(n: usize, rows: usize, dist: Dist, seed: u64) -> Vec<i32> {
    let mut rng = Rng(seed | 1);
    match dist {
        Dist::Uniform => (0..n).map(|_| (rng.next() % rows as u64) as i32).collect(),
        Dist::Zipf => {
            let mut cdf = Vec::with_capacity(rows);
            let mut acc = 0.0;
            for k in 1..=rows {
                acc += 1.0 / (k as f64).powf(1.05);
                cdf.push(acc);
            }
            (0..n).map(|_| cdf.partition_point(|&c| c < rng.unit() * acc).min(rows - 1) as i32).collect()
        }
    }
}

/// The TBE sections' inputs at FBGEMM's bench shape `(B, T, L, E)`: T tables of E
/// rows, B bags of L ids per feature (flat, feature-major, with FBGEMM's offsets) and the
/// same ids per table with one table's bag offsets, for the separate `EmbeddingBag` calls.
struct TbeInputs {
    tables: Vec<Vec<f32>>,
    ids: Vec<Vec<i32>>,
    flat: Vec<i32>,
    offsets: Vec<i32>,
    bag_offsets: Vec<i32>,
}

impl TbeInputs {
    /// `seeds`: the tables' (times D) and the first feature's ids'.
    fn new((b, t, l, e): (usize, usize, usize, usize), dim: usize, dist: Dist, seeds: (u64, u64)) -> Self {
        let mut rng = Rng(dim as u64 * seeds.0 + t as u64);
        let tables: Vec<Vec<f32>> = (0..t).map(|_| (0..e * dim).map(|_| rng.unit() as f32 - 0.5).collect()).collect();
        let ids: Vec<Vec<i32>> = (0..t).map(|f| indices(b * l, e, dist, seeds.1 + f as u64)).collect();
        TbeInputs {
            tables,
            flat: ids.concat(),
            ids,
            offsets: (0..=(t * b) as i32).map(|i| i * l as i32).collect(),
            bag_offsets: (0..b as i32).map(|i| i * l as i32).collect(),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One measured point.
struct Point {
    kernel: String,
    rows: usize,
    dim: usize,
    bag: usize,
    dist: &'static str,
    bytes: f64,
    gpu_s: f64,
    wall_s: f64,
    cpu_s: f64,
    /// The paired copy kernel's seconds for `copy_bytes`.
    copy_s: f64,
}

impl Point {
    /// A whole layer timed through the public API (wall clock, no CPU baseline).
    fn layer(kernel: String, rows: usize, dim: usize, bag: usize, bytes: f64, gpu_s: f64, copy_s: f64) -> Self {
        Point { kernel, rows, dim, bag, dist: "uniform", bytes, gpu_s, wall_s: gpu_s, cpu_s: f64::NAN, copy_s }
    }
}

/// Kernels recorded into an encoder on a context.
type Work<'a> = dyn Fn(&Context, &mut Recording<'_>) -> wgpu_embed::Result<()> + 'a;

/// Median GPU seconds of `reps` runs of `work` after a warm-up (timestamps, else wall
/// clock), and the median wall-clock seconds. With `copy`, each run is paired with a run
/// of the copy kernel right before it, and the copy's median comes third: ratios then
/// compare runs under the same conditions even when the machine is busy.
fn time_gpu(
    ctx: &Context,
    timer: &GpuTimer,
    reps: usize,
    copy: Option<&Work>,
    work: impl Fn(&Context, &mut Recording<'_>) -> wgpu_embed::Result<()>,
) -> (f64, f64, f64) {
    let (mut times, mut walls, mut copies) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=reps {
        if let Some(copy) = copy {
            let (gpu, wall) = timer.time(ctx, |e| copy(ctx, e)).expect("GPU copy");
            copies.push(gpu.unwrap_or(wall));
        }
        let (gpu, wall) = timer.time(ctx, |e| work(ctx, e)).expect("GPU run");
        if i > 0 {
            times.push(gpu.unwrap_or(wall));
            walls.push(wall);
        } else {
            copies.clear();
        }
    }
    (median(times), median(walls), if copies.is_empty() { f64::NAN } else { median(copies) })
}

/// Like [`time_gpu`] for a layer's public API (host indices uploaded, output allocated,
/// submitted by the layer): wall clock around the call and the wait.
fn time_layer(
    ctx: &Context,
    timer: &GpuTimer,
    reps: usize,
    copy: &Work,
    mut work: impl FnMut() -> wgpu_embed::Result<GpuTensor>,
) -> wgpu_embed::Result<(f64, f64)> {
    let (mut times, mut copies) = (Vec::new(), Vec::new());
    for i in 0..=reps {
        let (gpu, wall) = timer.time(ctx, |e| copy(ctx, e))?;
        let t = std::time::Instant::now();
        let out = work()?;
        ctx.wait_idle()?;
        let elapsed = t.elapsed().as_secs_f64();
        drop(out);
        if i > 0 {
            times.push(elapsed);
            copies.push(gpu.unwrap_or(wall));
        }
    }
    Ok((median(times), median(copies)))
}

/// One call of a layer's public API, its output left on the GPU.
type LayerWork<'a> = dyn FnMut() -> wgpu_embed::Result<GpuTensor> + 'a;

/// [`time_layer`] for several layers timed in turn within each repetition (after one
/// copy kernel run): their medians, each with the copy's.
fn time_layers_in_turn(
    ctx: &Context,
    timer: &GpuTimer,
    reps: usize,
    copy: &Work,
    works: &mut [Box<LayerWork<'_>>],
) -> Vec<wgpu_embed::Result<(f64, f64)>> {
    let mut times: Vec<wgpu_embed::Result<Vec<f64>>> = works.iter().map(|_| Ok(Vec::new())).collect();
    let mut copies = Vec::new();
    for i in 0..=reps {
        let copy_s = match timer.time(ctx, |e| copy(ctx, e)) {
            Ok((gpu, wall)) => gpu.unwrap_or(wall),
            Err(e) => return works.iter().map(|_| Err(e.clone())).collect(),
        };
        for (work, t) in works.iter_mut().zip(times.iter_mut()) {
            let Ok(list) = t else { continue };
            let start = std::time::Instant::now();
            match work().and_then(|out| ctx.wait_idle().map(|_| out)) {
                Ok(out) => {
                    let elapsed = start.elapsed().as_secs_f64();
                    drop(out);
                    if i > 0 {
                        list.push(elapsed);
                    }
                }
                Err(e) => *t = Err(e),
            }
        }
        if i > 0 {
            copies.push(copy_s);
        }
    }
    let copy_s = median(copies);
    times.into_iter().map(|t| t.map(|list| (median(list), copy_s))).collect()
}

/// The floor of the latency rows: one dispatch of a one-word copy and its read-back,
/// recorded and submitted together as the pipelines are, then awaited.
fn floor_once(ctx: &Context, rec: &Recorder, src: &GpuTensor, dst: &GpuTensor) -> wgpu_embed::Result<Vec<f32>> {
    let mut run = ctx.record();
    rec.copy(ctx, &mut run, src, dst)?;
    let read = run.read(dst);
    Ok(run.submit()?.finish().block()?.f32(read))
}

/// One call of the small-call latency rows, its output read back.
type SmallCall<'a> = dyn FnMut() -> wgpu_embed::Result<Vec<f32>> + 'a;

/// Per-call latency, read-back included, of what a browser user runs: a 16-token
/// sentence through the BERT block (all-MiniLM-L6-v2's shapes) and a 1-index lookup,
/// after the floor (one tiny dispatch plus read-back). Medians of `reps` calls.
fn small_calls(ctx: &Context, rec: &Recorder, reps: usize) -> wgpu_embed::Result<Vec<(&'static str, f64)>> {
    let (vocab, dim, tokens) = (30_522, 384, 16);
    let word: Vec<f32> = (0..vocab * dim).map(|i| ((i as f32) * 0.618).fract() - 0.5).collect();
    let (pos, typ) = (word[..512 * dim].to_vec(), word[..2 * dim].to_vec());
    let tables = [HostTable::f32(&word, vocab, dim)?, HostTable::f32(&pos, 512, dim)?, HostTable::f32(&typ, 2, dim)?];
    let block = EmbeddingSumLayerNorm::new(ctx, &tables, None, None, 1e-12)?;
    let lookup = wgpu_embed::Embedding::from_pretrained(ctx, &word, vocab, dim)?;
    let ids: Vec<i32> = (0..tokens as i32).map(|i| 101 + 97 * i).collect();
    let (positions, types): (Vec<i32>, Vec<i32>) = ((0..tokens as i32).collect(), vec![0; tokens]);
    let shape = [1, tokens];
    let (src, dst) = (GpuTensor::from_f32(ctx, &[1.0; 4], &[1, 4])?, GpuTensor::zeros(ctx, &[1, 4], wgpu_embed::DType::F32, 4)?);
    let mut calls: Vec<(&'static str, Box<SmallCall<'_>>)> = vec![
        ("floor: one-word copy dispatch + read-back", Box::new(|| floor_once(ctx, rec, &src, &dst))),
        (
            "Embedding, 1 index, D = 384 (forward, then read_f32)",
            Box::new(|| lookup.forward(ctx, Indices::i32(&ids[..1], &[1]))?.read_f32(ctx).block()),
        ),
        (
            "Embedding, 1 index, D = 384 (recorded with its read: one submission)",
            Box::new(|| {
                let mut run = ctx.record();
                let rows = lookup.record(&mut run, Indices::i32(&ids[..1], &[1]))?;
                let read = run.read(&rows);
                Ok(run.submit()?.finish().block()?.f32(read))
            }),
        ),
        (
            "BERT embedding block, 16 tokens, D = 384 (forward, then read_f32)",
            Box::new(|| {
                let idx = [Indices::i32(&ids, &shape), Indices::i32(&positions, &shape), Indices::i32(&types, &shape)];
                block.forward(ctx, &idx)?.read_f32(ctx).block()
            }),
        ),
        (
            "BERT embedding block, 16 tokens, D = 384 (recorded with its read: one submission)",
            Box::new(|| {
                let idx = [Indices::i32(&ids, &shape), Indices::i32(&positions, &shape), Indices::i32(&types, &shape)];
                let mut run = ctx.record();
                let hidden = block.record(&mut run, &idx)?;
                let read = run.read(&hidden);
                Ok(run.submit()?.finish().block()?.f32(read))
            }),
        ),
    ];
    let mut out = Vec::new();
    for (name, call) in calls.iter_mut() {
        call()?; // warm-up: pipelines, texture copies
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = std::time::Instant::now();
            call()?;
            times.push(t.elapsed().as_secs_f64());
        }
        out.push((*name, median(times)));
    }
    Ok(out)
}

/// One row of the pipelines section: per call, submissions and blocking waits (from
/// the context's counters) and the median wall time, beside the floor.
struct PipelineRow {
    name: &'static str,
    submissions: f64,
    waits: f64,
    dispatches: f64,
    wall_s: f64,
}

/// Whole pipelines as users run them, recorded (one submission) and one call at a time:
/// 16 tokens through the BERT block (all-MiniLM-L6-v2's shapes), their masked mean, and
/// the top 10 of a 2 518 × 384 int8 row-wise index (the search demo's shape); and a
/// training step (16-token lookup in a 30 522 × 384 table, fused SparseAdam step). The
/// floor is one dispatch of a one-word copy plus its read-back, timed here too.
fn pipelines(ctx: &Context, rec: &Recorder, reps: usize) -> wgpu_embed::Result<(f64, Vec<PipelineRow>)> {
    let (vocab, dim, tokens, docs) = (30_522, 384, 16, 2_518);
    let word: Vec<f32> = (0..vocab * dim).map(|i| ((i as f32) * 0.618).fract() - 0.5).collect();
    let (pos, typ) = (word[..512 * dim].to_vec(), word[..2 * dim].to_vec());
    let tables = [HostTable::f32(&word, vocab, dim)?, HostTable::f32(&pos, 512, dim)?, HostTable::f32(&typ, 2, dim)?];
    let block = EmbeddingSumLayerNorm::new(ctx, &tables, None, None, 1e-12)?;
    let index: Vec<f32> = (0..docs * dim).map(|i| ((i as f32) * 0.377).fract() - 0.5).collect();
    let retriever =
        Retriever::quantized(QuantizedTable::from_pretrained(ctx, &index, docs, dim, Scheme::Int8Rowwise, None)?, Metric::Cosine);
    let ids: Vec<i32> = (0..tokens as i32).map(|i| 101 + 97 * i).collect();
    let (positions, types): (Vec<i32>, Vec<i32>) = ((0..tokens as i32).collect(), vec![0; tokens]);
    let kept: Vec<i32> = (0..13).collect();
    let (shape, token_shape) = ([1, tokens], [tokens]);
    let idx = || [Indices::i32(&ids, &shape), Indices::i32(&positions, &shape), Indices::i32(&types, &shape)];
    let bag_args = || (Indices::i32(&kept, &[13]), Some(Indices::i32(&[0], &[1])));
    let emb = Embedding::from_pretrained(ctx, &word, vocab, dim)?;
    let mut opt = Optimizer::new(ctx, OptimizerKind::SparseAdam { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8 }, emb.weight())?;
    let grad = GpuTensor::from_f32(ctx, &word[..tokens * dim], &[tokens, dim])?;
    let (src, dst) = (GpuTensor::from_f32(ctx, &[1.0; 4], &[1, 4])?, GpuTensor::zeros(ctx, &[1, 4], wgpu_embed::DType::F32, 4)?);

    type Call<'a> = Box<dyn FnMut(&mut Optimizer) -> wgpu_embed::Result<()> + 'a>;
    let mut calls: Vec<(&'static str, Call<'_>)> = vec![
        ("floor", Box::new(|_| floor_once(ctx, rec, &src, &dst).map(drop))),
        (
            "pipeline_embed_pool_search",
            Box::new(|_| {
                let mut run = ctx.record();
                let hidden = block.record(&mut run, &idx())?.reshape(&[tokens, dim])?;
                let (input, offsets) = bag_args();
                let pooled = EmbeddingBag::from_tensor(hidden, BagMode::Mean)?.record(&mut run, input, offsets, None)?;
                let top = retriever.record(&mut run, &pooled, 10)?;
                let (rows, scores) = (run.read(&top.indices), run.read(&top.scores));
                let out = run.submit()?.finish().block()?;
                std::hint::black_box((out.bytes(rows), out.bytes(scores)));
                Ok(())
            }),
        ),
        (
            "pipeline_embed_pool_search_one_call_each",
            Box::new(|_| {
                let hidden = block.forward(ctx, &idx())?.reshape(&[tokens, dim])?;
                let (input, offsets) = bag_args();
                let pooled = EmbeddingBag::from_tensor(hidden, BagMode::Mean)?.forward(ctx, input, offsets, None)?;
                let top = retriever.search_gpu(ctx, &pooled, 10)?;
                std::hint::black_box((top.indices.read_bytes(ctx).block()?, top.scores.read_bytes(ctx).block()?));
                Ok(())
            }),
        ),
        (
            "pipeline_train_step",
            Box::new(|opt| {
                let mut run = ctx.record();
                let idx = Indices::i32(&ids, &token_shape);
                std::hint::black_box(emb.record(&mut run, idx)?);
                opt.record_step_embedding(&mut run, &emb, idx, &grad)?;
                drop(run.submit()?);
                Ok(())
            }),
        ),
    ];
    let mut rows = Vec::new();
    let mut floor = f64::NAN;
    for (name, call) in calls.iter_mut() {
        call(&mut opt)?; // warm-up: pipelines, texture copies
        ctx.wait_idle()?;
        let (mut times, mut submissions, mut waits, mut dispatches) = (Vec::with_capacity(reps), 0u64, 0u64, 0u64);
        for _ in 0..reps {
            let before = ctx.stats();
            let t = std::time::Instant::now();
            call(&mut opt)?;
            let after = ctx.stats();
            // The training step does not wait; its time is until the GPU finished it.
            ctx.wait_idle()?;
            times.push(t.elapsed().as_secs_f64());
            submissions += after.submissions - before.submissions;
            waits += after.waits - before.waits;
            dispatches += after.dispatches - before.dispatches;
        }
        let wall_s = median(times);
        if *name == "floor" {
            floor = wall_s;
            continue;
        }
        rows.push(PipelineRow {
            name,
            submissions: submissions as f64 / reps as f64,
            waits: waits as f64 / reps as f64,
            dispatches: dispatches as f64 / reps as f64,
            wall_s,
        });
    }
    Ok((floor, rows))
}

const OPT_ROWS: usize = 1_000_000;
const OPT_DIM: usize = 64;
const OPT_TOUCHED: usize = 4096;
const OPT_BATCH: usize = 4096;

/// Every optimizer, and whether its bench step takes a sparse gradient.
fn optimizer_kinds() -> Vec<(&'static str, OptimizerKind, bool)> {
    vec![
        ("sgd_sparse", OptimizerKind::Sgd { lr: 0.1, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 }, true),
        (
            "adagrad_sparse",
            OptimizerKind::Adagrad { lr: 0.1, lr_decay: 0.0, eps: 1e-10, weight_decay: 0.0, initial_accumulator_value: 0.0 },
            true,
        ),
        ("sparse_adam", OptimizerKind::SparseAdam { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8 }, true),
        ("rowwise_adagrad", OptimizerKind::RowwiseAdagrad { lr: 0.1, eps: 1e-8, weight_decay: 0.0 }, true),
        ("sgd_momentum_dense", OptimizerKind::Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 }, false),
        ("adam_dense", OptimizerKind::Adam { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, decoupled: false }, false),
        (
            "adam8bit_dense",
            OptimizerKind::Adam8bit { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, blocksize: 256, min_8bit_size: 4096 },
            false,
        ),
    ]
}

/// One optimizer step on the 1 M x 64 table: (bytes moved, median step seconds, paired copy seconds).
fn time_optimizer(
    ctx: &Context,
    timer: &GpuTimer,
    reps: usize,
    copy: &Work,
    kind: OptimizerKind,
    sparse: bool,
) -> wgpu_embed::Result<(f64, f64, f64)> {
    let table = GpuTensor::zeros(ctx, &[OPT_ROWS, OPT_DIM], wgpu_embed::DType::F32, OPT_DIM)?;
    let mut opt = Optimizer::new(ctx, kind, &table)?;
    let states: usize = opt.state_names().iter().filter_map(|n| opt.state(n)).map(|t| t.gpu_bytes() as usize).sum();
    let (grad, bytes) = if sparse {
        let rows: Vec<i32> = (0..OPT_TOUCHED as i32).map(|r| r * (OPT_ROWS / OPT_TOUCHED) as i32).collect();
        let values = GpuTensor::from_f32(ctx, &vec![0.01; OPT_TOUCHED * OPT_DIM], &[OPT_TOUCHED, OPT_DIM])?;
        let indices = GpuTensor::flat(ctx, &rows, wgpu_embed::DType::I32)?;
        let row_bytes = (OPT_DIM * 4) as f64;
        let state_row = states as f64 / OPT_ROWS as f64;
        (Gradient::Sparse { indices, values, num_embeddings: OPT_ROWS }, OPT_TOUCHED as f64 * (3.0 * row_bytes + 2.0 * state_row))
    } else {
        let g = GpuTensor::from_f32(ctx, &vec![0.01; OPT_ROWS * OPT_DIM], &[OPT_ROWS, OPT_DIM])?;
        (Gradient::Dense(g), (OPT_ROWS * OPT_DIM * 4) as f64 * 3.0 + 2.0 * states as f64)
    };
    let (gpu_s, copy_s) = time_layer(ctx, timer, reps, copy, || opt.step(ctx, &table, &grad).block().map(|_| table.clone()))?;
    Ok((bytes, gpu_s, copy_s))
}

/// One training step of an `Embedding` on the 1 M x 64 table from a batch of
/// `OPT_BATCH` indices (Zipf-distributed, so rows repeat): backward (sparse) then step,
/// or the two fused. Returns (bytes: the output gradient read, the touched rows'
/// table and state read and written; median step seconds; paired copy seconds).
fn time_train_step(
    ctx: &Context,
    timer: &GpuTimer,
    reps: usize,
    copy: &Work,
    kind: OptimizerKind,
    fused: bool,
) -> wgpu_embed::Result<(f64, f64, f64)> {
    let emb = Embedding::from_tensor(GpuTensor::zeros(ctx, &[OPT_ROWS, OPT_DIM], wgpu_embed::DType::F32, OPT_DIM)?)?;
    let mut opt = Optimizer::new(ctx, kind, emb.weight())?;
    let ids = indices(OPT_BATCH, OPT_ROWS, Dist::Zipf, 11);
    let touched = ids.iter().collect::<std::collections::HashSet<_>>().len() as f64;
    let grad_out = GpuTensor::from_f32(ctx, &vec![0.01; OPT_BATCH * OPT_DIM], &[OPT_BATCH, OPT_DIM])?;
    let states: usize = opt.state_names().iter().filter_map(|n| opt.state(n)).map(|t| t.gpu_bytes() as usize).sum();
    let row_bytes = (OPT_DIM * 4) as f64;
    let bytes = OPT_BATCH as f64 * row_bytes + touched * 2.0 * (row_bytes + states as f64 / OPT_ROWS as f64);
    let shape = [OPT_BATCH];
    let (gpu_s, copy_s) = time_layer(ctx, timer, reps, copy, || {
        let batch = Indices::i32(&ids, &shape);
        if fused {
            opt.step_embedding(ctx, &emb, batch, &grad_out).block()?;
        } else {
            let grad = emb.backward(ctx, batch, &grad_out, GradOptions::default().sparse(true)).block()?;
            opt.step(ctx, emb.weight(), &grad).block()?;
        }
        Ok(emb.weight().clone())
    })?;
    Ok((bytes, gpu_s, copy_s))
}

/// The CPU baseline of retrieval: the table's rows split over `threads`, each keeping
/// the best `k` of its rows per query (partial selection), then merged and sorted.
fn cpu_topk(table: &[f32], dim: usize, queries: &[f32], k: usize, threads: usize) -> Vec<Vec<(f32, u32)>> {
    let n = table.len() / dim;
    let per = n.div_ceil(threads).max(1);
    let best = |mut v: Vec<(f32, u32)>| {
        if v.len() > k {
            v.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            v.truncate(k);
        }
        v
    };
    let parts: Vec<Vec<Vec<(f32, u32)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = table
            .chunks(per * dim)
            .enumerate()
            .map(|(t, rows)| {
                s.spawn(move || {
                    queries
                        .chunks(dim)
                        .map(|q| {
                            let scores = rows
                                .chunks(dim)
                                .enumerate()
                                .map(|(i, r)| (r.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), (t * per + i) as u32));
                            best(scores.collect())
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("CPU top-k thread")).collect()
    });
    (0..queries.len() / dim)
        .map(|q| {
            let mut all = best(parts.iter().flat_map(|p| p[q].iter().copied()).collect());
            all.sort_by(|a, b| b.0.total_cmp(&a.0));
            all
        })
        .collect()
}

/// [`time_gpu`] with the context reading the tables' buffers, then back to `reads`.
fn time_gpu_buffer_reads(
    ctx: &mut Context,
    reads: TableReads,
    timer: &GpuTimer,
    reps: usize,
    copy: &Work,
    work: impl Fn(&Context, &mut Recording<'_>) -> wgpu_embed::Result<()>,
) -> (f64, f64, f64) {
    ctx.set_table_reads(TableReads::Buffer).expect("buffer reads");
    let times = time_gpu(ctx, timer, reps, Some(copy), work);
    ctx.set_table_reads(reads).expect("table reads");
    times
}

fn time_cpu(reps: usize, mut work: impl FnMut()) -> f64 {
    work();
    median(
        (0..reps)
            .map(|_| {
                let t = std::time::Instant::now();
                work();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// The CPU baseline: output rows split over all cores, rows read straight from the table.
fn cpu_bags(table: &[f32], dim: usize, idx: &[i32], bag: usize, mode: Option<BagMode>, out: &mut [f32], threads: usize) {
    let bags = out.len() / dim;
    let per = bags.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(per * dim).enumerate() {
            s.spawn(move || {
                for (j, o) in chunk.chunks_mut(dim).enumerate() {
                    let b = t * per + j;
                    let rows = &idx[b * bag..(b + 1) * bag];
                    match mode {
                        None => o.copy_from_slice(&table[rows[0] as usize * dim..][..dim]),
                        Some(BagMode::Max) => {
                            o.fill(f32::NEG_INFINITY);
                            for &r in rows {
                                for (a, &v) in o.iter_mut().zip(&table[r as usize * dim..][..dim]) {
                                    *a = a.max(v);
                                }
                            }
                        }
                        Some(m) => {
                            o.fill(0.0);
                            for &r in rows {
                                for (a, &v) in o.iter_mut().zip(&table[r as usize * dim..][..dim]) {
                                    *a += v;
                                }
                            }
                            if m == BagMode::Mean {
                                o.iter_mut().for_each(|a| *a /= bag as f32);
                            }
                        }
                    }
                }
            });
        }
    });
}

fn main() {
    std::env::set_var("XDG_RUNTIME_DIR", std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into()));
    let args = Args::parse();
    let table_reads = args.table_reads;
    let mut options = ContextOptions::default().table_reads(table_reads);
    options.adapter_name = args.adapter.clone();
    let mut ctx = Context::with_options(options).block().expect("a GPU adapter");
    let texture_reads = ctx.reads_tables_from_textures();
    let info = ctx.adapter_info().clone();
    let timer = GpuTimer::new(&ctx);
    let rec = Recorder::new(&ctx);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let adapter = format!("{} ({:?}, {})", info.name, info.backend, info.driver_info);
    let timing = if timer.uses_timestamps() { "timestamp queries" } else { "wall clock around submit + wait" };
    let reads = if texture_reads { "texture copies of the tables" } else { "the tables' buffers" };
    eprintln!("adapter: {adapter}; GPU time by {timing}; rows read from {reads}; CPU baseline on {threads} threads");
    let budget = (args.budget_mib << 20) as f64;

    let (mut rows_grid, mut dims, mut bag_sizes): (Vec<usize>, Vec<usize>, Vec<usize>) = if args.full {
        (vec![1_000, 10_000, 100_000, 1_000_000], vec![4, 8, 16, 32, 64, 128, 256, 512, 1024], vec![1, 10, 100, 1000])
    } else {
        (vec![1_000, 100_000], vec![4, 16, 64, 256, 1024], vec![1, 20, 200])
    };
    rows_grid = args.rows.clone().unwrap_or(rows_grid);
    dims = args.dims.clone().unwrap_or(dims);
    bag_sizes = args.bags.clone().unwrap_or(bag_sizes);

    // The ceiling: a vec4 copy moving the same number of bytes.
    let words = (budget as usize / 8).next_multiple_of(4);
    let src = GpuTensor::from_f32(&ctx, &vec![1.0f32; words], &[words / 4, 4]).expect("copy source");
    let dst = GpuTensor::zeros(&ctx, &[words / 4, 4], wgpu_embed::DType::F32, 4).expect("copy destination");
    let copy = |ctx: &Context, e: &mut Recording<'_>| rec.copy(ctx, e, &src, &dst);
    let (copy_s, copy_wall_s, _) = time_gpu(&ctx, &timer, args.reps, None, copy);
    // The same copy reading a texture copy of the source: on CPU adapters a texel fetch is
    // cheaper than a buffer load, so this shows how far the plain copy is from the memory.
    let texture_copy_s = texture_reads.then(|| {
        let copy_texture = |ctx: &Context, e: &mut Recording<'_>| rec.copy_from_texture(ctx, e, &src, &dst);
        time_gpu(&ctx, &timer, args.reps, None, copy_texture).0
    });
    let host_src = vec![1.0f32; words];
    let mut host_dst = vec![0.0f32; words];
    let copy_cpu_s = time_cpu(args.reps, || {
        let per = words.div_ceil(threads);
        std::thread::scope(|s| {
            for (d, c) in host_dst.chunks_mut(per).zip(host_src.chunks(per)) {
                s.spawn(move || d.copy_from_slice(c));
            }
        });
    });
    let copy_bytes = (words * 8) as f64;
    let copy_gbps = copy_bytes / copy_s / 1e9;
    eprintln!("copy: {copy_gbps:.2} GB/s GPU, {:.2} GB/s CPU", copy_bytes / copy_cpu_s / 1e9);
    let mut points = vec![Point {
        kernel: "copy".into(),
        rows: 0,
        dim: 0,
        bag: 0,
        dist: "-",
        bytes: copy_bytes,
        gpu_s: copy_s,
        wall_s: copy_wall_s,
        cpu_s: copy_cpu_s,
        copy_s,
    }];
    if let Some(t) = texture_copy_s {
        let (gpu_s, wall_s, cpu_s) = (t, t, copy_cpu_s);
        points.push(Point {
            kernel: "copy_texture".into(),
            rows: 0,
            dim: 0,
            bag: 0,
            dist: "-",
            bytes: copy_bytes,
            gpu_s,
            wall_s,
            cpu_s,
            copy_s,
        });
        eprintln!("copy reading a texture: {:.2} GB/s GPU", copy_bytes / t / 1e9);
    }

    let run = |section: &str| args.sections.iter().any(|s| s == section);
    for &rows in rows_grid.iter().filter(|_| run("kernels")) {
        for &dim in &dims {
            if rows * dim * 4 > args.max_table_mib << 20 {
                eprintln!("skip rows={rows} dim={dim}: table over --max-table-mib");
                continue;
            }
            let mut rng = Rng(rows as u64 * 7919 + dim as u64);
            let host_table: Vec<f32> = (0..rows * dim).map(|_| rng.unit() as f32 - 0.5).collect();
            let table = GpuTensor::from_f32(&ctx, &host_table, &[rows, dim]).expect("table");
            for dist in [Dist::Uniform, Dist::Zipf] {
                // Lookup: n rows read and n rows written.
                let n = ((budget / (8.0 * dim as f64)) as usize).max(1);
                let idx_host = indices(n, rows, dist, 42 + dim as u64);
                let (idx, out) = lookup_tensors(&ctx, &idx_host, dim).expect("lookup tensors");
                let lookup = |ctx: &Context, e: &mut Recording<'_>| rec.lookup(ctx, e, &table, &idx, &out);
                let (gpu_s, wall_s, copy_s) = time_gpu(&ctx, &timer, args.reps, Some(&copy), lookup);
                let mut host_out = vec![0.0f32; n * dim];
                let cpu_s = time_cpu(args.reps, || cpu_bags(&host_table, dim, &idx_host, 1, None, &mut host_out, threads));
                let bytes = (n * dim * 8) as f64;
                points.push(Point { kernel: "lookup".into(), rows, dim, bag: 1, dist: dist.name(), bytes, gpu_s, wall_s, cpu_s, copy_s });
                if texture_reads && dist == Dist::Uniform {
                    let (gpu_s, wall_s, copy_s) = time_gpu_buffer_reads(&mut ctx, table_reads, &timer, args.reps, &copy, lookup);
                    let kernel = "lookup_buffer_reads".into();
                    points.push(Point { kernel, rows, dim, bag: 1, dist: dist.name(), bytes, gpu_s, wall_s, cpu_s, copy_s });
                }
                drop((idx, out));
                for &bag in &bag_sizes {
                    // Bags: bags * bag rows read, bags rows written.
                    let bags = ((budget / (4.0 * dim as f64 * (bag + 1) as f64)) as usize).max(1);
                    let idx_host = indices(bags * bag, rows, dist, 7 + bag as u64);
                    let bounds: Vec<u32> = (0..=bags).map(|b| (b * bag) as u32).collect();
                    let (idx, out) = bag_tensors(&ctx, &idx_host, bags, dim).expect("bag tensors");
                    let bytes = (bags * dim * 4 * (bag + 1)) as f64;
                    let mut host_out = vec![0.0f32; bags * dim];
                    for mode in [BagMode::Sum, BagMode::Mean, BagMode::Max] {
                        let bags = |ctx: &Context, e: &mut Recording<'_>| rec.bags(ctx, e, &table, &idx, &bounds, &out, mode);
                        let (gpu_s, wall_s, copy_s) = time_gpu(&ctx, &timer, args.reps, Some(&copy), bags);
                        let cpu_s = time_cpu(args.reps, || cpu_bags(&host_table, dim, &idx_host, bag, Some(mode), &mut host_out, threads));
                        let kernel = format!("bag_{}", mode.name());
                        points.push(Point { kernel, rows, dim, bag, dist: dist.name(), bytes, gpu_s, wall_s, cpu_s, copy_s });
                        if texture_reads && dist == Dist::Uniform && mode == BagMode::Sum {
                            let (gpu_s, wall_s, copy_s) = time_gpu_buffer_reads(&mut ctx, table_reads, &timer, args.reps, &copy, bags);
                            let kernel = "bag_sum_buffer_reads".into();
                            points.push(Point { kernel, rows, dim, bag, dist: dist.name(), bytes, gpu_s, wall_s, cpu_s, copy_s });
                        }
                    }
                }
            }
        }
    }

    // Rows per second of the bags through the public API (f32 and quantized tables).
    let mut qbag_rows_per_s: Vec<(&str, usize, f64)> = Vec::new();
    // Other layers through their public API (wall clock, index upload included), on the
    // largest table of the grid, uniform indices, D >= 64.
    let rows = *rows_grid.last().unwrap();
    for &dim in dims.iter().filter(|&&d| (64..=256).contains(&d) && run("layers")) {
        if rows * dim * 4 > args.max_table_mib << 20 {
            continue;
        }
        let mut rng = Rng(rows as u64 * 31 + dim as u64);
        let host_table: Vec<f32> = (0..rows * dim).map(|_| rng.unit() as f32 - 0.5).collect();
        let n = ((budget / (8.0 * dim as f64)) as usize).max(1);
        let idx = indices(n, rows, Dist::Uniform, 5);
        let shape = [n];
        let mut layer = |kernel: &str, bag: usize, bytes: f64, r: wgpu_embed::Result<(f64, f64)>| match r {
            Ok((gpu_s, copy_s)) => points.push(Point::layer(kernel.into(), rows, dim, bag, bytes, gpu_s, copy_s)),
            Err(e) => eprintln!("{kernel} D={dim}: skipped: {e}"),
        };
        let x = GpuTensor::from_f32(&ctx, &host_table[..n.min(rows) * dim], &[n.min(rows), dim]).expect("LayerNorm input");
        let bytes = (n.min(rows) * dim * 8) as f64;
        let r =
            LayerNorm::new(&ctx, dim, 1e-5, true).and_then(|ln| time_layer(&ctx, &timer, args.reps, &copy, || ln.forward_gpu(&ctx, &x)));
        layer("layer_norm", 0, bytes, r);
        let r = HostTable::f32(&host_table, rows, dim)
            .and_then(|t| StableEmbedding::from_pretrained(&ctx, t, None, None, None, 1e-5))
            .and_then(|l| time_layer(&ctx, &timer, args.reps, &copy, || l.forward(&ctx, Indices::i32(&idx, &shape))));
        layer("stable_embedding", 1, (n * dim * 8) as f64, r);
        let (pos, typ): (Vec<f32>, Vec<f32>) = (host_table[..512 * dim].to_vec(), host_table[..2 * dim].to_vec());
        let pos_idx: Vec<i32> = (0..n as i32).map(|i| i % 512).collect();
        let typ_idx: Vec<i32> = (0..n as i32).map(|i| i % 2).collect();
        let r = (|| {
            let tables = [HostTable::f32(&host_table, rows, dim)?, HostTable::f32(&pos, 512, dim)?, HostTable::f32(&typ, 2, dim)?];
            let l = EmbeddingSumLayerNorm::new(&ctx, &tables, None, None, 1e-12)?;
            time_layer(&ctx, &timer, args.reps, &copy, || {
                l.forward(&ctx, &[Indices::i32(&idx, &shape), Indices::i32(&pos_idx, &shape), Indices::i32(&typ_idx, &shape)])
            })
        })();
        layer("bert_sum3_layer_norm", 3, (n * dim * 16) as f64, r);
        // Backward (dense table gradient): bytes = output gradient rows read per index
        // position + the [V, D] gradient written.
        let grad = GpuTensor::from_f32(&ctx, &host_table[..n.min(rows) * dim], &[n.min(rows), dim]).expect("gradient");
        let dense = |g: wgpu_embed::Result<wgpu_embed::Gradient>| match g? {
            wgpu_embed::Gradient::Dense(t) => Ok(t),
            wgpu_embed::Gradient::Sparse { values, .. } => Ok(values),
        };
        let m = n.min(rows);
        let bytes = ((m + rows) * dim * 4) as f64;
        let r = Embedding::from_pretrained(&ctx, &host_table, rows, dim).and_then(|l| {
            time_layer(&ctx, &timer, args.reps, &copy, || {
                dense(l.backward(&ctx, Indices::i32(&idx[..m], &[m]), &grad, Default::default()).block())
            })
        });
        layer("embedding_backward", 1, bytes, r);
        let bag = 20;
        let bags = (m / bag).max(1);
        let offs: Vec<i32> = (0..bags as i32).map(|b| b * bag as i32).collect();
        let (input_shape, offs_shape) = ([bags * bag], [bags]);
        let bag_grad = GpuTensor::from_f32(&ctx, &host_table[..bags * dim], &[bags, dim]).expect("bag gradient");
        let r = EmbeddingBag::from_pretrained(&ctx, &host_table, rows, dim, BagMode::Sum).and_then(|l| {
            time_layer(&ctx, &timer, args.reps, &copy, || {
                let input = Indices::i32(&idx[..bags * bag], &input_shape);
                dense(
                    l.backward(&ctx, input, Some(Indices::i32(&offs, &offs_shape)), None, &bag_grad, Default::default())
                        .block()
                        .map(|g| g.weight),
                )
            })
        });
        layer("bag_sum_backward", bag, ((bags * bag + rows) * dim * 4) as f64, r);
        // Quantized bags beside the f32 bag, through the same API path (bags of 20,
        // uniform indices, each table's bags moving the byte budget). Timed in turn
        // within each repetition, so that their ratios compare runs made under the same
        // conditions even when the machine's load drifts.
        let bag = 20;
        let mut qbags = Vec::new();
        for scheme in [None, Some(Scheme::Int8Rowwise), Some(Scheme::Int8Blockwise), Some(Scheme::Nf4)] {
            let name = scheme.map_or("f32", |s| s.name());
            let r = match scheme {
                None => EmbeddingBag::from_pretrained(&ctx, &host_table, rows, dim, BagMode::Sum).map(|l| (Err(l), (dim * 4) as f64)),
                Some(scheme) => QuantizedTable::from_pretrained(&ctx, &host_table, rows, dim, scheme, None).map(|t| {
                    let row_bytes = t.gpu_bytes() as f64 / rows as f64;
                    (Ok(QuantizedEmbeddingBag::from_table(t, BagMode::Sum)), row_bytes)
                }),
            };
            match r {
                Ok((l, row_bytes)) => {
                    let bags = ((budget / (row_bytes * bag as f64 + 4.0 * dim as f64)) as usize).max(1);
                    let qidx = indices(bags * bag, rows, Dist::Uniform, 9);
                    let offs: Vec<i32> = (0..bags as i32).map(|b| b * bag as i32).collect();
                    qbags.push((name, l, row_bytes, bags, qidx, offs));
                }
                Err(e) => eprintln!("quantized {name} D={dim}: skipped: {e}"),
            }
        }
        let mut works: Vec<Box<LayerWork<'_>>> = Vec::new();
        for (_, l, _, bags, qidx, offs) in &qbags {
            let (qs, os) = ([qidx.len()], [*bags]);
            let ctx = &ctx;
            works.push(Box::new(move || {
                let (input, offsets) = (Indices::i32(qidx, &qs), Some(Indices::i32(offs, &os)));
                match l {
                    Ok(q) => q.forward(ctx, input, offsets, None),
                    Err(f) => f.forward(ctx, input, offsets, None),
                }
            }));
        }
        let timed = time_layers_in_turn(&ctx, &timer, args.reps, &copy, &mut works);
        drop(works);
        for ((name, _, row_bytes, bags, _, _), r) in qbags.iter().zip(timed) {
            if let Ok((gpu_s, _)) = r {
                qbag_rows_per_s.push((name, dim, (bags * bag) as f64 / gpu_s));
            }
            let bytes = *bags as f64 * (row_bytes * bag as f64 + 4.0 * dim as f64);
            layer(&format!("qbag_sum_{name}"), bag, bytes, r);
        }
    }

    // Optimizer steps on a 1 M x 64 table with 4 096 touched rows (sparse gradients where
    // the optimizer takes them, else a dense [V, D] gradient). Bytes: the elements a step
    // reads and writes (table, gradient, states); the rows column holds the touched rows.
    if run("optimizers") && (OPT_ROWS * OPT_DIM * 4) <= args.max_table_mib << 20 {
        for (name, kind, sparse) in optimizer_kinds() {
            match time_optimizer(&ctx, &timer, args.reps.min(5), &copy, kind, sparse) {
                Ok((bytes, gpu_s, copy_s)) => {
                    let rows = if sparse { OPT_TOUCHED } else { OPT_ROWS };
                    points.push(Point::layer(format!("opt_{name}"), rows, OPT_DIM, 0, bytes, gpu_s, copy_s))
                }
                Err(e) => eprintln!("optimizer {name}: skipped: {e}"),
            }
        }
        // Whole training steps of an Embedding: backward then step, and fused.
        for (name, kind, sparse) in optimizer_kinds() {
            if !sparse || name == "sgd_sparse" {
                continue;
            }
            for fused in [false, true] {
                let label = format!("train_{name}_{}", if fused { "fused" } else { "unfused" });
                match time_train_step(&ctx, &timer, args.reps.min(5), &copy, kind, fused) {
                    Ok((bytes, gpu_s, copy_s)) => points.push(Point::layer(label, OPT_ROWS, OPT_DIM, OPT_BATCH, bytes, gpu_s, copy_s)),
                    Err(e) => eprintln!("{label}: skipped: {e}"),
                }
            }
        }
    }

    // Table-batched bags at FBGEMM's bench shapes (B = 512, T = 26 features, L = 20),
    // tables scaled to E = 2 000 rows here: one TBE call beside 26 EmbeddingBag calls (each
    // its own submission, and the 26 recorded as one). Bytes as FBGEMM's TBE bench counts
    // them: output B * sum(D) + weights read B * sum(D) * L, f32.
    if run("tbe") {
        let (b, t, l, e) = (512usize, 26usize, 20usize, 2_000usize);
        for dim in [64usize, 128] {
            for dist in [Dist::Uniform, Dist::Zipf] {
                let TbeInputs { tables, ids, flat, offsets, bag_offsets } = TbeInputs::new((b, t, l, e), dim, dist, (7, 100));
                let specs: Vec<(&[f32], usize, usize)> = tables.iter().map(|w| (&w[..], e, dim)).collect();
                let (flat_shape, off_shape, bag_shape, bag_off_shape) = ([flat.len()], [offsets.len()], [b * l], [b]);
                let bytes = (b * t * dim * 4 * (1 + l)) as f64;
                let tbe = TableBatchedEmbeddingBags::from_pretrained(&ctx, &specs, &(0..t).collect::<Vec<_>>(), Pooling::Sum).expect("TBE");
                let bags: Vec<EmbeddingBag> =
                    tables.iter().map(|w| EmbeddingBag::from_pretrained(&ctx, w, e, dim, BagMode::Sum).expect("bag")).collect();
                let mut works: Vec<Box<LayerWork<'_>>> = vec![
                    Box::new(|| tbe.forward(&ctx, Indices::i32(&flat, &flat_shape), Indices::i32(&offsets, &off_shape), None)),
                    Box::new(|| {
                        let mut last = None;
                        for (bag, ids) in bags.iter().zip(&ids) {
                            last = Some(bag.forward(
                                &ctx,
                                Indices::i32(ids, &bag_shape),
                                Some(Indices::i32(&bag_offsets, &bag_off_shape)),
                                None,
                            )?);
                        }
                        Ok(last.expect("26 bags"))
                    }),
                    Box::new(|| {
                        let mut run = ctx.record();
                        let mut last = None;
                        for (bag, ids) in bags.iter().zip(&ids) {
                            last = Some(bag.record(
                                &mut run,
                                Indices::i32(ids, &bag_shape),
                                Some(Indices::i32(&bag_offsets, &bag_off_shape)),
                                None,
                            )?);
                        }
                        drop(run.submit()?);
                        Ok(last.expect("26 bags"))
                    }),
                ];
                let names = ["tbe_forward", "tbe_as_26_bag_calls", "tbe_as_26_bags_recorded"];
                for (name, r) in names.iter().zip(time_layers_in_turn(&ctx, &timer, args.reps, &copy, &mut works)) {
                    match r {
                        Ok((gpu_s, copy_s)) => {
                            let mut p = Point::layer(name.to_string(), e, dim, l, bytes, gpu_s, copy_s);
                            p.dist = dist.name();
                            points.push(p);
                        }
                        Err(err) => eprintln!("{name} D={dim}: skipped: {err}"),
                    }
                }
            }
        }
    }

    // The fused TBE training step (row-wise Adagrad, FBGEMM's EXACT_ROWWISE_ADAGRAD) at
    // the same shapes: one backward + step over all 26 tables, beside each table's
    // EmbeddingBag backward then optimizer step (26 of each) and each table's own fused
    // step. Bytes as FBGEMM's bench counts a backward: twice the forward's.
    if run("tbe") {
        let (b, t, l, e) = (512usize, 26usize, 20usize, 2_000usize);
        let kind = OptimizerKind::RowwiseAdagrad { lr: 0.01, eps: 1e-8, weight_decay: 0.0 };
        for dim in [64usize, 128] {
            let TbeInputs { tables, ids, flat, offsets, bag_offsets } = TbeInputs::new((b, t, l, e), dim, Dist::Zipf, (11, 200));
            let specs: Vec<(&[f32], usize, usize)> = tables.iter().map(|w| (&w[..], e, dim)).collect();
            let (flat_shape, off_shape, bag_shape, bag_off_shape) = ([flat.len()], [offsets.len()], [b * l], [b]);
            let bytes = 2.0 * (b * t * dim * 4 * (1 + l)) as f64;
            let built = (|| -> wgpu_embed::Result<_> {
                let tbe = TableBatchedEmbeddingBags::from_pretrained(&ctx, &specs, &(0..t).collect::<Vec<_>>(), Pooling::Sum)?;
                let tbe_opt = Optimizer::new(&ctx, kind, &tbe.weights()?)?;
                let tbe_grad = GpuTensor::from_f32(&ctx, &vec![0.01; b * t * dim], &[b, t * dim])?;
                let bags: Vec<EmbeddingBag> = tables
                    .iter()
                    .map(|w| EmbeddingBag::from_pretrained(&ctx, w, e, dim, BagMode::Sum))
                    .collect::<wgpu_embed::Result<_>>()?;
                let opts = || bags.iter().map(|bag| Optimizer::new(&ctx, kind, bag.weight())).collect::<wgpu_embed::Result<Vec<_>>>();
                let (unfused_opts, fused_opts) = (opts()?, opts()?);
                let bag_grad = GpuTensor::from_f32(&ctx, &vec![0.01; b * dim], &[b, dim])?;
                Ok((tbe, tbe_opt, tbe_grad, bags, unfused_opts, fused_opts, bag_grad))
            })();
            let (tbe, mut tbe_opt, tbe_grad, bags, mut unfused_opts, mut fused_opts, bag_grad) = match built {
                Ok(parts) => parts,
                Err(err) => {
                    eprintln!("tbe step D={dim}: skipped: {err}");
                    continue;
                }
            };
            let mut works: Vec<Box<LayerWork<'_>>> = vec![
                Box::new(|| {
                    let (idx, off) = (Indices::i32(&flat, &flat_shape), Indices::i32(&offsets, &off_shape));
                    tbe.step(&ctx, &mut tbe_opt, idx, off, None, &tbe_grad).block()?;
                    Ok(tbe_grad.clone())
                }),
                Box::new(|| {
                    for ((bag, ids), opt) in bags.iter().zip(&ids).zip(unfused_opts.iter_mut()) {
                        let (idx, off) = (Indices::i32(ids, &bag_shape), Some(Indices::i32(&bag_offsets, &bag_off_shape)));
                        let grads = bag.backward(&ctx, idx, off, None, &bag_grad, GradOptions::default().sparse(true)).block()?;
                        opt.step(&ctx, bag.weight(), &grads.weight).block()?;
                    }
                    Ok(bag_grad.clone())
                }),
                Box::new(|| {
                    for ((bag, ids), opt) in bags.iter().zip(&ids).zip(fused_opts.iter_mut()) {
                        let (idx, off) = (Indices::i32(ids, &bag_shape), Some(Indices::i32(&bag_offsets, &bag_off_shape)));
                        opt.step_embedding_bag(&ctx, bag, idx, off, None, &bag_grad).block()?;
                    }
                    Ok(bag_grad.clone())
                }),
            ];
            let names = ["tbe_step_fused", "tbe_step_as_26_bag_backward_then_step", "tbe_step_as_26_fused_bag_steps"];
            for (name, r) in names.iter().zip(time_layers_in_turn(&ctx, &timer, args.reps.min(5), &copy, &mut works)) {
                match r {
                    Ok((gpu_s, copy_s)) => {
                        let mut p = Point::layer(name.to_string(), e, dim, l, bytes, gpu_s, copy_s);
                        p.dist = Dist::Zipf.name();
                        points.push(p);
                    }
                    Err(err) => eprintln!("{name} D={dim}: skipped: {err}"),
                }
            }
        }
    }

    // Top-k retrieval: Q queries against a 100 000 x 128 table, f32 and int8 (row-wise),
    // and a 1 M x 128 int8 table; GB/s = table bytes / time (the table is read once per
    // batch of queries), beside a CPU baseline on f32 (all threads, partial selection).
    if run("topk") {
        let dim = 128;
        let mut rng = Rng(77);
        for (rows, grid) in [
            (
                100_000usize,
                &[(1usize, 10usize), (1, 100), (1, 5000), (16, 10), (16, 100), (16, 5000), (128, 10), (128, 100), (128, 5000)][..],
            ),
            (1_000_000, &[(1, 10), (1, 100), (16, 100)][..]),
        ] {
            if rows * dim * 4 > args.max_table_mib << 20 {
                continue;
            }
            let table: Vec<f32> = (0..rows * dim).map(|_| rng.unit() as f32 - 0.5).collect();
            let schemes: &[Option<Scheme>] = if rows > 100_000 { &[Some(Scheme::Int8Rowwise)] } else { &[None, Some(Scheme::Int8Rowwise)] };
            for &scheme in schemes {
                let retriever = match scheme {
                    None => GpuTensor::from_f32(&ctx, &table, &[rows, dim]).and_then(|t| Retriever::new(t, Metric::Dot)),
                    Some(s) => {
                        QuantizedTable::from_pretrained(&ctx, &table, rows, dim, s, None).map(|t| Retriever::quantized(t, Metric::Dot))
                    }
                };
                let retriever = match retriever {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("retrieval {rows} rows: skipped: {e}");
                        continue;
                    }
                };
                let (name, bytes) = match scheme {
                    None => ("f32", (rows * dim * 4) as f64),
                    Some(_) => ("int8_rowwise", (rows * dim + rows * 4) as f64),
                };
                for &(q, k) in grid {
                    let queries: Vec<f32> = (0..q * dim).map(|_| rng.unit() as f32 - 0.5).collect();
                    match time_layer(&ctx, &timer, args.reps.min(5), &copy, || retriever.search(&ctx, &queries, k).map(|t| t.scores)) {
                        Ok((gpu_s, copy_s)) => {
                            let mut p = Point::layer(format!("topk_{name}_q{q}_k{k}"), rows, dim, k, bytes, gpu_s, copy_s);
                            if scheme.is_none() {
                                p.cpu_s = time_cpu(args.reps.min(5), || {
                                    std::hint::black_box(cpu_topk(&table, dim, &queries, k, threads));
                                });
                            }
                            points.push(p);
                        }
                        Err(e) => eprintln!("retrieval {name} Q={q} k={k}: skipped: {e}"),
                    }
                }
            }
        }
    }

    let small = if run("small") { small_calls(&ctx, &rec, (args.reps * 5).max(30)).expect("small calls") } else { Vec::new() };
    let (pipeline_floor, pipeline_rows) =
        if run("pipelines") { pipelines(&ctx, &rec, (args.reps * 5).max(30)).expect("pipelines") } else { (f64::NAN, Vec::new()) };

    // A device error makes timings meaningless: fail rather than write them.
    if let Some(e) = ctx.take_uncaptured_error() {
        panic!("GPU error during the bench: {e}");
    }
    std::fs::create_dir_all(&args.out).expect("output folder");
    let mut csv =
        String::from("kernel,rows,dim,bag,dist,bytes,gpu_ms,wall_ms,gpu_gbps,copy_gbps,ratio_to_copy,cpu_ms,cpu_gbps,gpu_speedup_vs_cpu,submissions,waits,wall_us,floor_us,dispatches\n");
    for p in &points {
        let g = p.bytes / p.gpu_s / 1e9;
        let paired_copy_gbps = copy_bytes / p.copy_s / 1e9;
        let c = p.bytes / p.cpu_s / 1e9;
        writeln!(
            csv,
            "{},{},{},{},{},{},{:.4},{:.4},{:.3},{:.3},{:.3},{:.4},{:.3},{:.2}",
            p.kernel,
            p.rows,
            p.dim,
            p.bag,
            p.dist,
            p.bytes,
            p.gpu_s * 1e3,
            p.wall_s * 1e3,
            g,
            paired_copy_gbps,
            g / paired_copy_gbps,
            p.cpu_s * 1e3,
            c,
            p.cpu_s / p.gpu_s
        )
        .unwrap();
    }
    for r in &pipeline_rows {
        writeln!(
            csv,
            "{},,,,,,,,,,,,,,{},{},{:.1},{:.1},{}",
            r.name,
            r.submissions,
            r.waits,
            r.wall_s * 1e6,
            pipeline_floor * 1e6,
            r.dispatches
        )
        .unwrap();
    }
    // The browser's pipeline rows (web/bench/pipelines.mjs) of an earlier run stay.
    let csv_path = args.out.join("results.csv");
    for line in std::fs::read_to_string(&csv_path).unwrap_or_default().lines().filter(|l| l.starts_with("pipeline_chromium_")) {
        writeln!(csv, "{line}").unwrap();
    }
    std::fs::write(&csv_path, csv).expect("write results.csv");

    // The README table: the largest default table, uniform indices, a mid bag size.
    let big = *rows_grid.last().unwrap();
    let mid_bag = bag_sizes[bag_sizes.len() / 2];
    let texture_copy = match texture_copy_s {
        Some(t) => format!(
            " The same copy reading its source from a texture copy, as lookups here read tables: {:.2} GB/s \
             ({:.2}x the plain copy: on this adapter a texel fetch costs less than a buffer load).",
            copy_bytes / t / 1e9,
            copy_s / t
        ),
        None => String::new(),
    };
    let mut md = format!(
        "Adapter: **{adapter}**, GPU time by {timing}; table rows read from {reads}; CPU baseline: {threads} threads on the same machine.\n\
         Copy kernel (the ceiling): **{copy_gbps:.2} GB/s** (CPU memcpy: {:.2} GB/s).{texture_copy} \
         GB/s = (table rows read + output written) / time. Uniform indices, bag size {mid_bag}.\n\n\
         Each point is timed in alternation with the copy kernel (paired copy GB/s shown), so ratios hold on a busy machine. \
         The last rows time whole layers through their public API (wall clock, index upload and output allocation included; \
         BERT block = sum of 3 lookups + LayerNorm; quantized bags: bag size 20, bytes = quantized row bytes read; \
         backward: dense table gradient, bytes = one output-gradient row read per index + the [V, D] gradient written; \
         opt_*: one optimizer step on a 1 M x 64 table, 4 096 touched rows (sparse gradient; the rows column) or a dense gradient, \
         bytes = table, gradient and states read and written; \
         train_*: backward (sparse) then step, or the two fused, of an Embedding on that table from 4 096 Zipf indices (the bag column), \
         bytes = output gradient read + touched table and state rows read and written; \
         topk_*: Q queries against the table (the rows column), the k best kept (the bag column), bytes = table bytes, \
         CPU: all threads with partial selection, on the f32 table).\n\n\
         | kernel | table rows | D | GPU GB/s | paired copy GB/s | × copy | CPU GB/s | GPU / CPU |\n|---|---|---|---|---|---|---|---|\n",
        copy_bytes / copy_cpu_s / 1e9
    );
    let layers = [
        "layer_norm",
        "stable_embedding",
        "bert_sum3_layer_norm",
        "qbag_sum_f32",
        "qbag_sum_int8_rowwise",
        "qbag_sum_int8_blockwise",
        "qbag_sum_nf4",
        "embedding_backward",
        "bag_sum_backward",
    ];
    let is_layer = |k: &str| layers.contains(&k) || k.starts_with("opt_") || k.starts_with("train_") || k.starts_with("topk_");
    let in_table = |p: &&Point| p.dist == "uniform" && (p.kernel.starts_with("lookup") || p.bag == mid_bag);
    for p in points.iter().filter(|p| in_table(p) && !is_layer(&p.kernel)).chain(points.iter().filter(|p| is_layer(&p.kernel))) {
        let g = p.bytes / p.gpu_s / 1e9;
        let c = copy_bytes / p.copy_s / 1e9;
        let (cpu, speedup) = if p.cpu_s.is_nan() {
            ("-".to_string(), "-".to_string())
        } else {
            (format!("{:.2}", p.bytes / p.cpu_s / 1e9), format!("{:.2}", p.cpu_s / p.gpu_s))
        };
        writeln!(md, "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {cpu} | {speedup} |", p.kernel, p.rows, p.dim, g, c, g / c).unwrap();
    }
    if let Some(&(_, floor)) = small.first() {
        md.push_str(
            "\nSmall calls: wall time of one call through the public API with its read-back to the host (median), against \
         the floor, one dispatch of a one-word copy plus its read-back on the same adapter.\n\n\
         | call | µs | × floor |\n|---|---|---|\n",
        );
        for (name, s) in &small {
            writeln!(md, "| {name} | {:.0} | {:.2} |", s * 1e6, s / floor).unwrap();
        }
    }
    if !pipeline_rows.is_empty() {
        writeln!(
            md,
            "\nPipelines: one call of each (median wall time until the GPU finished; reads included), submissions, \
             blocking waits and dispatches per call from the context's counters, against the floor ({:.0} µs: one dispatch \
             of a one-word copy plus its read-back in one submission, same adapter, same run).\n\n\
             | pipeline | submissions | waits | dispatches | µs | × floor |\n|---|---|---|---|---|---|",
            pipeline_floor * 1e6
        )
        .unwrap();
        for r in &pipeline_rows {
            let (us, ratio) = (r.wall_s * 1e6, r.wall_s / pipeline_floor);
            writeln!(md, "| {} | {} | {} | {} | {us:.0} | {ratio:.2} |", r.name, r.submissions, r.waits, r.dispatches).unwrap();
        }
    }
    if !qbag_rows_per_s.is_empty() {
        md.push_str(
            "\nBags over quantized tables beside the f32 bag: bags of 20 uniform indices through the same API path (index \
             upload included), timed in turn within each repetition; table rows reduced per second, and the ratio to the \
             f32 bag's.\n\n\
             | table | D | rows/s | × f32 bag |\n|---|---|---|---|\n",
        );
        for &(name, dim, rate) in &qbag_rows_per_s {
            let f32_rate = qbag_rows_per_s.iter().find(|p| p.0 == "f32" && p.1 == dim).map_or(f64::NAN, |p| p.2);
            writeln!(md, "| {name} | {dim} | {:.2e} | {:.2} |", rate, rate / f32_rate).unwrap();
        }
    }
    std::fs::write(args.out.join("summary.md"), &md).expect("write summary.md");
    print!("{md}");

    plot(&args.out.join("gbps_vs_dim.svg"), &adapter, &points, copy_gbps, big, mid_bag).expect("plot");
}

/// GB/s against D (log scale) for each kernel, GPU solid and CPU dashed, copy as a line.
fn plot(
    path: &std::path::Path,
    adapter: &str,
    points: &[Point],
    copy_gbps: f64,
    rows: usize,
    bag: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let sel: Vec<&Point> =
        points.iter().filter(|p| p.rows == rows && p.dist == "uniform" && (p.kernel.starts_with("lookup") || p.bag == bag)).collect();
    let copies = points.iter().filter(|p| p.kernel.starts_with("copy")).map(|p| p.bytes / p.gpu_s);
    let max_y = sel.iter().flat_map(|p| [p.bytes / p.gpu_s, p.bytes / p.cpu_s]).chain(copies).fold(copy_gbps * 1e9, f64::max) / 1e9 * 1.15;
    let dims: Vec<usize> = sel.iter().map(|p| p.dim).collect();
    let (lo, hi) = (*dims.iter().min().unwrap_or(&4) as f64, *dims.iter().max().unwrap_or(&1024) as f64);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("GB/s vs D: {rows} rows, uniform, bag {bag} - {adapter}"), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0.0..max_y)?;
    chart.configure_mesh().x_desc("embedding dim D").y_desc("GB/s (rows read + output written)").draw()?;
    chart
        .draw_series(LineSeries::new([(lo * 0.9, copy_gbps), (hi * 1.1, copy_gbps)], BLACK.stroke_width(2)))?
        .label(format!("GPU vec4 copy {copy_gbps:.2} GB/s"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    if let Some(t) = points.iter().find(|p| p.kernel == "copy_texture") {
        let g = t.bytes / t.gpu_s / 1e9;
        chart
            .draw_series(DashedLineSeries::new([(lo * 0.9, g), (hi * 1.1, g)], 8, 4, BLACK.stroke_width(2)))?
            .label(format!("GPU copy reading a texture {g:.2} GB/s"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.5)));
    }
    let colors = [RED, BLUE, GREEN, MAGENTA, RGBColor(230, 120, 0), RGBColor(0, 150, 150)];
    let kernels = ["lookup", "bag_sum", "bag_mean", "bag_max", "lookup_buffer_reads", "bag_sum_buffer_reads"];
    for (k, kernel) in kernels.iter().enumerate() {
        let c = colors[k];
        if !sel.iter().any(|p| p.kernel == *kernel) {
            continue;
        }
        let gpu: Vec<(f64, f64)> = sel.iter().filter(|p| p.kernel == *kernel).map(|p| (p.dim as f64, p.bytes / p.gpu_s / 1e9)).collect();
        let cpu: Vec<(f64, f64)> = sel.iter().filter(|p| p.kernel == *kernel).map(|p| (p.dim as f64, p.bytes / p.cpu_s / 1e9)).collect();
        chart
            .draw_series(LineSeries::new(gpu.clone(), c.stroke_width(2)))?
            .label(format!("GPU {kernel}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(gpu.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        if kernel.ends_with("_buffer_reads") {
            continue; // same CPU baseline as the kernel above
        }
        chart
            .draw_series(DashedLineSeries::new(cpu, 5, 4, c.mix(0.6).stroke_width(1)))?
            .label(format!("CPU {kernel}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.mix(0.6)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::UpperLeft).draw()?;
    root.present()?;
    Ok(())
}
