//! LayerNorm, StableEmbedding, the embedding-sum block and axial positions against
//! f64 CPU references, over random shapes, split tables and packed f16/bf16 tables.

mod common;

use common::Rng;
use half::{bf16, f16};
use wgpu_embed::Block;
use wgpu_embed::EmbeddingOptions;
use wgpu_embed::{AxialPositionEmbedding, Context, DType, EmbeddingSumLayerNorm, Error, HostTable, Indices, LayerNorm, StableEmbedding};

/// `F.layer_norm` over rows of `dim`, in f64.
fn layer_norm_ref(x: &[f32], dim: usize, gamma: Option<&[f32]>, beta: Option<&[f32]>, eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(dim) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for (c, &v) in row.iter().enumerate() {
            let mut y = (v as f64 - mean) * rstd;
            if let Some(g) = gamma {
                y *= g[c] as f64;
            }
            if let Some(b) = beta {
                y += b[c] as f64;
            }
            out.push(y as f32);
        }
    }
    out
}

fn close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    common::assert_close(got, want, atol, rtol, what);
}

#[test]
fn layer_norm_random_shapes_and_affine_variants() {
    let ctx = common::context(None);
    let mut rng = Rng(0x1a7e);
    let dims = [1usize, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 64, 127, 128, 129, 255, 256, 257, 384, 1000, 1023, 4096, 8192, 10000];
    for (i, &dim) in dims.iter().enumerate() {
        let rows = 1 + rng.below(5) as usize;
        let x: Vec<f32> = (0..rows * dim).map(|_| rng.f32() * 3.0 + 0.5).collect();
        let gamma = rng.vec_f32(dim);
        let beta = rng.vec_f32(dim);
        let eps = [1e-5f32, 1e-12, 0.1][i % 3];
        // Both, gamma only, beta only, none.
        let (g, b) = match i % 4 {
            0 => (Some(&gamma[..]), Some(&beta[..])),
            1 => (Some(&gamma[..]), None),
            2 => (None, Some(&beta[..])),
            _ => (None, None),
        };
        let layer = LayerNorm::from_params(&ctx, dim, eps, g, b).unwrap();
        let shape = [rows, dim];
        let got = layer.forward(&ctx, &x, &shape).unwrap();
        assert_eq!(got.shape(), &shape);
        close(&got.read_f32(&ctx).block().unwrap(), &layer_norm_ref(&x, dim, g, b, eps), 1e-5, 1e-4, &format!("dim {dim}"));
    }
}

#[test]
fn layer_norm_many_rows_over_split_bindings() {
    // 70 000 rows of 8 over 1 MiB bindings: several input/output segments; 3-D input.
    let ctx = common::context(Some(1 << 20));
    let mut rng = Rng(7);
    let (a, b, dim) = (700, 100, 8);
    let x = rng.vec_f32(a * b * dim);
    let layer = LayerNorm::new(&ctx, dim, 1e-5, true).unwrap();
    let out = layer.forward(&ctx, &x, &[a, b, dim]).unwrap();
    assert!(out.segments().len() > 1);
    assert_eq!(out.shape(), &[a, b, dim]);
    close(&out.read_f32(&ctx).block().unwrap(), &layer_norm_ref(&x, dim, None, None, 1e-5), 1e-5, 1e-4, "many rows");
}

#[test]
fn layer_norm_large_mean_small_spread_is_stable() {
    // Rows of 1000 + 0.01·noise: E[x²] − E[x]² in f32 loses every digit of the
    // variance (ulp(1e6) = 0.06 against a variance of 1e-4). The f32 mean itself is
    // only good to an ulp of 1000 (6e-5), i.e. 6e-3 after scaling by 1/std ≈ 100.
    let ctx = common::context(None);
    let mut rng = Rng(1000);
    for dim in [256usize, 1000, 4096] {
        let rows = 4;
        let x: Vec<f32> = (0..rows * dim).map(|_| 1000.0 + 0.01 * rng.f32()).collect();
        let layer = LayerNorm::new(&ctx, dim, 1e-5, false).unwrap();
        let got = layer.forward(&ctx, &x, &[rows, dim]).unwrap().read_f32(&ctx).block().unwrap();
        let want = layer_norm_ref(&x, dim, None, None, 1e-5);
        close(&got, &want, 1e-2, 0.0, &format!("1000 + noise, dim {dim}"));
        for (r, row) in got.chunks(dim).enumerate() {
            let wrow = &want[r * dim..][..dim];
            let std = |v: &[f32]| (v.iter().map(|&y| (y as f64).powi(2)).sum::<f64>() / dim as f64).sqrt();
            // The spread of the output is the reference's to 1e-4: the variance is right.
            assert!((std(row) - std(wrow)).abs() < 1e-4, "dim {dim} row {r}: std {} vs {}", std(row), std(wrow));
        }
    }
}

#[test]
fn layer_norm_refuses_bad_input_before_gpu_work() {
    let ctx = common::context(None);
    let layer = LayerNorm::new(&ctx, 4, 1e-5, true).unwrap();
    let e = layer.forward(&ctx, &[0.0; 6], &[2, 3]).unwrap_err();
    assert!(e.to_string().contains("normalized_shape=[4]"), "{e}");
    assert!(matches!(LayerNorm::new(&ctx, 0, 1e-5, true), Err(Error::InvalidArgument { name: "normalized_shape", .. })));
    assert!(matches!(LayerNorm::new(&ctx, 4, f32::NAN, true), Err(Error::InvalidArgument { name: "eps", .. })));
    assert!(matches!(LayerNorm::from_params(&ctx, 4, 1e-5, Some(&[1.0; 3]), None), Err(Error::InvalidArgument { name: "gamma", .. })));
}

#[test]
fn stable_embedding_init_and_forward() {
    let ctx = common::context(None);
    let (v, d) = (50, 24);
    let layer = StableEmbedding::new(&ctx, v, d, EmbeddingOptions::default().padding_idx(-1).seed(42)).unwrap();
    assert_eq!(layer.padding_idx(), Some(49));
    let weight = layer.weight().read_f32(&ctx).block().unwrap();
    let bound = (6.0f32 / (v + d) as f32).sqrt();
    assert!(weight.iter().all(|w| w.abs() <= bound));
    assert!(weight[49 * d..].iter().all(|&w| w == 0.0), "padding row zeroed");
    // Spread over the range, not a constant: the sample variance is near bound²/3.
    let var = weight[..49 * d].iter().map(|w| (w * w) as f64).sum::<f64>() / (49 * d) as f64;
    assert!((var / (bound * bound / 3.0) as f64 - 1.0).abs() < 0.15, "variance {var}");
    let idx = [3i64, 49, 0, 3, 17, 48];
    let out = layer.forward(&ctx, Indices::i64(&idx, &[2, 3])).unwrap();
    assert_eq!(out.shape(), &[2, 3, d]);
    let want = layer_norm_ref(&common::lookup(&weight, d, &idx), d, Some(&vec![1.0; d]), Some(&vec![0.0; d]), 1e-5);
    close(&out.read_f32(&ctx).block().unwrap(), &want, 1e-5, 1e-4, "stable init forward");
    let e = layer.forward(&ctx, Indices::i64(&[1, 50], &[2])).unwrap_err();
    assert!(matches!(e, Error::IndexOutOfRange { name: "indices", position: 1, value: 50, .. }), "{e}");
}

#[test]
fn stable_embedding_pretrained_f32_f16_bf16_and_split() {
    let mut rng = Rng(99);
    let (v, d) = (3000, 96); // 1.1 MB in f32: split over 1 MiB bindings
    let values: Vec<f32> = (0..v * d).map(|_| rng.f32() * 2.0).collect();
    let gamma: Vec<f32> = (0..d).map(|_| 1.0 + 0.5 * rng.f32()).collect();
    let beta = rng.vec_f32(d);
    let idx: Vec<i64> = (0..333).map(|_| rng.below(v as u64) as i64).collect();
    let h: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
    let b: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
    let tables: [(DType, HostTable, Vec<f32>); 3] = [
        (DType::F32, HostTable::f32(&values, v, d).unwrap(), values.clone()),
        (DType::F16, HostTable::f16(&h, v, d).unwrap(), h.iter().map(|x| x.to_f32()).collect()),
        (DType::BF16, HostTable::bf16(&b, v, d).unwrap(), b.iter().map(|x| x.to_f32()).collect()),
    ];
    for limit in [None, Some(1 << 20)] {
        let ctx = common::context(limit);
        assert!(!ctx.features().contains(wgpu::Features::SHADER_F16));
        for (dtype, table, held) in &tables {
            let layer = StableEmbedding::from_pretrained(&ctx, table.clone(), Some(0), Some(&gamma), Some(&beta), 1e-5).unwrap();
            assert_eq!(layer.table_dtype(), *dtype);
            let out = layer.forward(&ctx, Indices::i64(&idx, &[idx.len()])).unwrap();
            let want = layer_norm_ref(&common::lookup(held, d, &idx), d, Some(&gamma), Some(&beta), 1e-5);
            close(&out.read_f32(&ctx).block().unwrap(), &want, 1e-5, 1e-4, &format!("{dtype:?} limit {limit:?}"));
        }
    }
}

#[test]
fn embedding_sum_random_tables_formats_and_limits() {
    let mut rng = Rng(2024);
    for case in 0..6 {
        let k = 1 + case % 4;
        let d = [1usize, 7, 64, 129, 384, 700][case];
        let sizes: Vec<usize> = (0..k).map(|_| 1 + rng.below(if case == 5 { 600 } else { 300 }) as usize).collect();
        let data: Vec<Vec<f32>> = sizes.iter().map(|&r| rng.vec_f32(r * d)).collect();
        // Table 1 in f16 when there are several: mixed formats are widened to f32.
        let halves: Vec<Vec<f16>> = data.iter().map(|t| t.iter().map(|&x| f16::from_f32(x)).collect()).collect();
        let held: Vec<Vec<f32>> =
            (0..k).map(|t| if t == 1 { halves[t].iter().map(|x| x.to_f32()).collect() } else { data[t].clone() }).collect();
        let host: Vec<HostTable> = (0..k)
            .map(|t| if t == 1 { HostTable::f16(&halves[t], sizes[t], d).unwrap() } else { HostTable::f32(&data[t], sizes[t], d).unwrap() })
            .collect();
        let n = 1 + rng.below(200) as usize;
        let idx: Vec<Vec<i64>> = sizes.iter().map(|&r| (0..n).map(|_| rng.below(r as u64) as i64).collect()).collect();
        let gamma = rng.vec_f32(d);
        let beta = rng.vec_f32(d);
        let eps = if case % 2 == 0 { 1e-12 } else { 1e-5 };
        let mut sum = vec![0f32; n * d];
        for t in 0..k {
            for (i, &r) in idx[t].iter().enumerate() {
                for c in 0..d {
                    sum[i * d + c] += held[t][r as usize * d + c];
                }
            }
        }
        let want = layer_norm_ref(&sum, d, Some(&gamma), Some(&beta), eps);
        for limit in [None, Some(1 << 20)] {
            let ctx = common::context(limit);
            let block = EmbeddingSumLayerNorm::new(&ctx, &host, Some(&gamma), Some(&beta), eps).unwrap();
            assert_eq!(block.table_dtype(), DType::F32, "mixed formats are widened");
            let shape = [n];
            let indices: Vec<Indices> = idx.iter().map(|v| Indices::i64(v, &shape)).collect();
            let out = block.forward(&ctx, &indices).unwrap();
            assert_eq!(out.shape(), &[n, d]);
            close(&out.read_f32(&ctx).block().unwrap(), &want, 1e-5, 1e-4, &format!("case {case} (K {k}, D {d}) limit {limit:?}"));
        }
    }
}

#[test]
fn embedding_sum_refuses_mismatched_and_out_of_range_indices() {
    let ctx = common::context(None);
    let t0 = vec![0.5f32; 10 * 8];
    let t1 = vec![0.25f32; 4 * 8];
    let block =
        EmbeddingSumLayerNorm::new(&ctx, &[HostTable::f32(&t0, 10, 8).unwrap(), HostTable::f32(&t1, 4, 8).unwrap()], None, None, 1e-5)
            .unwrap();
    let e = block.forward(&ctx, &[Indices::i64(&[1, 2, 3], &[3]), Indices::i64(&[0, 1], &[2])]).unwrap_err();
    assert_eq!(e.to_string(), "shape mismatch: The size of tensor a (3) must match the size of tensor b (2) at non-singleton dimension 0");
    let e = block.forward(&ctx, &[Indices::i64(&[1, 2], &[2]), Indices::i64(&[0, 4], &[2])]).unwrap_err();
    assert!(matches!(e, Error::IndexOutOfRange { name: "indices1", position: 1, value: 4, num_embeddings: 4 }), "{e}");
    let e = block.forward(&ctx, &[Indices::i64(&[1], &[1])]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { name: "indices", .. }), "{e}");
    let e = EmbeddingSumLayerNorm::new(&ctx, &[HostTable::f32(&t0, 10, 8).unwrap(), HostTable::f32(&t1, 8, 4).unwrap()], None, None, 1e-5)
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch(_)), "{e}");
}

fn axial_ref(w0: &[f32], w1: &[f32], n2: usize, d1: usize, d2: usize, pos: &[i64]) -> Vec<f32> {
    let mut out = Vec::new();
    for &p in pos {
        let p = p as usize;
        out.extend_from_slice(&w0[(p / n2) * d1..][..d1]);
        out.extend_from_slice(&w1[(p % n2) * d2..][..d2]);
    }
    out
}

#[test]
fn axial_positions_random_shapes_and_split_weights() {
    let mut rng = Rng(5);
    // The last shape's weight0 (640 x 512 f32 = 1.3 MB) is split over 1 MiB bindings.
    for (n1, n2, d1, d2) in [(8usize, 16usize, 16usize, 48usize), (4, 8, 8, 8), (3, 5, 1, 7), (640, 4, 512, 64)] {
        let w0 = rng.vec_f32(n1 * d1);
        let w1 = rng.vec_f32(n2 * d2);
        let pos: Vec<i64> = (0..120).map(|_| rng.below((n1 * n2) as u64) as i64).collect();
        for limit in [None, Some(1 << 20)] {
            let ctx = common::context(limit);
            let layer = AxialPositionEmbedding::from_pretrained(&ctx, &w0, &w1, [n1, n2], [d1, d2]).unwrap();
            let out = layer.forward(&ctx, Indices::i64(&pos, &[12, 10])).unwrap();
            assert_eq!(out.shape(), &[12, 10, d1 + d2]);
            assert_eq!(out.read_f32(&ctx).block().unwrap(), axial_ref(&w0, &w1, n2, d1, d2, &pos), "{n1}x{n2} limit {limit:?}");
        }
    }
}

#[test]
fn axial_refuses_positions_past_the_grid() {
    let ctx: Context = common::context(None);
    let layer = AxialPositionEmbedding::from_pretrained(&ctx, &[0.0; 4 * 2], &[0.0; 8 * 2], [4, 8], [2, 2]).unwrap();
    let e = layer.forward(&ctx, Indices::i64(&[0, 5, 32], &[1, 3])).unwrap_err();
    assert!(e.to_string().contains("Position id exceeds axial_pos_shape[0] * axial_pos_shape[1]"), "{e}");
    let e = layer.forward(&ctx, Indices::i32(&[-1], &[1, 1])).unwrap_err();
    assert!(matches!(e, Error::IndexOutOfRange { name: "position_ids", value: -1, .. }), "{e}");
    let long: Vec<i64> = vec![0; 33];
    let e = layer.forward(&ctx, Indices::i64(&long, &[1, 33])).unwrap_err();
    assert!(e.to_string().contains("multiply at least to"), "{e}");
    assert!(AxialPositionEmbedding::from_pretrained(&ctx, &[0.0; 7], &[0.0; 16], [4, 8], [2, 2]).is_err());
}
