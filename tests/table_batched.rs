//! Table-batched embedding bags beyond the reference cases: against per-feature
//! EmbeddingBag calls and a float64 reference, past 65 535 workgroups, one dispatch per
//! call, and every refusal named before anything runs.

mod common;

use common::{context, Rng};
use wgpu_embed::{BagMode, Block, Context, EmbeddingBag, Indices, Pooling, TableBatchedEmbeddingBags, TablePrecision, TableRows};

struct Case {
    tables: Vec<(Vec<f32>, usize, usize)>,
    map: Vec<usize>,
    b: usize,
    indices: Vec<i64>,
    offsets: Vec<i64>,
}

/// Random bags, feature-major, every fourth one empty.
fn case(rng: &mut Rng, specs: &[(usize, usize)], map: &[usize], b: usize, mean_len: u64) -> Case {
    let tables = specs.iter().map(|&(r, d)| (rng.vec_f32(r * d), r, d)).collect();
    let (mut indices, mut offsets) = (Vec::new(), vec![0i64]);
    for (f, &t) in map.iter().enumerate() {
        for bag in 0..b {
            let n = if (f * b + bag) % 4 == 3 { 0 } else { 1 + rng.below(2 * mean_len) };
            indices.extend((0..n).map(|_| rng.below(specs[t].0 as u64) as i64));
            offsets.push(indices.len() as i64);
        }
    }
    Case { tables, map: map.to_vec(), b, indices, offsets }
}

fn layer(ctx: &Context, c: &Case, mode: Pooling) -> TableBatchedEmbeddingBags {
    let tables: Vec<(&[f32], usize, usize)> = c.tables.iter().map(|(w, r, d)| (&w[..], *r, *d)).collect();
    TableBatchedEmbeddingBags::from_pretrained(ctx, &tables, &c.map, mode).unwrap()
}

/// The float64 reference: each feature's bags, its columns at its offset.
fn reference(c: &Case, mode: Pooling, weights: Option<&[f32]>) -> Vec<f32> {
    let width: usize = c.map.iter().map(|&t| c.tables[t].2).sum();
    let mut out = vec![0f32; c.b * width];
    let mut col = 0;
    for (f, &t) in c.map.iter().enumerate() {
        let (w, _, d) = &c.tables[t];
        for bag in 0..c.b {
            let (lo, hi) = (c.offsets[f * c.b + bag] as usize, c.offsets[f * c.b + bag + 1] as usize);
            for j in 0..*d {
                let mut acc = 0f64;
                for p in lo..hi {
                    acc += w[c.indices[p] as usize * d + j] as f64 * weights.map_or(1.0, |w| w[p] as f64);
                }
                if mode == Pooling::Mean && hi > lo {
                    acc /= (hi - lo) as f64;
                }
                out[bag * width + col + j] = acc as f32;
            }
        }
        col += d;
    }
    out
}

#[test]
fn every_feature_pooled_in_one_dispatch_as_separate_bags_would() {
    let ctx = context(None);
    let mut rng = Rng(51);
    // Dims of every kind (1, 3, 8, 33: the per-element kernel), and all multiples of 4
    // (the vec4 one, chunks of up to 16 words); table 1 shared by features 1 and 3.
    for specs in [[(40, 8), (300, 3), (25, 1), (90, 33)], [(40, 8), (300, 4), (25, 12), (90, 100)]] {
        pooled_like_separate_bags(&ctx, &mut rng, &specs);
    }
}

fn pooled_like_separate_bags(ctx: &Context, rng: &mut Rng, specs: &[(usize, usize)]) {
    let c = case(rng, specs, &[0, 1, 2, 1, 3], 9, 6);
    let weights = rng.vec_f32(c.indices.len());
    let (n_idx, n_off) = ([c.indices.len()], [c.offsets.len()]);
    let (idx, off) = (Indices::i64(&c.indices, &n_idx), Indices::i64(&c.offsets, &n_off));
    for (mode, w) in [(Pooling::Sum, None), (Pooling::Mean, None), (Pooling::Sum, Some(&weights[..]))] {
        let tbe = layer(ctx, &c, mode);
        let before = ctx.stats();
        let got = tbe.forward(ctx, idx, off, w).unwrap();
        assert_eq!(ctx.stats().dispatches - before.dispatches, 1, "{mode:?}: one dispatch for every feature");
        assert_eq!(got.shape(), [9, c.map.iter().map(|&t| specs[t].1).sum::<usize>()]);
        let got = got.read_f32(ctx).block().unwrap();
        common::assert_close(&got, &reference(&c, mode, w), 1e-5, 1e-5, &format!("{mode:?}, weights {}", w.is_some()));
        // The same as one EmbeddingBag per feature, side by side.
        let width = tbe.output_dim();
        let mut col = 0;
        for (f, &t) in c.map.iter().enumerate() {
            let (table, rows, d) = &c.tables[t];
            let bag_mode = if mode == Pooling::Mean { BagMode::Mean } else { BagMode::Sum };
            let bag = EmbeddingBag::from_pretrained(ctx, table, *rows, *d, bag_mode).unwrap();
            let (lo, hi) = (c.offsets[f * c.b] as usize, c.offsets[(f + 1) * c.b] as usize);
            let offsets: Vec<i64> = c.offsets[f * c.b..(f + 1) * c.b].iter().map(|o| o - lo as i64).collect();
            let fw = w.map(|w| &w[lo..hi]);
            let shape = [hi - lo];
            let psw = fw.map(|w| (w, &shape[..]));
            let one = bag.forward(ctx, Indices::i64(&c.indices[lo..hi], &shape), Some(Indices::i64(&offsets, &[c.b])), psw).unwrap();
            let one = one.read_f32(ctx).block().unwrap();
            for r in 0..c.b {
                let cols = &got[r * width + col..r * width + col + d];
                common::assert_close(cols, &one[r * d..(r + 1) * d], 1e-6, 1e-6, &format!("{mode:?}: feature {f}, bag {r}"));
            }
            col += d;
        }
    }
}

#[test]
fn outputs_past_65535_workgroups_and_repeated_runs_agree() {
    let ctx = context(None);
    let mut rng = Rng(52);
    // 4 096 bags x 1 200 columns: 76 800 workgroups of 64.
    let c = case(&mut rng, &[(50, 600), (70, 600)], &[0, 1], 4096, 2);
    let tbe = layer(&ctx, &c, Pooling::Sum);
    let (n_idx, n_off) = ([c.indices.len()], [c.offsets.len()]);
    let run = || {
        let (idx, off) = (Indices::i64(&c.indices, &n_idx), Indices::i64(&c.offsets, &n_off));
        tbe.forward(&ctx, idx, off, None).unwrap().read_f32(&ctx).block().unwrap()
    };
    let (first, second) = (run(), run());
    assert!(first.iter().zip(&second).all(|(a, b)| a.to_bits() == b.to_bits()), "two runs differ");
    common::assert_close(&first, &reference(&c, Pooling::Sum, None), 1e-5, 1e-5, "4 096 bags");
}

#[test]
fn bad_input_is_refused_naming_the_argument() {
    let ctx = context(None);
    let t0: Vec<f32> = (0..10 * 4).map(|i| i as f32).collect();
    let t1: Vec<f32> = (0..6 * 2).map(|i| i as f32).collect();
    let tables = [(&t0[..], 10, 4), (&t1[..], 6, 2)];
    let err = |r: wgpu_embed::Result<TableBatchedEmbeddingBags>| r.unwrap_err().to_string();
    let e = err(TableBatchedEmbeddingBags::from_pretrained(&ctx, &tables, &[0, 2], Pooling::Sum));
    assert!(e.contains("feature_table_map[1] = 2") && e.contains("2 tables"), "{e}");
    let e = err(TableBatchedEmbeddingBags::from_pretrained(&ctx, &[(&t0[..], 10, 0)], &[0], Pooling::Sum));
    assert!(e.contains("table 0") && e.contains("[10, 0]"), "{e}");
    let e = err(TableBatchedEmbeddingBags::from_pretrained(&ctx, &[(&t0[..9], 10, 4)], &[0], Pooling::Sum));
    assert!(e.contains("9 values"), "{e}");

    let tbe = TableBatchedEmbeddingBags::from_pretrained(&ctx, &tables, &[0, 1], Pooling::Sum).unwrap();
    let forward = |idx: &[i64], off: &[i64], w: Option<&[f32]>| {
        tbe.forward(&ctx, Indices::i64(idx, &[idx.len()]), Indices::i64(off, &[off.len()]), w).map(drop).unwrap_err().to_string()
    };
    let idx = [1i64, 2, 3, 5];
    for (off, what) in [
        (&[0i64, 1, 2, 4][..], "F·B + 1"),
        (&[1, 1, 2, 3, 4][..], "offsets[0] = 1"),
        (&[0, 2, 1, 3, 4][..], "offsets[2] = 1"),
        (&[0, 1, 2, 3, 3][..], "offsets[4] = 3"),
        (&[0, 1, 2, 3, 9][..], "offsets[4] = 9"),
    ] {
        let e = forward(&idx, off, None);
        assert!(e.contains("`offsets`") && e.contains(what), "{off:?}: {e}");
    }
    // Feature 1 reads table 1 (6 rows): index 7 at position 3 is out of its range.
    let e = forward(&[1, 2, 3, 7], &[0, 1, 2, 3, 4], None);
    assert!(e.contains("`indices`") && e.contains("7") && e.contains("position 3") && e.contains("[0, 6)"), "{e}");
    let e = forward(&idx, &[0, 1, 2, 3, 4], Some(&[1.0; 3]));
    assert!(e.contains("`per_sample_weights`") && e.contains("(4), got 3"), "{e}");
    let mean = TableBatchedEmbeddingBags::from_pretrained(&ctx, &tables, &[0, 1], Pooling::Mean).unwrap();
    let e = mean.forward(&ctx, Indices::i64(&idx, &[4]), Indices::i64(&[0, 1, 2, 3, 4], &[5]), Some(&[1.0; 4])).unwrap_err().to_string();
    assert!(e.contains("mode='sum'"), "{e}");
}

#[test]
fn unpooled_rows_come_in_index_order() {
    let ctx = context(None);
    let mut rng = Rng(53);
    // Equal dims: [N, D], as FBGEMM's sequence embeddings; mixed dims: the rows flat.
    for specs in [[(30, 8), (20, 8)], [(30, 8), (20, 3)]] {
        let c = case(&mut rng, &specs, &[1, 0, 1], 5, 3);
        let tbe = layer(&ctx, &c, Pooling::None);
        let (n_idx, n_off) = ([c.indices.len()], [c.offsets.len()]);
        let out = tbe.forward(&ctx, Indices::i64(&c.indices, &n_idx), Indices::i64(&c.offsets, &n_off), None).unwrap();
        let mut want = Vec::new();
        for (bag, w) in c.offsets.windows(2).enumerate() {
            let (table, _, d) = &c.tables[c.map[bag / c.b]];
            for p in w[0] as usize..w[1] as usize {
                want.extend_from_slice(&table[c.indices[p] as usize * d..(c.indices[p] as usize + 1) * d]);
            }
        }
        if specs[0].1 == specs[1].1 {
            assert_eq!(out.shape(), [c.indices.len(), 8]);
        } else {
            assert_eq!(out.shape(), [want.len()]);
        }
        assert_eq!(out.read_f32(&ctx).block().unwrap(), want, "specs {specs:?}");
    }
    // Per-sample weights go with pooling only.
    let c = case(&mut rng, &[(30, 8)], &[0], 2, 2);
    let err = layer(&ctx, &c, Pooling::None)
        .forward(
            &ctx,
            Indices::i64(&c.indices, &[c.indices.len()]),
            Indices::i64(&c.offsets, &[c.offsets.len()]),
            Some(&vec![1.0; c.indices.len()]),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("`per_sample_weights`"), "{err}");
}

/// The backward against a float64 scatter of the output gradient (sum, mean and
/// unpooled, features sharing a table in any order), and a step with an optimizer that
/// is not fused (Adam: dense gradient) equal to that gradient stepped; tables of
/// several dims and a gradient of another shape refused, named.
#[test]
fn backward_scatters_every_feature_into_its_table() {
    use wgpu_embed::{GpuTensor, Gradient, Optimizer, OptimizerKind};
    let ctx = context(None);
    let mut rng = Rng(91);
    let (specs, map, b) = ([(30usize, 8usize), (20, 8), (25, 8)], [0usize, 1, 0, 2], 5usize);
    for mode in [Pooling::Sum, Pooling::Mean, Pooling::None] {
        let c = case(&mut rng, &specs, &map, b, 3);
        let tbe = layer(&ctx, &c, mode);
        let n = c.indices.len();
        let rows_out = if mode == Pooling::None { n } else { b };
        let width = if mode == Pooling::None { 8 } else { 8 * map.len() };
        let g = rng.vec_f32(rows_out * width);
        let grad_out = GpuTensor::from_f32(&ctx, &g, &[rows_out, width]).unwrap();
        let (n_shape, o_shape) = ([n], [c.offsets.len()]);
        let (idx, off) = (Indices::i64(&c.indices, &n_shape), Indices::i64(&c.offsets, &o_shape));
        // float64: every index adds its output gradient (scaled for mean) to its table row.
        let firsts = [0usize, 30, 50];
        let mut want = vec![0f64; 75 * 8];
        for bag in 0..map.len() * b {
            let (f, s) = (bag / b, bag % b);
            let (lo, hi) = (c.offsets[bag] as usize, c.offsets[bag + 1] as usize);
            for p in lo..hi {
                let row = firsts[map[f]] + c.indices[p] as usize;
                for k in 0..8 {
                    let v = match mode {
                        Pooling::None => g[p * 8 + k] as f64,
                        Pooling::Sum => g[s * width + f * 8 + k] as f64,
                        Pooling::Mean => g[s * width + f * 8 + k] as f64 / (hi - lo) as f64,
                    };
                    want[row * 8 + k] += v;
                }
            }
        }
        let Gradient::Dense(got) = tbe.backward(&ctx, idx, off, None, &grad_out, Default::default()).block().unwrap() else {
            panic!("dense")
        };
        assert_eq!(got.shape(), [75, 8]);
        let got = got.read_f32(&ctx).block().unwrap();
        for (i, (x, w)) in got.iter().zip(&want).enumerate() {
            assert!((*x as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{mode:?}: grad[{i}] = {x}, expected {w}");
        }
        // Adam is not fused: the step is Adam on that gradient.
        let kind = OptimizerKind::Adam { lr: 0.01, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, decoupled: false };
        let mut opt = Optimizer::new(&ctx, kind, &tbe.weights().unwrap()).unwrap();
        tbe.step(&ctx, &mut opt, idx, off, None, &grad_out).block().unwrap();
        let twin = layer(&ctx, &c, mode);
        let mut twin_opt = Optimizer::new(&ctx, kind, &twin.weights().unwrap()).unwrap();
        let grad = twin.backward(&ctx, idx, off, None, &grad_out, Default::default()).block().unwrap();
        twin_opt.step(&ctx, &twin.weights().unwrap(), &grad).block().unwrap();
        let (a, bb) = (tbe.weights().unwrap().read_f32(&ctx).block().unwrap(), twin.weights().unwrap().read_f32(&ctx).block().unwrap());
        assert!(a.iter().zip(&bb).all(|(x, y)| x.to_bits() == y.to_bits()), "{mode:?}: step differs from backward then step");
    }
    let c = case(&mut rng, &[(10, 4), (10, 8)], &[0, 1], 2, 2);
    let mixed = layer(&ctx, &c, Pooling::Sum);
    assert!(matches!(mixed.weights(), Err(wgpu_embed::Error::Unsupported(_))));
    let c = case(&mut rng, &specs, &map, b, 3);
    let tbe = layer(&ctx, &c, Pooling::Sum);
    let wrong = GpuTensor::from_f32(&ctx, &vec![0.0; b * 31], &[b, 31]).unwrap();
    let e = tbe
        .backward(
            &ctx,
            Indices::i64(&c.indices, &[c.indices.len()]),
            Indices::i64(&c.offsets, &[c.offsets.len()]),
            None,
            &wrong,
            Default::default(),
        )
        .block()
        .unwrap_err();
    assert!(e.to_string().contains("grad_out") && e.to_string().contains("31"), "{e}");
}

/// Table `t` of `c` alone: a one-table layer's case with the features that read it (in
/// order), their bags and their columns of `grad_out` (`[B, width]`, every dim `d`).
fn table_alone(c: &Case, t: usize, grad_out: &[f32], d: usize) -> (Case, Vec<f32>) {
    let width = c.map.len() * d;
    let features: Vec<usize> = (0..c.map.len()).filter(|&f| c.map[f] == t).collect();
    let (mut indices, mut offsets) = (Vec::new(), vec![0i64]);
    for &f in &features {
        for bag in 0..c.b {
            let (lo, hi) = (c.offsets[f * c.b + bag] as usize, c.offsets[f * c.b + bag + 1] as usize);
            indices.extend_from_slice(&c.indices[lo..hi]);
            offsets.push(indices.len() as i64);
        }
    }
    let mut g = Vec::with_capacity(c.b * features.len() * d);
    for bag in 0..c.b {
        for &f in &features {
            g.extend_from_slice(&grad_out[bag * width + f * d..bag * width + (f + 1) * d]);
        }
    }
    let alone = Case { tables: vec![c.tables[t].clone()], map: vec![0; features.len()], b: c.b, indices, offsets };
    (alone, g)
}

/// The fused step (backward and optimizer in one, every table at once) of each
/// sparse-gradient optimizer FBGEMM fuses gives the bits of the backward then
/// `Optimizer::step` over the same layer, and of each table stepped alone by a layer of
/// its own; two runs give the same bits; a bad index is refused before anything is
/// written.
#[test]
fn fused_step_equals_per_table_backward_then_step() {
    use wgpu_embed::{GpuTensor, Optimizer, OptimizerKind};
    let ctx = context(None);
    let mut rng = Rng(92);
    let betas = (0.9, 0.999);
    let kinds = [
        OptimizerKind::Sgd { lr: 0.1, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        OptimizerKind::Adagrad { lr: 0.1, lr_decay: 0.0, eps: 1e-8, weight_decay: 0.0, initial_accumulator_value: 0.0 },
        OptimizerKind::RowwiseAdagrad { lr: 0.1, eps: 1e-8, weight_decay: 0.01 },
        OptimizerKind::TbeAdam { lr: 0.01, betas, eps: 1e-8, weight_decay: 0.01 },
        OptimizerKind::PartialRowwiseAdam { lr: 0.01, betas, eps: 1e-8, weight_decay: 0.01 },
    ];
    let (specs, map, b, d) = ([(30usize, 8usize), (20, 8), (25, 8)], [0usize, 0, 1, 2], 5usize, 8usize);
    let bits = |t: &GpuTensor| t.read_f32(&ctx).block().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for kind in kinds {
        for mode in [Pooling::Sum, Pooling::Mean] {
            let c = case(&mut rng, &specs, &map, b, 3);
            let (n_shape, o_shape) = ([c.indices.len()], [c.offsets.len()]);
            let (idx, off) = (Indices::i64(&c.indices, &n_shape), Indices::i64(&c.offsets, &o_shape));
            let grads: Vec<Vec<f32>> = (0..3).map(|_| rng.vec_f32(b * map.len() * d)).collect();
            let run_fused = || {
                let tbe = layer(&ctx, &c, mode);
                let mut opt = Optimizer::new(&ctx, kind, &tbe.weights().unwrap()).unwrap();
                for g in &grads {
                    let g = GpuTensor::from_f32(&ctx, g, &[b, map.len() * d]).unwrap();
                    tbe.step(&ctx, &mut opt, idx, off, None, &g).block().unwrap();
                }
                (bits(&tbe.weights().unwrap()), opt.state_names().iter().map(|s| bits(opt.state(s).unwrap())).collect::<Vec<_>>())
            };
            let (fused, fused_states) = run_fused();
            assert_eq!((fused.clone(), fused_states.clone()), run_fused(), "{kind:?} {mode:?}: two runs differ");
            // The backward's sparse gradient, then the optimizer's step.
            let twin = layer(&ctx, &c, mode);
            let mut opt = Optimizer::new(&ctx, kind, &twin.weights().unwrap()).unwrap();
            for g in &grads {
                let g = GpuTensor::from_f32(&ctx, g, &[b, map.len() * d]).unwrap();
                let sparse = wgpu_embed::GradOptions::default().sparse(true);
                let grad = twin.backward(&ctx, idx, off, None, &g, sparse).block().unwrap();
                opt.step(&ctx, &twin.weights().unwrap(), &grad).block().unwrap();
            }
            assert_eq!(fused, bits(&twin.weights().unwrap()), "{kind:?} {mode:?}: fused step differs from backward then step");
            // Each table stepped alone, its rows where the packed tables hold them.
            let mut first = 0;
            for (t, &(rows, _)) in specs.iter().enumerate() {
                let (alone, _) = table_alone(&c, t, &grads[0], d);
                let single = layer(&ctx, &alone, mode);
                let mut opt = Optimizer::new(&ctx, kind, &single.weights().unwrap()).unwrap();
                let (n_shape, o_shape) = ([alone.indices.len()], [alone.offsets.len()]);
                for g in &grads {
                    let (_, g) = table_alone(&c, t, g, d);
                    let g = GpuTensor::from_f32(&ctx, &g, &[b, alone.map.len() * d]).unwrap();
                    let (idx, off) = (Indices::i64(&alone.indices, &n_shape), Indices::i64(&alone.offsets, &o_shape));
                    single.step(&ctx, &mut opt, idx, off, None, &g).block().unwrap();
                }
                assert_eq!(
                    fused[first * d..(first + rows) * d],
                    bits(&single.weights().unwrap())[..],
                    "{kind:?} {mode:?}: table {t} differs from it stepped alone"
                );
                first += rows;
            }
            // A bad index: refused, nothing written.
            let tbe = layer(&ctx, &c, mode);
            let mut opt = Optimizer::new(&ctx, kind, &tbe.weights().unwrap()).unwrap();
            let before = bits(&tbe.weights().unwrap());
            let mut bad = c.indices.clone();
            let p = (c.offsets[2 * b] as usize).min(bad.len() - 1);
            bad[p] = 999;
            let g = GpuTensor::from_f32(&ctx, &grads[0], &[b, map.len() * d]).unwrap();
            let e = tbe.step(&ctx, &mut opt, Indices::i64(&bad, &n_shape), off, None, &g).block().unwrap_err();
            assert!(matches!(e, wgpu_embed::Error::IndexOutOfRange { value: 999, .. }), "{e}");
            assert_eq!(before, bits(&tbe.weights().unwrap()), "{kind:?}: a refused step wrote");
            assert_eq!(opt.steps(), 0);
        }
    }
}

/// Variable batch sizes (FBGEMM's VBE) against a float64 reference in FBGEMM's layout:
/// rank after rank, each feature's bags of that rank in turn.
#[test]
fn variable_batch_sizes_come_out_rank_major() {
    let ctx = context(None);
    let mut rng = Rng(91);
    let specs = [(30usize, 4usize), (20, 3), (50, 8)];
    let map = [0usize, 1, 0, 2];
    let sizes: Vec<Vec<usize>> = vec![vec![2, 0, 3], vec![1, 4, 1], vec![0, 0, 2], vec![3, 1, 0]];
    let tables: Vec<(Vec<f32>, usize, usize)> = specs.iter().map(|&(r, d)| (rng.vec_f32(r * d), r, d)).collect();
    let (mut indices, mut offsets) = (Vec::new(), vec![0i64]);
    for (f, s) in sizes.iter().enumerate() {
        for bag in 0..s.iter().sum::<usize>() {
            let n = if bag % 3 == 2 { 0 } else { 1 + rng.below(5) };
            indices.extend((0..n).map(|_| rng.below(specs[map[f]].0 as u64) as i64));
            offsets.push(indices.len() as i64);
        }
    }
    let weights = rng.vec_f32(indices.len());
    let refs: Vec<(&[f32], usize, usize)> = tables.iter().map(|(w, r, d)| (&w[..], *r, *d)).collect();
    for (mode, w) in [(Pooling::Sum, None), (Pooling::Sum, Some(&weights[..])), (Pooling::Mean, None)] {
        let mut expected = Vec::new();
        for r in 0..3 {
            for (f, s) in sizes.iter().enumerate() {
                let (table, _, d) = &tables[map[f]];
                let first: usize = sizes[..f].iter().flatten().sum::<usize>() + s[..r].iter().sum::<usize>();
                for bag in first..first + s[r] {
                    let (lo, hi) = (offsets[bag] as usize, offsets[bag + 1] as usize);
                    for j in 0..*d {
                        let mut acc: f64 =
                            (lo..hi).map(|p| table[indices[p] as usize * d + j] as f64 * w.map_or(1.0, |w| w[p] as f64)).sum();
                        if mode == Pooling::Mean && hi > lo {
                            acc /= (hi - lo) as f64;
                        }
                        expected.push(acc as f32);
                    }
                }
            }
        }
        let tbe = TableBatchedEmbeddingBags::from_pretrained(&ctx, &refs, &map, mode).unwrap();
        let out =
            tbe.forward_vbe(&ctx, Indices::i64(&indices, &[indices.len()]), Indices::i64(&offsets, &[offsets.len()]), w, &sizes).unwrap();
        assert_eq!(out.shape(), [expected.len()]);
        let got = out.read_f32(&ctx).block().unwrap();
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "{mode:?} element {i}: {g} vs {e}");
        }
    }

    // One rank and one batch size: the fixed-B output, each feature's block transposed.
    let c = case(&mut rng, &specs, &map, 5, 3);
    let tbe = layer(&ctx, &c, Pooling::Sum);
    let (n, o) = ([c.indices.len()], [c.offsets.len()]);
    let (idx, off) = (Indices::i64(&c.indices, &n), Indices::i64(&c.offsets, &o));
    let fixed = tbe.forward(&ctx, idx, off, None).unwrap().read_f32(&ctx).block().unwrap();
    let vbe = tbe.forward_vbe(&ctx, idx, off, None, &vec![vec![5]; 4]).unwrap().read_f32(&ctx).block().unwrap();
    let (width, mut k) = (tbe.output_dim(), 0);
    let mut col = 0;
    for &t in &map {
        let d = specs[t].1;
        for b in 0..5 {
            assert_eq!(vbe[k..k + d], fixed[b * width + col..b * width + col + d], "feature of table {t}, bag {b}");
            k += d;
        }
        col += d;
    }

    // Refusals, each naming its argument.
    let refuse = |sizes: &[Vec<usize>], off: &[i64]| {
        tbe.forward_vbe(&ctx, idx, Indices::i64(off, &[off.len()]), None, sizes).map(drop).unwrap_err().to_string()
    };
    let e = refuse(&vec![vec![5]; 3], &c.offsets);
    assert!(e.contains("`batch_size_per_feature_per_rank`") && e.contains("(4), got 3"), "{e}");
    let e = refuse(&[vec![5], vec![2, 3], vec![5], vec![5]], &c.offsets);
    assert!(e.contains("`batch_size_per_feature_per_rank`") && e.contains("feature 1 has 2 ranks"), "{e}");
    let e = refuse(&[vec![5], vec![5], vec![5], vec![4]], &c.offsets);
    assert!(e.contains("`offsets`") && e.contains("= 20 entries, got 21"), "{e}");
    let none = layer(&ctx, &c, Pooling::None);
    let e = none.forward_vbe(&ctx, idx, off, None, &vec![vec![5]; 4]).map(drop).unwrap_err().to_string();
    assert!(e.contains("`batch_size_per_feature_per_rank`") && e.contains("'none'"), "{e}");
}

/// The rows of a table of `precision` (FBGEMM's inference layout) from random codes, and
/// the f32 values they decode to (scale · code + bias, in f32).
fn inference_table(rng: &mut Rng, rows: usize, dim: usize, precision: TablePrecision) -> (Vec<u8>, Vec<f32>) {
    let (mut bytes, mut values) = (Vec::new(), Vec::new());
    for _ in 0..rows {
        match precision {
            TablePrecision::F32 | TablePrecision::F16 => {
                for v in rng.vec_f32(dim) {
                    if precision == TablePrecision::F32 {
                        bytes.extend(v.to_le_bytes());
                        values.push(v);
                    } else {
                        let h = half::f16::from_f32(v);
                        bytes.extend(h.to_le_bytes());
                        values.push(h.to_f32());
                    }
                }
            }
            TablePrecision::Int8 | TablePrecision::Int4 => {
                let (scale, bias) = (half::f16::from_f32(0.01 + rng.vec_f32(1)[0].abs()), half::f16::from_f32(rng.vec_f32(1)[0]));
                bytes.extend(scale.to_le_bytes().iter().chain(&bias.to_le_bytes()));
                let top = if precision == TablePrecision::Int8 { 256 } else { 16 };
                let codes: Vec<u8> = (0..dim).map(|_| rng.below(top) as u8).collect();
                values.extend(codes.iter().map(|&q| scale.to_f32() * q as f32 + bias.to_f32()));
                if precision == TablePrecision::Int8 {
                    bytes.extend(&codes);
                } else {
                    bytes.extend(codes.chunks(2).map(|p| p[0] | (p[1] << 4)));
                }
            }
        }
    }
    (bytes, values)
}

/// Tables of mixed precision give what f32 tables of their decoded values give, pooled,
/// unpooled and with variable batch sizes; refusals name the table.
#[test]
fn mixed_precision_tables_pool_their_decoded_rows() {
    let ctx = context(None);
    let mut rng = Rng(57);
    let specs = [
        (30usize, 8usize, TablePrecision::Int8),
        (20, 6, TablePrecision::Int4),
        (25, 5, TablePrecision::F16),
        (10, 4, TablePrecision::F32),
    ];
    let map = [2usize, 0, 1, 0, 3];
    let made: Vec<(Vec<u8>, Vec<f32>)> = specs.iter().map(|&(r, d, p)| inference_table(&mut rng, r, d, p)).collect();
    let rows: Vec<TableRows<'_>> =
        specs.iter().zip(&made).map(|(&(rows, dim, precision), (bytes, _))| TableRows { rows, dim, precision, bytes }).collect();
    let decoded: Vec<(&[f32], usize, usize)> = specs.iter().zip(&made).map(|(&(r, d, _), (_, v))| (&v[..], r, d)).collect();
    let b = 4;
    let float_specs: Vec<(usize, usize)> = specs.iter().map(|&(r, d, _)| (r, d)).collect();
    let c = case(&mut rng, &float_specs, &map, b, 3);
    let (n, o) = ([c.indices.len()], [c.offsets.len()]);
    let (idx, off) = (Indices::i64(&c.indices, &n), Indices::i64(&c.offsets, &o));
    let close = |got: Vec<f32>, want: Vec<f32>, what: &str| {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{what} element {i}: {g} vs {w}");
        }
    };
    for mode in [Pooling::Sum, Pooling::Mean, Pooling::None] {
        let mixed = TableBatchedEmbeddingBags::from_rows(&ctx, &rows, &map, mode).unwrap();
        let float = TableBatchedEmbeddingBags::from_pretrained(&ctx, &decoded, &map, mode).unwrap();
        let read = |t: wgpu_embed::Result<wgpu_embed::GpuTensor>| t.unwrap().read_f32(&ctx).block().unwrap();
        close(read(mixed.forward(&ctx, idx, off, None)), read(float.forward(&ctx, idx, off, None)), &format!("{mode:?}"));
        if mode != Pooling::None {
            let sizes = [vec![1, 3], vec![2, 2], vec![4, 0], vec![0, 4], vec![3, 1]];
            let (a, f) = (mixed.forward_vbe(&ctx, idx, off, None, &sizes), float.forward_vbe(&ctx, idx, off, None, &sizes));
            close(read(a), read(f), &format!("{mode:?} VBE"));
        }
        let e = mixed.weights().map(drop).unwrap_err().to_string();
        assert!(e.contains("inference"), "{e}");
    }
    let e = TableBatchedEmbeddingBags::from_rows(&ctx, &[TableRows { bytes: &made[0].0[1..], ..rows[0] }], &[0], Pooling::Sum)
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`tables`") && e.contains("table 0") && e.contains("(12 bytes each)"), "{e}");
    let odd = TableRows { rows: 1, dim: 3, precision: TablePrecision::Int4, bytes: &[0; 6] };
    let e = TableBatchedEmbeddingBags::from_rows(&ctx, &[odd], &[0], Pooling::Sum).map(drop).unwrap_err().to_string();
    assert!(e.contains("`tables`") && e.contains("dim 3 of an int4 table"), "{e}");
}

/// Training with variable batch sizes: one rank of equal batch sizes gives the fixed-B
/// step's bits (the output gradient laid out as FBGEMM's VBE output); with several ranks
/// the fused step equals the VBE backward then the optimizer's step, and a gradient of
/// the fixed-B shape is refused with nothing written.
#[test]
fn variable_batch_steps_match_the_fixed_batch_ones() {
    use wgpu_embed::{GpuTensor, Optimizer, OptimizerKind};
    let ctx = context(None);
    let mut rng = Rng(93);
    let (specs, map, b, d) = ([(30usize, 8usize), (20, 8)], [0usize, 1, 0], 4usize, 8usize);
    let kind = OptimizerKind::RowwiseAdagrad { lr: 0.1, eps: 1e-8, weight_decay: 0.0 };
    let bits = |t: &GpuTensor| t.read_f32(&ctx).block().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let c = case(&mut rng, &specs, &map, b, 3);
    let (n, o) = ([c.indices.len()], [c.offsets.len()]);
    let (idx, off) = (Indices::i64(&c.indices, &n), Indices::i64(&c.offsets, &o));
    let fixed_grad = rng.vec_f32(b * map.len() * d);
    // The same gradient in VBE's layout (one rank: feature after feature, B rows each).
    let vbe_grad: Vec<f32> = (0..map.len())
        .flat_map(|f| (0..b).flat_map(move |r| (0..d).map(move |k| (r * map.len() + f) * d + k)))
        .map(|i| fixed_grad[i])
        .collect();
    let fixed = layer(&ctx, &c, Pooling::Sum);
    let mut opt = Optimizer::new(&ctx, kind, &fixed.weights().unwrap()).unwrap();
    fixed.step(&ctx, &mut opt, idx, off, None, &GpuTensor::from_f32(&ctx, &fixed_grad, &[b, map.len() * d]).unwrap()).block().unwrap();
    let one_rank = vec![vec![b]; map.len()];
    let vbe = layer(&ctx, &c, Pooling::Sum);
    let mut vopt = Optimizer::new(&ctx, kind, &vbe.weights().unwrap()).unwrap();
    let g = GpuTensor::from_f32(&ctx, &vbe_grad, &[vbe_grad.len()]).unwrap();
    vbe.variable_batch(&one_rank).step(&ctx, &mut vopt, idx, off, None, &g).block().unwrap();
    assert_eq!(bits(&fixed.weights().unwrap()), bits(&vbe.weights().unwrap()));
    let state = |o: &Optimizer| bits(o.state(o.state_names()[0]).unwrap());
    assert_eq!(state(&opt), state(&vopt));

    // Several ranks: fused == backward (sparse) then step.
    let ranks = vec![vec![1, 3], vec![2, 2], vec![4, 0]];
    let grads = rng.vec_f32(b * map.len() * d);
    let g = GpuTensor::from_f32(&ctx, &grads, &[grads.len()]).unwrap();
    let fused = layer(&ctx, &c, Pooling::Mean);
    let mut fopt = Optimizer::new(&ctx, kind, &fused.weights().unwrap()).unwrap();
    fused.variable_batch(&ranks).step(&ctx, &mut fopt, idx, off, None, &g).block().unwrap();
    let twin = layer(&ctx, &c, Pooling::Mean);
    let mut topt = Optimizer::new(&ctx, kind, &twin.weights().unwrap()).unwrap();
    let sparse = wgpu_embed::GradOptions::default().sparse(true);
    let grad = twin.variable_batch(&ranks).backward(&ctx, idx, off, None, &g, sparse).block().unwrap();
    topt.step(&ctx, &twin.weights().unwrap(), &grad).block().unwrap();
    assert_eq!(bits(&fused.weights().unwrap()), bits(&twin.weights().unwrap()));
    assert_ne!(bits(&fused.weights().unwrap()), bits(&layer(&ctx, &c, Pooling::Mean).weights().unwrap()), "the step wrote");

    let before = bits(&fused.weights().unwrap());
    let wrong = GpuTensor::from_f32(&ctx, &grads, &[b, map.len() * d]).unwrap();
    let e = fused.variable_batch(&ranks).step(&ctx, &mut fopt, idx, off, None, &wrong).block().unwrap_err().to_string();
    assert!(e.contains("grad_out") && e.contains("[96]"), "{e}");
    assert_eq!(before, bits(&fused.weights().unwrap()), "a refused step writes nothing");
}
