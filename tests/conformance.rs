//! The conformance cases run through the library as `run-cases` does, with the
//! device's binding limit and with a 1 MiB one, and judged by FORMAT.md's rules:
//! the repository's own reference cases (`tests/reference/`, written by
//! `make_cases.py` from PyTorch, bitsandbytes and transformers) always, and the shared
//! suite's files as well when `../shared/conformance` is beside the clone.

mod common;

use std::path::{Path, PathBuf};

use wgpu_embed::conformance::cases::CaseFile;
use wgpu_embed::conformance::judge::judge;
use wgpu_embed::conformance::registry::supported_ops;
use wgpu_embed::conformance::runner::run_cases;

fn reference(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(name)
}

fn load(path: &Path) -> CaseFile {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    CaseFile::parse(&bytes).unwrap()
}

fn check(file: CaseFile, max_binding: Option<u64>) {
    let ctx = common::context(max_binding);
    let (outputs, report) = run_cases(&ctx, &file);
    let failures = judge(&file, &outputs, &report);
    assert!(failures.is_empty(), "{} failing cases:\n{}", failures.len(), failures.join("\n"));
}

/// The committed cases cover every op of the registry, refusals included.
#[test]
fn reference_cases_cover_every_op() {
    let files = ["forward.safetensors", "training.safetensors", "tbe.safetensors", "tbe_training.safetensors", "parity.safetensors"]
        .map(|name| load(&reference(name)));
    let all = || files.iter().flat_map(|f| &f.cases);
    for op in supported_ops() {
        assert!(all().filter(|c| c.op == op && !c.expect_error).count() >= 1, "no reference case of op {op}");
    }
    let refusals = all().filter(|c| c.expect_error).count();
    assert!(refusals >= 25, "{refusals} refusals");
}

#[test]
fn reference_forward_cases_pass() {
    check(load(&reference("forward.safetensors")), None);
}

#[test]
fn reference_forward_cases_pass_with_1mib_bindings() {
    check(load(&reference("forward.safetensors")), Some(1 << 20));
}

#[test]
fn reference_training_cases_pass() {
    check(load(&reference("training.safetensors")), None);
}

#[test]
fn reference_training_cases_pass_with_1mib_bindings() {
    check(load(&reference("training.safetensors")), Some(1 << 20));
}

/// Training parity: bitsandbytes' optimizer rules and the axial embeddings' backward.
#[test]
fn reference_parity_cases_pass() {
    check(load(&reference("parity.safetensors")), None);
    check(load(&reference("parity.safetensors")), Some(1 << 20));
}

#[test]
fn reference_tbe_cases_pass() {
    check(load(&reference("tbe.safetensors")), None);
    check(load(&reference("tbe.safetensors")), Some(1 << 20));
    check(load(&reference("tbe_training.safetensors")), None);
    check(load(&reference("tbe_training.safetensors")), Some(1 << 20));
}

/// The shared suite's file `name`, of the ops this build runs, when `../shared` is there.
fn shared(name: &str) -> Option<CaseFile> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance").join(name);
    if !path.exists() {
        eprintln!("{} is not there: only the repository's reference cases run", path.display());
        return None;
    }
    let mut file = load(&path);
    file.cases.retain(|c| supported_ops().contains(&c.op.as_str()));
    Some(file)
}

#[test]
fn shared_cases_pass() {
    for name in ["public.safetensors", "training.safetensors"] {
        if let Some(file) = shared(name) {
            check(file.clone(), None);
            check(file, Some(1 << 20));
        }
    }
}

/// The judge fails a run whose values, refusals or returned rows are wrong.
#[test]
fn judge_catches_wrong_results() {
    let mut file = load(&reference("training.safetensors"));
    file.cases.retain(|c| ["topk_dot_small", "emb_bw_dense", "err_emb_bw_index_too_large"].contains(&c.id.as_str()));
    assert_eq!(file.cases.len(), 3);
    let ctx = common::context(None);
    let (outputs, report) = run_cases(&ctx, &file);
    assert!(judge(&file, &outputs, &report).is_empty());
    use wgpu_embed::conformance::cases::HostData;
    let spoil = |name: &str, f: &dyn Fn(&mut HostData)| {
        let mut outputs = outputs.clone();
        f(&mut outputs.iter_mut().find(|(n, _)| n == name).unwrap().1.data);
        judge(&file, &outputs, &report)
    };
    let wrong_value = spoil("emb_bw_dense/grad_weight", &|d| {
        if let HostData::F32(v) = d {
            v[3] += 1e-3
        }
    });
    assert!(wrong_value.len() == 1 && wrong_value[0].starts_with("emb_bw_dense"), "{wrong_value:?}");
    // A row repeated, then a row whose real score is not the one returned.
    let repeated = spoil("topk_dot_small/indices", &|d| {
        if let HostData::I64(v) = d {
            v[1] = v[0]
        }
    });
    assert!(repeated.len() == 1 && repeated[0].contains("repeated"), "{repeated:?}");
    let swapped = spoil("topk_dot_small/indices", &|d| {
        if let HostData::I64(v) = d {
            v[0] = (v[0] + 1) % 100
        }
    });
    assert!(swapped.len() == 1 && swapped[0].starts_with("topk_dot_small"), "{swapped:?}");
    let mut accepted = report.clone();
    accepted.cases.iter_mut().find(|c| c.id == "err_emb_bw_index_too_large").unwrap().status = "ok".into();
    let failures = judge(&file, &outputs, &accepted);
    assert!(failures.len() == 1 && failures[0].contains("accepted an input the reference refuses"), "{failures:?}");
}
