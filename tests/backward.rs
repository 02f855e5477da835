//! Backward passes against CPU references (float64 sums), beyond the conformance
//! cases: two runs give identical bits, a hot row, more than 65 535 bags, output
//! gradients spread over several bindings, sparse against dense.

mod common;

use common::{context, Rng};
use wgpu_embed::Block;
use wgpu_embed::{BagMode, Context, Embedding, EmbeddingBag, GpuTensor, GradOptions, Gradient, Indices};

/// Σ over positions of grad rows into table rows (f64), `factor(p)` each, skipping `skip`.
fn scatter_reference(
    v: usize,
    d: usize,
    rows: &[i64],
    source: impl Fn(usize) -> usize,
    factor: impl Fn(usize) -> f64,
    grad: &[f32],
) -> Vec<f64> {
    let mut out = vec![0f64; v * d];
    for (p, &r) in rows.iter().enumerate() {
        let s = source(p);
        for c in 0..d {
            out[r as usize * d + c] += grad[s * d + c] as f64 * factor(p);
        }
    }
    out
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}: element {i}: got {g}, want {w}");
    }
}

fn dense(ctx: &Context, g: &Gradient) -> Vec<f32> {
    match g {
        Gradient::Dense(t) => t.read_f32(ctx).block().unwrap(),
        Gradient::Sparse { .. } => panic!("expected a dense gradient"),
    }
}

fn embedding_case(ctx: &Context, v: usize, d: usize, rows: &[i64], seed: u64) -> (Embedding, GpuTensor, Vec<f32>) {
    let mut rng = Rng(seed);
    let emb = Embedding::from_pretrained(ctx, &rng.vec_f32(v * d), v, d).unwrap();
    let grad = rng.vec_f32(rows.len() * d);
    let g = GpuTensor::from_f32(ctx, &grad, &[rows.len(), d]).unwrap();
    (emb, g, grad)
}

#[test]
fn embedding_backward_is_bitwise_deterministic_and_right() {
    let ctx = context(None);
    let (v, d) = (300, 36);
    let mut rng = Rng(7);
    // Many repeats (about 67 per row) and some long runs.
    let rows: Vec<i64> = (0..20_000).map(|_| rng.below(v as u64) as i64).collect();
    let (emb, g, grad) = embedding_case(&ctx, v, d, &rows, 11);
    let run = || dense(&ctx, &emb.backward(&ctx, Indices::i64(&rows, &[rows.len()]), &g, GradOptions::default()).block().unwrap());
    let first = run();
    let second = run();
    assert!(first.iter().zip(&second).all(|(a, b)| a.to_bits() == b.to_bits()), "two runs differ");
    assert_close(&first, &scatter_reference(v, d, &rows, |p| p, |_| 1.0, &grad), 1e-4, "dense gradient");
}

#[test]
fn a_hot_row_and_gradients_over_several_bindings() {
    // 1 MiB bindings: the [8000, 64] output gradient spans two segments.
    for max_binding in [None, Some(1u64 << 20)] {
        let ctx = context(max_binding);
        let (v, d) = (1000, 64);
        let mut rng = Rng(3);
        // Row 17 in 5 000 places, the rest spread.
        let rows: Vec<i64> = (0..8000).map(|p| if p % 8 < 5 { 17 } else { rng.below(v as u64) as i64 }).collect();
        let (emb, g, grad) = embedding_case(&ctx, v, d, &rows, 5);
        assert!(max_binding.is_none() || g.segments().len() > 1, "the gradient should span several bindings");
        for scale in [false, true] {
            let opts = GradOptions::default().scale_grad_by_freq(scale);
            let got = dense(&ctx, &emb.backward(&ctx, Indices::i64(&rows, &[rows.len()]), &g, opts).block().unwrap());
            let mut counts = vec![0f64; v];
            rows.iter().for_each(|&r| counts[r as usize] += 1.0);
            let want = scatter_reference(v, d, &rows, |p| p, |p| if scale { 1.0 / counts[rows[p] as usize] } else { 1.0 }, &grad);
            assert_close(&got, &want, 1e-4, &format!("hot row, scale {scale}, binding {max_binding:?}"));
        }
    }
}

#[test]
fn sparse_gradient_is_the_dense_one_coalesced() {
    let ctx = context(None);
    let (v, d) = (5000, 8);
    let mut rng = Rng(9);
    let rows: Vec<i64> = (0..3000).map(|_| rng.below(v as u64) as i64).collect();
    let (emb, g, _) = embedding_case(&ctx, v, d, &rows, 13);
    let emb = emb.with_padding_idx(Some(rows[0])).unwrap();
    let shape = [rows.len()];
    let idx = Indices::i64(&rows, &shape);
    let full = dense(&ctx, &emb.backward(&ctx, idx, &g, GradOptions::default()).block().unwrap());
    let Gradient::Sparse { indices, values, .. } = emb.backward(&ctx, idx, &g, GradOptions::default().sparse(true)).block().unwrap() else {
        panic!("expected a sparse gradient");
    };
    let got_rows: Vec<i32> = bytemuck::pod_collect_to_vec(&indices.read_bytes(&ctx).block().unwrap());
    let mut want_rows: Vec<i32> = rows.iter().filter(|&&r| r != rows[0]).map(|&r| r as i32).collect();
    want_rows.sort_unstable();
    want_rows.dedup();
    assert_eq!(got_rows, want_rows);
    let vals = values.read_f32(&ctx).block().unwrap();
    for (k, &r) in got_rows.iter().enumerate() {
        assert_eq!(&vals[k * d..(k + 1) * d], &full[r as usize * d..(r as usize + 1) * d], "row {r}: sparse and dense sums differ");
    }
}

#[test]
fn bag_backward_past_65535_bags() {
    let ctx = context(None);
    let (v, d) = (2000, 16);
    let bags = 70_000;
    let mut rng = Rng(21);
    let mut offsets = vec![0i64];
    let mut rows = Vec::new();
    for _ in 0..bags {
        for _ in 0..rng.below(4) {
            rows.push(rng.below(v as u64) as i64);
        }
        offsets.push(rows.len() as i64);
    }
    offsets.pop();
    let bag = EmbeddingBag::from_pretrained(&ctx, &rng.vec_f32(v * d), v, d, BagMode::Mean).unwrap();
    let grad = rng.vec_f32(bags * d);
    let g = GpuTensor::from_f32(&ctx, &grad, &[bags, d]).unwrap();
    let got = bag
        .backward(&ctx, Indices::i64(&rows, &[rows.len()]), Some(Indices::i64(&offsets, &[bags])), None, &g, GradOptions::default())
        .block()
        .unwrap();
    let bag_of: Vec<usize> = (0..rows.len()).map(|p| offsets.partition_point(|&o| o <= p as i64) - 1).collect();
    let size = |b: usize| (offsets.get(b + 1).copied().unwrap_or(rows.len() as i64) - offsets[b]) as f64;
    let want = scatter_reference(v, d, &rows, |p| bag_of[p], |p| 1.0 / size(bag_of[p]), &grad);
    assert_close(&dense(&ctx, &got.weight), &want, 1e-4, "mean bags");
}

#[test]
fn gpu_resident_indices_give_the_same_gradients_and_bad_ones_are_reported() {
    let ctx = context(None);
    let (v, d) = (500, 12);
    let mut rng = Rng(31);
    let rows: Vec<i64> = (0..900).map(|_| rng.below(v as u64) as i64).collect();
    let rows32: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
    let (emb, g, _) = embedding_case(&ctx, v, d, &rows, 17);
    let on_gpu = GpuTensor::from_i32(&ctx, &rows32, &[30, 30]).unwrap();
    let g2 = g.reshape(&[30, 30, d]).unwrap();
    for sparse in [false, true] {
        let opts = GradOptions::default().sparse(sparse);
        let host = emb.backward(&ctx, Indices::i64(&rows, &[30, 30]), &g2, opts).block().unwrap();
        let gpu = emb.backward_gpu(&ctx, &on_gpu, &g2, opts).block().unwrap();
        match (host, gpu) {
            (Gradient::Dense(a), Gradient::Dense(b)) => assert_eq!(a.read_f32(&ctx).block().unwrap(), b.read_f32(&ctx).block().unwrap()),
            (Gradient::Sparse { indices: ai, values: av, .. }, Gradient::Sparse { indices: bi, values: bv, .. }) => {
                assert_eq!(ai.read_bytes(&ctx).block().unwrap(), bi.read_bytes(&ctx).block().unwrap());
                assert_eq!(av.read_f32(&ctx).block().unwrap(), bv.read_f32(&ctx).block().unwrap());
            }
            _ => panic!("sparse {sparse}: different kinds of gradient"),
        }
    }
    // Bags with per-sample weights on the GPU, mean too.
    let offsets: Vec<i64> = (0..90).map(|b| b * 10).collect();
    let weights = rng.vec_f32(rows.len());
    let bag_grad = GpuTensor::from_f32(&ctx, &rng.vec_f32(90 * d), &[90, d]).unwrap();
    let w_gpu = GpuTensor::flat(&ctx, &weights, wgpu_embed::DType::F32).unwrap();
    let flat_gpu = on_gpu.reshape(&[rows.len()]).unwrap();
    let table: Vec<f32> = emb.weight().read_f32(&ctx).block().unwrap();
    let weights_shape = [rows.len()];
    for (mode, psw) in [(BagMode::Sum, true), (BagMode::Mean, false), (BagMode::Max, false)] {
        let bag = EmbeddingBag::from_pretrained(&ctx, &table, v, d, mode).unwrap();
        let offs = Some(Indices::i64(&offsets, &[90]));
        let host_w = psw.then_some((&weights[..], &weights_shape[..]));
        let host = bag.backward(&ctx, Indices::i64(&rows, &[rows.len()]), offs, host_w, &bag_grad, GradOptions::default()).block().unwrap();
        let gpu = bag.backward_gpu(&ctx, &flat_gpu, offs, psw.then_some(&w_gpu), &bag_grad, GradOptions::default()).block().unwrap();
        assert_eq!(dense(&ctx, &host.weight), dense(&ctx, &gpu.weight), "{mode:?}");
        assert_eq!(
            host.per_sample_weights.map(|t| t.read_f32(&ctx).block().unwrap()),
            gpu.per_sample_weights.map(|t| t.read_f32(&ctx).block().unwrap()),
            "{mode:?}"
        );
    }
    // An out-of-range index on the GPU is reported by position and value; nothing runs.
    let mut bad = rows32.clone();
    bad[417] = v as i32 + 3;
    let bad_gpu = GpuTensor::from_i32(&ctx, &bad, &[30, 30]).unwrap();
    match emb.backward_gpu(&ctx, &bad_gpu, &g2, GradOptions::default()).block() {
        Err(wgpu_embed::Error::IndexOutOfRange { name: "indices", position: 417, value, .. }) => assert_eq!(value, v as i64 + 3),
        other => panic!("expected IndexOutOfRange at 417, got {other:?}.block()"),
    }
}

#[test]
fn short_and_long_lists_give_the_same_bits() {
    // 1 024 positions are made ready by one workgroup, 1 025 by the grid-wide passes:
    // the 1 025th is padding, which adds nothing, so the gradients agree bit for bit
    // (hot rows, padding among the positions, means over counted positions, weights).
    let ctx = context(None);
    let (v, d, n) = (50usize, 12usize, 1024usize);
    let mut rng = Rng(41);
    let mut rows: Vec<i64> = (0..n).map(|_| rng.below(v as u64) as i64).collect();
    let (emb, _, grad) = embedding_case(&ctx, v, d, &rows, 43);
    let emb = emb.with_padding_idx(Some(0)).unwrap();
    let mut long_grad = grad.clone();
    long_grad.extend(rng.vec_f32(d));
    let (g_short, g_long) =
        (GpuTensor::from_f32(&ctx, &grad, &[n, d]).unwrap(), GpuTensor::from_f32(&ctx, &long_grad, &[n + 1, d]).unwrap());
    let short = dense(&ctx, &emb.backward(&ctx, Indices::i64(&rows, &[n]), &g_short, GradOptions::default()).block().unwrap());
    let want = scatter_reference(v, d, &rows, |p| p, |p| if rows[p] == 0 { 0.0 } else { 1.0 }, &grad);
    assert_close(&short, &want, 1e-5, "short list");
    rows.push(0);
    let long = dense(&ctx, &emb.backward(&ctx, Indices::i64(&rows, &[n + 1]), &g_long, GradOptions::default()).block().unwrap());
    assert!(short.iter().zip(&long).all(|(a, b)| a.to_bits() == b.to_bits()), "Embedding: short and long lists differ");

    // Bags: 100 bags over the 1 024 positions; the long list puts padding in the last.
    let table = rng.vec_f32(v * d);
    let offsets: Vec<i64> = (0..100).map(|b| (b * n / 100) as i64).collect();
    let bag_grad = GpuTensor::from_f32(&ctx, &rng.vec_f32(100 * d), &[100, d]).unwrap();
    let weights = rng.vec_f32(n + 1);
    for (mode, weighted) in [(BagMode::Mean, false), (BagMode::Sum, true)] {
        let bag = EmbeddingBag::from_pretrained(&ctx, &table, v, d, mode).unwrap().with_padding_idx(Some(0)).unwrap();
        let grads = |len: usize| {
            let shape = [len];
            let w = weighted.then_some((&weights[..len], &shape[..]));
            let bags = Some(Indices::i64(&offsets, &[100]));
            let g = bag.backward(&ctx, Indices::i64(&rows[..len], &shape), bags, w, &bag_grad, GradOptions::default());
            dense(&ctx, &g.block().unwrap().weight)
        };
        let (short, long) = (grads(n), grads(n + 1));
        assert!(short.iter().zip(&long).all(|(a, b)| a.to_bits() == b.to_bits()), "{mode:?} bags: short and long lists differ");
    }
}
