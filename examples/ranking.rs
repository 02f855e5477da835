//! Trains a DLRM-shaped ranking model end to end on the GPU: 26 sparse features over
//! tables of 10² to 10⁶ rows in one [`TableBatchedEmbeddingBags`] (Zipf-distributed ids),
//! 13 dense features through a bottom MLP, DLRM's dot-product interaction of the 27
//! vectors, and a top MLP giving a click logit. The embedding tables train with FBGEMM's
//! fused backward + EXACT_ROWWISE_ADAGRAD step over all 26 tables at once; the MLPs'
//! weights (one flat tensor) with the library's Adam.
//!
//! The clicks come from a known generating model, so the best AUC any model can reach on
//! the held-out clicks (the Bayes-optimal one: ranking by the true click probability) is
//! known: logit = c + Σ_f ⟨E_f[id_f], A·x⟩, where x are the dense features, A a 4 × 13
//! projection and E_f a 4-dim effect per id for the most frequent ids of each table
//! (the rarer ids carry no signal, as in click logs' long tails). The run must reach a
//! held-out AUC within 0.01 of it (one run on lavapipe: 0.7235 against 0.7329, in 9 min).
//!
//! The MLPs, the interaction and the loss are written here, in WGSL, and recorded
//! between the library's layers: a step's lookup and the model's forward and backward
//! are one recording; then the fused TBE step and the MLPs' step.
//!
//! ```sh
//! cargo run --release --example ranking    # writes examples/ranking-results/auc.svg
//! ```

use std::path::Path;

use plotters::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use wgpu_embed::{
    Block, Context, DType, GpuTensor, Gradient, Indices, Optimizer, OptimizerKind, Pooling, Recording, TableBatchedEmbeddingBags,
};

const FEATURES: usize = 26;
const DENSE: usize = 13;
/// Embedding dim (and the bottom MLP's output).
const DIM: usize = 8;
/// Hidden units of the bottom and top MLPs.
const HIDDEN: usize = 32;
/// The 27 vectors (bottom MLP output, then the 26 embeddings) and their pairwise dots.
const VECTORS: usize = FEATURES + 1;
const PAIRS: usize = VECTORS * (VECTORS - 1) / 2;
/// The top MLP's input: the pairwise dots and the bottom MLP's output (as DLRM).
const INTER: usize = PAIRS + DIM;
const BATCH: usize = 1024;
const TRAIN_BATCHES: usize = 4000;
const HELD_OUT_BATCHES: usize = 50;
const EPOCHS: usize = 1;
/// The generator: latent dim, ids with an effect per table, the effects' scale.
const LATENT: usize = 4;
const HEAD: usize = 100;
const EFFECT: f32 = 0.2;
/// Learning rates; the last tenth of the run takes a tenth of them.
const TABLE_LR: f64 = 0.05;
const MLP_LR: f64 = 3e-3;
/// Zipf exponent of the ids (as the bench's).
const ZIPF: f64 = 1.05;

/// Rows of the 26 tables: two of 10⁶, then down to 10² (Criteo's spread, scaled).
const ROWS: [usize; FEATURES] = [
    1_000_000, 1_000_000, 300_000, 100_000, 100_000, 100_000, 30_000, 30_000, 30_000, 30_000, 10_000, 10_000, 10_000, 10_000, 3_000, 3_000,
    3_000, 3_000, 1_000, 1_000, 1_000, 1_000, 300, 300, 100, 100,
];

/// Where each parameter block starts in the flat parameter tensor.
const W1: usize = 0;
const B1: usize = W1 + HIDDEN * DENSE;
const W2: usize = B1 + HIDDEN;
const B2: usize = W2 + DIM * HIDDEN;
const W3: usize = B2 + DIM;
const B3: usize = W3 + HIDDEN * INTER;
const W4: usize = B3 + HIDDEN;
const B4: usize = W4 + HIDDEN;
const PARAMS: usize = B4 + 1;

/// The model's kernels. Bindings: 0 sizes, 1 parameters, 2 the looked-up embeddings
/// [B, 26·D], 3 dense features [B, 13], 4 labels [B], 5 activations and their
/// gradients, 6 the embeddings' gradient [B, 26·D], 7 the parameters' gradient,
/// 8 logits and losses [2, B]. One invocation per output element.
const MODEL_WGSL: &str = r#"
struct Sizes { batch: u32, inv_batch: f32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<uniform> sizes: Sizes;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read> emb: array<f32>;
@group(0) @binding(3) var<storage, read> dense: array<f32>;
@group(0) @binding(4) var<storage, read> labels: array<f32>;
@group(0) @binding(5) var<storage, read_write> acts: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad_emb: array<f32>;
@group(0) @binding(7) var<storage, read_write> grad_params: array<f32>;
@group(0) @binding(8) var<storage, read_write> scores: array<f32>;

// Activations, batch-major: bottom hidden (post-ReLU), z, the interaction, top hidden
// (post-ReLU), then the gradients of the top hidden, interaction, z, bottom hidden
// (pre-activation) and the logits.
fn a1(b: u32) -> u32 { return b * HIDDEN; }
fn zz(b: u32) -> u32 { return BATCH * HIDDEN + b * DIM; }
fn inter(b: u32) -> u32 { return BATCH * (HIDDEN + DIM) + b * INTER; }
fn a3(b: u32) -> u32 { return BATCH * (HIDDEN + DIM + INTER) + b * HIDDEN; }
fn d3(b: u32) -> u32 { return BATCH * (2u * HIDDEN + DIM + INTER) + b * HIDDEN; }
fn dinter(b: u32) -> u32 { return BATCH * (3u * HIDDEN + DIM + INTER) + b * INTER; }
fn dz(b: u32) -> u32 { return BATCH * (3u * HIDDEN + DIM + 2u * INTER) + b * DIM; }
fn d1(b: u32) -> u32 { return BATCH * (3u * HIDDEN + 2u * DIM + 2u * INTER) + b * HIDDEN; }
fn dlogit(b: u32) -> u32 { return BATCH * (4u * HIDDEN + 2u * DIM + 2u * INTER) + b; }


// Component c of vector v of sample b: v = 0 the bottom MLP's output, else embedding v - 1.
fn vec_value(b: u32, v: u32, c: u32) -> f32 {
    if (v == 0u) { return acts[zz(b) + c]; }
    return emb[(b * FEATURES + v - 1u) * DIM + c];
}

// Index of the pair (u, v), u < v, among the 27 vectors' pairs (upper triangle, row-major).
fn pair_index(u: u32, v: u32) -> u32 { return u * (2u * VECTORS - u - 1u) / 2u + (v - u - 1u); }

@compute @workgroup_size(64)
fn bottom1(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= BATCH * HIDDEN) { return; }
    let b = i / HIDDEN;
    let o = i % HIDDEN;
    var s = params[B1 + o];
    for (var k = 0u; k < DENSE; k++) { s += params[W1 + o * DENSE + k] * dense[b * DENSE + k]; }
    acts[a1(b) + o] = max(s, 0.0);
}

@compute @workgroup_size(64)
fn bottom2(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= BATCH * DIM) { return; }
    let b = i / DIM;
    let o = i % DIM;
    var s = params[B2 + o];
    for (var k = 0u; k < HIDDEN; k++) { s += params[W2 + o * HIDDEN + k] * acts[a1(b) + k]; }
    acts[zz(b) + o] = s;
}

@compute @workgroup_size(64)
fn interact(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= BATCH * INTER) { return; }
    let b = i / INTER;
    let p = i % INTER;
    if (p >= PAIRS) {
        acts[inter(b) + p] = acts[zz(b) + p - PAIRS];
        return;
    }
    // The pair's first vector: the last u whose pairs start at or before p.
    var u = 0u;
    for (var k = 1u; k < VECTORS - 1u; k++) { if (pair_index(k, k + 1u) <= p) { u = k; } }
    let v = p - pair_index(u, u + 1u) + u + 1u;
    var s = 0.0;
    for (var c = 0u; c < DIM; c++) { s += vec_value(b, u, c) * vec_value(b, v, c); }
    acts[inter(b) + p] = s;
}

@compute @workgroup_size(64)
fn top1(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= BATCH * HIDDEN) { return; }
    let b = i / HIDDEN;
    let o = i % HIDDEN;
    var s = params[B3 + o];
    for (var k = 0u; k < INTER; k++) { s += params[W3 + o * INTER + k] * acts[inter(b) + k]; }
    acts[a3(b) + o] = max(s, 0.0);
}

// The logit, its binary cross-entropy with the label, and d loss / d logit for the
// batch's mean loss.
@compute @workgroup_size(64)
fn top2(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= BATCH) { return; }
    var l = params[B4];
    for (var k = 0u; k < HIDDEN; k++) { l += params[W4 + k] * acts[a3(b) + k]; }
    let y = labels[b];
    scores[b] = l;
    scores[BATCH + b] = max(l, 0.0) - l * y + log(1.0 + exp(-abs(l)));
    acts[dlogit(b)] = (1.0 / (1.0 + exp(-l)) - y) * sizes.inv_batch;
}

@compute @workgroup_size(64)
fn back_top(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= BATCH * HIDDEN) { return; }
    let b = i / HIDDEN;
    let o = i % HIDDEN;
    var g = 0.0;
    if (acts[a3(b) + o] > 0.0) { g = acts[dlogit(b)] * params[W4 + o]; }
    acts[d3(b) + o] = g;
}

@compute @workgroup_size(64)
fn back_inter(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= BATCH * INTER) { return; }
    let b = i / INTER;
    let p = i % INTER;
    var g = 0.0;
    for (var o = 0u; o < HIDDEN; o++) { g += params[W3 + o * INTER + p] * acts[d3(b) + o]; }
    acts[dinter(b) + p] = g;
}

// The gradient of each of the 27 vectors: the embeddings' goes to the TBE's step.
@compute @workgroup_size(64)
fn back_vectors(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= BATCH * VECTORS * DIM) { return; }
    let b = i / (VECTORS * DIM);
    let v = (i / DIM) % VECTORS;
    let c = i % DIM;
    var g = 0.0;
    for (var w = 0u; w < VECTORS; w++) {
        if (w == v) { continue; }
        let p = select(pair_index(w, v), pair_index(v, w), v < w);
        g += acts[dinter(b) + p] * vec_value(b, w, c);
    }
    if (v == 0u) {
        acts[dz(b) + c] = g + acts[dinter(b) + PAIRS + c];
    } else {
        grad_emb[(b * FEATURES + v - 1u) * DIM + c] = g;
    }
}

@compute @workgroup_size(64)
fn back_bottom(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= BATCH * HIDDEN) { return; }
    let b = i / HIDDEN;
    let o = i % HIDDEN;
    var g = 0.0;
    if (acts[a1(b) + o] > 0.0) {
        for (var k = 0u; k < DIM; k++) { g += params[W2 + k * HIDDEN + o] * acts[dz(b) + k]; }
    }
    acts[d1(b) + o] = g;
}

// Σ_b over the batch of (gradient at the layer's output) · (its input): one invocation
// per parameter, weights then biases of each of the four layers.
fn layer_grad(o: u32, k: u32, fan_in: u32, which: u32) -> f32 {
    var s = 0.0;
    for (var b = 0u; b < BATCH; b++) {
        var g = 0.0;
        var x = 1.0;
        switch which {
            case 0u: { g = acts[d1(b) + o]; if (k < fan_in) { x = dense[b * DENSE + k]; } }
            case 1u: { g = acts[dz(b) + o]; if (k < fan_in) { x = acts[a1(b) + k]; } }
            case 2u: { g = acts[d3(b) + o]; if (k < fan_in) { x = acts[inter(b) + k]; } }
            default: { g = acts[dlogit(b)]; if (k < fan_in) { x = acts[a3(b) + k]; } }
        }
        s += g * x;
    }
    return s;
}

@compute @workgroup_size(64)
fn param_grads(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= PARAMS) { return; }
    var g = 0.0;
    if (i < B1) { g = layer_grad(i / DENSE, i % DENSE, DENSE, 0u); }
    else if (i < W2) { g = layer_grad(i - B1, DENSE, DENSE, 0u); }
    else if (i < B2) { g = layer_grad((i - W2) / HIDDEN, (i - W2) % HIDDEN, HIDDEN, 1u); }
    else if (i < W3) { g = layer_grad(i - B2, HIDDEN, HIDDEN, 1u); }
    else if (i < B3) { g = layer_grad((i - W3) / INTER, (i - W3) % INTER, INTER, 2u); }
    else if (i < W4) { g = layer_grad(i - B3, INTER, INTER, 2u); }
    else if (i < B4) { g = layer_grad(0u, i - W4, HIDDEN, 3u); }
    else { g = layer_grad(0u, HIDDEN, HIDDEN, 3u); }
    grad_params[i] = g;
}
"#;

/// The WGSL with this file's sizes as constants.
fn model_source() -> String {
    let consts = [
        ("BATCH", BATCH),
        ("DENSE", DENSE),
        ("DIM", DIM),
        ("HIDDEN", HIDDEN),
        ("FEATURES", FEATURES),
        ("VECTORS", VECTORS),
        ("PAIRS", PAIRS),
        ("INTER", INTER),
        ("W1", W1),
        ("B1", B1),
        ("W2", W2),
        ("B2", B2),
        ("W3", W3),
        ("B3", B3),
        ("W4", W4),
        ("B4", B4),
        ("PARAMS", PARAMS),
    ];
    let mut s: String = consts.iter().map(|(n, v)| format!("const {n}: u32 = {v}u;\n")).collect();
    s.push_str(MODEL_WGSL);
    s
}

/// Activation words per batch (see the shader's layout).
const ACTS: usize = BATCH * (4 * HIDDEN + 2 * DIM + 2 * INTER + 1);

/// Forward kernels, then the backward ones, with their invocation counts.
const FORWARD: [(&str, usize); 5] =
    [("bottom1", BATCH * HIDDEN), ("bottom2", BATCH * DIM), ("interact", BATCH * INTER), ("top1", BATCH * HIDDEN), ("top2", BATCH)];
const BACKWARD: [(&str, usize); 5] = [
    ("back_top", BATCH * HIDDEN),
    ("back_inter", BATCH * INTER),
    ("back_vectors", BATCH * VECTORS * DIM),
    ("back_bottom", BATCH * HIDDEN),
    ("param_grads", PARAMS),
];

/// The model's pipelines and its buffers, sized for one batch.
struct Model {
    layout: wgpu::BindGroupLayout,
    pipelines: Vec<(&'static str, wgpu::ComputePipeline)>,
    sizes: wgpu::Buffer,
    params: GpuTensor,
    dense: GpuTensor,
    labels: GpuTensor,
    acts: GpuTensor,
    grad_emb: GpuTensor,
    grad_params: GpuTensor,
    scores: GpuTensor,
}

impl Model {
    fn new(ctx: &Context, rng: &mut StdRng) -> wgpu_embed::Result<Self> {
        let device = ctx.device();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("ranking"),
            source: wgpu::ShaderSource::Wgsl(model_source().into()),
        });
        let entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        };
        let mut entries = vec![entry(0, wgpu::BufferBindingType::Uniform)];
        entries.extend((1..=4).map(|b| entry(b, wgpu::BufferBindingType::Storage { read_only: true })));
        entries.extend((5..=8).map(|b| entry(b, wgpu::BufferBindingType::Storage { read_only: false })));
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some("ranking"), entries: &entries });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("ranking"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipelines = FORWARD
            .iter()
            .chain(&BACKWARD)
            .map(|&(name, _)| {
                let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(name),
                    compilation_options: Default::default(),
                    cache: None,
                });
                (name, p)
            })
            .collect();
        let sizes = [BATCH as u32, (1.0 / BATCH as f32).to_bits(), 0, 0];
        let sizes = wgpu::util::DeviceExt::create_buffer_init(
            device,
            &wgpu::util::BufferInitDescriptor {
                label: Some("sizes"),
                contents: bytemuck::cast_slice(&sizes),
                usage: wgpu::BufferUsages::UNIFORM,
            },
        );
        // He-uniform weights, zero biases.
        let mut params = vec![0f32; PARAMS];
        for (start, fan_out, fan_in) in [(W1, HIDDEN, DENSE), (W2, DIM, HIDDEN), (W3, HIDDEN, INTER), (W4, 1, HIDDEN)] {
            let bound = (6.0 / fan_in as f32).sqrt();
            params[start..start + fan_out * fan_in].iter_mut().for_each(|w| *w = rng.gen_range(-bound..bound));
        }
        let flat = |n: usize| GpuTensor::zeros(ctx, &[n], DType::F32, 1);
        Ok(Model {
            layout,
            pipelines,
            sizes,
            params: GpuTensor::from_f32(ctx, &params, &[PARAMS])?,
            dense: flat(BATCH * DENSE)?,
            labels: flat(BATCH)?,
            acts: flat(ACTS)?,
            grad_emb: GpuTensor::zeros(ctx, &[BATCH, FEATURES * DIM], DType::F32, FEATURES * DIM)?,
            grad_params: GpuTensor::zeros(ctx, &[PARAMS], DType::F32, 1)?,
            scores: flat(2 * BATCH)?,
        })
    }

    /// Records the forward (and with `train` the backward) of a batch whose embeddings
    /// `emb` were looked up in `run`; dense features and labels are written first.
    fn record(&self, run: &mut Recording<'_>, emb: &GpuTensor, dense: &[f32], labels: &[f32], train: bool) {
        let ctx = run.context();
        let queue = ctx.queue();
        queue.write_buffer(self.dense.segments()[0].buffer(), 0, bytemuck::cast_slice(dense));
        queue.write_buffer(self.labels.segments()[0].buffer(), 0, bytemuck::cast_slice(labels));
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: self.sizes.as_entire_binding() }];
        let tensors = [&self.params, emb, &self.dense, &self.labels, &self.acts, &self.grad_emb, &self.grad_params, &self.scores];
        entries.extend(
            tensors
                .iter()
                .enumerate()
                .map(|(k, t)| wgpu::BindGroupEntry { binding: k as u32 + 1, resource: t.segments()[0].buffer().as_entire_binding() }),
        );
        let bind_group =
            ctx.device().create_bind_group(&wgpu::BindGroupDescriptor { label: Some("ranking"), layout: &self.layout, entries: &entries });
        let kernels = if train { &[FORWARD, BACKWARD].concat()[..] } else { &FORWARD[..] };
        let mut pass = run.encoder().begin_compute_pass(&Default::default());
        pass.set_bind_group(0, &bind_group, &[]);
        for (name, count) in kernels {
            let (_, pipeline) = self.pipelines.iter().find(|(n, _)| n == name).expect("a kernel of the model");
            pass.set_pipeline(pipeline);
            pass.dispatch_workgroups(count.div_ceil(64) as u32, 1, 1);
        }
    }
}

/// Clicks drawn from the generating model; each example's ids (feature-major within the
/// batch when batched), dense features, label and its true logit.
struct Data {
    ids: Vec<[i32; FEATURES]>,
    dense: Vec<[f32; DENSE]>,
    labels: Vec<f32>,
    true_logits: Vec<f32>,
}

fn normal(rng: &mut StdRng) -> f32 {
    let (a, b): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen_range(0.0..1.0));
    (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
}

/// `n` clicks of the generating model made from `model_seed`, drawn with `sample_seed`.
fn generate(n: usize, model_seed: u64, sample_seed: u64) -> Data {
    let mut rng = StdRng::seed_from_u64(model_seed);
    let projection: Vec<f32> = (0..LATENT * DENSE).map(|_| normal(&mut rng) / (DENSE as f32).sqrt()).collect();
    let effects: Vec<Vec<f32>> = ROWS.iter().map(|&r| (0..HEAD.min(r) * LATENT).map(|_| EFFECT * normal(&mut rng)).collect()).collect();
    // Ids by inverse CDF over a Zipf law; each table's ranks shuffled onto its rows.
    let samplers: Vec<(Vec<f64>, Vec<i32>)> = ROWS
        .iter()
        .map(|&rows| {
            let mut acc = 0.0;
            let cdf: Vec<f64> = (1..=rows)
                .map(|k| {
                    acc += (k as f64).powf(-ZIPF);
                    acc
                })
                .collect();
            let mut perm: Vec<i32> = (0..rows as i32).collect();
            for k in (1..rows).rev() {
                perm.swap(k, rng.gen_range(0..=k));
            }
            (cdf, perm)
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(sample_seed);
    let mut data = Data {
        ids: Vec::with_capacity(n),
        dense: Vec::with_capacity(n),
        labels: Vec::with_capacity(n),
        true_logits: Vec::with_capacity(n),
    };
    for _ in 0..n {
        let x: [f32; DENSE] = std::array::from_fn(|_| normal(&mut rng));
        let z: Vec<f32> = (0..LATENT).map(|k| (0..DENSE).map(|j| projection[k * DENSE + j] * x[j]).sum()).collect();
        let mut logit = -0.5f32;
        let ids: [i32; FEATURES] = std::array::from_fn(|f| {
            let (cdf, perm) = &samplers[f];
            let rank = cdf.partition_point(|&c| c < rng.gen_range(0.0..1.0) * cdf[cdf.len() - 1]).min(cdf.len() - 1);
            if rank < HEAD {
                logit += (0..LATENT).map(|k| effects[f][rank * LATENT + k] * z[k]).sum::<f32>();
            }
            perm[rank]
        });
        let p = 1.0 / (1.0 + (-logit).exp());
        data.labels.push(if rng.gen_range(0.0f32..1.0) < p { 1.0 } else { 0.0 });
        data.ids.push(ids);
        data.dense.push(x);
        data.true_logits.push(logit);
    }
    data
}

/// Binary cross-entropy of a logit for a label.
fn bce(logit: f32, label: f32) -> f64 {
    let l = logit as f64;
    l.max(0.0) - l * label as f64 + (-l.abs()).exp().ln_1p()
}

/// The area under the ROC curve of `scores` for `labels` (ties count one half).
fn auc(scores: &[f32], labels: &[f32]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut positives, mut k) = (0.0f64, 0.0f64, 0);
    while k < order.len() {
        let mut end = k;
        while end < order.len() && scores[order[end]] == scores[order[k]] {
            end += 1;
        }
        let mid_rank = (k + end + 1) as f64 / 2.0;
        for &i in &order[k..end] {
            if labels[i] > 0.5 {
                rank_sum += mid_rank;
                positives += 1.0;
            }
        }
        k = end;
    }
    let negatives = scores.len() as f64 - positives;
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// A batch's TBE input: ids feature-major (FBGEMM's layout), one per bag.
fn batch_ids(data: &Data, range: std::ops::Range<usize>) -> Vec<i32> {
    (0..FEATURES).flat_map(|f| data.ids[range.clone()].iter().map(move |ids| ids[f])).collect()
}

struct Trainer {
    tbe: TableBatchedEmbeddingBags,
    tbe_opt: Optimizer,
    model: Model,
    mlp_opt: Optimizer,
    offsets: Vec<i32>,
}

impl Trainer {
    fn new(ctx: &Context, seed: u64) -> wgpu_embed::Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        // DLRM's initialisation: uniform in ±sqrt(1 / rows), so that ids never seen add
        // little to a prediction.
        let tables: Vec<Vec<f32>> = ROWS
            .iter()
            .map(|&r| {
                let bound = (1.0 / r as f32).sqrt();
                (0..r * DIM).map(|_| rng.gen_range(-bound..bound)).collect()
            })
            .collect();
        let specs: Vec<(&[f32], usize, usize)> = tables.iter().zip(ROWS).map(|(t, r)| (&t[..], r, DIM)).collect();
        let tbe = TableBatchedEmbeddingBags::from_pretrained(ctx, &specs, &(0..FEATURES).collect::<Vec<_>>(), Pooling::Sum)?;
        let tbe_opt = Optimizer::new(ctx, OptimizerKind::RowwiseAdagrad { lr: TABLE_LR, eps: 1e-3, weight_decay: 0.0 }, &tbe.weights()?)?;
        let model = Model::new(ctx, &mut rng)?;
        let adam = OptimizerKind::Adam { lr: MLP_LR, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, decoupled: false };
        let mlp_opt = Optimizer::new(ctx, adam, &model.params)?;
        Ok(Trainer { tbe, tbe_opt, model, mlp_opt, offsets: (0..=(FEATURES * BATCH) as i32).collect() })
    }

    /// The model's logits for a batch, and with `train` one step on it (its losses come back).
    fn batch(
        &mut self,
        ctx: &Context,
        data: &Data,
        range: std::ops::Range<usize>,
        train: bool,
    ) -> wgpu_embed::Result<(Vec<f32>, Vec<f32>)> {
        let ids = batch_ids(data, range.clone());
        let dense: Vec<f32> = data.dense[range.clone()].iter().flatten().copied().collect();
        let labels = &data.labels[range];
        let (id_shape, off_shape) = ([ids.len()], [self.offsets.len()]);
        let (idx, off) = (Indices::i32(&ids, &id_shape), Indices::i32(&self.offsets, &off_shape));
        let mut run = ctx.record();
        let emb = self.tbe.record(&mut run, idx, off, None)?;
        self.model.record(&mut run, &emb, &dense, labels, train);
        let read = run.read(&self.model.scores);
        let scores = run.submit()?.finish().block()?.f32(read);
        if train {
            self.tbe.step(ctx, &mut self.tbe_opt, idx, off, None, &self.model.grad_emb).block()?;
            self.mlp_opt.step(ctx, &self.model.params, &Gradient::Dense(self.model.grad_params.clone())).block()?;
        }
        Ok((scores[..BATCH].to_vec(), scores[BATCH..].to_vec()))
    }

    fn held_out_auc(&mut self, ctx: &Context, data: &Data) -> wgpu_embed::Result<f64> {
        let mut logits = Vec::with_capacity(data.labels.len());
        for b in 0..data.labels.len() / BATCH {
            logits.extend(self.batch(ctx, data, b * BATCH..(b + 1) * BATCH, false)?.0);
        }
        Ok(auc(&logits, &data.labels[..logits.len()]))
    }
}

/// (examples seen, mean training loss since the last point, held-out AUC).
type Curve = Vec<(usize, f64, f64)>;

fn plot(path: &Path, curve: &Curve, optimal: f64, optimal_loss: f64) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 380)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(450);
    let seen = curve.last().map_or(1, |p| p.0) as f64 / 1e6;
    let mut loss = ChartBuilder::on(&left)
        .caption("training loss (binary cross-entropy)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..seen, 0.4f64..0.75)?;
    loss.configure_mesh().x_desc("examples seen (millions)").draw()?;
    loss.draw_series(LineSeries::new([(0.0, optimal_loss), (seen, optimal_loss)], BLACK.mix(0.6)))?
        .label("the generator's own probabilities")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.6)));
    loss.draw_series(LineSeries::new(
        curve.iter().filter(|p| p.1.is_finite()).map(|p| (p.0 as f64 / 1e6, p.1)),
        RGBColor(31, 119, 180).stroke_width(2),
    ))?
    .label("the model")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RGBColor(31, 119, 180).stroke_width(2)));
    loss.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    let mut chart = ChartBuilder::on(&right)
        .caption("held-out AUC", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..seen, 0.5f64..(optimal + 0.02).min(1.0))?;
    chart.configure_mesh().x_desc("examples seen (millions)").draw()?;
    chart
        .draw_series(LineSeries::new(curve.iter().map(|p| (p.0 as f64 / 1e6, p.2)), RGBColor(44, 160, 44).stroke_width(2)))?
        .label("the model (TBE + MLPs on the GPU)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RGBColor(44, 160, 44).stroke_width(2)));
    for (level, label) in [(optimal, "Bayes-optimal (the generator's own probabilities)"), (optimal - 0.01, "goal: within 0.01")] {
        chart
            .draw_series(LineSeries::new([(0.0, level), (seen, level)], BLACK.mix(if level == optimal { 0.6 } else { 0.3 })))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.5)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> wgpu_embed::Result<()> {
    let ctx = Context::new().block()?;
    println!("adapter: {} ({:?})", ctx.adapter_info().name, ctx.adapter_info().backend);
    let train = generate(TRAIN_BATCHES * BATCH, 11, 1);
    let held_out = generate(HELD_OUT_BATCHES * BATCH, 11, 2);
    let optimal = auc(&held_out.true_logits, &held_out.labels);
    let optimal_loss =
        held_out.true_logits.iter().zip(&held_out.labels).map(|(&l, &y)| bce(l, y)).sum::<f64>() / held_out.labels.len() as f64;
    let rows: usize = ROWS.iter().sum();
    println!(
        "{FEATURES} sparse features over {rows} rows in all (tables of {} to {}), {DENSE} dense; {} training clicks, {} held out; click rate {:.3}; Bayes-optimal held-out AUC {optimal:.4} (loss {optimal_loss:.4})",
        ROWS.iter().min().unwrap(),
        ROWS.iter().max().unwrap(),
        train.labels.len(),
        held_out.labels.len(),
        train.labels.iter().sum::<f32>() / train.labels.len() as f32
    );
    let mut trainer = Trainer::new(&ctx, 3)?;
    let mut curve: Curve = vec![(0, f64::NAN, trainer.held_out_auc(&ctx, &held_out)?)];
    let start = std::time::Instant::now();
    let (mut loss_sum, mut loss_n) = (0.0f64, 0usize);
    let every = TRAIN_BATCHES / 20;
    for epoch in 0..EPOCHS {
        for b in 0..TRAIN_BATCHES {
            // The last tenth at a tenth of the learning rates.
            if (epoch * TRAIN_BATCHES + b) * 10 == 9 * EPOCHS * TRAIN_BATCHES {
                trainer.tbe_opt.set_lr(TABLE_LR / 10.0)?;
                trainer.mlp_opt.set_lr(MLP_LR / 10.0)?;
            }
            let (_, losses) = trainer.batch(&ctx, &train, b * BATCH..(b + 1) * BATCH, true)?;
            loss_sum += losses.iter().map(|&l| l as f64).sum::<f64>();
            loss_n += losses.len();
            if (b + 1) % every == 0 {
                let seen = (epoch * TRAIN_BATCHES + b + 1) * BATCH;
                let held = trainer.held_out_auc(&ctx, &held_out)?;
                println!(
                    "epoch {} batch {:>4}: training loss {:.4}, held-out AUC {held:.4} (optimal {optimal:.4}), {:.0} s",
                    epoch + 1,
                    b + 1,
                    loss_sum / loss_n as f64,
                    start.elapsed().as_secs_f64()
                );
                curve.push((seen, loss_sum / loss_n as f64, held));
                (loss_sum, loss_n) = (0.0, 0);
            }
        }
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ranking-results");
    std::fs::create_dir_all(&out).expect("output folder");
    plot(&out.join("auc.svg"), &curve, optimal, optimal_loss).expect("plot");
    let last = curve.last().map_or(f64::NAN, |p| p.2);
    println!(
        "held-out AUC {last:.4}, Bayes-optimal {optimal:.4}: gap {:.4} ({})",
        optimal - last,
        if optimal - last <= 0.01 { "within 0.01" } else { "NOT within 0.01" }
    );
    println!("plot: {}", out.join("auc.svg").display());
    Ok(())
}
