//! Embedding and EmbeddingBag against the CPU reference: random shapes and
//! parameters, tables split over bindings, and dispatches past 65 535 workgroups.

use std::str::FromStr;
mod common;

use common::{assert_close, context, Rng};
use wgpu_embed::Block;
use wgpu_embed::{BagMode, Embedding, EmbeddingBag, Indices};

fn random_bounds(rng: &mut Rng, n: usize, bags: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..bags.saturating_sub(1)).map(|_| rng.below(n as u64 + 1) as usize).collect();
    cuts.sort_unstable();
    let mut b = vec![0];
    b.extend(cuts);
    b.push(n);
    b
}

/// Random shapes, padding and max-norm on the default binding limit and on a tiny one
/// (4 KiB: every table and output spans many segments).
#[test]
fn embedding_random_shapes_match_reference() {
    for max_binding in [None, Some(4096)] {
        let ctx = context(max_binding);
        let mut rng = Rng(0x5eed_0001);
        for trial in 0..12 {
            let v = 1 + rng.below(300) as usize;
            let d = 1 + rng.below(70) as usize;
            let shape = [1 + rng.below(5) as usize, rng.below(40) as usize];
            let n = shape[0] * shape[1];
            let table = rng.vec_f32(v * d);
            let idx: Vec<i64> = (0..n).map(|_| rng.below(v as u64) as i64).collect();
            let padding = (trial % 3 == 0).then(|| rng.below(v as u64) as i64 - if trial % 2 == 0 { v as i64 } else { 0 });
            let max_norm = (trial % 2 == 1).then(|| 0.3 + rng.f32().abs());
            let p = [1.0, 2.0, 3.0, f32::INFINITY][trial % 4];
            let layer = Embedding::from_pretrained(&ctx, &table, v, d)
                .unwrap()
                .with_padding_idx(padding)
                .unwrap()
                .with_max_norm(max_norm, p)
                .unwrap();
            let out = layer.forward(&ctx, Indices::i64(&idx, &shape)).unwrap();
            assert_eq!(out.shape(), &[shape[0], shape[1], d]);
            let mut want_table = table.clone();
            if let Some(m) = max_norm {
                common::renorm(&mut want_table, d, &idx, m, p);
            }
            let what = format!("trial {trial} V={v} D={d} n={n} max_binding={max_binding:?}");
            assert_close(&out.read_f32(&ctx).block().unwrap(), &common::lookup(&want_table, d, &idx), 1e-6, 1e-5, &what);
            assert_close(&layer.weight().read_f32(&ctx).block().unwrap(), &want_table, 1e-6, 1e-5, &what);
        }
    }
}

/// A table over 10 000 bindings looked up into 4 000 output segments (1 KiB bindings):
/// host indices dispatch only the table segments each output segment uses, so this
/// is ~8 000 dispatches rather than 40 million (which exhausted host memory).
#[test]
fn lookup_over_thousands_of_table_segments_dispatches_only_the_used_ones() {
    let ctx = context(Some(1024));
    let (v, d, n) = (20_000usize, 128usize, 8_000usize);
    let mut rng = Rng(0x5eed_0010);
    let table = rng.vec_f32(v * d);
    let idx: Vec<i64> = (0..n).map(|_| rng.below(v as u64) as i64).collect();
    let layer = Embedding::from_pretrained(&ctx, &table, v, d).unwrap();
    assert!(layer.weight().segments().len() >= 10_000, "{} table segments", layer.weight().segments().len());
    let out = layer.forward(&ctx, Indices::i64(&idx, &[n])).unwrap();
    assert_close(&out.read_f32(&ctx).block().unwrap(), &common::lookup(&table, d, &idx), 0.0, 0.0, "1 KiB bindings");
}

#[test]
fn embedding_bag_random_shapes_match_reference() {
    for max_binding in [None, Some(4096)] {
        let ctx = context(max_binding);
        let mut rng = Rng(0x5eed_0002);
        for trial in 0..18 {
            let v = 1 + rng.below(200) as usize;
            let d = 1 + rng.below(40) as usize;
            let n = rng.below(1500) as usize;
            let bags = 1 + rng.below(60) as usize;
            let mode = ["sum", "mean", "max"][trial % 3];
            let table = rng.vec_f32(v * d);
            let idx: Vec<i64> = (0..n).map(|_| rng.below(v as u64) as i64).collect();
            let bounds = random_bounds(&mut rng, n, bags);
            let padding = (trial % 4 < 2).then(|| idx.first().copied().unwrap_or(0));
            let weights = (mode == "sum" && trial % 2 == 0).then(|| rng.vec_f32(n));
            let include_last = trial % 5 == 0;
            let offsets: Vec<i64> = if include_last {
                bounds.iter().map(|&b| b as i64).collect()
            } else {
                bounds[..bounds.len() - 1].iter().map(|&b| b as i64).collect()
            };
            let layer = EmbeddingBag::from_pretrained(&ctx, &table, v, d, BagMode::from_str(mode).unwrap())
                .unwrap()
                .with_padding_idx(padding)
                .unwrap()
                .with_include_last_offset(include_last);
            let w_shape = [n];
            let out = layer
                .forward(
                    &ctx,
                    Indices::i64(&idx, &[n]),
                    Some(Indices::i64(&offsets, &[offsets.len()])),
                    weights.as_deref().map(|w| (w, &w_shape[..])),
                )
                .unwrap();
            assert_eq!(out.shape(), &[bags, d]);
            let want = common::bag(&table, d, &idx, &bounds, mode, padding, weights.as_deref());
            let what = format!("trial {trial} {mode} V={v} D={d} n={n} bags={bags} max_binding={max_binding:?}");
            assert_close(&out.read_f32(&ctx).block().unwrap(), &want, 1e-5, 1e-4, &what);
        }
    }
}

/// Many small bags (0 to 4 indices, one long one among them) of narrow rows, which CPU
/// adapters reduce several to an invocation: every mode, weights, padding, and output
/// and index segments that end part-way through an invocation's bags (4 KiB bindings).
#[test]
fn small_bags_of_narrow_rows_match_reference() {
    for max_binding in [None, Some(4096)] {
        let ctx = context(max_binding);
        let mut rng = Rng(0x5eed_0003);
        for (trial, d) in [4usize, 8, 16, 32, 64, 4, 16, 12].into_iter().enumerate() {
            let v = 50 + rng.below(300) as usize;
            let bags = 1 + rng.below(700) as usize;
            let mut bounds = vec![0usize];
            for b in 0..bags {
                let size = if b == bags / 2 { 300 } else { rng.below(5) as usize };
                bounds.push(bounds[b] + size);
            }
            let n = bounds[bags];
            let mode = ["sum", "mean", "max"][trial % 3];
            let table = rng.vec_f32(v * d);
            let idx: Vec<i64> = (0..n).map(|_| rng.below(v as u64) as i64).collect();
            let padding = (trial % 2 == 0).then_some(3);
            let weights = (mode == "sum" && trial % 2 == 1).then(|| rng.vec_f32(n));
            let offsets: Vec<i64> = bounds[..bags].iter().map(|&b| b as i64).collect();
            let layer = EmbeddingBag::from_pretrained(&ctx, &table, v, d, BagMode::from_str(mode).unwrap())
                .unwrap()
                .with_padding_idx(padding)
                .unwrap();
            let w_shape = [n];
            let out = layer
                .forward(
                    &ctx,
                    Indices::i64(&idx, &[n]),
                    Some(Indices::i64(&offsets, &[bags])),
                    weights.as_deref().map(|w| (w, &w_shape[..])),
                )
                .unwrap();
            let want = common::bag(&table, d, &idx, &bounds, mode, padding, weights.as_deref());
            let what = format!("trial {trial} {mode} V={v} D={d} n={n} bags={bags} max_binding={max_binding:?}");
            assert_close(&out.read_f32(&ctx).block().unwrap(), &want, 1e-5, 1e-4, &what);
        }
    }
}

/// A table larger than lavapipe's real 128 MiB storage binding (not a simulated
/// limit): 300 000 x 128 f32 = 146 MiB, so rows past ~262 000 live in a second buffer.
#[test]
fn table_larger_than_the_binding_limit() {
    let ctx = context(None);
    let (v, d) = (300_000usize, 128usize);
    assert!((v * d * 4) as u64 > ctx.max_binding_size(), "the table must exceed the binding limit");
    let table: Vec<f32> = (0..v * d).map(|i| ((i % 9973) as f32) * 0.5 - (i / d) as f32 * 1e-3).collect();
    let mut rng = Rng(7);
    let mut idx: Vec<i64> = (0..4000).map(|_| rng.below(v as u64) as i64).collect();
    idx.extend([0, (v - 1) as i64, 262_143, 262_144, 262_145]);
    let emb = Embedding::from_pretrained(&ctx, &table, v, d).unwrap();
    assert!(emb.weight().segments().len() >= 2, "table should span several buffers");
    let out = emb.forward(&ctx, Indices::i64(&idx, &[idx.len()])).unwrap();
    assert_eq!(out.read_f32(&ctx).block().unwrap(), common::lookup(&table, d, &idx));

    let bag = EmbeddingBag::from_tensor(emb.weight().clone(), BagMode::Sum).unwrap();
    let bounds: Vec<usize> = (0..=idx.len() / 7).map(|b| (b * 7).min(idx.len())).chain([idx.len()]).collect();
    let offsets: Vec<i64> = bounds[..bounds.len() - 1].iter().map(|&b| b as i64).collect();
    let out = bag.forward(&ctx, Indices::i64(&idx, &[idx.len()]), Some(Indices::i64(&offsets, &[offsets.len()])), None).unwrap();
    let want = common::bag(&table, d, &idx, &bounds, "sum", None, None);
    assert_close(&out.read_f32(&ctx).block().unwrap(), &want, 1e-3, 1e-5, "bags over a split table");
}

/// 70 000 bags of 64 columns: 70 000 workgroups of 64 invocations, past the
/// 65 535-per-dimension limit, so the grid spreads over y.
#[test]
fn more_than_65535_bags() {
    let ctx = context(None);
    let (v, d, bags) = (1000usize, 64usize, 70_000usize);
    let mut rng = Rng(99);
    let table = rng.vec_f32(v * d);
    let idx: Vec<i64> = (0..bags * 3).map(|_| rng.below(v as u64) as i64).collect();
    let layer = EmbeddingBag::from_pretrained(&ctx, &table, v, d, BagMode::Mean).unwrap();
    let out = layer.forward(&ctx, Indices::i64(&idx, &[bags, 3]), None, None).unwrap();
    let bounds: Vec<usize> = (0..=bags).map(|b| b * 3).collect();
    let want = common::bag(&table, d, &idx, &bounds, "mean", None, None);
    assert_close(&out.read_f32(&ctx).block().unwrap(), &want, 1e-6, 1e-5, "70 000 bags");

    // And a lookup of 70 000 x 64 elements, likewise spread.
    let emb = Embedding::from_pretrained(&ctx, &table, v, d).unwrap();
    let idx: Vec<i32> = (0..bags).map(|i| (i * 7 % v) as i32).collect();
    let out = emb.forward(&ctx, Indices::i32(&idx, &[bags])).unwrap().read_f32(&ctx).block().unwrap();
    let idx64: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    assert_eq!(out, common::lookup(&table, d, &idx64));
}

/// One bag of 20 000 indices is as right as many short ones (f32 accumulation).
#[test]
fn one_long_bag() {
    let ctx = context(Some(4096));
    let (v, d) = (3000usize, 16usize);
    let mut rng = Rng(3);
    let table = rng.vec_f32(v * d);
    let idx: Vec<i64> = (0..20_000).map(|_| rng.below(v as u64) as i64).collect();
    for mode in ["sum", "mean", "max"] {
        let layer = EmbeddingBag::from_pretrained(&ctx, &table, v, d, BagMode::from_str(mode).unwrap()).unwrap();
        let out = layer.forward(&ctx, Indices::i64(&idx, &[idx.len()]), Some(Indices::i64(&[0], &[1])), None).unwrap();
        let want = common::bag(&table, d, &idx, &[0, idx.len()], mode, None, None);
        assert_close(&out.read_f32(&ctx).block().unwrap(), &want, 2e-3, 1e-4, mode);
    }
}

/// Refusals come before any GPU work and leave the table as it was.
#[test]
fn refusals_name_argument_and_value() {
    let ctx = context(None);
    let table: Vec<f32> = (0..40).map(|i| i as f32).collect();
    let emb = Embedding::from_pretrained(&ctx, &table, 10, 4).unwrap().with_max_norm(Some(1.0), 2.0).unwrap();
    let err = emb.forward(&ctx, Indices::i64(&[1, 10], &[2])).unwrap_err();
    assert!(matches!(err, wgpu_embed::Error::IndexOutOfRange { value: 10, position: 1, .. }), "{err}");
    assert_eq!(emb.weight().read_f32(&ctx).block().unwrap(), table, "nothing renormalised before the refusal");
    let err = Embedding::from_pretrained(&ctx, &table, 10, 4).unwrap().with_padding_idx(Some(10)).unwrap_err();
    assert!(err.to_string().contains("padding_idx") && err.to_string().contains("10"), "{err}");

    let bag = EmbeddingBag::from_pretrained(&ctx, &table, 10, 4, BagMode::Sum).unwrap();
    let idx = [1i64, 2, 3];
    let err = bag.forward(&ctx, Indices::i64(&idx, &[3]), Some(Indices::i64(&[1, 2], &[2])), None).unwrap_err();
    assert!(err.to_string().contains("offsets[0] has to be 0"), "{err}");
    let err = bag.forward(&ctx, Indices::i64(&idx, &[3]), Some(Indices::i64(&[0, 9], &[2])), None).unwrap_err();
    assert!(err.to_string().contains("offsets[-1]") && err.to_string().contains('9'), "{err}");
    let err = bag.forward(&ctx, Indices::i64(&idx, &[3]), None, None).unwrap_err();
    assert!(err.to_string().contains("offsets"), "{err}");
}
