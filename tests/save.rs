//! Tables go back out: train 3 steps, save, load, 3 more steps is 6 steps straight, bit
//! for bit (Embedding + SparseAdam through fused recorded steps; StableEmbedding +
//! 8-bit Adam through backward and step), and the file holds PyTorch's names; quantized
//! tables go out and come in in bitsandbytes' own layouts.

mod common;

use wgpu_embed::{
    Block, Checkpoint, Context, Embedding, EmbeddingOptions, GpuTensor, Gradient, Indices, Optimizer, OptimizerKind, QuantizedEmbedding,
    QuantizedTable, Scheme, StableEmbedding, StateDict,
};

const V: usize = 300;
const D: usize = 16;

/// Step `t`'s batch: indices (with repeats) and the output gradient.
fn batch(t: usize) -> (Vec<i64>, Vec<f32>) {
    let mut rng = common::Rng(100 + t as u64);
    let idx: Vec<i64> = (0..40).map(|_| rng.below(V as u64) as i64).collect();
    (idx, rng.vec_f32(40 * D))
}

fn sparse_adam() -> OptimizerKind {
    OptimizerKind::SparseAdam { lr: 0.05, betas: (0.9, 0.999), eps: 1e-8 }
}

fn train_embedding(ctx: &Context, emb: &Embedding, opt: &mut Optimizer, steps: std::ops::Range<usize>) {
    for t in steps {
        let (idx, g) = batch(t);
        let grad_out = GpuTensor::from_f32(ctx, &g, &[idx.len(), D]).unwrap();
        opt.step_embedding(ctx, emb, Indices::i64(&idx, &[idx.len()]), &grad_out).block().unwrap();
    }
}

fn read_states(ctx: &Context, opt: &Optimizer) -> Vec<Vec<u8>> {
    opt.state_names().iter().map(|n| opt.state(n).unwrap().read_bytes(ctx).block().unwrap()).collect()
}

#[test]
fn embedding_with_sparse_adam_resumes_bit_for_bit() {
    for max_binding in [None, Some(8 << 10)] {
        let ctx = common::context(max_binding);
        let start = Embedding::new(&ctx, V, D, EmbeddingOptions::default().seed(11)).unwrap();
        let initial = start.weight().read_f32(&ctx).block().unwrap();
        // Six steps straight.
        let straight = Embedding::from_pretrained(&ctx, &initial, V, D).unwrap();
        let mut opt = Optimizer::new(&ctx, sparse_adam(), straight.weight()).unwrap();
        train_embedding(&ctx, &straight, &mut opt, 0..6);
        // Three, saved, loaded into fresh objects, three more.
        let first = Embedding::from_pretrained(&ctx, &initial, V, D).unwrap();
        let mut first_opt = Optimizer::new(&ctx, sparse_adam(), first.weight()).unwrap();
        train_embedding(&ctx, &first, &mut first_opt, 0..3);
        let bytes = StateDict::new().embedding("", &first).optimizer("optimizer.", &first_opt).to_bytes(&ctx).block().unwrap();
        drop((first, first_opt));
        let saved = Checkpoint::from_bytes(bytes).unwrap();
        assert_eq!(saved.names(), ["optimizer.state.0.exp_avg", "optimizer.state.0.exp_avg_sq", "optimizer.state.0.step", "weight"]);
        assert!(saved.metadata()["optimizer.param_groups"].contains("\"sparse_adam\""));
        let resumed = Embedding::from_tensor(saved.upload_table(&ctx, "weight", &mut |_, _| {}).unwrap()).unwrap();
        let mut resumed_opt = Optimizer::new(&ctx, sparse_adam(), resumed.weight()).unwrap();
        resumed_opt.load_state(&ctx, &saved, "optimizer.").unwrap();
        assert_eq!(resumed_opt.steps(), 3);
        train_embedding(&ctx, &resumed, &mut resumed_opt, 3..6);
        assert_eq!(resumed_opt.steps(), 6);
        let (a, b) = (straight.weight().read_bytes(&ctx).block().unwrap(), resumed.weight().read_bytes(&ctx).block().unwrap());
        assert!(a == b, "binding {max_binding:?}: the resumed table differs from six steps straight");
        assert_eq!(read_states(&ctx, &opt), read_states(&ctx, &resumed_opt), "binding {max_binding:?}: states differ");
        // Training moved the table, so the comparison could fail.
        assert_ne!(a, bytemuck::cast_slice::<f32, u8>(&initial));
    }
}

fn adam8bit() -> OptimizerKind {
    OptimizerKind::Adam8bit { lr: 0.02, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01, blocksize: 256, min_8bit_size: 4096 }
}

fn train_stable(ctx: &Context, layer: &StableEmbedding, opt: &mut Optimizer, steps: std::ops::Range<usize>) {
    for t in steps {
        let (idx, g) = batch(t);
        let grad_out = GpuTensor::from_f32(ctx, &g, &[idx.len(), D]).unwrap();
        let grad = layer.backward(ctx, Indices::i64(&idx, &[idx.len()]), &grad_out).unwrap().tables.remove(0);
        opt.step(ctx, layer.weight(), &Gradient::Dense(grad)).block().unwrap();
    }
}

fn stable_from(ctx: &Context, saved: &Checkpoint) -> StableEmbedding {
    let (gamma, beta) = (saved.vector("norm.weight", D).unwrap(), saved.vector("norm.bias", D).unwrap());
    StableEmbedding::from_pretrained(ctx, saved.table("weight").unwrap(), None, Some(&gamma), Some(&beta), 1e-5).unwrap()
}

/// Six steps straight against three, save, load, three more: for the optimizer `make`
/// builds (whose kind is `kind_name`, with the states `states`).
fn stable_resumes(make: fn(&Context, &StableEmbedding) -> Optimizer, kind_name: &str, states: &[&str]) {
    let ctx = common::context(None);
    let start = StableEmbedding::new(&ctx, V, D, EmbeddingOptions::default().seed(4)).unwrap();
    let initial = Checkpoint::from_bytes(StateDict::new().stable_embedding("", &start).to_bytes(&ctx).block().unwrap()).unwrap();
    assert_eq!(initial.names(), ["norm.bias", "norm.weight", "weight"]);
    assert_eq!(initial.vector("norm.weight", D).unwrap(), vec![1.0; D]);
    let straight = stable_from(&ctx, &initial);
    let mut opt = make(&ctx, &straight);
    assert_eq!(opt.kind().name(), kind_name);
    train_stable(&ctx, &straight, &mut opt, 0..6);
    let first = stable_from(&ctx, &initial);
    let mut first_opt = make(&ctx, &first);
    train_stable(&ctx, &first, &mut first_opt, 0..3);
    let bytes = StateDict::new().stable_embedding("", &first).optimizer("optim.", &first_opt).to_bytes(&ctx).block().unwrap();
    let saved = Checkpoint::from_bytes(bytes).unwrap();
    for name in states.iter().chain(&["step"]) {
        assert!(saved.names().contains(&format!("optim.state.0.{name}")), "no {name}: {:?}", saved.names());
    }
    let resumed = stable_from(&ctx, &saved);
    let mut resumed_opt = make(&ctx, &resumed);
    resumed_opt.load_state(&ctx, &saved, "optim.").unwrap();
    train_stable(&ctx, &resumed, &mut resumed_opt, 3..6);
    let (a, b) = (straight.weight().read_bytes(&ctx).block().unwrap(), resumed.weight().read_bytes(&ctx).block().unwrap());
    assert!(a == b, "{kind_name}: the resumed table differs from six steps straight");
    assert_eq!(read_states(&ctx, &opt), read_states(&ctx, &resumed_opt));
    // Another optimizer's state is refused, naming what differs.
    let mut other = Optimizer::new(&ctx, sparse_adam(), resumed.weight()).unwrap();
    let e = other.load_state(&ctx, &saved, "optim.").unwrap_err().to_string();
    assert!(e.contains("optim.param_groups") && e.contains(kind_name), "{e}");
}

#[test]
fn stable_embedding_with_bitsandbytes_adam_resumes_bit_for_bit() {
    // Adam8bit over the layer keeps 32-bit states, as bitsandbytes' override does.
    stable_resumes(|ctx, layer| Optimizer::for_layer(ctx, adam8bit(), layer).unwrap(), "adam32bit", &["state1", "state2"]);
    // Over the bare table (4 800 elements), 8-bit states.
    stable_resumes(
        |ctx, layer| Optimizer::new(ctx, adam8bit(), layer.weight()).unwrap(),
        "adam8bit",
        &["state1", "state2", "absmax1", "absmax2"],
    );
}

#[test]
fn a_saved_table_and_optimizer_resume_in_pytorch() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference");
    let ctx = common::context(None);
    if std::env::var_os("WGPU_EMBED_WRITE_REFERENCE").is_some() {
        let initial: Vec<f32> = (0..V * D).map(|i| ((i as f32) * 0.37).sin()).collect();
        let emb = Embedding::from_pretrained(&ctx, &initial, V, D).unwrap();
        let mut opt = Optimizer::new(&ctx, sparse_adam(), emb.weight()).unwrap();
        train_embedding(&ctx, &emb, &mut opt, 0..3);
        StateDict::new()
            .embedding("", &emb)
            .optimizer("optimizer.", &opt)
            .save(&ctx, dir.join("saved_sparse_adam.safetensors"))
            .block()
            .unwrap();
    }
    let saved = Checkpoint::open(dir.join("saved_sparse_adam.safetensors")).unwrap();
    let torch = Checkpoint::open(dir.join("interop.safetensors")).unwrap();
    let checked = torch.metadata().get("checked").cloned().unwrap_or_default();
    assert!(checked.contains("torch.nn.Embedding.load_state_dict") && checked.contains("SparseAdam.load_state_dict"), "{checked}");
    let emb = Embedding::from_tensor(saved.upload_table(&ctx, "weight", &mut |_, _| {}).unwrap()).unwrap();
    let mut opt = Optimizer::new(&ctx, sparse_adam(), emb.weight()).unwrap();
    opt.load_state(&ctx, &saved, "optimizer.").unwrap();
    let (_, _, rows) = torch.raw("step/grad_rows").unwrap();
    let rows: Vec<i32> = bytemuck::pod_collect_to_vec(rows);
    let values: Vec<f32> = bytemuck::pod_collect_to_vec(torch.table_with_dim("step/grad_values", Some(rows.len()), D).unwrap().bytes());
    let grad = Gradient::Sparse {
        indices: GpuTensor::from_i32(&ctx, &rows, &[rows.len()]).unwrap(),
        values: GpuTensor::from_f32(&ctx, &values, &[rows.len(), D]).unwrap(),
        num_embeddings: V,
    };
    opt.step(&ctx, emb.weight(), &grad).block().unwrap();
    let want = torch.table("step/weight").unwrap();
    let want: Vec<f32> = bytemuck::pod_collect_to_vec(want.bytes());
    common::assert_close(&emb.weight().read_f32(&ctx).block().unwrap(), &want, 1e-6, 1e-5, "one step after resuming, against PyTorch's");
}

/// Rows `ids` of a quantized table, dequantized by the lookup kernel.
fn lookup(ctx: &Context, table: QuantizedTable, ids: &[i64]) -> Vec<f32> {
    QuantizedEmbedding::from_table(table).forward(ctx, Indices::i64(ids, &[ids.len()])).unwrap().read_f32(ctx).block().unwrap()
}

const QUANTIZED: [(&str, Scheme); 3] = [("int8.", Scheme::Int8Rowwise), ("nf4.", Scheme::Nf4), ("fp4.", Scheme::Fp4)];

/// Tables bitsandbytes quantized (`tests/reference/bnb_tables.safetensors`, written by
/// `make_cases.py` from `Embedding8bit` / `Embedding4bit` in the layouts
/// `Linear8bitLt` / `Linear4bit.state_dict()` write): loaded as they are, their rows are
/// what bitsandbytes' own layers gave.
#[test]
fn tables_quantized_by_bitsandbytes_look_up_as_its_layers_do() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference");
    let ctx = common::context(None);
    let bnb = Checkpoint::open(dir.join("bnb_tables.safetensors")).unwrap();
    for (prefix, scheme) in QUANTIZED {
        let table = QuantizedTable::from_bitsandbytes(&ctx, &bnb, prefix).unwrap();
        assert_eq!(table.scheme(), scheme);
        let (_, _, ids) = bnb.raw(&format!("{prefix}ids")).unwrap();
        let ids: Vec<i64> = bytemuck::pod_collect_to_vec::<u8, i32>(ids).into_iter().map(i64::from).collect();
        let want: Vec<f32> = bytemuck::pod_collect_to_vec(bnb.raw(&format!("{prefix}expected")).unwrap().2);
        common::assert_close(&lookup(&ctx, table, &ids), &want, 1e-6, 1e-7, &format!("{prefix} rows against bitsandbytes' layer"));
    }
    // Not a bitsandbytes table: named in the error.
    let err = QuantizedTable::from_bitsandbytes(&ctx, &bnb, "none.").unwrap_err().to_string();
    assert!(err.contains("none.SCB") && err.contains("Params4bit"), "{err}");
}

/// A table quantized here, saved in bitsandbytes' layout, loads back to the same bits;
/// bitsandbytes itself loaded the committed one (`saved_quantized.safetensors`) into its
/// `Embedding8bit` / `Embedding4bit` (`Int8Params`, `Params4bit.from_prequantized`) and
/// its rows are in `interop.safetensors`. `WGPU_EMBED_WRITE_REFERENCE=1` rewrites the
/// saved file (then rerun make_cases.py).
#[test]
fn quantized_tables_saved_here_load_into_bitsandbytes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference");
    let ctx = common::context(None);
    let (v, d) = (48usize, 128usize);
    let weight: Vec<f32> = (0..v * d).map(|i| ((i as f32) * 0.61).sin() * (1.0 + (i / d) as f32 / 8.0)).collect();
    let ids: Vec<i64> = vec![0, 7, 47, 7, 30, 12];
    let mut state = StateDict::new();
    let mut tables = Vec::new();
    for (prefix, scheme) in QUANTIZED {
        let table = QuantizedTable::from_pretrained(&ctx, &weight, v, d, scheme, None).unwrap();
        state = state.quantized_table(prefix, &table);
        tables.push((prefix, table));
    }
    let bytes = state.to_bytes(&ctx).block().unwrap();
    let back = Checkpoint::from_bytes(bytes.clone()).unwrap();
    for (prefix, table) in &tables {
        let again = QuantizedTable::from_bitsandbytes(&ctx, &back, prefix).unwrap();
        let (a, b) = (lookup(&ctx, table.clone(), &ids), lookup(&ctx, again, &ids));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{prefix}: saved and loaded rows differ");
    }
    if std::env::var_os("WGPU_EMBED_WRITE_REFERENCE").is_some() {
        std::fs::write(dir.join("saved_quantized.safetensors"), &bytes).unwrap();
    }
    // The committed file has this build's layout (its values may differ in a last bit on
    // other hardware: its rows are checked against bitsandbytes' below).
    let committed = Checkpoint::open(dir.join("saved_quantized.safetensors")).unwrap();
    assert_eq!(committed.names(), back.names(), "tests/reference/saved_quantized.safetensors is not what this build saves");
    for name in back.names() {
        let ((a, sa, _), (b, sb, _)) = (committed.raw(&name).unwrap(), back.raw(&name).unwrap());
        assert_eq!((a, sa), (b, sb), "{name}: dtype and shape");
    }
    let torch = Checkpoint::open(dir.join("interop.safetensors")).unwrap();
    let checked = torch.metadata().get("checked").cloned().unwrap_or_default();
    assert!(checked.contains("Params4bit.from_prequantized") && checked.contains("Int8Params"), "{checked}");
    for (prefix, table) in tables {
        let name = prefix.trim_end_matches('.');
        let (_, _, got_ids) = torch.raw(&format!("quantized/{name}/ids")).unwrap();
        assert_eq!(bytemuck::pod_collect_to_vec::<u8, i32>(got_ids), ids.iter().map(|&i| i as i32).collect::<Vec<_>>());
        let want: Vec<f32> = bytemuck::pod_collect_to_vec(torch.raw(&format!("quantized/{name}/out")).unwrap().2);
        common::assert_close(&lookup(&ctx, table, &ids), &want, 1e-6, 1e-7, &format!("{name}: bitsandbytes' rows of our saved table"));
    }
    // Block-wise int8 has no bitsandbytes module layout.
    let blockwise = QuantizedTable::from_pretrained(&ctx, &weight, v, d, Scheme::Int8Blockwise, None).unwrap();
    let err = StateDict::new().quantized_table("q.", &blockwise).to_bytes(&ctx).block().unwrap_err().to_string();
    assert!(err.contains("int8_blockwise"), "{err}");
}
