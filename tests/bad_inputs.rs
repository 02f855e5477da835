//! Bad input to every public entry point gives the typed error, naming the argument
//! and the value, before any GPU work: no panic, no clamp, no partial write. Each
//! `// kind N` marks one kind of bad input.

use std::str::FromStr;
mod common;

use std::collections::HashMap;
use std::fmt::Debug;
use wgpu_embed::Block;
use wgpu_embed::EmbeddingOptions;

use wgpu_embed::conformance::cases::CaseFile;
use wgpu_embed::conformance::runner::{run_case, run_cases};
use wgpu_embed::{
    dequantize_blockwise, quantize_blockwise, AxialPositionEmbedding, BagMode, Checkpoint, CodeMap, Context, ContextOptions, DType,
    Embedding, EmbeddingBag, EmbeddingSumLayerNorm, Error, GpuTensor, HostTable, Indices, LayerNorm, QuantizedEmbedding,
    QuantizedEmbeddingBag, QuantizedTable, Scheme, StableEmbedding, TableReads,
};

#[track_caller]
fn expect_arg<T: Debug>(r: wgpu_embed::Result<T>, name: &str, values: &[&str]) {
    match r {
        Err(e @ Error::InvalidArgument { .. }) => {
            let Error::InvalidArgument { name: got, .. } = &e else { unreachable!() };
            assert_eq!(*got, name, "{e}");
            let msg = e.to_string();
            assert!(msg.contains(name), "message does not name `{name}`: {msg}");
            for v in values {
                assert!(msg.contains(v), "message does not give {v:?}: {msg}");
            }
        }
        other => panic!("expected InvalidArgument for `{name}`, got {other:?}"),
    }
}

#[track_caller]
fn expect_oob<T: Debug>(r: wgpu_embed::Result<T>, name: &str, position: u64, value: i64) {
    match r {
        Err(e @ Error::IndexOutOfRange { .. }) => {
            let Error::IndexOutOfRange { name: n, position: p, value: v, .. } = &e else { unreachable!() };
            assert_eq!((*n, *p, *v), (name, position, value), "{e}");
            let msg = e.to_string();
            assert!(msg.contains(name) && msg.contains(&value.to_string()) && msg.contains(&format!("position {position}")), "{msg}");
        }
        other => panic!("expected IndexOutOfRange for `{name}`, got {other:?}"),
    }
}

#[track_caller]
fn expect_variant<T: Debug>(r: wgpu_embed::Result<T>, variant: &str, values: &[&str]) {
    let e = match r {
        Err(e) => e,
        Ok(v) => panic!("expected {variant}, got Ok({v:?})"),
    };
    let got = format!("{e:?}");
    assert!(got.starts_with(variant), "expected {variant}, got {got}");
    let msg = e.to_string();
    for v in values {
        assert!(msg.contains(v), "message does not give {v:?}: {msg}");
    }
}

fn table(v: usize, d: usize) -> Vec<f32> {
    (0..v * d).map(|i| 1.0 + (i as f32) * 0.5).collect()
}

fn ctx() -> Context {
    common::context(None)
}

// ---------------------------------------------------------------- Embedding

#[test]
fn embedding_bad_inputs() {
    let ctx = ctx();
    let w = table(10, 4);
    let emb = Embedding::from_pretrained(&ctx, &w, 10, 4).unwrap();
    // kind 1: index past the end (i64)
    expect_oob(emb.forward(&ctx, Indices::i64(&[1, 10], &[2])), "indices", 1, 10);
    // kind 2: negative index (i32)
    expect_oob(emb.forward(&ctx, Indices::i32(&[0, 3, -1], &[3])), "indices", 2, -1);
    // kind 3: indices whose shape does not match their values
    expect_arg(emb.forward(&ctx, Indices::i64(&[1, 2, 3], &[2, 2])), "indices", &["[2, 2]", "4", "3"]);
    // kind 4: index shape whose element count overflows
    expect_arg(emb.forward(&ctx, Indices::i64(&[1], &[usize::MAX, 2])), "indices", &[&usize::MAX.to_string()]);
    // kind 5: table with the wrong number of values
    expect_arg(Embedding::from_pretrained(&ctx, &w[..39], 10, 4), "weight", &["40", "39"]);
    // kind 6: zero-width table
    expect_arg(Embedding::from_pretrained(&ctx, &[], 10, 0), "embedding_dim", &["0"]);
    // kind 7: padding_idx outside [-V, V)
    expect_arg(emb.clone().with_padding_idx(Some(10)), "padding_idx", &["10"]);
    expect_arg(emb.clone().with_padding_idx(Some(-11)), "padding_idx", &["-11"]);
    // kind 8: max_norm negative or not finite
    expect_arg(emb.clone().with_max_norm(Some(-1.0), 2.0), "max_norm", &["-1"]);
    expect_arg(emb.clone().with_max_norm(Some(f32::NAN), 2.0), "max_norm", &["NaN"]);
    // kind 9: norm_type negative or NaN
    expect_arg(emb.clone().with_max_norm(Some(1.0), -2.0), "norm_type", &["-2"]);
    // kind 10: a GPU table that is not a 2-D float table
    let flat = GpuTensor::from_f32(&ctx, &w, &[40]).unwrap();
    expect_arg(Embedding::from_tensor(flat), "weight", &["[40]"]);
    let ints = GpuTensor::from_i32(&ctx, &[1, 2, 3, 4], &[2, 2]).unwrap();
    expect_arg(Embedding::from_tensor(ints), "weight", &["I32"]);
    // kind 11: GPU-resident indices of the wrong dtype
    let f = GpuTensor::from_f32(&ctx, &[1.0, 2.0], &[2]).unwrap();
    expect_arg(emb.forward_gpu(&ctx, &f).block(), "indices", &["F32"]);
}

#[test]
fn embedding_gpu_resident_out_of_range_indices_are_reported_not_read() {
    // kind 12: GPU-resident index out of range (past the end, negative, far off)
    let ctx = common::context(Some(1024)); // the table spans several bindings
    let (v, d) = (100, 8);
    let w = table(v, d);
    let emb = Embedding::from_pretrained(&ctx, &w, v, d).unwrap();
    for (values, position, value) in [
        (vec![3, 99, 100, 5], 2u64, 100i64),
        (vec![-7, 0], 0, -7),
        (vec![0, 1, 2, i32::MAX], 3, i32::MAX as i64),
        (vec![0, i32::MIN, 200], 1, i32::MIN as i64),
    ] {
        let idx = GpuTensor::from_i32(&ctx, &values, &[values.len()]).unwrap();
        expect_oob(emb.forward_gpu(&ctx, &idx).block(), "indices", position, value);
    }
    // Many indices over several segments: the first bad position is the one reported.
    let mut many: Vec<i32> = (0..5000).map(|i| i % v as i32).collect();
    many[4321] = 1000;
    many[4999] = -1;
    let idx = GpuTensor::from_i32(&ctx, &many, &[50, 100]).unwrap();
    expect_oob(emb.forward_gpu(&ctx, &idx).block(), "indices", 4321, 1000);
    // The same layer and context still answer good calls correctly.
    many[4321] = 7;
    many[4999] = 0;
    let idx = GpuTensor::from_i32(&ctx, &many, &[50, 100]).unwrap();
    let out = emb.forward_gpu(&ctx, &idx).block().unwrap();
    assert_eq!(out.shape(), &[50, 100, d]);
    let want = common::lookup(&w, d, &many.iter().map(|&i| i as i64).collect::<Vec<_>>());
    assert_eq!(out.read_f32(&ctx).block().unwrap(), want);
}

#[test]
fn max_norm_call_with_one_bad_index_leaves_the_table_unchanged() {
    // kind 13: bad index in a call that would renormalise rows in place
    let ctx = ctx();
    let (v, d) = (20, 6);
    let w: Vec<f32> = (0..v * d).map(|i| 3.0 + i as f32).collect(); // every row's norm > 1
    let emb = Embedding::from_pretrained(&ctx, &w, v, d).unwrap().with_max_norm(Some(1.0), 2.0).unwrap();
    expect_oob(emb.forward(&ctx, Indices::i64(&[0, 1, 2, 20], &[4])), "indices", 3, 20);
    assert_eq!(emb.weight().read_f32(&ctx).block().unwrap(), w, "host indices: table changed");
    let idx = GpuTensor::from_i32(&ctx, &[4, 5, -2, 6], &[4]).unwrap();
    expect_oob(emb.forward_gpu(&ctx, &idx).block(), "indices", 2, -2);
    assert_eq!(emb.weight().read_f32(&ctx).block().unwrap(), w, "GPU indices: table changed");

    let bag = EmbeddingBag::from_pretrained(&ctx, &w, v, d, BagMode::Sum).unwrap().with_max_norm(Some(1.0), 2.0).unwrap();
    expect_oob(bag.forward(&ctx, Indices::i64(&[0, 1, 99], &[3]), Some(Indices::i64(&[0], &[1])), None), "input", 2, 99);
    let idx = GpuTensor::from_i32(&ctx, &[0, 1, 99], &[3]).unwrap();
    expect_oob(bag.forward_gpu(&ctx, &idx, Some(Indices::i64(&[0], &[1])), None).block(), "input", 2, 99);
    assert_eq!(bag.weight().read_f32(&ctx).block().unwrap(), w, "bag: table changed");

    // And a good call does renormalise, so the checks above could fail.
    emb.forward(&ctx, Indices::i64(&[0], &[1])).unwrap();
    assert_ne!(emb.weight().read_f32(&ctx).block().unwrap(), w);
}

// ---------------------------------------------------------------- EmbeddingBag

#[test]
fn embedding_bag_bad_inputs() {
    let ctx = ctx();
    let w = table(10, 3);
    let bag = EmbeddingBag::from_pretrained(&ctx, &w, 10, 3, BagMode::Sum).unwrap();
    let idx = [1i64, 2, 3, 4];
    let input = Indices::i64(&idx, &[4]);
    // kind 14: 1-D input without offsets
    expect_arg(bag.forward(&ctx, input, None, None), "offsets", &["None"]);
    // kind 15: 2-D input with offsets
    expect_arg(bag.forward(&ctx, Indices::i64(&idx, &[2, 2]), Some(Indices::i64(&[0], &[1])), None), "offsets", &["2D", "[1]"]);
    // kind 16: 3-D input
    expect_arg(bag.forward(&ctx, Indices::i64(&idx, &[1, 2, 2]), None, None), "input", &["dimension 3"]);
    // kind 17: offsets[0] != 0
    expect_arg(bag.forward(&ctx, input, Some(Indices::i64(&[1, 2], &[2])), None), "offsets", &["offsets[0]", "got 1"]);
    // kind 18: decreasing offsets
    expect_arg(bag.forward(&ctx, input, Some(Indices::i64(&[0, 3, 2], &[3])), None), "offsets", &["offsets[2] = 2", "offsets[1] = 3"]);
    // kind 19: last offset past the input
    expect_arg(bag.forward(&ctx, input, Some(Indices::i64(&[0, 5], &[2])), None), "offsets", &["length 4", "of 5"]);
    // kind 20: 2-D offsets
    expect_arg(bag.forward(&ctx, input, Some(Indices::i64(&[0, 2], &[1, 2])), None), "offsets", &["[1, 2]"]);
    // kind 21: per_sample_weights with mode other than sum
    let mean = EmbeddingBag::from_pretrained(&ctx, &w, 10, 3, BagMode::Mean).unwrap();
    expect_arg(mean.forward(&ctx, input, Some(Indices::i64(&[0], &[1])), Some((&[1.0; 4], &[4]))), "per_sample_weights", &["mode='mean'"]);
    // kind 22: per_sample_weights of another shape than the input
    expect_arg(bag.forward(&ctx, input, Some(Indices::i64(&[0], &[1])), Some((&[1.0; 3], &[3]))), "per_sample_weights", &["[3]", "[4]"]);
    // kind 23: include_last_offset with no offsets at all
    let last = bag.clone().with_include_last_offset(true);
    expect_arg(last.forward(&ctx, input, Some(Indices::i64(&[], &[0])), None), "offsets", &["at least 1"]);
    // kind 24: bag index out of range
    expect_oob(bag.forward(&ctx, Indices::i32(&[1, 2, 10], &[3]), Some(Indices::i64(&[0], &[1])), None), "input", 2, 10);
    expect_oob(bag.forward(&ctx, Indices::i64(&[-4, 2], &[1, 2]), None, None), "input", 0, -4);
    // kind 25: unknown mode name
    expect_arg(BagMode::from_str("median"), "mode", &["\"median\""]);
    // kind 26: GPU-resident bag input out of range (reported, not read)
    let gpu = GpuTensor::from_i32(&ctx, &[1, 2, 3, 12], &[4]).unwrap();
    expect_oob(bag.forward_gpu(&ctx, &gpu, Some(Indices::i64(&[0, 2], &[2])), None).block(), "input", 3, 12);
    let gpu2 = GpuTensor::from_i32(&ctx, &[1, -2, 3, 4], &[2, 2]).unwrap();
    expect_oob(bag.forward_gpu(&ctx, &gpu2, None, None).block(), "input", 1, -2);
    // kind 27: GPU-resident per_sample_weights of the wrong dtype
    let gpu = GpuTensor::from_i32(&ctx, &[1, 2, 3, 4], &[4]).unwrap();
    let iw = GpuTensor::from_i32(&ctx, &[1, 1, 1, 1], &[4]).unwrap();
    expect_arg(bag.forward_gpu(&ctx, &gpu, Some(Indices::i64(&[0], &[1])), Some(&iw)).block(), "per_sample_weights", &["I32"]);
    // The GPU path checks offsets like the host path.
    expect_arg(bag.forward_gpu(&ctx, &gpu, Some(Indices::i64(&[0, 9], &[2])), None).block(), "offsets", &["of 9"]);
}

#[test]
fn embedding_bag_forward_gpu_matches_the_host_path() {
    let ctx = common::context(Some(2048));
    let (v, d) = (300, 5);
    let w: Vec<f32> = (0..v * d).map(|i| ((i * 7) % 23) as f32 - 11.0).collect();
    let idx: Vec<i64> = (0..700).map(|i| (i * 13 % v) as i64).collect();
    let offsets: Vec<i64> = (0..700).step_by(9).map(|o| o as i64).collect();
    let psw: Vec<f32> = (0..700).map(|i| (i % 5) as f32 * 0.5).collect();
    let idx32: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
    let gpu_idx = GpuTensor::from_i32(&ctx, &idx32, &[700]).unwrap();
    let gpu_w = GpuTensor::from_bytes(&ctx, bytemuck::cast_slice(&psw), &[700], DType::F32, 1).unwrap();
    let mut bounds: Vec<usize> = offsets.iter().map(|&o| o as usize).collect();
    bounds.push(700);
    for mode in ["sum", "mean", "max"] {
        let bag = EmbeddingBag::from_pretrained(&ctx, &w, v, d, BagMode::from_str(mode).unwrap()).unwrap();
        let weights = (mode == "sum").then_some(&gpu_w);
        let got = bag.forward_gpu(&ctx, &gpu_idx, Some(Indices::i64(&offsets, &[offsets.len()])), weights).block().unwrap();
        let want = common::bag(&w, d, &idx, &bounds, mode, None, (mode == "sum").then_some(&psw[..]));
        common::assert_close(&got.read_f32(&ctx).block().unwrap(), &want, 1e-4, 1e-5, mode);
    }
    // 2-D GPU input, no offsets.
    let bag = EmbeddingBag::from_pretrained(&ctx, &w, v, d, BagMode::Mean).unwrap();
    let two_d = gpu_idx.reshape(&[70, 10]).unwrap();
    let got = bag.forward_gpu(&ctx, &two_d, None, None).block().unwrap();
    let bounds: Vec<usize> = (0..=70).map(|b| b * 10).collect();
    common::assert_close(&got.read_f32(&ctx).block().unwrap(), &common::bag(&w, d, &idx, &bounds, "mean", None, None), 1e-4, 1e-5, "2-D");
}

// ---------------------------------------------------------------- tensors and context

#[test]
fn tensor_and_context_bad_inputs() {
    let ctx = ctx();
    // kind 28: byte count that does not match the shape
    expect_variant(GpuTensor::from_bytes(&ctx, &[0u8; 10], &[3], DType::F32, 1), "ShapeMismatch", &["10 bytes", "[3]", "12 expected"]);
    // kind 29: rows that do not tile the shape
    expect_arg(GpuTensor::from_bytes(&ctx, &[0u8; 40], &[10], DType::F32, 3), "row_len", &["3", "[10]"]);
    // kind 30: shape whose size overflows (element count, then bytes)
    expect_arg(GpuTensor::zeros(&ctx, &[usize::MAX, 2], DType::F32, 2), "shape", &[&usize::MAX.to_string()]);
    expect_arg(GpuTensor::zeros(&ctx, &[usize::MAX / 2], DType::F32, 1), "shape", &["bytes"]);
    // kind 31: reshape to another element count
    let t = GpuTensor::from_f32(&ctx, &[1.0; 6], &[2, 3]).unwrap();
    expect_variant(t.reshape(&[4, 2]), "ShapeMismatch", &["[2, 3]", "[4, 2]"]);
    expect_variant(t.reshape(&[usize::MAX, 3]), "ShapeMismatch", &["[2, 3]"]);
    // kind 32: reading an I32 tensor as f32
    let i = GpuTensor::from_i32(&ctx, &[1, 2], &[2]).unwrap();
    expect_arg(i.read_f32(&ctx).block(), "tensor", &["I32"]);
    // kind 33: a row wider than one storage binding
    let small = common::context(Some(1024));
    expect_arg(Embedding::from_pretrained(&small, &vec![0.0; 2 * 300], 2, 300), "shape", &["300", "1200 bytes", "1024"]);
    // kind 34: no adapter of that name
    match Context::with_options(ContextOptions::default().adapter_name("no-such-gpu-xyz")).block() {
        Err(e @ Error::NoAdapter(_)) => assert!(e.to_string().contains("no-such-gpu-xyz"), "{e}"),
        other => panic!("expected NoAdapter, got {other:?}.block()"),
    }
    // kind 35: a tensor over the context's memory budget
    let budget = Context::with_options(ContextOptions::default().max_tensor_bytes(1000)).block().unwrap();
    expect_variant(GpuTensor::from_f32(&budget, &[0.0; 251], &[251]), "OutOfMemory", &["1004 bytes", "1000"]);
    // kind 59: an unknown table read path
    expect_arg(TableReads::from_str("sideways"), "table_reads", &["sideways"]);
}

// ---------------------------------------------------------------- other layers

#[test]
fn other_layers_bad_inputs() {
    let ctx = ctx();
    // kind 36: LayerNorm of zero width, bad eps, affine of the wrong length, input of the wrong width
    expect_arg(LayerNorm::new(&ctx, 0, 1e-5, true), "normalized_shape", &["0"]);
    expect_arg(LayerNorm::new(&ctx, 4, -1.0, true), "eps", &["-1"]);
    expect_arg(LayerNorm::new(&ctx, 4, f32::NAN, true), "eps", &["NaN"]);
    expect_arg(LayerNorm::from_params(&ctx, 4, 1e-5, Some(&[1.0; 3]), None), "gamma", &["4", "3"]);
    expect_arg(LayerNorm::from_params(&ctx, 4, 1e-5, None, Some(&[0.0; 5])), "beta", &["4", "5"]);
    let ln = LayerNorm::new(&ctx, 4, 1e-5, true).unwrap();
    let r = ln.forward(&ctx, &[0.0; 6], &[2, 3]);
    assert!(matches!(r, Err(Error::InvalidArgument { .. }) | Err(Error::ShapeMismatch(_))), "{r:?}");
    assert!(r.unwrap_err().to_string().contains("3"));
    expect_arg(ln.forward(&ctx, &[0.0; 7], &[2, 4]), "input", &["[2, 4]", "8", "7"]);

    // kind 37: StableEmbedding index out of range, bad padding_idx
    let w = table(6, 4);
    let se = StableEmbedding::from_pretrained(&ctx, HostTable::f32(&w, 6, 4).unwrap(), None, None, None, 1e-5).unwrap();
    expect_oob(se.forward(&ctx, Indices::i64(&[0, 6], &[2])), "indices", 1, 6);
    expect_arg(StableEmbedding::new(&ctx, 6, 4, EmbeddingOptions::default().padding_idx(6)), "padding_idx", &["6"]);
    expect_arg(HostTable::f32(&w[..23], 6, 4), "weight", &["6 x 4", "96 bytes", "92 bytes"]);

    // kind 38: BERT block: wrong number of index tensors, mismatched widths, shapes that do not broadcast, index out of range
    let t0 = table(8, 4);
    let t1 = table(3, 4);
    let t_wide = table(3, 5);
    let block =
        EmbeddingSumLayerNorm::new(&ctx, &[HostTable::f32(&t0, 8, 4).unwrap(), HostTable::f32(&t1, 3, 4).unwrap()], None, None, 1e-12)
            .unwrap();
    expect_arg(block.forward(&ctx, &[Indices::i64(&[1], &[1])]), "indices", &["2", "1"]);
    expect_variant(
        EmbeddingSumLayerNorm::new(&ctx, &[HostTable::f32(&t0, 8, 4).unwrap(), HostTable::f32(&t_wide, 3, 5).unwrap()], None, None, 1e-12),
        "ShapeMismatch",
        &["5", "4"],
    );
    expect_variant(block.forward(&ctx, &[Indices::i64(&[1, 2, 3], &[3]), Indices::i64(&[0, 1], &[2])]), "ShapeMismatch", &["3", "2"]);
    expect_oob(block.forward(&ctx, &[Indices::i64(&[1, 2], &[2]), Indices::i64(&[0, 3], &[2])]), "indices1", 1, 3);
    expect_arg(EmbeddingSumLayerNorm::new(&ctx, &[], None, None, 1e-12), "tables", &["none"]);
    // Shapes that broadcast to more positions than a call can address: refused before allocating.
    let long: Vec<i64> = vec![0; 1 << 17];
    expect_arg(
        block.forward(&ctx, &[Indices::i64(&long, &[1 << 17, 1]), Indices::i64(&long, &[1, 1 << 17])]),
        "indices",
        &["[131072, 131072]"],
    );

    // kind 39: axial position embeddings: zero factor, wrong weight size, position past n1*n2, negative position
    let (w0, w1) = (table(4, 2), table(3, 2));
    expect_arg(AxialPositionEmbedding::from_pretrained(&ctx, &w0, &w1, [4, 0], [2, 2]), "axial_pos_shape", &["[4, 0]"]);
    expect_arg(AxialPositionEmbedding::from_pretrained(&ctx, &w0[..7], &w1, [4, 3], [2, 2]), "weight0", &["8", "7"]);
    let ax = AxialPositionEmbedding::from_pretrained(&ctx, &w0, &w1, [4, 3], [2, 2]).unwrap();
    expect_arg(ax.forward(&ctx, Indices::i64(&[0, 12], &[2])), "position_ids", &["12", "position 1"]);
    expect_oob(ax.forward(&ctx, Indices::i64(&[-1], &[1])), "position_ids", 0, -1);

    // kind 40: checkpoint that is not a safetensors file, or lacks the tensor
    expect_variant(Checkpoint::from_bytes(vec![1, 2, 3]), "Format", &["safetensors"]);
    let bytes = safetensors_file(&[("a.weight", &[1.0, 2.0, 3.0, 4.0], &[2, 2])], None);
    let ck = Checkpoint::from_bytes(bytes).unwrap();
    expect_arg(ck.table("b.weight"), "name", &["b.weight"]);
}

#[test]
fn quantized_layers_bad_inputs() {
    let ctx = ctx();
    let w = table(16, 8);
    // kind 53: unknown scheme or code map
    expect_arg(Scheme::from_str("int3"), "scheme", &["\"int3\""]);
    expect_arg(CodeMap::from_str("cubic"), "code", &["\"cubic\""]);
    // kind 54: a block size bitsandbytes does not have
    expect_arg(QuantizedTable::from_pretrained(&ctx, &w, 16, 8, Scheme::Int8Blockwise, Some(100)), "blocksize", &["100"]);
    expect_arg(
        QuantizedTable::from_pretrained(&ctx, &w, 16, 8, Scheme::Nf4, Some(32)).map(QuantizedEmbedding::from_table),
        "blocksize",
        &["32"],
    );
    // kind 55: a table with the wrong number of values
    expect_arg(
        QuantizedTable::from_pretrained(&ctx, &w[..127], 16, 8, Scheme::Fp4, None).map(QuantizedEmbedding::from_table),
        "weight",
        &["128", "127"],
    );
    // kind 56: quantized lookup out of range
    let q = QuantizedTable::from_pretrained(&ctx, &w, 16, 8, Scheme::Int8Rowwise, None).map(QuantizedEmbedding::from_table).unwrap();
    expect_oob(q.forward(&ctx, Indices::i64(&[0, 16], &[2])), "indices", 1, 16);
    let gpu = GpuTensor::from_i32(&ctx, &[3, 2, -9], &[3]).unwrap();
    expect_oob(q.forward_gpu(&ctx, &gpu).block(), "indices", 2, -9);
    // kind 57: quantized bags: bad offsets, index out of range, weights with max, padding_idx
    let qb = QuantizedTable::from_pretrained(&ctx, &w, 16, 8, Scheme::Nf4, None)
        .map(|t| QuantizedEmbeddingBag::from_table(t, BagMode::Max))
        .unwrap();
    let input = Indices::i64(&[1, 2], &[2]);
    expect_arg(qb.forward(&ctx, input, Some(Indices::i64(&[1], &[1])), None), "offsets", &["got 1"]);
    expect_oob(qb.forward(&ctx, Indices::i64(&[1, -2], &[2]), Some(Indices::i64(&[0], &[1])), None), "input", 1, -2);
    expect_arg(qb.forward(&ctx, input, Some(Indices::i64(&[0], &[1])), Some((&[1.0, 1.0], &[2]))), "per_sample_weights", &["mode='max'"]);
    expect_arg(qb.clone().with_padding_idx(Some(16)), "padding_idx", &["16"]);
    // kind 58: block-wise (de)quantization of the wrong dtypes and sizes
    let ints = GpuTensor::from_i32(&ctx, &[1, 2, 3, 4], &[4]).unwrap();
    expect_arg(quantize_blockwise(&ctx, &ints, 64, CodeMap::Dynamic), "x", &["I32"]);
    let x = GpuTensor::from_bytes(&ctx, bytemuck::cast_slice(&w), &[128], DType::F32, 1).unwrap();
    expect_arg(quantize_blockwise(&ctx, &x, 65, CodeMap::Dynamic), "blocksize", &["65"]);
    let qx = quantize_blockwise(&ctx, &x, 64, CodeMap::Dynamic).unwrap();
    expect_arg(dequantize_blockwise(&ctx, &ints, &qx.absmax, 64, CodeMap::Dynamic), "codes", &["I32"]);
    let one = GpuTensor::from_f32(&ctx, &[1.0], &[1]).unwrap();
    expect_arg(dequantize_blockwise(&ctx, &qx.codes, &one, 64, CodeMap::Dynamic), "absmax", &["expected 2 values", "got 1"]);
}

// ---------------------------------------------------------------- case files and the runner

/// A safetensors file of F32 tensors (name, values, shape) and optional cases JSON.
fn safetensors_file(tensors: &[(&str, &[f32], &[usize])], cases: Option<&str>) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, v, s)| {
            (n.to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.to_vec(), bytemuck::cast_slice(v)).unwrap())
        })
        .collect();
    let meta = cases.map(|c| HashMap::from([("cases".to_string(), c.to_string())]));
    safetensors::serialize(views, meta).unwrap()
}

fn case_file(cases: &str) -> Vec<u8> {
    let w = table(4, 2);
    let views = vec![
        ("w".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 2], bytemuck::cast_slice(&w)).unwrap()),
        (
            "i".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2], bytemuck::cast_slice(&[1i64, 3])).unwrap(),
        ),
    ];
    safetensors::serialize(views, Some(HashMap::from([("cases".to_string(), cases.to_string())]))).unwrap()
}

#[test]
fn malformed_case_files_are_refused_with_a_format_error() {
    let good = case_file(r#"[{"id":"a","op":"embedding","inputs":{"weight":"w","indices":"i"}}]"#);
    assert_eq!(CaseFile::parse(&good).unwrap().cases.len(), 1);
    // kind 41: truncated anywhere (header length, header, data)
    for cut in [0, 3, 8, 20, good.len() / 2, good.len() - 1] {
        expect_variant(CaseFile::parse(&good[..cut]), "Format", &["safetensors"]);
    }
    // kind 42: corrupted header length
    let mut bad = good.clone();
    bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_variant(CaseFile::parse(&bad), "Format", &[]);
    // kind 43: cases that are not valid JSON, or not case objects
    expect_variant(CaseFile::parse(&case_file("[{\"id\": ")), "Format", &["cases JSON"]);
    expect_variant(CaseFile::parse(&case_file(r#"[{"op":"embedding"}]"#)), "Format", &["id"]);
    expect_variant(CaseFile::parse(&case_file(r#"{"id":"a"}"#)), "Format", &["cases JSON"]);
    // kind 44: no cases in the metadata
    expect_variant(CaseFile::parse(&safetensors_file(&[("x", &[1.0], &[1])], None)), "Format", &["cases"]);
}

#[test]
fn malformed_cases_are_refused_one_by_one() {
    let ctx = ctx();
    let cases = r#"[
        {"id":"ok","op":"embedding","inputs":{"weight":"w","indices":"i"}},
        {"id":"unknown_op","op":"embedding_tripled","inputs":{}},
        {"id":"missing_input","op":"embedding","inputs":{"weight":"w"}},
        {"id":"missing_tensor","op":"embedding","inputs":{"weight":"w","indices":"nope"}},
        {"id":"float_indices","op":"embedding","inputs":{"weight":"w","indices":"w"}},
        {"id":"bad_param","op":"embedding","params":{"max_norm":"big"},"inputs":{"weight":"w","indices":"i"}},
        {"id":"bad_mode","op":"embedding_bag","params":{"mode":"median"},"inputs":{"weight":"w","indices":"i"}},
        {"id":"table_1d","op":"embedding","inputs":{"weight":"i","indices":"i"}},
        {"id":"ok","op":"embedding","inputs":{"weight":"w","indices":"i"}}
    ]"#;
    let file = CaseFile::parse(&case_file(cases)).unwrap();
    let by_id = |id: &str| file.cases.iter().find(|c| c.id == id).unwrap();
    // kind 45: an op this build does not know
    expect_variant(run_case(&ctx, &file, by_id("unknown_op")), "Unsupported", &["embedding_tripled"]);
    // kind 46: a required input missing
    expect_arg(run_case(&ctx, &file, by_id("missing_input")), "indices", &["missing_input"]);
    // kind 47: an input naming a tensor the file lacks
    expect_variant(run_case(&ctx, &file, by_id("missing_tensor")), "Format", &["\"nope\""]);
    // kind 48: indices given as floats
    expect_arg(run_case(&ctx, &file, by_id("float_indices")), "indices", &["F32"]);
    // kind 49: a parameter of the wrong type
    expect_arg(run_case(&ctx, &file, by_id("bad_param")), "max_norm", &["\"big\""]);
    expect_arg(run_case(&ctx, &file, by_id("bad_mode")), "mode", &["\"median\""]);
    // kind 50: a table that is not 2-D
    let r = run_case(&ctx, &file, by_id("table_1d"));
    assert!(matches!(r, Err(Error::InvalidArgument { name: "weight", .. })), "{r:?}");
    // kind 51: a repeated case id (outputs would collide): the repeat is refused, the run goes on
    let (outputs, report) = run_cases(&ctx, &file);
    let statuses: Vec<(&str, &str)> = report.cases.iter().map(|c| (c.id.as_str(), c.status.as_str())).collect();
    assert_eq!(statuses.first(), Some(&("ok", "ok")));
    assert_eq!(statuses.last(), Some(&("ok", "error")));
    assert!(report.cases.last().unwrap().message.as_deref().unwrap().contains("more than once"));
    assert_eq!(outputs.iter().filter(|(n, _)| n == "ok/out").count(), 1);
    assert!(report.cases.iter().all(|c| !c.message.as_deref().unwrap_or("").contains("panic")), "{:?}", report.cases);
}

#[test]
#[cfg(feature = "cli")] // the `wgpu-embed` command
fn run_cases_on_a_truncated_or_corrupted_file_exits_non_zero_without_a_panic() {
    // kind 52: the CLI on truncated, corrupted and missing files
    let good = case_file(r#"[{"id":"a","op":"embedding","inputs":{"weight":"w","indices":"i"}}]"#);
    let dir = std::env::temp_dir().join(format!("wgpu-embed-bad-inputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut corrupted = good.clone();
    let n = corrupted.len();
    corrupted[12..20].copy_from_slice(b"}}}}}}}}");
    corrupted.truncate(n - 3);
    let files = [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("corrupted", corrupted),
        ("garbage", b"this is not a case file at all".to_vec()),
    ];
    for (name, bytes) in files {
        let path = dir.join(format!("{name}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgpu-embed"))
            .args(["run-cases"])
            .arg(&path)
            .arg("--out")
            .arg(dir.join("o.safetensors"))
            .arg("--report")
            .arg(dir.join("r.json"))
            .env("XDG_RUNTIME_DIR", std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains("file format") && stderr.contains(name), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgpu-embed"))
        .args(["run-cases", "/nonexistent/cases.safetensors", "--out", "/tmp/x", "--report", "/tmp/y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/cases.safetensors"));
    // And a good file runs and exits 0.
    let path = dir.join("good.safetensors");
    std::fs::write(&path, &good).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgpu-embed"))
        .args(["run-cases"])
        .arg(&path)
        .arg("--out")
        .arg(dir.join("o.safetensors"))
        .arg("--report")
        .arg(dir.join("r.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}
