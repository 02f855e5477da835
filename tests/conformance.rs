//! The public conformance files (forward ops; the training file's backward ops), run
//! through the library as `run-cases` does, with the device's binding limit and with a
//! 1 MiB one. Only the ops this build supports.

mod common;

use wgpu_embed::conformance::cases::{compare, CaseFile};
use wgpu_embed::conformance::exact::exact_norm;
use wgpu_embed::conformance::registry::supported_ops;
use wgpu_embed::conformance::runner::run_cases;

fn cases(name: &str, at_least: usize) -> CaseFile {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (the conformance suite lives in ../shared)", path.display()));
    let mut file = CaseFile::parse(&bytes).unwrap();
    file.cases.retain(|c| supported_ops().contains(&c.op.as_str()));
    assert!(file.cases.len() >= at_least, "{name} holds at least {at_least} cases of supported ops");
    file
}

fn check(file: CaseFile, max_binding: Option<u64>) {
    let ctx = common::context(max_binding);
    let (outputs, report) = run_cases(&ctx, &file);
    let mut failures = Vec::new();
    for (case, rep) in file.cases.iter().zip(&report.cases) {
        if case.expect_error {
            if rep.status != "error" {
                failures.push(format!("{}: accepted an input the reference refuses", case.id));
            }
            continue;
        }
        if rep.status != "ok" {
            failures.push(format!("{}: {}", case.id, rep.message.clone().unwrap_or_default()));
            continue;
        }
        let exact = exact_norm(&file, case);
        for name in &case.outputs {
            let want = file.expected(&case.id, name).expect("expected tensor");
            let got = outputs.iter().find(|(n, _)| *n == format!("{}/{name}", case.id)).map(|(_, t)| t);
            match got {
                None => failures.push(format!("{}: output {name} missing", case.id)),
                Some(got) => {
                    if let Some(problem) = compare(case, want, got, exact.as_deref()) {
                        failures.push(format!("{}/{name}: {problem}", case.id));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failing cases:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn public_cases_pass() {
    check(cases("public.safetensors", 60), None);
}

#[test]
fn public_cases_pass_with_1mib_bindings() {
    check(cases("public.safetensors", 60), Some(1 << 20));
}

#[test]
fn backward_cases_pass() {
    check(cases("training.safetensors", 56), None);
}

#[test]
fn backward_cases_pass_with_1mib_bindings() {
    check(cases("training.safetensors", 56), Some(1 << 20));
}
