//! Quantized tables and bitsandbytes block-wise quantization against CPU references
//! written from bitsandbytes 0.50's CPU semantics (lookup-bin rounding for 8-bit
//! codes, bucketize for 4-bit, fp16 cast for row-wise, nested 4-bit statistics).

use std::str::FromStr;
mod common;

use common::{assert_close, Rng};
use wgpu_embed::Block;
use wgpu_embed::{
    dequantize_blockwise, quantize_blockwise, BagMode, CodeMap, DType, Error, FourBit, GpuTensor, Indices, QuantizedEmbedding,
    QuantizedEmbeddingBag, QuantizedTable, Scheme,
};

/// bitsandbytes' CPU lookup table: 65 536 bins of [-1, 1], each the nearest code to its centre.
fn lut(map: &[f32; 256]) -> Vec<u8> {
    let mids: Vec<f32> = map.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let mut code = 0;
    (0..65536u32)
        .map(|i| {
            let v = -1.0f32 + (2.0f32 * i as f32) / 65535.0;
            while code < 255 && mids[code] < v {
                code += 1;
            }
            code as u8
        })
        .collect()
}

/// `quantize_blockwise` as bitsandbytes' `quantize_cpu`: (codes, absmax).
fn quantize_ref(x: &[f32], blocksize: usize, map: &[f32; 256]) -> (Vec<u8>, Vec<f32>) {
    let table = lut(map);
    let mut codes = vec![0u8; x.len()];
    let mut absmax = Vec::new();
    for (b, block) in x.chunks(blocksize).enumerate() {
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        if am == 0.0 {
            continue;
        }
        let inv = 1.0 / am;
        for (i, &v) in block.iter().enumerate() {
            let s = (v * inv).clamp(-1.0, 1.0);
            codes[b * blocksize + i] = table[((s + 1.0) * 0.5 * 65535.0 + 0.5) as usize];
        }
    }
    (codes, absmax)
}

fn dequantize_ref(codes: &[u8], absmax: &[f32], blocksize: usize, map: &[f32; 256]) -> Vec<f32> {
    codes.iter().enumerate().map(|(i, &c)| map[c as usize] * absmax[i / blocksize]).collect()
}

/// `Embedding8bit`: the table cast to f16, int8 codes round(x * 127 / absmax), values code * (absmax / 127).
fn rowwise_ref(w: &[f32], dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(w.len());
    for row in w.chunks(dim) {
        let h: Vec<f32> = row.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        let am = h.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = 127.0 / am;
        let step = am / 127.0;
        for &x in &h {
            let c = if am == 0.0 { 0.0 } else { (x * scale).round_ties_even() };
            out.push(c * step);
        }
    }
    out
}

/// `Embedding4bit` (quantize_4bit, compress_statistics): the dequantized table.
fn four_bit_ref(w: &[f32], blocksize: usize, kind: FourBit) -> Vec<f32> {
    let values = kind.values();
    let mut sorted = values;
    sorted.sort_by(f32::total_cmp);
    let mids: Vec<f32> = sorted.windows(2).map(|p| (p[0] + p[1]) / 2.0).collect();
    let n = w.len();
    let mut absmax = Vec::new();
    let mut code_values = Vec::with_capacity(n);
    for block in w.chunks(blocksize) {
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let full = block.len() == blocksize;
        let amc = am.max(1e-38);
        for &x in block {
            let s = if full { x * (1.0 / amc) } else { x / amc }.clamp(-1.0, 1.0);
            code_values.push(sorted[mids.iter().filter(|&&m| m < s).count()]);
        }
        absmax.push(if full { am } else { amc });
    }
    // Nested statistics: absmax - mean quantized with the dynamic map in blocks of 256.
    let mean = (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64) as f32;
    let centred: Vec<f32> = absmax.iter().map(|&a| a - mean).collect();
    let map = CodeMap::Dynamic.values();
    let (q, a2) = quantize_ref(&centred, 256, &map);
    let restored: Vec<f32> = dequantize_ref(&q, &a2, 256, &map).iter().map(|&a| a + mean).collect();
    code_values.iter().enumerate().map(|(i, &c)| c * restored[i / blocksize]).collect()
}

fn table_ref(w: &[f32], dim: usize, scheme: Scheme, blocksize: usize) -> Vec<f32> {
    match scheme {
        Scheme::Int8Blockwise => {
            let map = CodeMap::Dynamic.values();
            let (c, a) = quantize_ref(w, blocksize, &map);
            dequantize_ref(&c, &a, blocksize, &map)
        }
        Scheme::Int8Rowwise => rowwise_ref(w, dim),
        Scheme::Nf4 => four_bit_ref(w, blocksize, FourBit::Nf4),
        Scheme::Fp4 => four_bit_ref(w, blocksize, FourBit::Fp4),
    }
}

fn normalish(rng: &mut Rng, n: usize) -> Vec<f32> {
    // Sums of uniforms: bell-shaped like trained weights, with a few larger values.
    (0..n).map(|_| (rng.f32() + rng.f32() + rng.f32()) * if rng.below(50) == 0 { 4.0 } else { 1.0 }).collect()
}

#[test]
fn four_bit_vocabulary_takes_a_seventh_of_f32_and_looks_up_the_reference() {
    let ctx = common::context(None);
    let (v, d) = (30_000, 256);
    let mut rng = Rng(0x5eed_4b17);
    let w = normalish(&mut rng, v * d);
    let layer = QuantizedTable::from_pretrained(&ctx, &w, v, d, Scheme::Nf4, Some(64)).map(QuantizedEmbedding::from_table).unwrap();
    let (bytes, f32_bytes) = (layer.gpu_bytes(), layer.table().f32_bytes());
    assert_eq!(f32_bytes, 30_000 * 256 * 4);
    assert!(bytes * 7 <= f32_bytes, "{bytes} bytes on the GPU for {f32_bytes} bytes of f32");
    let idx: Vec<i64> = (0..512).map(|i| if i < 2 { [0, v as i64 - 1][i] } else { rng.below(v as u64) as i64 }).collect();
    let out = layer.forward(&ctx, Indices::i64(&idx, &[16, 32])).unwrap();
    assert_eq!(out.shape(), &[16, 32, d]);
    let reference = table_ref(&w, d, Scheme::Nf4, 64);
    let want = common::lookup(&reference, d, &idx);
    assert_close(&out.read_f32(&ctx).block().unwrap(), &want, 0.0, 0.0, "nf4 30000x256");
}

#[test]
fn quantize_blockwise_matches_bitsandbytes_over_split_bindings() {
    let mut rng = Rng(0xb10c);
    // 4 KiB bindings: input segments of 1024 floats, so 4096-blocks straddle segments.
    for max_binding in [None, Some(4096)] {
        let ctx = common::context(max_binding);
        for (n, blocksize, map) in [(10_000, 4096, CodeMap::Dynamic), (3_001, 64, CodeMap::Linear), (5_000, 256, CodeMap::Dynamic)] {
            let mut x = normalish(&mut rng, n);
            x[..blocksize.min(n)].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
            x[n - 1] = -7.5; // the absmax of the partial last block
            let t = GpuTensor::from_bytes(&ctx, bytemuck::cast_slice(&x), &[n], DType::F32, 1).unwrap();
            let q = quantize_blockwise(&ctx, &t, blocksize, map).unwrap();
            let (codes, absmax) = quantize_ref(&x, blocksize, &map.values());
            assert_eq!(q.absmax.read_f32(&ctx).block().unwrap(), absmax, "absmax n={n} bs={blocksize}");
            let got = q.codes.read_bytes(&ctx).block().unwrap();
            let misses = got.iter().zip(&codes).filter(|(a, b)| a != b).count();
            assert_eq!(misses, 0, "codes n={n} bs={blocksize} {map:?} binding {max_binding:?}");
            assert!(got[..blocksize.min(n)].iter().all(|&c| c == 0), "zero block gives code 0");
            let back = dequantize_blockwise(&ctx, &q.codes, &q.absmax, blocksize, map).unwrap();
            assert_eq!(back.read_f32(&ctx).block().unwrap(), dequantize_ref(&codes, &absmax, blocksize, &map.values()));
        }
    }
}

#[test]
fn every_scheme_looks_up_and_bags_like_its_reference_across_bindings() {
    let mut rng = Rng(0x7ab1e);
    let (v, d) = (333, 96); // blocks of 64/256 straddle rows; 4-bit rows hold 48 bytes
    let w = normalish(&mut rng, v * d);
    let idx: Vec<i64> = (0..300).map(|_| rng.below(v as u64) as i64).collect();
    let mut offsets: Vec<i64> = vec![0, 0, 5, 5, 17, 80, 150, 151, 299];
    offsets.sort();
    let bounds: Vec<usize> = offsets.iter().map(|&o| o as usize).chain([idx.len()]).collect();
    let weights: Vec<f32> = (0..idx.len()).map(|_| rng.f32() * 2.0).collect();
    // 2 KiB bindings split codes, scales, indices and outputs into many segments.
    for max_binding in [None, Some(2048)] {
        let ctx = common::context(max_binding);
        for (scheme, bs) in [(Scheme::Int8Blockwise, 256), (Scheme::Int8Rowwise, 0), (Scheme::Nf4, 64), (Scheme::Fp4, 128)] {
            let reference = table_ref(&w, d, scheme, bs);
            let table = QuantizedTable::from_pretrained(&ctx, &w, v, d, scheme, (bs > 0).then_some(bs)).unwrap();
            let what = format!("{scheme:?} binding {max_binding:?}");
            let out = QuantizedEmbedding::from_table(table.clone()).forward(&ctx, Indices::i64(&idx, &[idx.len()])).unwrap();
            assert_close(&out.read_f32(&ctx).block().unwrap(), &common::lookup(&reference, d, &idx), 0.0, 0.0, &format!("lookup {what}"));
            for mode in [BagMode::Sum, BagMode::Mean, BagMode::Max] {
                let bag = QuantizedEmbeddingBag::from_table(table.clone(), mode).with_padding_idx(Some(idx[7])).unwrap();
                let out =
                    bag.forward(&ctx, Indices::i64(&idx, &[idx.len()]), Some(Indices::i64(&offsets, &[offsets.len()])), None).unwrap();
                let want = common::bag(&reference, d, &idx, &bounds, mode.name(), Some(idx[7]), None);
                assert_close(&out.read_f32(&ctx).block().unwrap(), &want, 1e-5, 1e-5, &format!("bag {} {what}", mode.name()));
            }
            let bag = QuantizedEmbeddingBag::from_table(table, BagMode::Sum).with_include_last_offset(true);
            let out = bag
                .forward(
                    &ctx,
                    Indices::i64(&idx, &[idx.len()]),
                    Some(Indices::i64(&offsets, &[offsets.len()])),
                    Some((&weights, &[idx.len()])),
                )
                .unwrap();
            let want = common::bag(&reference, d, &idx, &bounds[..bounds.len() - 1], "sum", None, Some(&weights));
            assert_close(&out.read_f32(&ctx).block().unwrap(), &want, 1e-5, 1e-5, &format!("weighted bag {what}"));
        }
    }
}

#[test]
fn table_from_a_gpu_tensor_split_by_rows_equals_the_host_built_one() {
    let ctx = common::context(Some(1024));
    let mut rng = Rng(99);
    let (v, d) = (50, 40); // rows of 160 bytes: 6 rows per binding, 64-blocks straddle segments
    let w = normalish(&mut rng, v * d);
    let t = GpuTensor::from_f32(&ctx, &w, &[v, d]).unwrap();
    assert!(t.segments().len() > 1);
    let idx: Vec<i64> = (0..v as i64).collect();
    for scheme in [Scheme::Int8Blockwise, Scheme::Nf4] {
        let table = QuantizedTable::from_tensor(&ctx, &t, scheme, Some(64)).unwrap();
        let out = QuantizedEmbedding::from_table(table).forward(&ctx, Indices::i64(&idx, &[v])).unwrap();
        assert_close(&out.read_f32(&ctx).block().unwrap(), &table_ref(&w, d, scheme, 64), 0.0, 0.0, &format!("{scheme:?}"));
    }
}

#[test]
fn bad_inputs_are_refused_by_name_and_value() {
    let ctx = common::context(None);
    let w = vec![0.5f32; 8 * 64];
    let e = QuantizedTable::from_pretrained(&ctx, &w, 8, 64, Scheme::Nf4, Some(100)).map(QuantizedEmbedding::from_table).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { name: "blocksize", .. }) && e.to_string().contains("blocksize 100 is not supported"),
        "{e}"
    );
    let e = Scheme::from_str("int3").unwrap_err();
    assert!(e.to_string().contains("int3"), "{e}");
    let e = CodeMap::from_str("cubic").unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { name: "code", .. }), "{e}");
    let layer = QuantizedTable::from_pretrained(&ctx, &w, 8, 64, Scheme::Int8Rowwise, None).map(QuantizedEmbedding::from_table).unwrap();
    let e = layer.forward(&ctx, Indices::i64(&[1, 8], &[2])).unwrap_err();
    assert!(matches!(e, Error::IndexOutOfRange { value: 8, position: 1, .. }), "{e}");
    let codes = GpuTensor::from_bytes(&ctx, &[0u8; 100], &[100], DType::U8, 1).unwrap();
    let absmax = GpuTensor::from_f32(&ctx, &[1.0; 3], &[3]).unwrap();
    let e = dequantize_blockwise(&ctx, &codes, &absmax, 64, CodeMap::Dynamic).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { name: "absmax", .. }) && e.to_string().contains("expected 2 values"), "{e}");
    let bag = QuantizedEmbeddingBag::from_table(layer.table().clone(), BagMode::Max);
    let e = bag.forward(&ctx, Indices::i64(&[1, 2], &[2]), Some(Indices::i64(&[1], &[1])), None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { name: "offsets", .. }), "{e}");
}

#[test]
fn empty_and_tiny_shapes() {
    let ctx = common::context(None);
    let empty = GpuTensor::from_bytes(&ctx, &[], &[0], DType::F32, 1).unwrap();
    let q = quantize_blockwise(&ctx, &empty, 64, CodeMap::Dynamic).unwrap();
    assert_eq!((q.codes.numel(), q.absmax.numel()), (0, 0));
    assert!(dequantize_blockwise(&ctx, &q.codes, &q.absmax, 64, CodeMap::Dynamic).unwrap().read_f32(&ctx).block().unwrap().is_empty());
    for scheme in [Scheme::Int8Blockwise, Scheme::Int8Rowwise, Scheme::Nf4, Scheme::Fp4] {
        let none = QuantizedTable::from_pretrained(&ctx, &[], 0, 5, scheme, None).map(QuantizedEmbedding::from_table).unwrap();
        assert_eq!(none.forward(&ctx, Indices::i64(&[], &[0])).unwrap().shape(), &[0, 5]);
        // 21 elements: one partial block, an odd number of nibbles.
        let w: Vec<f32> = (0..21).map(|i| (i as f32 - 10.0) / 3.0).collect();
        let table = QuantizedTable::from_pretrained(&ctx, &w, 3, 7, scheme, None).unwrap();
        let idx = [2i64, 0, 1, 2];
        let out = QuantizedEmbedding::from_table(table.clone()).forward(&ctx, Indices::i64(&idx, &[4])).unwrap();
        let reference = table_ref(&w, 7, scheme, scheme.default_blocksize());
        assert_close(&out.read_f32(&ctx).block().unwrap(), &common::lookup(&reference, 7, &idx), 0.0, 0.0, &format!("{scheme:?} 3x7"));
        let bags = QuantizedEmbeddingBag::from_table(table, BagMode::Max);
        let out = bags.forward(&ctx, Indices::i64(&[], &[0]), Some(Indices::i64(&[0, 0], &[2])), None).unwrap();
        assert_eq!(out.read_f32(&ctx).block().unwrap(), vec![0.0; 14], "empty bags give zeros");
    }
}

#[test]
fn gpu_resident_indices_are_checked_then_looked_up() {
    let ctx = common::context(Some(1024));
    let mut rng = Rng(5);
    let (v, d) = (40, 24);
    let w = normalish(&mut rng, v * d);
    let layer = QuantizedTable::from_pretrained(&ctx, &w, v, d, Scheme::Fp4, Some(64)).map(QuantizedEmbedding::from_table).unwrap();
    let idx: Vec<i32> = (0..100).map(|_| rng.below(v as u64) as i32).collect();
    let gpu = GpuTensor::from_i32(&ctx, &idx, &[10, 10]).unwrap();
    let out = layer.forward_gpu(&ctx, &gpu).block().unwrap();
    assert_eq!(out.shape(), &[10, 10, d]);
    let idx64: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    let want = common::lookup(&table_ref(&w, d, Scheme::Fp4, 64), d, &idx64);
    assert_close(&out.read_f32(&ctx).block().unwrap(), &want, 0.0, 0.0, "fp4 gpu indices");
    let bad = GpuTensor::from_i32(&ctx, &[3, -1, 2], &[3]).unwrap();
    let e = layer.forward_gpu(&ctx, &bad).block().unwrap_err();
    assert!(matches!(e, Error::IndexOutOfRange { value: -1, position: 1, .. }), "{e}");
}
