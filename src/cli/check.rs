//! `wgpu-embed check`: the built-in conformance cases on every chosen adapter, with a
//! pass/fail table per op. The cases are a subset of the public conformance files with
//! its expected values (PyTorch / bitsandbytes / transformers), built by
//! `make_check_cases.py` beside this file and compiled into the binary.

use std::collections::BTreeMap;
use std::process::ExitCode;

use crate::conformance::cases::{CaseFile, HostTensor};
use crate::conformance::exact::exact_norm;
use crate::conformance::judge::{judge_case, output_map};
use crate::conformance::registry::supported_ops;
use crate::conformance::runner::run_cases;
use crate::{Context, ContextOptions};

/// The built-in cases (safetensors, conformance-file format, expected values included).
const CASES: &[u8] = include_bytes!("check_cases.safetensors");

/// Binding limit of the second pass on each adapter: small enough that the tables of
/// the built-in cases are split over several bindings, as on devices with little memory.
pub const SPLIT_BINDING: u64 = 4096;

/// What to run where.
pub struct CheckArgs {
    pub backends: Option<wgpu::Backends>,
    pub adapter: Option<String>,
    /// Binding limit of the second pass (0: no second pass).
    pub split_binding: u64,
    /// Also print the passing cases.
    pub verbose: bool,
}

#[derive(Default)]
struct OpResult {
    passed: usize,
    failed: usize,
    max_err: f64,
}

pub fn run(args: &CheckArgs) -> ExitCode {
    let file = match CaseFile::parse(CASES) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("wgpu-embed check: built-in cases unreadable: {e}");
            return ExitCode::from(2);
        }
    };
    // Only the ops this build implements; the others are listed as not run.
    let supported = supported_ops();
    let mut skipped: Vec<&str> = file.cases.iter().map(|c| c.op.as_str()).filter(|op| !supported.contains(op)).collect();
    skipped.sort_unstable();
    skipped.dedup();
    let file = CaseFile { cases: file.cases.iter().filter(|c| supported.contains(&c.op.as_str())).cloned().collect(), ..file };

    let backends = args.backends.or_else(wgpu::Backends::from_env).unwrap_or(wgpu::Backends::all());
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));

    println!("Adapters:");
    if adapters.is_empty() {
        println!("  none");
    }
    let want = args.adapter.as_deref().map(str::to_lowercase);
    let mut chosen = Vec::new();
    for (i, adapter) in adapters.iter().enumerate() {
        let info = adapter.get_info();
        let pick = want.as_ref().is_none_or(|w| info.name.to_lowercase().contains(w));
        let driver: Vec<&str> = [info.driver.as_str(), info.driver_info.as_str()].into_iter().filter(|s| !s.is_empty()).collect();
        println!(
            "  [{i}] {} {:<8} {:<14} {}{}",
            if pick { "*" } else { " " },
            format!("{:?}", info.backend),
            format!("{:?}", info.device_type),
            info.name,
            if driver.is_empty() { String::new() } else { format!(" — {}", driver.join(", ")) }
        );
        if pick {
            chosen.push((i, adapter));
        }
    }
    if chosen.is_empty() {
        eprintln!(
            "wgpu-embed check: no adapter to run on{}",
            args.adapter.as_ref().map_or(String::new(), |a| format!(" (none named like {a:?})"))
        );
        return ExitCode::from(2);
    }
    println!(
        "\n{} built-in cases of {} ops{}",
        file.cases.len(),
        supported.len(),
        if skipped.is_empty() { String::new() } else { format!("; not in this build: {}", skipped.join(", ")) }
    );

    let mut passes: Vec<(&str, Option<u64>)> = vec![("device limit", None)];
    let split_label = format!("{} B bindings", args.split_binding);
    if args.split_binding > 0 {
        passes.push((&split_label, Some(args.split_binding)));
    }
    let mut all_ok = true;
    for (i, adapter) in chosen {
        let info = adapter.get_info();
        for (label, max_binding_size) in &passes {
            println!("\n[{i}] {} ({:?}), {label}", info.name, info.backend);
            let options = ContextOptions { max_binding_size: *max_binding_size, ..Default::default() };
            let ctx = match pollster::block_on(Context::from_adapter(adapter, &options)) {
                Ok(ctx) => ctx,
                Err(e) => {
                    println!("  FAIL: cannot open a device: {e}");
                    all_ok = false;
                    continue;
                }
            };
            let l = ctx.limits();
            println!(
                "  limits: storage binding {} B (used: {} B), {} storage buffers per stage, {} workgroups per dimension",
                l.max_storage_buffer_binding_size,
                ctx.max_binding_size(),
                l.max_storage_buffers_per_shader_stage,
                l.max_compute_workgroups_per_dimension
            );
            all_ok &= check_on(&ctx, &file, args.verbose);
        }
    }
    println!("\n{}", if all_ok { "check: all passed" } else { "check: FAILED" });
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the cases on one context and prints the table; true when all passed.
fn check_on(ctx: &Context, file: &CaseFile, verbose: bool) -> bool {
    let (outputs, report) = run_cases(ctx, file);
    let outputs = output_map(&outputs);
    let mut per_op: BTreeMap<&str, OpResult> = BTreeMap::new();
    let mut failures = Vec::new();
    for (case, rep) in file.cases.iter().zip(&report.cases) {
        let result = per_op.entry(case.op.as_str()).or_default();
        if !case.expect_error && rep.status == "ok" {
            let exact = exact_norm(file, case);
            for name in &case.outputs {
                if let (Some(want), Some(got)) = (file.expected(&case.id, name), outputs.get(format!("{}/{name}", case.id).as_str())) {
                    result.max_err = result.max_err.max(max_abs_error(want, got, exact.as_deref()));
                }
            }
        }
        let problem = judge_case(file, case, rep, &outputs);
        match problem {
            None => {
                result.passed += 1;
                if verbose {
                    println!("  ok   {} [{}] {:.1} ms", case.id, case.op, rep.ms);
                }
            }
            Some(p) => {
                result.failed += 1;
                failures.push(format!("  FAIL {} [{}]: {p}", case.id, case.op));
            }
        }
    }
    println!("  {:<26} {:>6} {:>6} {:>6}  {:>10}", "op", "cases", "passed", "failed", "max |err|");
    for (op, r) in &per_op {
        println!(
            "  {:<26} {:>6} {:>6} {:>6}  {:>10}  {}",
            op,
            r.passed + r.failed,
            r.passed,
            r.failed,
            if r.max_err == 0.0 { "0".to_string() } else { format!("{:.2e}", r.max_err) },
            if r.failed == 0 { "PASS" } else { "FAIL" }
        );
    }
    for f in &failures {
        println!("{f}");
    }
    failures.is_empty()
}

/// Largest |got - want| over the values where neither is NaN (shapes already equal, or
/// `compare` reports the mismatch).
/// The largest error against the reference, or (for the LayerNorm family, where either
/// passes) against the exact value where that is nearer.
fn max_abs_error(want: &HostTensor, got: &HostTensor, exact: Option<&[f64]>) -> f64 {
    if want.shape != got.shape {
        return 0.0;
    }
    let (w, g) = (want.to_f64(), got.to_f64());
    let exact = exact.filter(|e| e.len() == w.len());
    (0..w.len())
        .filter(|&i| !w[i].is_nan() && !g[i].is_nan())
        .map(|i| exact.map_or((g[i] - w[i]).abs(), |e| (g[i] - w[i]).abs().min((g[i] - e[i]).abs())))
        .fold(0.0, f64::max)
}
