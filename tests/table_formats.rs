//! F16 / BF16 tables (packed two per word, read without `shader-f16`) and F32 tables,
//! scalar and vectorised kernels, against an f32 CPU reference of the stored values.

mod common;

use half::{bf16, f16};
use wgpu_embed::Block;
use wgpu_embed::{BagMode, Context, Embedding, EmbeddingBag, GpuTensor, Indices, TableReads};

/// A table in each packed format, with the f32 values it actually holds.
fn tables(ctx: &Context, rows: usize, dim: usize, seed: u64) -> Vec<(&'static str, GpuTensor, Vec<f32>)> {
    let mut rng = common::Rng(seed);
    let values: Vec<f32> = (0..rows * dim).map(|_| rng.f32() * 3.0).collect();
    let h: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
    let b: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
    vec![
        ("f32", GpuTensor::from_f32(ctx, &values, &[rows, dim]).unwrap(), values.clone()),
        ("f16", GpuTensor::from_f16(ctx, &h, &[rows, dim]).unwrap(), h.iter().map(|x| x.to_f32()).collect()),
        ("bf16", GpuTensor::from_bf16(ctx, &b, &[rows, dim]).unwrap(), b.iter().map(|x| x.to_f32()).collect()),
    ]
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{what}: element {i}: got {g}, want {w}");
    }
}

fn bag_reference(table: &[f32], dim: usize, idx: &[i64], bounds: &[usize], mode: BagMode, w: Option<&[f32]>) -> Vec<f32> {
    let mut out = Vec::new();
    for b in bounds.windows(2) {
        let mut acc = vec![if mode == BagMode::Max { f32::NEG_INFINITY } else { 0.0 }; dim];
        for p in b[0]..b[1] {
            let row = &table[idx[p] as usize * dim..][..dim];
            for c in 0..dim {
                let v = row[c] * w.map_or(1.0, |w| w[p]);
                acc[c] = if mode == BagMode::Max { acc[c].max(v) } else { acc[c] + v };
            }
        }
        let n = b[1] - b[0];
        for a in acc.iter_mut() {
            *a = match mode {
                BagMode::Mean if n > 0 => *a / n as f32,
                BagMode::Max | BagMode::Mean if n == 0 => 0.0,
                _ => *a,
            };
        }
        out.extend(acc);
    }
    out
}

#[test]
fn packed_tables_look_up_and_reduce_like_their_f32_values() {
    // Odd and even dims (odd rows are not word-aligned), one binding and a 256-byte
    // binding limit (many table segments).
    for limit in [None, Some(256)] {
        let ctx = common::context(limit);
        // Vectorised kernels for D % 8 == 0 (several sweeps per invocation for D = 136).
        for (rows, dim) in [(37usize, 5usize), (50, 8), (20, 33), (30, 48), (12, 136)] {
            if limit.is_some() && dim * 4 > 256 {
                continue;
            }
            let mut rng = common::Rng(rows as u64 * 31 + dim as u64);
            let idx: Vec<i64> = (0..41).map(|_| rng.below(rows as u64) as i64).collect();
            let offsets: Vec<i64> = vec![0, 3, 3, 10, 25, 40];
            let bounds: Vec<usize> = offsets.iter().map(|&o| o as usize).chain([idx.len()]).collect();
            let weights: Vec<f32> = rng.vec_f32(idx.len());
            for (name, tensor, values) in tables(&ctx, rows, dim, dim as u64 + 7) {
                let what = format!("{name} {rows}x{dim} limit {limit:?}");
                let emb = Embedding::from_tensor(tensor.clone()).unwrap();
                let out = emb.forward(&ctx, Indices::i64(&idx, &[idx.len()])).unwrap();
                let want: Vec<f32> = idx.iter().flat_map(|&i| values[i as usize * dim..][..dim].to_vec()).collect();
                assert_close(&out.read_f32(&ctx).block().unwrap(), &want, &format!("lookup {what}"));

                for mode in [BagMode::Sum, BagMode::Mean, BagMode::Max] {
                    let bag = EmbeddingBag::from_tensor(tensor.clone(), mode).unwrap();
                    let out =
                        bag.forward(&ctx, Indices::i64(&idx, &[idx.len()]), Some(Indices::i64(&offsets, &[offsets.len()])), None).unwrap();
                    let want = bag_reference(&values, dim, &idx, &bounds, mode, None);
                    assert_close(&out.read_f32(&ctx).block().unwrap(), &want, &format!("bag {mode:?} {what}"));
                }
                let bag = EmbeddingBag::from_tensor(tensor.clone(), BagMode::Sum).unwrap();
                let out = bag
                    .forward(
                        &ctx,
                        Indices::i64(&idx, &[idx.len()]),
                        Some(Indices::i64(&offsets, &[offsets.len()])),
                        Some((&weights, &[idx.len()])),
                    )
                    .unwrap();
                let want = bag_reference(&values, dim, &idx, &bounds, BagMode::Sum, Some(&weights));
                assert_close(&out.read_f32(&ctx).block().unwrap(), &want, &format!("weighted bag {what}"));
            }
        }
    }
}

#[test]
fn packed_tables_refuse_max_norm_and_bad_indices() {
    let ctx = common::context(None);
    for (name, tensor, _) in tables(&ctx, 10, 4, 3).into_iter().skip(1) {
        let err = Embedding::from_tensor(tensor.clone()).unwrap().with_max_norm(Some(1.0), 2.0).unwrap_err();
        assert!(err.to_string().contains("max_norm"), "{name}: {err}");
        let err = Embedding::from_tensor(tensor).unwrap().forward(&ctx, Indices::i64(&[1, 10], &[2])).unwrap_err();
        assert!(err.to_string().contains("10"), "{name}: {err}");
    }
    let u8s = GpuTensor::from_bytes(&ctx, &[0u8; 16], &[4, 4], wgpu_embed::DType::U8, 4).unwrap();
    assert!(Embedding::from_tensor(u8s).unwrap_err().to_string().contains("weight"));
}

/// Both read paths (table buffers, and the texture copy that CPU adapters read by
/// default) in every format, over one and many table segments, with a bag of 20 000
/// indices: lavapipe ends an invocation's loops after 65 535 iterations in all, so the
/// kernels' per-word loops must not add iterations per index.
#[test]
fn long_bags_and_lookups_on_both_read_paths() {
    for reads in [TableReads::Buffer, TableReads::Texture] {
        for limit in [None, Some(64 * 1024)] {
            let ctx = common::context_reading(limit, reads);
            for (rows, dim) in [(3000usize, 64usize), (700, 8), (200, 1024)] {
                let mut rng = common::Rng(rows as u64 * 31 + dim as u64);
                let idx: Vec<i64> = (0..20_000).map(|_| rng.below(rows as u64) as i64).collect();
                let bounds = [0usize, 3, 3, 20_000 - 5, 20_000];
                let offsets: Vec<i64> = bounds[..bounds.len() - 1].iter().map(|&b| b as i64).collect();
                for (name, table, values) in tables(&ctx, rows, dim, 11) {
                    let what = format!("{reads:?} reads, limit {limit:?}, {name} {rows}x{dim}");
                    let emb = Embedding::from_tensor(table.clone()).unwrap();
                    let got = emb.forward(&ctx, Indices::i64(&idx[..500], &[500])).unwrap().read_f32(&ctx).block().unwrap();
                    let want = common::lookup(&values, dim, &idx[..500]);
                    let bad = got.iter().zip(&want).position(|(g, w)| g != w);
                    assert!(
                        bad.is_none(),
                        "{what}: lookup element {bad:?}: got {:?}, want {:?}",
                        bad.map(|i| got[i]),
                        bad.map(|i| want[i])
                    );
                    for mode in [BagMode::Sum, BagMode::Mean, BagMode::Max] {
                        let bag = EmbeddingBag::from_tensor(table.clone(), mode).unwrap();
                        let out = bag
                            .forward(&ctx, Indices::i64(&idx, &[idx.len()]), Some(Indices::i64(&offsets, &[offsets.len()])), None)
                            .unwrap();
                        let got = out.read_f32(&ctx).block().unwrap();
                        if mode == BagMode::Max {
                            let want = bag_reference(&values, dim, &idx, &bounds, mode, None);
                            let bad = got.iter().zip(&want).position(|(g, w)| g != w);
                            assert!(
                                bad.is_none(),
                                "{what}: bag max element {bad:?}: got {:?}, want {:?}",
                                bad.map(|i| got[i]),
                                bad.map(|i| want[i])
                            );
                            continue;
                        }
                        // Sums of 20 000 rows (each row ~100 times, so partial sums drift far) in
                        // another order than any f32 reference (split tables add per-segment
                        // partial sums): compared with f64 sums to 1e-3 of the sum of magnitudes (the f32
                        // bound is n * eps = 1.2e-3 of it). A loop cut at 65 535 iterations is off by far more.
                        for (b, w) in bounds.windows(2).enumerate() {
                            let n = (w[1] - w[0]).max(1) as f64;
                            for c in 0..dim {
                                let vals = idx[w[0]..w[1]].iter().map(|&r| values[r as usize * dim + c] as f64);
                                let (sum, abs) = vals.fold((0.0, 0.0), |(s, a), v| (s + v, a + v.abs()));
                                let (want, tol) =
                                    if mode == BagMode::Mean { (sum / n, 1e-3 * (1.0 + abs / n)) } else { (sum, 1e-3 * (1.0 + abs)) };
                                let g = got[b * dim + c] as f64;
                                assert!(
                                    (g - want).abs() <= tol + 1e-6,
                                    "{what}: bag {} {b}, column {c}: got {g}, want {want}",
                                    mode.name()
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn tensor_writer_fills_segments_from_pieces_of_any_size() {
    // 4 KiB bindings: a 1 000 x 7 table spans several segments; f16 rows of 7 end
    // mid-word. Pieces of 1..1 000 bytes cross both.
    let ctx = common::context(Some(4096));
    for (dtype, size) in [(wgpu_embed::DType::F32, 4usize), (wgpu_embed::DType::F16, 2)] {
        let (rows, dim) = (1_000usize, 7usize);
        let data: Vec<u8> = (0..rows * dim * size).map(|i| (i * 31 % 251) as u8).collect();
        let mut w = GpuTensor::writer(&ctx, &[rows, dim], dtype, dim).unwrap();
        let (mut at, mut step) = (0usize, 1usize);
        while at < data.len() {
            let n = step.min(data.len() - at);
            w.write(&ctx, &data[at..at + n]).unwrap();
            at += n;
            step = step * 3 % 1000 + 1;
        }
        assert_eq!(w.progress(), (data.len() as u64, data.len() as u64));
        let t = w.finish().unwrap();
        assert!(t.segments().len() > 1, "{dtype:?}: one segment");
        assert_eq!(t.read_bytes(&ctx).block().unwrap(), data, "{dtype:?}");
    }
    // Too many bytes, or too few, are refused.
    let mut w = GpuTensor::writer(&ctx, &[2, 2], wgpu_embed::DType::F32, 2).unwrap();
    assert!(w.write(&ctx, &[0u8; 17]).unwrap_err().to_string().contains("16 bytes"));
    w.write(&ctx, &[0u8; 8]).unwrap();
    assert!(w.finish().unwrap_err().to_string().contains("8 of the 16 bytes"));
}
