//! The conformance runner: runs every case of a case file through the op registry on
//! the GPU and reports each. One bad case never stops the run.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::conformance::cases::{Case, CaseFile, CaseInputs, HostTensor};
use crate::error::{Error, Result};
use crate::gpu::context::Context;

/// What one case produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseReport {
    pub id: String,
    pub status: String,
    pub message: Option<String>,
    pub ms: f64,
}

/// The report written next to the outputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub adapter: AdapterReport,
    pub cases: Vec<CaseReport>,
}

/// Which adapter ran the cases.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
}

/// Runs one case; returns its named outputs.
pub fn run_case(ctx: &Context, file: &CaseFile, case: &Case) -> Result<Vec<(String, HostTensor)>> {
    let inputs = CaseInputs { case, file };
    let outputs = crate::conformance::registry::run_op(ctx, &case.op, &inputs)?;
    Ok(outputs)
}

/// Runs every case of `file`; outputs are named `ID/NAME`.
pub fn run_cases(ctx: &Context, file: &CaseFile) -> (Vec<(String, HostTensor)>, Report) {
    run_cases_with(ctx, file, &mut |_| {})
}

/// [`run_cases`], calling `before_case` before each case (a progress bar's tick).
pub fn run_cases_with(ctx: &Context, file: &CaseFile, before_case: &mut dyn FnMut(&Case)) -> (Vec<(String, HostTensor)>, Report) {
    let mut outputs = Vec::new();
    let mut reports = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for case in &file.cases {
        before_case(case);
        let start = Instant::now();
        // Outputs are named by case id: a repeated id would make the output file ambiguous.
        let result = if !seen.insert(case.id.as_str()) {
            Err(Error::Format(format!("case id {:?} appears more than once in the file", case.id)))
        } else {
            // A panic would be a bug of ours; it must still not stop the run.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(ctx, file, case)))
                .unwrap_or_else(|p| Err(Error::Device(format!("internal error (panic): {}", panic_message(&p)))))
        };
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let (status, message) = match result {
            Ok(outs) => {
                for (name, t) in outs {
                    outputs.push((format!("{}/{name}", case.id), t));
                }
                ("ok".to_string(), None)
            }
            Err(e) => ("error".to_string(), Some(e.to_string())),
        };
        reports.push(CaseReport { id: case.id.clone(), status, message, ms });
    }
    let info = ctx.adapter_info();
    let report = Report {
        adapter: AdapterReport { name: info.name.clone(), backend: format!("{:?}", info.backend).to_lowercase() },
        cases: reports,
    };
    (outputs, report)
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown".into())
}
