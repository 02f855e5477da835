//! Optimizer steps beyond the conformance cases: sparse steps equal dense ones on a table
//! over several bindings, and lookups read the updated table (its texture copy refreshed).

mod common;

use common::{context, Rng};
use wgpu_embed::{Embedding, GpuTensor, GradOptions, Gradient, Indices, Optimizer, OptimizerKind};

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
                    .backward(&ctx, Indices::i64(&rows, &[rows.len()]), &grad_out, GradOptions { sparse, ..Default::default() })
                    .unwrap();
                opt.step(&ctx, emb.weight(), &g).unwrap();
            }
            results.push(emb.weight().to_vec_f32(&ctx).unwrap());
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
    emb.forward(&ctx, Indices::i64(&ids, &[3])).unwrap().to_vec_f32(&ctx).unwrap();
    let grad = GpuTensor::from_f32(&ctx, &rng.vec_f32(3 * d), &[3, d]).unwrap();
    let g = emb.backward(&ctx, Indices::i64(&ids, &[3]), &grad, GradOptions::default()).unwrap();
    let mut opt = Optimizer::new(
        &ctx,
        OptimizerKind::Adam { lr: 0.1, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, decoupled: false },
        emb.weight(),
    )
    .unwrap();
    opt.step(&ctx, emb.weight(), &g).unwrap();
    let table = emb.weight().to_vec_f32(&ctx).unwrap();
    let out = emb.forward(&ctx, Indices::i64(&ids, &[3])).unwrap().to_vec_f32(&ctx).unwrap();
    for (k, &i) in ids.iter().enumerate() {
        assert_eq!(&out[k * d..(k + 1) * d], &table[i as usize * d..(i as usize + 1) * d], "row {i} after the step");
    }
    assert!(matches!(g, Gradient::Dense(_)));
}
