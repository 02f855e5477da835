//! wgpu-embed beside burn (its wgpu backend) on the same Vulkan adapter: the same table,
//! indices and inputs; each call timed alone through the public APIs (indices or input
//! from the host, dispatch, output read back to the host), the two alternated, median.
//! Values are checked before timing. Prints a Markdown table and writes it to
//! `../bench-results/peers-native.md`.
//!
//! ```text
//! cd examples/peers && cargo run --release -- [--reps 15] [--n 16,4096]
//! ```

use std::time::Instant;

use burn::module::Param;
use burn::nn::{EmbeddingConfig, LayerNormConfig};
use burn::tensor::quantization::{QuantScheme, QuantValue, ScaleDtype};
use burn::tensor::wgpu::WgpuBackend;
use burn::tensor::{Device, Int, Tensor, TensorData};
use wgpu_embed::{Block, Context, ContextOptions, Embedding, Indices, LayerNorm, QuantizedEmbedding, QuantizedTable, Scheme};

const ROWS: usize = 30522;
const DIM: usize = 384;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "output lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Median ms of `ours` and `theirs` over `reps` alternated calls, after two warm-ups each.
fn time_pair(reps: usize, mut ours: impl FnMut() -> Vec<f32>, mut theirs: impl FnMut() -> Vec<f32>) -> (f64, f64) {
    for _ in 0..2 {
        ours();
        theirs();
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(ours());
        a.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        std::hint::black_box(theirs());
        b.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(a), median(b))
}

fn burn_floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().expect("f32 output")
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).unwrap_or_else(|| default.to_string())
}

fn main() -> wgpu_embed::Result<()> {
    let reps: usize = arg("--reps", "15").parse().expect("--reps: a number");
    let sizes: Vec<usize> = arg("--n", "16,4096").split(',').map(|s| s.parse().expect("--n: numbers")).collect();

    // Ours and burn's, both on Vulkan (the same adapter where there is one Vulkan device).
    let ctx = Context::with_options(ContextOptions::default().backends(wgpu::Backends::VULKAN)).block()?;
    let device: Device = Device::wgpu_options().graphics_api(WgpuBackend::Vulkan).init().expect("burn's wgpu device on Vulkan");
    let info = ctx.adapter_info();
    let adapter = format!("{} ({:?})", info.name, info.backend);
    eprintln!("adapter: {adapter}");

    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let table: Vec<f32> = (0..ROWS * DIM).map(|_| uniform() * 0.2).collect();
    let gamma: Vec<f32> = (0..DIM).map(|_| 1.0 + uniform() * 0.2).collect();
    let beta: Vec<f32> = (0..DIM).map(|_| uniform() * 0.1).collect();

    let ours_emb = Embedding::from_pretrained(&ctx, &table, ROWS, DIM)?;
    let ours_q8 = QuantizedEmbedding::from_table(QuantizedTable::from_tensor(&ctx, ours_emb.weight(), Scheme::Int8Rowwise, None)?);
    let ours_ln = LayerNorm::from_params(&ctx, DIM, 1e-5, Some(&gamma), Some(&beta))?;

    let weight = Tensor::<2>::from_data(TensorData::new(table.clone(), [ROWS, DIM]), &device);
    let mut burn_emb = EmbeddingConfig::new(ROWS, DIM).init(&device);
    burn_emb.weight = Param::from_tensor(weight.clone());
    // Symmetric int8 with one f32 scale per 64 values of a row: the closest of burn's schemes.
    let scheme = QuantScheme::default().with_value(QuantValue::Q8S).per_block([64], ScaleDtype::F32);
    let burn_q8 = weight.quantize_dynamic(&scheme);
    let mut burn_ln = LayerNormConfig::new(DIM).init(&device);
    burn_ln.gamma = Param::from_tensor(Tensor::from_data(TensorData::new(gamma.clone(), [DIM]), &device));
    burn_ln.beta = Some(Param::from_tensor(Tensor::from_data(TensorData::new(beta.clone(), [DIM]), &device)));

    let mut md = format!(
        "Adapter: **{adapter}**; burn 0.22 (wgpu backend, Vulkan, its own device on the same adapter). Table {ROWS} x {DIM}; \
         wall ms per call (indices or input from the host, dispatch, output read back to the host), median of {reps}, \
         the two alternated.\n\n| op | n | ours ms | burn ms | ours / burn (time) |\n|---|---|---|---|---|\n"
    );
    for &n in &sizes {
        let ids: Vec<i32> = (0..n).map(|i| ((i * 7919 + 17) % ROWS) as i32).collect();
        let x: Vec<f32> = (0..n * DIM).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let shape = [n];
        let burn_ids = || Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, n]), &device);

        let ours_lookup = || ours_emb.forward(&ctx, Indices::i32(&ids, &shape)).and_then(|t| t.read_f32(&ctx).block()).expect("lookup");
        let burn_lookup = || burn_floats(burn_emb.forward(burn_ids()));
        let ours_q = || ours_q8.forward(&ctx, Indices::i32(&ids, &shape)).and_then(|t| t.read_f32(&ctx).block()).expect("quantized lookup");
        let burn_q = || burn_floats(burn_q8.clone().select(0, burn_ids().reshape([n])).dequantize());
        let ours_norm = || ours_ln.forward(&ctx, &x, &[n, DIM]).and_then(|t| t.read_f32(&ctx).block()).expect("layer norm");
        let burn_norm = || burn_floats(burn_ln.forward(Tensor::<2>::from_data(TensorData::new(x.clone(), [n, DIM]), &device)));

        type Call<'a> = Box<dyn FnMut() -> Vec<f32> + 'a>;
        let cases: Vec<(&str, Call, Call, f32)> = vec![
            ("lookup f32 (burn: Embedding)", Box::new(ours_lookup), Box::new(burn_lookup), 0.0),
            (
                "lookup int8 (ours: row-wise; burn: select on a Q8S tensor, block 64, then dequantize)",
                Box::new(ours_q),
                Box::new(burn_q),
                2e-3,
            ),
            ("LayerNorm, host input (burn: LayerNorm)", Box::new(ours_norm), Box::new(burn_norm), 1e-4),
        ];
        for (name, mut ours, mut theirs, tol) in cases {
            let diff = max_diff(&ours(), &theirs());
            assert!(diff <= tol, "{name}, n = {n}: ours and burn's differ by {diff} (allowed {tol})");
            let (o, t) = time_pair(reps, &mut ours, &mut theirs);
            eprintln!("{name}, n = {n}: ours {o:.2} ms, burn {t:.2} ms");
            md += &format!("| {name} | {n} | {o:.2} | {t:.2} | {:.2} |\n", o / t);
        }
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench-results/peers-native.md");
    std::fs::write(&out, &md).expect("write peers-native.md");
    println!("{md}");
    Ok(())
}
