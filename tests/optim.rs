//! Optimizer steps beyond the conformance cases: sparse steps equal dense ones on a table
//! over several bindings, fused backward + step equals backward then step, and lookups
//! read the updated table (its texture copy refreshed).

mod common;

use common::{context, Rng};
use wgpu_embed::Block;
use wgpu_embed::{BagMode, Embedding, EmbeddingBag, GpuTensor, GradOptions, Gradient, Indices, Optimizer, OptimizerKind};

/// The optimizers that take sparse gradients, with every state they keep in use.
fn sparse_kinds() -> [OptimizerKind; 4] {
    [
        OptimizerKind::Sgd { lr: 0.5, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        OptimizerKind::Adagrad { lr: 0.1, lr_decay: 0.01, eps: 1e-10, weight_decay: 0.0, initial_accumulator_value: 0.1 },
        OptimizerKind::SparseAdam { lr: 0.01, betas: (0.9, 0.999), eps: 1e-8 },
        OptimizerKind::RowwiseAdagrad { lr: 0.1, eps: 1e-10, weight_decay: 0.01 },
    ]
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Embedding: the fused step gives backward (sparse) then step, bit for bit, on a table
/// over several bindings, with padding, a hot row (a run over many chunks) and rows of
/// whole vec4 words (D = 64, 20: fused) or not (D = 6: the unfused path); two steps,
/// so the states are read too.
#[test]
fn fused_embedding_steps_equal_backward_then_step() {
    // 1 MiB bindings: two table segments, the output gradient in one.
    let ctx = context(Some(1 << 20));
    let mut rng = Rng(21);
    for (v, d) in [(5_000usize, 64usize), (20_000, 20), (50_000, 6)] {
        let weight = rng.vec_f32(v * d);
        let mut rows: Vec<i64> = (0..2_000).map(|_| rng.below(v as u64) as i64).collect();
        rows.extend(std::iter::repeat_n(17, 700)); // hot row
        rows.extend(std::iter::repeat_n(3, 5)); // padding
        let shape = [rows.len()];
        let grad_out = GpuTensor::from_f32(&ctx, &rng.vec_f32(rows.len() * d), &[rows.len(), d]).unwrap();
        assert_eq!(grad_out.segments().len(), 1);
        for kind in sparse_kinds() {
            let mut results = Vec::new();
            for fused in [false, true] {
                let emb = Embedding::from_pretrained(&ctx, &weight, v, d).unwrap().with_padding_idx(Some(3)).unwrap();
                assert!(emb.weight().segments().len() > 1, "the table should span several bindings");
                let mut opt = Optimizer::new(&ctx, kind, emb.weight()).unwrap();
                for _ in 0..2 {
                    let indices = Indices::i64(&rows, &shape);
                    if fused {
                        opt.step_embedding(&ctx, &emb, indices, &grad_out).block().unwrap();
                    } else {
                        let g = emb.backward(&ctx, indices, &grad_out, GradOptions::default().sparse(true)).block().unwrap();
                        opt.step(&ctx, emb.weight(), &g).block().unwrap();
                    }
                }
                let mut values = emb.weight().read_f32(&ctx).block().unwrap();
                for name in opt.state_names() {
                    values.extend(opt.state(name).unwrap().read_f32(&ctx).block().unwrap());
                }
                results.push(values);
            }
            assert!(same_bits(&results[0], &results[1]), "D = {d}, {kind:?}: fused and unfused steps differ");
            assert!(results[0][..v * d] != weight[..], "{kind:?}: the table did not change");
            assert_eq!(results[1][3 * d..4 * d], weight[3 * d..4 * d], "{kind:?}: the padding row changed");
        }
    }
}

/// EmbeddingBag (sum with per-sample weights, and mean): the same, and the per-sample
/// weights' gradient is the one backward gives.
#[test]
fn fused_bag_steps_equal_backward_then_step() {
    let ctx = context(Some(1 << 18));
    let mut rng = Rng(22);
    let (v, d, bags) = (4_000usize, 32usize, 300usize);
    let weight = rng.vec_f32(v * d);
    let input: Vec<i64> = (0..2_400).map(|_| rng.below(v as u64) as i64).collect();
    let mut offsets: Vec<i64> = (0..bags).map(|_| rng.below(input.len() as u64) as i64).collect();
    offsets.sort();
    offsets[0] = 0;
    let sample_weights = rng.vec_f32(input.len());
    let grad_out = GpuTensor::from_f32(&ctx, &rng.vec_f32(bags * d), &[bags, d]).unwrap();
    for (mode, with_weights) in [(BagMode::Sum, true), (BagMode::Mean, false)] {
        for kind in sparse_kinds() {
            let mut results = Vec::new();
            let mut weight_grads = Vec::new();
            for fused in [false, true] {
                let bag = EmbeddingBag::from_pretrained(&ctx, &weight, v, d, mode).unwrap();
                let mut opt = Optimizer::new(&ctx, kind, bag.weight()).unwrap();
                let (inp_shape, off_shape, psw_shape) = ([input.len()], [bags], [input.len()]);
                let psw = with_weights.then_some((&sample_weights[..], &psw_shape[..]));
                let (inp, off) = (Indices::i64(&input, &inp_shape), Some(Indices::i64(&offsets, &off_shape)));
                let psw_grad = if fused {
                    opt.step_embedding_bag(&ctx, &bag, inp, off, psw, &grad_out).block().unwrap()
                } else {
                    let g = bag.backward(&ctx, inp, off, psw, &grad_out, GradOptions::default().sparse(true)).block().unwrap();
                    opt.step(&ctx, bag.weight(), &g.weight).block().unwrap();
                    g.per_sample_weights
                };
                weight_grads.push(psw_grad.map(|g| g.read_f32(&ctx).block().unwrap()));
                results.push(bag.weight().read_f32(&ctx).block().unwrap());
            }
            assert!(same_bits(&results[0], &results[1]), "{mode:?}, {kind:?}: fused and unfused steps differ");
            assert!(results[0] != weight, "{kind:?}: the table did not change");
            assert_eq!(weight_grads[0].is_some(), with_weights);
            assert_eq!(weight_grads[0], weight_grads[1], "{mode:?}, {kind:?}: per-sample weight gradients differ");
        }
    }
}

/// What a fused step refuses, before any GPU work: dense-only optimizers, tables of
/// another shape, max bags.
#[test]
fn fused_steps_refuse_what_sparse_steps_refuse() {
    let ctx = context(None);
    let emb = Embedding::from_pretrained(&ctx, &[0.5; 40], 10, 4).unwrap();
    let grad = GpuTensor::from_f32(&ctx, &[1.0; 8], &[2, 4]).unwrap();
    let ids = [1i64, 2];
    let adam = OptimizerKind::Adam { lr: 0.1, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, decoupled: false };
    let mut opt = Optimizer::new(&ctx, adam, emb.weight()).unwrap();
    let err = opt.step_embedding(&ctx, &emb, Indices::i64(&ids, &[2]), &grad).block().unwrap_err().to_string();
    assert!(err.contains("Adam does not support sparse gradients"), "{err}");
    let other = Embedding::from_pretrained(&ctx, &[0.5; 48], 12, 4).unwrap();
    let sgd = OptimizerKind::Sgd { lr: 0.1, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
    let mut opt = Optimizer::new(&ctx, sgd, other.weight()).unwrap();
    let err = opt.step_embedding(&ctx, &emb, Indices::i64(&ids, &[2]), &grad).block().unwrap_err().to_string();
    assert!(err.contains("[12, 4]") && err.contains("[10, 4]"), "{err}");
    let bad = [1i64, 10];
    let mut opt = Optimizer::new(&ctx, sgd, emb.weight()).unwrap();
    let err = opt.step_embedding(&ctx, &emb, Indices::i64(&bad, &[2]), &grad).block().unwrap_err().to_string();
    assert!(err.contains("index out of range") && err.contains("10"), "{err}");
    assert_eq!(opt.steps(), 0);
    let bag = EmbeddingBag::from_pretrained(&ctx, &[0.5; 40], 10, 4, BagMode::Max).unwrap();
    let bag_grad = GpuTensor::from_f32(&ctx, &[1.0; 4], &[1, 4]).unwrap();
    let err = opt.step_embedding_bag(&ctx, &bag, Indices::i64(&ids, &[1, 2]), None, None, &bag_grad).block().unwrap_err().to_string();
    assert!(err.contains("max mode does not support sparse"), "{err}");
    assert_eq!(emb.weight().read_f32(&ctx).block().unwrap(), vec![0.5; 40], "a refused step wrote the table");
}

#[test]
fn sparse_steps_equal_dense_steps_on_a_split_table() {
    // 1 MiB bindings: the 20 000 x 64 table spans five segments.
    let ctx = context(Some(1 << 20));
    let (v, d) = (20_000usize, 64usize);
    let mut rng = Rng(5);
    let weight = rng.vec_f32(v * d);
    let rows: Vec<i64> = (0..3000).map(|_| rng.below(v as u64) as i64).collect();
    let grad_out = GpuTensor::from_f32(&ctx, &rng.vec_f32(rows.len() * d), &[rows.len(), d]).unwrap();
    let kinds = [
        OptimizerKind::Sgd { lr: 0.5, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        OptimizerKind::Adagrad { lr: 0.1, lr_decay: 0.0, eps: 1e-10, weight_decay: 0.0, initial_accumulator_value: 0.1 },
    ];
    for kind in kinds {
        let mut results = Vec::new();
        for sparse in [false, true] {
            let emb = Embedding::from_pretrained(&ctx, &weight, v, d).unwrap();
            assert!(emb.weight().segments().len() > 1, "the table should span several bindings");
            let mut opt = Optimizer::new(&ctx, kind, emb.weight()).unwrap();
            for _ in 0..2 {
                let g = emb
                    .backward(&ctx, Indices::i64(&rows, &[rows.len()]), &grad_out, GradOptions::default().sparse(sparse))
                    .block()
                    .unwrap();
                opt.step(&ctx, emb.weight(), &g).block().unwrap();
            }
            results.push(emb.weight().read_f32(&ctx).block().unwrap());
        }
        assert!(results[0].iter().zip(&results[1]).all(|(a, b)| a.to_bits() == b.to_bits()), "{kind:?}: sparse and dense steps differ");
        assert!(results[0] != weight, "{kind:?}: the table did not change");
    }
}

#[test]
fn lookups_read_the_updated_table() {
    let ctx = context(None);
    let (v, d) = (50usize, 8usize);
    let mut rng = Rng(9);
    let emb = Embedding::from_pretrained(&ctx, &rng.vec_f32(v * d), v, d).unwrap();
    let ids = [3i64, 7, 3];
    // The first lookup makes the texture copy CPU adapters read.
    emb.forward(&ctx, Indices::i64(&ids, &[3])).unwrap().read_f32(&ctx).block().unwrap();
    let grad = GpuTensor::from_f32(&ctx, &rng.vec_f32(3 * d), &[3, d]).unwrap();
    let g = emb.backward(&ctx, Indices::i64(&ids, &[3]), &grad, GradOptions::default()).block().unwrap();
    let mut opt = Optimizer::new(
        &ctx,
        OptimizerKind::Adam { lr: 0.1, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, decoupled: false },
        emb.weight(),
    )
    .unwrap();
    opt.step(&ctx, emb.weight(), &g).block().unwrap();
    let table = emb.weight().read_f32(&ctx).block().unwrap();
    let out = emb.forward(&ctx, Indices::i64(&ids, &[3])).unwrap().read_f32(&ctx).block().unwrap();
    for (k, &i) in ids.iter().enumerate() {
        assert_eq!(&out[k * d..(k + 1) * d], &table[i as usize * d..(i as usize + 1) * d], "row {i} after the step");
    }
    assert!(matches!(g, Gradient::Dense(_)));
}

/// 8-bit Adam in one kernel (blocks within the table's segments) gives the three-pass
/// form (dequantize, update, quantize_blockwise) bit for bit: table, codes and absmax.
#[test]
fn one_kernel_8bit_adam_equals_three_passes() {
    let (v, d) = (10_000usize, 64usize);
    let mut rng = Rng(23);
    let weight = rng.vec_f32(v * d);
    let grads: Vec<Vec<f32>> = (0..3).map(|_| rng.vec_f32(v * d)).collect();
    let kind =
        OptimizerKind::Adam8bit { lr: 0.01, betas: (0.9, 0.995), eps: 1e-8, weight_decay: 0.01, blocksize: 256, min_8bit_size: 4096 };
    let mut results = Vec::new();
    // 1 MiB bindings: segments of 4 096 rows, whole blocks (one kernel; the codes are
    // segmented like the table); 256 bytes more: 4 097 rows, blocks straddle segments.
    for (binding, code_segments) in [(1usize << 20, 3usize), ((1 << 20) + 256, 1)] {
        let ctx = context(Some(binding as u64));
        let emb = Embedding::from_pretrained(&ctx, &weight, v, d).unwrap();
        assert_eq!(emb.weight().segments().len(), 3);
        let mut opt = Optimizer::new(&ctx, kind, emb.weight()).unwrap();
        assert_eq!(opt.state("state1").unwrap().segments().len(), code_segments, "binding {binding}: not the path meant");
        for g in &grads {
            let g = GpuTensor::from_f32(&ctx, g, &[v, d]).unwrap();
            opt.step(&ctx, emb.weight(), &Gradient::Dense(g)).block().unwrap();
        }
        let mut bytes: Vec<u8> = bytemuck::cast_slice(&emb.weight().read_f32(&ctx).block().unwrap()).to_vec();
        for name in ["state1", "absmax1", "state2", "absmax2"] {
            bytes.extend(pollster::block_on(opt.state(name).unwrap().read_bytes(&ctx)).unwrap());
        }
        results.push(bytes);
    }
    assert!(results[0] == results[1], "one kernel and three passes differ");
    assert!(results[0][..16] != bytemuck::cast_slice::<f32, u8>(&weight)[..16], "the table did not change");
}

fn adam8bit(min_8bit_size: usize) -> OptimizerKind {
    OptimizerKind::Adam8bit { lr: 0.01, betas: (0.9, 0.995), eps: 1e-8, weight_decay: 0.01, blocksize: 256, min_8bit_size }
}

const ADAM32: OptimizerKind = OptimizerKind::Adam32bit { lr: 0.01, betas: (0.9, 0.995), eps: 1e-8, weight_decay: 0.01 };

/// Three dense steps of `opt` on `table` from `grads`; the table and every state, as bytes.
fn train_bytes(ctx: &wgpu_embed::Context, opt: &mut Optimizer, table: &GpuTensor, grads: &[Vec<f32>]) -> Vec<u8> {
    for g in grads {
        let g = GpuTensor::from_f32(ctx, g, table.shape()).unwrap();
        opt.step(ctx, table, &Gradient::Dense(g)).block().unwrap();
    }
    let mut bytes = table.read_bytes(ctx).block().unwrap();
    for name in opt.state_names() {
        bytes.extend(opt.state(name).unwrap().read_bytes(ctx).block().unwrap());
    }
    bytes
}

/// bitsandbytes' rules: `Adam8bit` over a StableEmbedding (or `bnb.nn.Embedding`) gives
/// the bits of 32-bit Adam over the same table, over a plain table 8-bit states, and a
/// tensor of fewer than `min_8bit_size` elements keeps 32-bit states (a 1-D one too).
#[test]
fn bitsandbytes_rules_choose_the_states() {
    use wgpu_embed::{EmbeddingOptions, HostTable, ParamConfig, StableEmbedding};
    let ctx = context(None);
    let (v, d) = (500usize, 64usize);
    let mut rng = Rng(41);
    let grads: Vec<Vec<f32>> = (0..3).map(|_| rng.vec_f32(v * d)).collect();
    let stable = StableEmbedding::new(&ctx, v, d, EmbeddingOptions::default().seed(7)).unwrap();
    let weight = stable.weight().read_f32(&ctx).block().unwrap();
    let mut via_layer = Optimizer::for_layer(&ctx, adam8bit(4096), &stable).unwrap();
    assert_eq!(via_layer.kind(), &ADAM32);
    assert_eq!(via_layer.state_names(), ["state1", "state2"]);
    let a = train_bytes(&ctx, &mut via_layer, stable.weight(), &grads);
    let copy = StableEmbedding::from_pretrained(&ctx, HostTable::f32(&weight, v, d).unwrap(), None, None, None, 1e-5).unwrap();
    let mut direct = Optimizer::new(&ctx, ADAM32, copy.weight()).unwrap();
    let b = train_bytes(&ctx, &mut direct, copy.weight(), &grads);
    assert!(a == b, "Adam8bit over a StableEmbedding differs from 32-bit Adam over it");
    assert!(a[..4 * v * d] != *bytemuck::cast_slice::<f32, u8>(&weight), "the table did not move");

    // A plain table: 8-bit states (codes and absmax); bnb.nn.Embedding's: 32-bit.
    let plain = Embedding::from_pretrained(&ctx, &weight, v, d).unwrap();
    let opt = Optimizer::for_layer(&ctx, adam8bit(4096), &plain).unwrap();
    assert_eq!(opt.state_names(), ["state1", "absmax1", "state2", "absmax2"]);
    assert_eq!(opt.state("state1").unwrap().dtype(), wgpu_embed::DType::U8);
    let bnb = Embedding::from_pretrained(&ctx, &weight, v, d).unwrap().into_bitsandbytes();
    assert_eq!(Optimizer::for_layer(&ctx, adam8bit(4096), &bnb).unwrap().kind(), &ADAM32);

    // min_8bit_size: 4 095 elements keep f32 states (the same bits as 32-bit Adam), 4 096 do not.
    let (small, small_grads) = (rng.vec_f32(4095), (0..3).map(|_| rng.vec_f32(4095)).collect::<Vec<_>>());
    let t1 = GpuTensor::from_f32(&ctx, &small, &[4095]).unwrap();
    let mut o1 = Optimizer::new(&ctx, adam8bit(4096), &t1).unwrap();
    assert_eq!(o1.state("state1").unwrap().dtype(), wgpu_embed::DType::F32);
    let t2 = GpuTensor::from_f32(&ctx, &small, &[4095]).unwrap();
    let mut o2 = Optimizer::new(&ctx, ADAM32, &t2).unwrap();
    assert!(train_bytes(&ctx, &mut o1, &t1, &small_grads) == train_bytes(&ctx, &mut o2, &t2, &small_grads));
    let t3 = GpuTensor::from_f32(&ctx, &rng.vec_f32(4096), &[64, 64]).unwrap();
    assert_eq!(Optimizer::new(&ctx, adam8bit(4096), &t3).unwrap().state("state1").unwrap().dtype(), wgpu_embed::DType::U8);

    // Overrides as GlobalOptimManager.override_config takes them.
    let eight = Optimizer::with_config(&ctx, ADAM32, &t3, &ParamConfig { optim_bits: Some(8), ..ParamConfig::default() }).unwrap();
    assert_eq!(eight.kind().name(), "adam8bit");
    let config = ParamConfig { lr: Some(0.5), betas: Some((0.8, 0.9)), ..ParamConfig::default() };
    let lr = Optimizer::with_config(&ctx, adam8bit(4096), &t3, &config).unwrap();
    assert!(matches!(lr.kind(), OptimizerKind::Adam8bit { lr, betas, .. } if *lr == 0.5 && *betas == (0.8, 0.9)));
    let sgd = OptimizerKind::Sgd { lr: 0.1, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
    let e = Optimizer::with_config(&ctx, sgd, &t3, &config).unwrap_err().to_string();
    assert!(e.contains("betas") && e.contains("sgd"), "{e}");
    let e = Optimizer::with_config(&ctx, sgd, &t3, &ParamConfig { optim_bits: Some(8), ..ParamConfig::default() }).unwrap_err();
    assert!(e.to_string().contains("optim_bits"), "{e}");
    let e = Optimizer::with_config(&ctx, ADAM32, &t3, &ParamConfig { optim_bits: Some(16), ..ParamConfig::default() }).unwrap_err();
    assert!(e.to_string().contains("optim_bits") && e.to_string().contains("16"), "{e}");
    // A 1-D gradient of the wrong length is refused, naming it.
    let e = o1.step(&ctx, &t1, &Gradient::Dense(GpuTensor::from_f32(&ctx, &[0.0; 4], &[4]).unwrap())).block().unwrap_err();
    assert!(e.to_string().contains("grad") && e.to_string().contains("[4095]"), "{e}");
}

/// bitsandbytes' arguments this build does not implement are refused by name, never
/// ignored; bitsandbytes' other 8-bit optimizers are refused as not implemented.
#[test]
fn unimplemented_bitsandbytes_arguments_are_refused() {
    let parse = |json: &str| OptimizerKind::from_json(serde_json::from_str::<serde_json::Value>(json).unwrap().as_object().unwrap());
    for (json, arg) in [
        (r#"{"optimizer": "adam8bit", "lr": 0.001, "percentile_clipping": 5}"#, "percentile_clipping"),
        (r#"{"optimizer": "adam8bit", "lr": 0.001, "max_unorm": 1.0}"#, "max_unorm"),
        (r#"{"optimizer": "adam8bit", "lr": 0.001, "amsgrad": true}"#, "amsgrad"),
        (r#"{"optimizer": "adam8bit", "lr": 0.001, "optim_bits": 8}"#, "optim_bits"),
    ] {
        let e = parse(json).unwrap_err();
        assert!(matches!(e, wgpu_embed::Error::InvalidArgument { .. }) && e.to_string().contains(arg), "{json}: {e}");
    }
    assert!(matches!(parse(r#"{"optimizer": "lion8bit", "lr": 0.001}"#), Err(wgpu_embed::Error::Unsupported(_))));
    // Their inert values are accepted, and AdamW8bit is Adam8bit with weight decay 0.01.
    let k = parse(r#"{"optimizer": "adamw8bit", "lr": 0.001, "percentile_clipping": 100, "max_unorm": 0.0}"#).unwrap();
    assert!(matches!(k, OptimizerKind::Adam8bit { weight_decay, min_8bit_size: 4096, .. } if weight_decay == 0.01));
}

/// The axial layer's step (fused into the backward for sparse-gradient optimizers when a
/// weight's width is a multiple of 4, else backward then step) gives the dense
/// backward's gradient stepped as a sparse one (or a dense one, for Adam), bit for bit.
#[test]
fn axial_steps_equal_backward_then_step() {
    use wgpu_embed::AxialPositionEmbedding;
    let ctx = context(None);
    let mut rng = Rng(53);
    let shape = [16usize, 24usize];
    // 12 positions: some rows of each weight are touched, others not.
    let positions: Vec<i64> = (0..12).map(|_| rng.below(16 * 24) as i64).collect();
    let kinds = [
        OptimizerKind::SparseAdam { lr: 0.01, betas: (0.9, 0.999), eps: 1e-8 },
        OptimizerKind::RowwiseAdagrad { lr: 0.1, eps: 1e-10, weight_decay: 0.0 },
        OptimizerKind::Adam { lr: 0.01, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, decoupled: false },
    ];
    // Widths 8 and 12 fuse; 6 does not (backward, then step).
    for dims in [[8usize, 12usize], [8, 6]] {
        let (w0, w1) = (rng.vec_f32(shape[0] * dims[0]), rng.vec_f32(shape[1] * dims[1]));
        let grads: Vec<Vec<f32>> = (0..2).map(|_| rng.vec_f32(positions.len() * (dims[0] + dims[1]))).collect();
        for kind in kinds {
            let stepped = AxialPositionEmbedding::from_pretrained(&ctx, &w0, &w1, shape, dims).unwrap();
            let reference = AxialPositionEmbedding::from_pretrained(&ctx, &w0, &w1, shape, dims).unwrap();
            let make = |layer: &AxialPositionEmbedding| layer.weights().map(|w| Optimizer::new(&ctx, kind, w).unwrap());
            let ([mut a0, mut a1], [mut b0, mut b1]) = (make(&stepped), make(&reference));
            let ids = Indices::i64(&positions, &[3, 4]);
            for g in &grads {
                let g = GpuTensor::from_f32(&ctx, g, &[3, 4, dims[0] + dims[1]]).unwrap();
                stepped.step(&ctx, [&mut a0, &mut a1], ids, &g).block().unwrap();
                let dense = reference.backward(&ctx, ids, &g).block().unwrap();
                for (axis, (opt, grad)) in [(&mut b0, dense.weight0), (&mut b1, dense.weight1)].into_iter().enumerate() {
                    let d = dims[axis];
                    let grad = if let OptimizerKind::Adam { .. } = kind {
                        Gradient::Dense(grad)
                    } else {
                        // The rows the positions touch, in row order, with the dense gradient's values.
                        let values = grad.read_f32(&ctx).block().unwrap();
                        let mut rows: Vec<i32> =
                            positions.iter().map(|&p| if axis == 0 { p / shape[1] as i64 } else { p % shape[1] as i64 } as i32).collect();
                        rows.sort();
                        rows.dedup();
                        let picked: Vec<f32> = rows.iter().flat_map(|&r| values[r as usize * d..(r as usize + 1) * d].to_vec()).collect();
                        Gradient::Sparse {
                            indices: GpuTensor::from_i32(&ctx, &rows, &[rows.len()]).unwrap(),
                            values: GpuTensor::from_f32(&ctx, &picked, &[rows.len(), d]).unwrap(),
                            num_embeddings: shape[axis],
                        }
                    };
                    opt.step(&ctx, reference.weights()[axis], &grad).block().unwrap();
                }
            }
            for axis in 0..2 {
                let (a, b) =
                    (stepped.weights()[axis].read_f32(&ctx).block().unwrap(), reference.weights()[axis].read_f32(&ctx).block().unwrap());
                assert!(same_bits(&a, &b), "{kind:?}, dims {dims:?}, axis {axis}: the step differs from backward then step");
                assert!(!same_bits(&a, if axis == 0 { &w0 } else { &w1 }), "{kind:?}: weight {axis} did not move");
            }
        }
    }
}

/// A learning rate set between steps is the one the next step takes (Adam: the states
/// carry over), and a bad one is refused leaving the optimizer as it was.
#[test]
fn set_lr_changes_the_next_steps_only() {
    let ctx = context(None);
    let mut rng = Rng(41);
    let (v, d) = (16, 8);
    let init = rng.vec_f32(v * d);
    let grads: Vec<Vec<f32>> = (0..3).map(|_| rng.vec_f32(v * d)).collect();
    let adam = |lr| OptimizerKind::Adam { lr, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, decoupled: false };
    // Two steps at lr 0.1 then one at 0.01, against the same by hand: an optimizer made
    // at 0.01 after two steps at 0.1 is the same as one whose lr was set.
    let run = |set: bool| {
        let table = GpuTensor::from_f32(&ctx, &init, &[v, d]).unwrap();
        let mut opt = Optimizer::new(&ctx, adam(0.1), &table).unwrap();
        for (k, g) in grads.iter().enumerate() {
            if k == 2 && set {
                opt.set_lr(0.01).unwrap();
            }
            let g = Gradient::Dense(GpuTensor::from_f32(&ctx, g, &[v, d]).unwrap());
            opt.step(&ctx, &table, &g).block().unwrap();
        }
        (table.read_f32(&ctx).block().unwrap(), opt)
    };
    let (kept, _) = run(false);
    let (changed, mut opt) = run(true);
    assert!(!same_bits(&kept, &changed), "the third step took the new learning rate");
    assert!(matches!(opt.kind(), OptimizerKind::Adam { lr, .. } if *lr == 0.01));
    // The third step's update is a tenth of the kept run's (same states, same gradient).
    let (two, _) = {
        let table = GpuTensor::from_f32(&ctx, &init, &[v, d]).unwrap();
        let mut o = Optimizer::new(&ctx, adam(0.1), &table).unwrap();
        for g in &grads[..2] {
            o.step(&ctx, &table, &Gradient::Dense(GpuTensor::from_f32(&ctx, g, &[v, d]).unwrap())).block().unwrap();
        }
        (table.read_f32(&ctx).block().unwrap(), o)
    };
    for i in 0..v * d {
        let (full, tenth) = (kept[i] - two[i], changed[i] - two[i]);
        assert!((tenth * 10.0 - full).abs() <= 1e-5 * (1.0 + full.abs()), "element {i}: {tenth} vs {full} / 10");
    }
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let e = opt.set_lr(bad).unwrap_err().to_string();
        assert!(e.contains("`lr`") && e.contains("Invalid learning rate"), "{e}");
    }
    assert!(matches!(opt.kind(), OptimizerKind::Adam { lr, .. } if *lr == 0.01));
}
