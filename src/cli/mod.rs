//! The `wgpu-embed` command (the `cli` feature): `run-cases`, `judge`,
//! `check` and `supported-ops`.

mod check;

use crate::Block;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::conformance::cases::{outputs_to_safetensors, CaseFile, HostTensor};
use crate::conformance::judge::judge;
use crate::conformance::registry::supported_ops;
use crate::conformance::runner::run_cases_with;
use crate::conformance::runner::Report;
use crate::{Context, ContextOptions, TableReads};

#[derive(Parser)]
#[command(name = "wgpu-embed", version, about = "Embedding layers as WGSL compute shaders: conformance runner and tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct DeviceArgs {
    /// Behave as on a device whose max_storage_buffer_binding_size is this many bytes.
    #[arg(long)]
    max_binding_size: Option<u64>,
    /// Backend(s): vulkan, gl, metal, dx12 (default: WGPU_BACKEND or all).
    #[arg(long)]
    backend: Option<String>,
    /// Adapter whose name contains this text.
    #[arg(long)]
    adapter: Option<String>,
    /// Where lookups and bags read table rows from: auto (texture copies on CPU adapters,
    /// else buffers; or as WGPU_EMBED_TABLE_READS says), buffer or texture.
    #[arg(long, default_value = "auto")]
    table_reads: TableReads,
}

impl DeviceArgs {
    fn options(&self) -> ContextOptions {
        ContextOptions {
            backends: self.backend.as_deref().map(wgpu::Backends::from_comma_list),
            adapter_name: self.adapter.clone(),
            max_binding_size: self.max_binding_size,
            request_shader_f16: false,
            table_reads: self.table_reads,
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run every case of a case file; write outputs and a JSON report.
    RunCases {
        cases: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        report: PathBuf,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Judge the outputs and report of `run-cases` against the case file's expected
    /// values, by FORMAT.md's rules (those of check.py). Prints each failing case and
    /// `N passed, M failed`; exit status 1 when any case fails.
    Judge { cases: PathBuf, out: PathBuf, report: PathBuf },
    /// Print the conformance ops this build runs, comma-separated (for check.py --ops).
    SupportedOps,
    /// List the adapters and run the built-in conformance cases on each: a pass/fail
    /// table per op with the largest error. Exit status 1 when any case fails.
    Check {
        /// Backend(s): vulkan, gl, metal, dx12, comma-separated (default: WGPU_BACKEND or all).
        #[arg(long)]
        backend: Option<String>,
        /// Only adapters whose name contains this text (case-insensitive).
        #[arg(long)]
        adapter: Option<String>,
        /// Binding limit in bytes of a second pass that splits the tables (0: no second pass).
        #[arg(long, default_value_t = check::SPLIT_BINDING)]
        split_binding: u64,
        /// Also list the passing cases.
        #[arg(long, short)]
        verbose: bool,
    },
}

/// Runs the command line. Exit codes: 0 all cases ran (refusals are in the report), 2 bad
/// arguments or an unreadable / malformed case file (nothing run), 3 the device was
/// lost, 4 a case hit an internal error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::RunCases { cases, out, report, device } => match run_cases_cmd(&cases, &out, &report, &device) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("wgpu-embed: {e}");
                ExitCode::from(2)
            }
        },
        Command::Check { backend, adapter, split_binding, verbose } => check::run(&check::CheckArgs {
            backends: backend.as_deref().map(wgpu::Backends::from_comma_list),
            adapter,
            split_binding,
            verbose,
        }),
        Command::Judge { cases, out, report } => match judge_cmd(&cases, &out, &report) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("wgpu-embed: {e}");
                ExitCode::from(2)
            }
        },
        Command::SupportedOps => {
            println!("{}", supported_ops().join(","));
            ExitCode::SUCCESS
        }
    }
}

fn read_case_file(path: &PathBuf) -> Result<CaseFile, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    CaseFile::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn judge_cmd(cases: &PathBuf, out: &PathBuf, report: &PathBuf) -> Result<ExitCode, String> {
    let file = read_case_file(cases)?;
    let outputs = read_case_file_tensors(out)?;
    let text = std::fs::read_to_string(report).map_err(|e| format!("cannot read {}: {e}", report.display()))?;
    let rep: Report = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", report.display()))?;
    let failures = judge(&file, &outputs, &rep);
    for f in &failures {
        println!("FAIL {f}");
    }
    println!("{} passed, {} failed", file.cases.len() - failures.len(), failures.len());
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The tensors of a safetensors file written by `run-cases --out` (no case list).
fn read_case_file_tensors(path: &PathBuf) -> Result<Vec<(String, HostTensor)>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let tensors = CaseFile::parse_tensors(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(tensors.into_iter().collect())
}

fn run_cases_cmd(cases: &PathBuf, out: &PathBuf, report: &PathBuf, device: &DeviceArgs) -> Result<ExitCode, String> {
    let file = read_case_file(cases)?;
    let ctx = Context::with_options(device.options()).block().map_err(|e| e.to_string())?;
    let info = ctx.adapter_info();
    let reads = if ctx.reads_tables_from_textures() { "texture copies" } else { "buffers" };
    eprintln!("adapter: {} ({:?}); binding limit {} bytes; tables read from {reads}", info.name, info.backend, ctx.max_binding_size());
    // A progress bar on a terminal (indicatif draws nothing when stderr is not one).
    let bar = indicatif::ProgressBar::new(file.cases.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} cases, {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (outputs, rep) = run_cases_with(&ctx, &file, &mut |case| {
        bar.set_message(case.id.clone());
        bar.inc(1);
    });
    bar.finish_and_clear();
    let st = outputs_to_safetensors(&outputs).map_err(|e| e.to_string())?;
    std::fs::write(out, st).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let json = serde_json::to_string_pretty(&rep).map_err(|e| e.to_string())?;
    std::fs::write(report, json).map_err(|e| format!("cannot write {}: {e}", report.display()))?;
    let errors = rep.cases.iter().filter(|c| c.status != "ok").count();
    let expected_errors = file.cases.iter().filter(|c| c.expect_error).count();
    eprintln!(
        "{} cases: {} ran, {} refused ({} refusals expected by the file)",
        rep.cases.len(),
        rep.cases.len() - errors,
        errors,
        expected_errors
    );
    // Refused cases are reported per case (check.py judges them); a dead device or a bug
    // of ours (a caught panic) fails the whole run.
    if let Err(e) = ctx.check_alive() {
        eprintln!("wgpu-embed: {e}");
        return Ok(ExitCode::from(3));
    }
    let panics = rep.cases.iter().filter(|c| c.message.as_deref().is_some_and(|m| m.contains("internal error (panic)"))).count();
    if panics > 0 {
        eprintln!("wgpu-embed: {panics} case(s) hit an internal error (panic); see the report");
        return Ok(ExitCode::from(4));
    }
    Ok(ExitCode::SUCCESS)
}
