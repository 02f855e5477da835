//! Fuzz target, run by `cargo test` for a bounded number of cases per property (raise
//! it with `PROPTEST_CASES=N` for a longer run): malformed case files (byte-level
//! mutations of a valid file, and random case lists over a fixed set of tensors) go
//! through the parser and the runner, and random arguments, good and bad, go to
//! Embedding and EmbeddingBag. Nothing may panic or hang; a bad input is a typed
//! refusal found on the host (never a device error); a good one gives the reference
//! answer.

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;
use wgpu_embed::Block;

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Value};
use wgpu_embed::conformance::cases::{outputs_to_safetensors, CaseFile};
use wgpu_embed::conformance::registry::{op, InputKind, OPS};
use wgpu_embed::conformance::runner::run_cases;
use wgpu_embed::{BagMode, Context, Embedding, EmbeddingBag, Error, Indices};

/// One context for all properties; a 4 KiB binding limit so tables span segments.
fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| common::context(Some(4096)))
}

fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    Config { cases, failure_persistence: None, max_shrink_iters: 200, ..Config::default() }
}

// ---- case files -----------------------------------------------------------------------

enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
}

/// The tensors every fuzzed case file holds: good and bad tables, indices and offsets.
fn tensors() -> Vec<(&'static str, Data, Vec<usize>)> {
    let f = |n: usize| (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect::<Vec<_>>();
    vec![
        ("t44", Data::F32(f(16)), vec![4, 4]),
        ("t64x8", Data::F32(f(512)), vec![64, 8]),
        ("t4", Data::F32(f(4)), vec![4]),
        ("t0x4", Data::F32(vec![]), vec![0, 4]),
        ("t3d", Data::F32(f(8)), vec![2, 2, 2]),
        ("tnan", Data::F32(vec![f32::NAN, f32::INFINITY, -f32::INFINITY, 0.0, 1e38, -1e-38, 2.0, 3.0]), vec![2, 4]),
        ("psw3", Data::F32(vec![0.5, -1.0, 2.0]), vec![3]),
        ("g8", Data::F32(vec![1.0, 0.5, 2.0, -1.0, 1.0, 1.0, 0.0, 3.0]), vec![8]),
        ("i_ok", Data::I64(vec![0, 1, 3]), vec![3]),
        ("i_neg", Data::I64(vec![-1, 2]), vec![2]),
        ("i_huge", Data::I64(vec![i64::MAX, 0]), vec![2]),
        ("i_min", Data::I64(vec![i64::MIN]), vec![1]),
        ("i2d", Data::I32(vec![0, 3, 2, 1]), vec![2, 2]),
        ("i3d", Data::I64(vec![1, 2]), vec![1, 1, 2]),
        ("i_empty", Data::I64(vec![]), vec![0]),
        ("i_big", Data::I64((0..300).map(|i| i % 64).collect()), vec![300]),
        ("off_ok", Data::I64(vec![0, 2]), vec![2]),
        ("off_bad", Data::I64(vec![0, 99]), vec![2]),
        ("off_neg", Data::I64(vec![-1, 0]), vec![2]),
        ("off_down", Data::I32(vec![0, 2, 1]), vec![3]),
        ("codes", Data::U8((0..16).map(|i| i * 13).collect()), vec![16]),
    ]
}

const TENSOR_NAMES: &[&str] = &[
    "g8", "t44", "t64x8", "t4", "t0x4", "t3d", "tnan", "psw3", "i_ok", "i_neg", "i_huge", "i_min", "i2d", "i3d", "i_empty", "i_big",
    "off_ok", "off_bad", "off_neg", "off_down", "codes", "missing",
];
/// Every input role and parameter the registry's ops read.
fn roles() -> Vec<&'static str> {
    let mut roles: Vec<&'static str> = OPS.iter().flat_map(|o| o.inputs.iter().map(|(r, _)| *r)).collect();
    roles.sort_unstable();
    roles.dedup();
    roles
}

fn params() -> Vec<&'static str> {
    let mut params: Vec<&'static str> = OPS.iter().flat_map(|o| o.params.iter().copied()).collect();
    params.sort_unstable();
    params.dedup();
    params
}

fn case_file_bytes(cases: &Value) -> Vec<u8> {
    let tensors = tensors();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, data, shape)| {
            let (dtype, bytes): (_, &[u8]) = match data {
                Data::F32(v) => (safetensors::Dtype::F32, bytemuck::cast_slice(v)),
                Data::I64(v) => (safetensors::Dtype::I64, bytemuck::cast_slice(v)),
                Data::I32(v) => (safetensors::Dtype::I32, bytemuck::cast_slice(v)),
                Data::U8(v) => (safetensors::Dtype::U8, v),
            };
            (name.to_string(), safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).unwrap())
        })
        .collect();
    safetensors::serialize(views, Some(HashMap::from([("cases".to_string(), cases.to_string())]))).unwrap()
}

fn param_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3i64..70).prop_map(Value::from),
        prop::sample::select(vec![i64::MAX, i64::MIN, 1 << 31, 1 << 40, -(1 << 31)]).prop_map(Value::from),
        prop::sample::select(vec![-1.0, 0.0, 1e-5, 0.5, 2.0, 1e30, -1e30, f64::MAX]).prop_map(Value::from),
        prop::sample::select(vec!["sum", "mean", "max", "dynamic", "linear", "nf4", "fp4", "int8_blockwise", "int8_rowwise", "", "junk"])
            .prop_map(Value::from),
        prop::sample::select(vec![
            json!([4, 4]),
            json!([2, 8]),
            json!([0, 3]),
            json!([1i64 << 31, 1i64 << 31]),
            json!([-1, 2]),
            json!([1, 2, 3]),
            json!([])
        ]),
    ]
}

/// The roles each op reads (every role for an unknown op); a case mostly gives an op
/// its own roles, sometimes others.
fn op_roles(name: &str) -> Vec<&'static str> {
    op(name).map_or_else(roles, |o| o.inputs.iter().map(|(r, _)| *r).collect())
}

/// Tensors that suit a kind of input (tables for weights, index lists for indices, ...).
fn kind_tensors(kind: Option<InputKind>) -> &'static [&'static str] {
    match kind {
        Some(InputKind::Table) => &["t44", "t64x8", "t4", "t0x4", "t3d", "tnan"],
        Some(InputKind::Indices) => &["i_ok", "i_neg", "i_huge", "i_min", "i2d", "i3d", "i_empty", "i_big"],
        Some(InputKind::Offsets) => &["off_ok", "off_bad", "off_neg", "off_down", "i_empty"],
        Some(InputKind::Vector) => &["psw3", "t4", "t44"],
        Some(InputKind::Codes) => &["codes", "i_ok"],
        None => TENSOR_NAMES,
    }
}

/// Tensors that suit `role` of op `name`.
fn role_tensors(name: &str, role: &str) -> &'static [&'static str] {
    kind_tensors(op(name).and_then(|o| o.inputs.iter().find(|(r, _)| *r == role)).map(|(_, k)| *k))
}

/// A well-formed case of each op, which perturbations then break in one place or a few.
fn template(op: &str) -> Value {
    match op {
        "embedding" => {
            json!({"params": {"padding_idx": 1, "max_norm": 1.0}, "inputs": {"weight": "t44", "indices": "i_ok"}})
        }
        "embedding_bag" => {
            json!({"params": {"mode": "sum"}, "inputs": {"weight": "t44", "indices": "i_ok", "offsets": "off_ok", "per_sample_weights": "psw3"}})
        }
        "layer_norm" => {
            json!({"params": {"eps": 1e-5}, "inputs": {"x": "t64x8", "gamma": "g8", "beta": "g8"}})
        }
        "stable_embedding" => {
            json!({"params": {"eps": 1e-5}, "inputs": {"weight": "t64x8", "indices": "i_big", "gamma": "g8", "beta": "g8"}})
        }
        "embedding_sum_layer_norm" => json!({"params": {"eps": 1e-12},
            "inputs": {"weight0": "t44", "weight1": "t44", "indices0": "i_ok", "indices1": "i_ok", "gamma": "t4", "beta": "t4"}}),
        "axial_position_embedding" => {
            json!({"params": {"axial_pos_shape": [4, 4]}, "inputs": {"weight0": "t44", "weight1": "t44", "position_ids": "i_ok"}})
        }
        "quantize_blockwise" => {
            json!({"params": {"blocksize": 64, "code": "dynamic"}, "inputs": {"x": "t64x8"}})
        }
        "dequantize_blockwise" => {
            json!({"params": {"blocksize": 4, "code": "dynamic"}, "inputs": {"codes": "codes", "absmax": "t4"}})
        }
        "quantized_embedding" => {
            json!({"params": {"scheme": "int8_blockwise", "blocksize": 64}, "inputs": {"weight": "t64x8", "indices": "i_big"}})
        }
        "quantized_embedding_bag" => {
            json!({"params": {"scheme": "nf4", "blocksize": 64, "mode": "sum"},
            "inputs": {"weight": "t64x8", "indices": "i_big", "offsets": "off_ok"}})
        }
        // Any other op of the registry: the first suitable tensor for each of its roles.
        other => {
            let inputs: serde_json::Map<String, Value> =
                op_roles(other).into_iter().map(|r| (r.to_string(), json!(role_tensors(other, r)[0]))).collect();
            json!({"params": {}, "inputs": inputs})
        }
    }
}

#[derive(Debug, Clone)]
enum Perturb {
    Param(&'static str, Value),
    Input(&'static str, &'static str),
    Drop(prop::sample::Index),
}

fn perturb() -> impl Strategy<Value = Perturb> {
    prop_oneof![
        (prop::sample::select(params()), param_value()).prop_map(|(k, v)| Perturb::Param(k, v)),
        (prop::sample::select(roles()), prop::sample::select(TENSOR_NAMES)).prop_map(|(r, t)| Perturb::Input(r, t)),
        any::<prop::sample::Index>().prop_map(Perturb::Drop),
    ]
}

/// A template case with 0..3 perturbations.
fn perturbed_case() -> impl Strategy<Value = Value> {
    let mut ops: Vec<&'static str> = wgpu_embed::conformance::registry::supported_ops();
    ops.push("junk_op");
    (prop::sample::select(ops), prop::collection::vec(perturb(), 0..3), any::<bool>()).prop_map(|(op, perturbs, expect_error)| {
        let mut case = template(op);
        for p in perturbs {
            match p {
                Perturb::Param(k, v) => case["params"][k] = v,
                Perturb::Input(r, t) => case["inputs"][r] = json!(t),
                Perturb::Drop(i) => {
                    let inputs = case["inputs"].as_object_mut().unwrap();
                    if !inputs.is_empty() {
                        let key = inputs.keys().nth(i.index(inputs.len())).unwrap().clone();
                        inputs.remove(&key);
                    }
                }
            }
        }
        case["op"] = json!(op);
        case["expect_error"] = json!(expect_error);
        case
    })
}

fn case() -> impl Strategy<Value = Value> {
    prop_oneof![2 => perturbed_case(), 1 => random_case()]
}

/// Any op with random params and inputs (mostly of the kinds its roles take).
fn random_case() -> impl Strategy<Value = Value> {
    let mut ops: Vec<&'static str> = wgpu_embed::conformance::registry::supported_ops();
    ops.push("junk_op");
    prop::sample::select(ops)
        .prop_flat_map(|op| {
            let roles = op_roles(op);
            let input = (prop::sample::select(roles), any::<bool>(), any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(
                move |(role, suited, a, b)| {
                    let suits = role_tensors(op, role);
                    let tensor = if suited { suits[a.index(suits.len())] } else { TENSOR_NAMES[b.index(TENSOR_NAMES.len())] };
                    (role, tensor)
                },
            );
            (
                Just(op),
                prop::collection::btree_map(prop::sample::select(params()), param_value(), 0..5),
                prop::collection::vec(input, 0..7),
                any::<bool>(),
            )
        })
        .prop_map(|(op, params, inputs, expect_error)| {
            let inputs: std::collections::BTreeMap<&str, &str> = inputs.into_iter().collect();
            json!({"op": op, "params": params, "inputs": inputs, "expect_error": expect_error, "outputs": ["out"]})
        })
}

/// Runs a parsed file and checks the run held: no panic, no device error, context alive.
fn run_and_check(file: &CaseFile) -> Result<(), TestCaseError> {
    let ctx = ctx();
    let (outputs, report) = run_cases(ctx, file);
    prop_assert_eq!(report.cases.len(), file.cases.len());
    for c in &report.cases {
        prop_assert!(c.status == "ok" || c.status == "error", "{:?}", c);
        let msg = c.message.as_deref().unwrap_or("");
        prop_assert!(!msg.contains("panic"), "case {} panicked: {}", c.id, msg);
        // Bad input must be caught on the host, before the GPU sees it.
        prop_assert!(!msg.starts_with("GPU error") && !msg.starts_with("GPU device lost"), "case {}: {}", c.id, msg);
    }
    prop_assert!(outputs_to_safetensors(&outputs).is_ok());
    prop_assert!(ctx.check_alive().is_ok());
    prop_assert_eq!(ctx.take_uncaptured_error(), None);
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Splice(prop::sample::Index, Vec<u8>),
    HeaderLen(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 0..12)).prop_map(|(i, b)| Mutation::Splice(i, b)),
        prop_oneof![any::<u64>(), 0u64..4096].prop_map(Mutation::HeaderLen),
    ]
}

fn base_file() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        case_file_bytes(&json!([
            {"id": "e", "op": "embedding", "params": {"padding_idx": 1, "max_norm": 1.0}, "inputs": {"weight": "t44", "indices": "i_ok"}},
            {"id": "b", "op": "embedding_bag", "params": {"mode": "sum"},
             "inputs": {"weight": "t44", "indices": "i_ok", "offsets": "off_ok", "per_sample_weights": "psw3"}},
            {"id": "b2", "op": "embedding_bag", "params": {"mode": "max"}, "inputs": {"weight": "t64x8", "indices": "i2d"}},
            {"id": "ln", "op": "layer_norm", "params": {"eps": 1e-5}, "inputs": {"x": "t64x8"}}
        ]))
    })
}

proptest! {
    #![proptest_config(config(160))]

    #[test]
    fn mutated_case_file_bytes_never_panic(mutations in prop::collection::vec(mutation(), 1..5)) {
        let mut bytes = base_file().to_vec();
        for m in &mutations {
            match m {
                Mutation::Truncate(i) => { let n = i.index(bytes.len() + 1); bytes.truncate(n); }
                Mutation::Flip(i, b) => if !bytes.is_empty() { let n = i.index(bytes.len()); bytes[n] ^= b | 1; },
                Mutation::Splice(i, b) => { let n = i.index(bytes.len() + 1); bytes.splice(n..n, b.iter().copied()); }
                Mutation::HeaderLen(h) => if bytes.len() >= 8 { bytes[..8].copy_from_slice(&h.to_le_bytes()); },
            }
        }
        if let Ok(file) = CaseFile::parse(&bytes) {
            run_and_check(&file)?;
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn random_case_lists_are_run_or_refused(cases in prop::collection::vec(case(), 1..5)) {
        let cases: Vec<Value> = cases.into_iter().enumerate().map(|(i, mut c)| { c["id"] = json!(format!("c{i}")); c }).collect();
        let file = CaseFile::parse(&case_file_bytes(&Value::Array(cases))).expect("a well-formed file parses");
        run_and_check(&file)?;
    }
}

// ---- random arguments to the API --------------------------------------------------------

/// Why `F.embedding_bag` refuses these arguments, as PyTorch checks them; `None`: valid.
#[allow(clippy::too_many_arguments)] // PyTorch's arguments, as they come
fn bag_refusal(
    v: usize,
    input: &[i64],
    shape: &[usize],
    offsets: Option<&[i64]>,
    psw: bool,
    mode: BagMode,
    include_last: bool,
    padding_idx: Option<i64>,
) -> Option<&'static str> {
    if padding_idx.is_some_and(|p| p >= v as i64 || p < -(v as i64)) {
        return Some("padding_idx");
    }
    if shape.iter().product::<usize>() != input.len() {
        return Some("input");
    }
    match (shape.len(), offsets) {
        (2, Some(_)) | (1, None) => return Some("offsets"),
        (1, Some(_)) | (2, None) => {}
        _ => return Some("input"),
    }
    if psw && mode != BagMode::Sum {
        return Some("per_sample_weights");
    }
    if let (1, Some(o)) = (shape.len(), offsets) {
        if o.first().is_some_and(|&f| f != 0)
            || o.last().is_some_and(|&l| l > input.len() as i64)
            || o.windows(2).any(|w| w[1] < w[0])
            || (include_last && o.is_empty())
        {
            return Some("offsets");
        }
    }
    if input.iter().any(|&i| i < 0 || i >= v as i64) {
        return Some("input");
    }
    None
}

/// Index lists for a table of `v` rows: mostly in range, sometimes not.
fn indices(v: usize, max_len: usize) -> impl Strategy<Value = Vec<i64>> {
    let v = v as i64;
    prop_oneof![
        3 => prop::collection::vec(0..v, 0..max_len),
        1 => prop::collection::vec(prop_oneof![20 => 0..v, 1 => -3i64..0, 1 => v..v + 4, 1 => Just(i32::MAX as i64)], 0..max_len),
    ]
}

/// padding_idx for a table of `v` rows: mostly valid (negative counts from the end).
fn padding(v: usize) -> impl Strategy<Value = Option<i64>> {
    let v = v as i64;
    prop::option::of(prop_oneof![8 => -v..v, 1 => Just(v), 1 => Just(-v - 1)])
}

fn error_names(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument { .. } | Error::IndexOutOfRange { .. } | Error::ShapeMismatch(_))
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn random_embedding_arguments(
        (v, raw, padding) in (1usize..40).prop_flat_map(|v| (Just(v), indices(v, 60), padding(v))),
        d in 1usize..12,
        two_d in any::<bool>(),
        max_norm in prop::option::of(prop::sample::select(vec![-1.0f32, 0.0, 0.5, 2.0, f32::NAN])),
        gpu in any::<bool>(),
    ) {
        let ctx = ctx();
        let w: Vec<f32> = (0..v * d).map(|i| (i as f32 * 0.61).cos() * 2.0).collect();
        let n = raw.len();
        let shape = if two_d && n % 2 == 0 { vec![2, n / 2] } else { vec![n] };
        let layer = Embedding::from_pretrained(ctx, &w, v, d).unwrap().with_padding_idx(padding);
        let padding_ok = padding.is_none_or(|p| p < v as i64 && p >= -(v as i64));
        let layer = match layer {
            Err(e) => { prop_assert!(!padding_ok && matches!(e, Error::InvalidArgument { name: "padding_idx", .. }), "{e}"); return Ok(()); }
            Ok(l) => l,
        };
        let layer = match layer.with_max_norm(max_norm, 2.0) {
            Err(e) => { prop_assert!(max_norm.is_some_and(|m| m.is_nan() || m < 0.0), "{e}"); return Ok(()); }
            Ok(l) => l,
        };
        let bad = raw.iter().position(|&i| i < 0 || i >= v as i64);
        let result = if gpu {
            let i32s: Vec<i32> = raw.iter().map(|&i| i as i32).collect();
            let t = wgpu_embed::GpuTensor::from_bytes(ctx, bytemuck::cast_slice(&i32s), &shape, wgpu_embed::DType::I32, 1).unwrap();
            layer.forward_gpu(ctx, &t).block()
        } else {
            layer.forward(ctx, Indices::i64(&raw, &shape))
        };
        match (bad, result) {
            (Some(p), Err(Error::IndexOutOfRange { position, value, .. })) => {
                prop_assert_eq!(position, p as u64);
                prop_assert_eq!(value, raw[p]);
                // No partial write: the table is as it was.
                prop_assert_eq!(layer.weight().read_f32(ctx).block().unwrap(), w);
            }
            (None, Ok(out)) => {
                let mut table = w.clone();
                if let Some(m) = max_norm { common::renorm(&mut table, d, &raw, m, 2.0); }
                common::assert_close(&out.read_f32(ctx).block().unwrap(), &common::lookup(&table, d, &raw), 1e-5, 1e-5, "lookup");
            }
            (bad, r) => prop_assert!(false, "bad index at {:?}, got {:?}", bad, r.map(|t| t.shape().to_vec())),
        }
    }

    #[test]
    fn random_embedding_bag_arguments(
        (v, raw, padding) in (1usize..30).prop_flat_map(|v| (Just(v), indices(v, 40), padding(v))),
        d in 1usize..10,
        shape_kind in 0u8..4,
        offsets in prop::option::of(prop::collection::vec(-2i64..45, 0..8)),
        sort_offsets in any::<bool>(),
        psw in any::<bool>(),
        mode in prop::sample::select(vec![BagMode::Sum, BagMode::Mean, BagMode::Max]),
        include_last in any::<bool>(),
        gpu in any::<bool>(),
    ) {
        let ctx = ctx();
        let w: Vec<f32> = (0..v * d).map(|i| (i as f32 * 0.43).sin()).collect();
        let n = raw.len();
        let shape = match shape_kind {
            0 | 1 => vec![n],
            2 if n % 4 == 0 => vec![4, n / 4],
            2 => vec![n],
            _ => vec![1, 1, n],
        };
        let offsets = offsets.map(|mut o| {
            if sort_offsets { o.sort_unstable(); if let Some(f) = o.first_mut() { *f = 0; } o.iter_mut().for_each(|x| *x = (*x).clamp(0, n as i64)); }
            o
        });
        let weights: Vec<f32> = (0..n).map(|i| 0.25 * i as f32 - 1.0).collect();
        let refusal = bag_refusal(v, &raw, &shape, offsets.as_deref(), psw, mode, include_last, padding);
        let layer = EmbeddingBag::from_pretrained(ctx, &w, v, d, mode).unwrap().with_include_last_offset(include_last);
        let layer = match layer.with_padding_idx(padding) {
            Err(e) => { prop_assert_eq!(refusal, Some("padding_idx"), "{}", e); return Ok(()); }
            Ok(l) => l,
        };
        let off_shape = offsets.as_ref().map(|o| vec![o.len()]);
        let off = offsets.as_deref().zip(off_shape.as_deref()).map(|(o, s)| Indices::i64(o, s));
        let result = if gpu {
            let i32s: Vec<i32> = raw.iter().map(|&i| i as i32).collect();
            let t = wgpu_embed::GpuTensor::from_bytes(ctx, bytemuck::cast_slice(&i32s), &shape, wgpu_embed::DType::I32, 1).unwrap();
            let wt = wgpu_embed::GpuTensor::from_bytes(ctx, bytemuck::cast_slice(&weights), &shape, wgpu_embed::DType::F32, 1).unwrap();
            layer.forward_gpu(ctx, &t, off, psw.then_some(&wt)).block()
        } else {
            layer.forward(ctx, Indices::i64(&raw, &shape), off, psw.then_some((&weights[..], &shape[..])))
        };
        match (refusal, result) {
            (Some(why), Err(e)) => {
                prop_assert!(error_names(&e), "{}", e);
                let named = match &e { Error::InvalidArgument { name, .. } | Error::IndexOutOfRange { name, .. } => *name, _ => "" };
                prop_assert_eq!(named, why, "{}", e);
            }
            (None, Ok(out)) => {
                let bounds: Vec<usize> = if shape.len() == 2 {
                    (0..=shape[0]).map(|b| b * shape[1]).collect()
                } else {
                    let mut b: Vec<usize> = offsets.unwrap().iter().map(|&o| o as usize).collect();
                    if !include_last { b.push(n); }
                    if b.is_empty() { b.push(0); }
                    b
                };
                let pad = padding.map(|p| if p < 0 { p + v as i64 } else { p });
                let mode_name = mode.name();
                let want = common::bag(&w, d, &raw, &bounds, mode_name, pad, psw.then_some(&weights[..]));
                common::assert_close(&out.read_f32(ctx).block().unwrap(), &want, 1e-5, 1e-5, mode_name);
            }
            (why, r) => prop_assert!(false, "expected refusal {:?}, got {:?}", why, r.map(|t| t.shape().to_vec())),
        }
    }
}
