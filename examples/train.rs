//! Trains a model from scratch on the GPU: matrix factorisation of ratings drawn from
//! a known generating model (users and items with 8 hidden factors, rating = the
//! cosine of their factors + noise). Three runs are compared: `Embedding` +
//! `SparseAdam` (sparse gradients), and bitsandbytes' `Adam8bit` twice, with the rules
//! bitsandbytes applies: over a `StableEmbedding` it keeps 32-bit states (the layer
//! registers `optim_bits = 32`, which [`Optimizer::for_layer`] honours), over a plain
//! `Embedding` block-wise 8-bit states. All must bring the held-out error down to the
//! generator's own noise.
//!
//! The loss kernel is written here, in WGSL, and recorded between the library's layers
//! (the tensors stay on the GPU; `Segment::buffer` hands out their buffers). With
//! `Embedding` + `SparseAdam` a whole training step — two lookups, the loss kernel and
//! two fused backward + SparseAdam steps — is one recording: one submission, and one
//! read-back of the squared errors for the loss curve.
//!
//! ```sh
//! cargo run --release --example train            # writes examples/train-results/loss.svg
//! ```

use std::path::Path;
use wgpu_embed::Block;
use wgpu_embed::EmbeddingOptions;

use plotters::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use wgpu::util::DeviceExt;
use wgpu_embed::{
    Context, DType, Embedding, GpuTensor, GradOptions, Gradient, Indices, Optimizer, OptimizerKind, Recording, StableEmbedding,
};

/// bitsandbytes' `Adam8bit` with its defaults (block of 256, `min_8bit_size` 4 096).
const ADAM8BIT: OptimizerKind =
    OptimizerKind::Adam8bit { lr: 0.02, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, blocksize: 256, min_8bit_size: 4096 };

const USERS: usize = 1000;
const ITEMS: usize = 500;
const FACTORS: usize = 8;
const NOISE: f32 = 0.05;
const DIM: usize = 16;
const TRAIN: usize = 150_000;
const HELD_OUT: usize = 10_000;
const BATCH: usize = 8192;
const EPOCHS: usize = 20;

/// Squared error of each pair's prediction `scale · <u, i>` and the gradients of the
/// mean squared error with respect to the two gathered rows.
const LOSS_WGSL: &str = r#"
struct Dims { pairs: u32, dim: u32, scale: f32, inv_pairs: f32 }
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> users: array<f32>;
@group(0) @binding(2) var<storage, read> items: array<f32>;
@group(0) @binding(3) var<storage, read> ratings: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad_users: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad_items: array<f32>;
@group(0) @binding(6) var<storage, read_write> squared_error: array<f32>;

@compute @workgroup_size(64)
fn loss(@builtin(global_invocation_id) id: vec3<u32>) {
    let b = id.x;
    if (b >= dims.pairs) { return; }
    let base = b * dims.dim;
    var dot = 0.0;
    for (var c = 0u; c < dims.dim; c++) { dot += users[base + c] * items[base + c]; }
    let err = dims.scale * dot - ratings[b];
    squared_error[b] = err * err;
    let g = 2.0 * err * dims.scale * dims.inv_pairs;
    for (var c = 0u; c < dims.dim; c++) {
        grad_users[base + c] = g * items[base + c];
        grad_items[base + c] = g * users[base + c];
    }
}
"#;

/// The ratings of the generating model: `<U_u, I_i> / FACTORS + noise`.
struct Data {
    train: Vec<(i32, i32, f32)>,
    held_out: Vec<(i32, i32, f32)>,
}

fn generate(seed: u64) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut normal = move || -> f32 {
        // Box-Muller
        let (a, b): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen_range(0.0..1.0));
        (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
    };
    // Factor rows of norm sqrt(FACTORS): ratings are cosines of taste and item, which a
    // LayerNorm'd row (StableEmbedding) represents as well as a free one.
    let mut rows = |n: usize| -> Vec<f32> {
        let mut v: Vec<f32> = (0..n * FACTORS).map(|_| normal()).collect();
        for row in v.chunks_mut(FACTORS) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x *= (FACTORS as f32).sqrt() / norm);
        }
        v
    };
    let u = rows(USERS);
    let i = rows(ITEMS);
    let mut rng = StdRng::seed_from_u64(seed + 1);
    let mut pairs = Vec::with_capacity(TRAIN + HELD_OUT);
    for _ in 0..TRAIN + HELD_OUT {
        let (a, b) = (rng.gen_range(0..USERS), rng.gen_range(0..ITEMS));
        let dot: f32 = (0..FACTORS).map(|k| u[a * FACTORS + k] * i[b * FACTORS + k]).sum();
        let noise: f32 = (rng.gen_range(-1.0f32..1.0) + rng.gen_range(-1.0f32..1.0) + rng.gen_range(-1.0f32..1.0)) * NOISE;
        pairs.push((a as i32, b as i32, dot / FACTORS as f32 + noise));
    }
    let held_out = pairs.split_off(TRAIN);
    Data { train: pairs, held_out }
}

/// The loss kernel's pipeline on the library's device.
struct LossKernel {
    pipeline: wgpu::ComputePipeline,
}

impl LossKernel {
    fn new(ctx: &Context) -> Self {
        let module = ctx.device().create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("mf-loss"),
            source: wgpu::ShaderSource::Wgsl(LOSS_WGSL.into()),
        });
        let pipeline = ctx.device().create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("mf-loss"),
            layout: None,
            module: &module,
            entry_point: Some("loss"),
            compilation_options: Default::default(),
            cache: None,
        });
        LossKernel { pipeline }
    }

    /// Squared errors (read back, for the loss curve) and the gradients of the rows.
    fn run(&self, ctx: &Context, users: &GpuTensor, items: &GpuTensor, ratings: &[f32], scale: f32) -> (Vec<f32>, GpuTensor, GpuTensor) {
        let mut run = ctx.record();
        let (squared, grad_users, grad_items) = self.record(&mut run, users, items, ratings, scale);
        let read = run.read(&squared);
        let out = run.submit().and_then(|s| s.finish().block()).expect("loss");
        (out.f32(read), grad_users, grad_items)
    }

    /// Records the kernel into `run`: the squared errors and the gradients of the rows.
    fn record(
        &self,
        run: &mut Recording<'_>,
        users: &GpuTensor,
        items: &GpuTensor,
        ratings: &[f32],
        scale: f32,
    ) -> (GpuTensor, GpuTensor, GpuTensor) {
        let ctx = run.context();
        let n = ratings.len();
        let device = ctx.device();
        let dims = [n as u32, DIM as u32, scale.to_bits(), (1.0 / n as f32).to_bits()];
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("dims"),
            contents: bytemuck::cast_slice(&dims),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let ratings = GpuTensor::flat(ctx, ratings, DType::F32).expect("ratings");
        let grad_users = GpuTensor::zeros(ctx, &[n, DIM], DType::F32, DIM).expect("gradient");
        let grad_items = GpuTensor::zeros(ctx, &[n, DIM], DType::F32, DIM).expect("gradient");
        let squared = GpuTensor::zeros(ctx, &[n], DType::F32, 1).expect("errors");
        // Batches are small: every tensor here is one buffer.
        let buffers = [users, items, &ratings, &grad_users, &grad_items, &squared].map(|t| t.segments()[0].buffer());
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        entries.extend(
            buffers.iter().enumerate().map(|(k, b)| wgpu::BindGroupEntry { binding: k as u32 + 1, resource: b.as_entire_binding() }),
        );
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut pass = run.encoder().begin_compute_pass(&Default::default());
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(n.div_ceil(64) as u32, 1, 1);
        drop(pass);
        (squared, grad_users, grad_items)
    }
}

/// One of the three models: a table of users and one of items, with their optimizers.
// Three values, built once each: their sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Tables {
    Plain {
        users: Embedding,
        items: Embedding,
        opt_users: Optimizer,
        opt_items: Optimizer,
    },
    /// A plain table with 8-bit Adam: block-wise 8-bit states, dense gradients.
    Plain8bit {
        users: Box<Embedding>,
        items: Box<Embedding>,
        opt_users: Box<Optimizer>,
        opt_items: Box<Optimizer>,
    },
    Stable {
        users: Box<StableEmbedding>,
        items: Box<StableEmbedding>,
        opt_users: Optimizer,
        opt_items: Optimizer,
    },
}

impl Tables {
    fn plain(ctx: &Context, seed: u64) -> wgpu_embed::Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut init = |n: usize| -> Vec<f32> { (0..n * DIM).map(|_| rng.gen_range(-0.1f32..0.1)).collect() };
        let users = Embedding::from_pretrained(ctx, &init(USERS), USERS, DIM)?;
        let items = Embedding::from_pretrained(ctx, &init(ITEMS), ITEMS, DIM)?;
        let adam = OptimizerKind::SparseAdam { lr: 0.02, betas: (0.9, 0.999), eps: 1e-8 };
        let (opt_users, opt_items) = (Optimizer::new(ctx, adam, users.weight())?, Optimizer::new(ctx, adam, items.weight())?);
        Ok(Tables::Plain { users, items, opt_users, opt_items })
    }

    fn stable(ctx: &Context, seed: u64) -> wgpu_embed::Result<Self> {
        let users = Box::new(StableEmbedding::new(ctx, USERS, DIM, EmbeddingOptions::default().seed(seed))?);
        let items = Box::new(StableEmbedding::new(ctx, ITEMS, DIM, EmbeddingOptions::default().seed(seed + 1))?);
        // bitsandbytes' rule: StableEmbedding's weight keeps 32-bit states (Adam32bit).
        let (opt_users, opt_items) = (Optimizer::for_layer(ctx, ADAM8BIT, &*users)?, Optimizer::for_layer(ctx, ADAM8BIT, &*items)?);
        Ok(Tables::Stable { users, items, opt_users, opt_items })
    }

    fn plain_8bit(ctx: &Context, seed: u64) -> wgpu_embed::Result<Self> {
        let Tables::Plain { users, items, .. } = Self::plain(ctx, seed)? else { unreachable!("plain tables") };
        // A plain table of 16 000 elements: 8-bit states.
        let (opt_users, opt_items) = (Optimizer::for_layer(ctx, ADAM8BIT, &users)?, Optimizer::for_layer(ctx, ADAM8BIT, &items)?);
        Ok(Tables::Plain8bit {
            users: Box::new(users),
            items: Box::new(items),
            opt_users: Box::new(opt_users),
            opt_items: Box::new(opt_items),
        })
    }

    /// The prediction is `scale · <user row, item row>`: StableEmbedding's rows are
    /// normalised (unit variance), so their dot product is divided by the width.
    fn scale(&self) -> f32 {
        match self {
            Tables::Plain { .. } | Tables::Plain8bit { .. } => 1.0,
            Tables::Stable { .. } => 1.0 / DIM as f32,
        }
    }

    fn forward(&self, ctx: &Context, u: &[i32], i: &[i32]) -> wgpu_embed::Result<(GpuTensor, GpuTensor)> {
        let (su, si) = ([u.len()], [i.len()]);
        let (iu, ii) = (Indices::i32(u, &su), Indices::i32(i, &si));
        match self {
            Tables::Plain { users, items, .. } => Ok((users.forward(ctx, iu)?, items.forward(ctx, ii)?)),
            Tables::Plain8bit { users, items, .. } => Ok((users.forward(ctx, iu)?, items.forward(ctx, ii)?)),
            Tables::Stable { users, items, .. } => Ok((users.forward(ctx, iu)?, items.forward(ctx, ii)?)),
        }
    }

    /// One training step on a batch; the squared errors of its predictions. Plain
    /// tables: one recording (lookups, loss, fused backward + SparseAdam steps).
    fn train_step(&mut self, ctx: &Context, kernel: &LossKernel, u: &[i32], i: &[i32], r: &[f32]) -> wgpu_embed::Result<Vec<f32>> {
        let scale = self.scale();
        let (su, si) = ([u.len()], [i.len()]);
        let (iu, ii) = (Indices::i32(u, &su), Indices::i32(i, &si));
        match self {
            Tables::Plain { users, items, opt_users, opt_items } => {
                let mut run = ctx.record();
                let (eu, ei) = (users.record(&mut run, iu)?, items.record(&mut run, ii)?);
                let (squared, grad_u, grad_i) = kernel.record(&mut run, &eu, &ei, r, scale);
                let read = run.read(&squared);
                opt_users.record_step_embedding(&mut run, users, iu, &grad_u)?;
                opt_items.record_step_embedding(&mut run, items, ii, &grad_i)?;
                Ok(run.submit()?.finish().block()?.f32(read))
            }
            Tables::Stable { .. } | Tables::Plain8bit { .. } => {
                let (eu, ei) = self.forward(ctx, u, i)?;
                let (squared, grad_u, grad_i) = kernel.run(ctx, &eu, &ei, r, scale);
                self.step(ctx, u, i, &grad_u, &grad_i)?;
                Ok(squared)
            }
        }
    }

    /// Backward through both tables (dense gradients) and one bitsandbytes Adam step each.
    fn step(&mut self, ctx: &Context, u: &[i32], i: &[i32], grad_u: &GpuTensor, grad_i: &GpuTensor) -> wgpu_embed::Result<()> {
        let (su, si) = ([u.len()], [i.len()]);
        let (iu, ii) = (Indices::i32(u, &su), Indices::i32(i, &si));
        match self {
            Tables::Plain { .. } => unreachable!("plain tables train through recorded steps"),
            Tables::Stable { users, items, opt_users, opt_items } => {
                let gu = users.backward(ctx, iu, grad_u)?.tables.remove(0);
                let gi = items.backward(ctx, ii, grad_i)?.tables.remove(0);
                opt_users.step(ctx, users.weight(), &Gradient::Dense(gu)).block()?;
                opt_items.step(ctx, items.weight(), &Gradient::Dense(gi)).block()?;
            }
            Tables::Plain8bit { users, items, opt_users, opt_items } => {
                let gu = users.backward(ctx, iu, grad_u, GradOptions::default()).block()?;
                let gi = items.backward(ctx, ii, grad_i, GradOptions::default()).block()?;
                opt_users.step(ctx, users.weight(), &gu).block()?;
                opt_items.step(ctx, items.weight(), &gi).block()?;
            }
        }
        Ok(())
    }
}

/// RMSE per epoch: (epoch, train, held out).
type Curve = Vec<(usize, f64, f64)>;

/// Root mean squared error of the model on `pairs` (no step).
fn rmse(ctx: &Context, kernel: &LossKernel, tables: &Tables, pairs: &[(i32, i32, f32)]) -> f64 {
    let mut sum = 0.0f64;
    for chunk in pairs.chunks(BATCH) {
        let (u, i, r): (Vec<i32>, Vec<i32>, Vec<f32>) =
            (chunk.iter().map(|p| p.0).collect(), chunk.iter().map(|p| p.1).collect(), chunk.iter().map(|p| p.2).collect());
        let (eu, ei) = tables.forward(ctx, &u, &i).expect("forward");
        let (squared, _, _) = kernel.run(ctx, &eu, &ei, &r, tables.scale());
        sum += squared.iter().map(|&x| x as f64).sum::<f64>();
    }
    (sum / pairs.len() as f64).sqrt()
}

fn train(ctx: &Context, kernel: &LossKernel, data: &Data, mut tables: Tables, name: &str) -> Curve {
    let mut curve = Vec::new();
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    let mut rng = StdRng::seed_from_u64(7);
    let start = std::time::Instant::now();
    for epoch in 1..=EPOCHS {
        // Shuffled mini-batches.
        for k in (1..order.len()).rev() {
            order.swap(k, rng.gen_range(0..=k));
        }
        let mut train_sum = 0.0f64;
        for batch in order.chunks(BATCH) {
            let u: Vec<i32> = batch.iter().map(|&k| data.train[k].0).collect();
            let i: Vec<i32> = batch.iter().map(|&k| data.train[k].1).collect();
            let r: Vec<f32> = batch.iter().map(|&k| data.train[k].2).collect();
            let squared = tables.train_step(ctx, kernel, &u, &i, &r).expect("step");
            train_sum += squared.iter().map(|&x| x as f64).sum::<f64>();
        }
        let train_rmse = (train_sum / data.train.len() as f64).sqrt();
        let held_out = rmse(ctx, kernel, &tables, &data.held_out);
        println!("{name:>34}  epoch {epoch:>2}: train RMSE {train_rmse:.4}, held-out RMSE {held_out:.4}");
        curve.push((epoch, train_rmse, held_out));
    }
    println!("{name:>34}  {:.1} s", start.elapsed().as_secs_f64());
    curve
}

fn plot(path: &Path, runs: &[(&str, Curve)], floor: f64) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = runs.iter().flat_map(|(_, c)| c.iter().map(|p| p.2)).fold(0.0f64, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption("Matrix factorisation on the GPU: held-out RMSE", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(1f64..EPOCHS as f64, 0f64..top)?;
    chart.configure_mesh().x_desc("epoch").y_desc("RMSE").draw()?;
    let colors = [RGBColor(31, 119, 180), RGBColor(44, 160, 44), RGBColor(214, 39, 40)];
    for ((name, curve), color) in runs.iter().zip(colors) {
        chart
            .draw_series(LineSeries::new(curve.iter().map(|p| (p.0 as f64, p.2)), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .draw_series(LineSeries::new([(1.0, floor), (EPOCHS as f64, floor)], BLACK.mix(0.5)))?
        .label("generator's noise (the floor)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.5)));
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    let ctx = Context::new().block().expect("a GPU adapter (or lavapipe)");
    println!("adapter: {} ({:?})", ctx.adapter_info().name, ctx.adapter_info().backend);
    let data = generate(42);
    // The generator's noise (three uniforms in [-1, 1], variance 1 in all, times NOISE):
    // the best RMSE any model reaches on held-out pairs.
    let floor = NOISE as f64;
    let baseline = (data.held_out.iter().map(|p| (p.2 as f64).powi(2)).sum::<f64>() / data.held_out.len() as f64).sqrt();
    println!("generator: {USERS} users x {ITEMS} items, {FACTORS} factors; noise RMSE {floor:.4}; predicting 0 gives {baseline:.4}");
    let kernel = LossKernel::new(&ctx);
    let runs = [
        ("Embedding + SparseAdam", Tables::plain(&ctx, 1).expect("tables")),
        ("Embedding + Adam8bit (8-bit states)", Tables::plain_8bit(&ctx, 1).expect("tables")),
        ("StableEmbedding + Adam8bit (32-bit states, as bitsandbytes keeps them)", Tables::stable(&ctx, 1).expect("tables")),
    ];
    let curves: Vec<(&str, Curve)> = runs.into_iter().map(|(name, tables)| (name, train(&ctx, &kernel, &data, tables, name))).collect();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/train-results");
    std::fs::create_dir_all(&out).expect("output folder");
    let svg = out.join("loss.svg");
    plot(&svg, &curves, floor).expect("plot");
    println!("plot: {}", svg.display());
    for (name, curve) in &curves {
        let last = curve.last().map_or(f64::NAN, |p| p.2);
        println!("{name}: held-out RMSE {last:.4} (noise {floor:.4}, predicting 0: {baseline:.4})");
    }
}
