//! The judge: a run's outputs and report against a case file's expected values, by the
//! rules of FORMAT.md (those `check.py` applies), so that the repository's own reference
//! cases need no Python. `wgpu-embed judge`, `wgpu-embed check` and the tests use it.

use std::collections::BTreeMap;

use crate::conformance::cases::{compare, Case, CaseFile, CaseInputs, HostTensor};
use crate::conformance::exact::exact_norm;
use crate::conformance::registry::{op, Tolerance};
use crate::conformance::runner::{CaseReport, Report};

/// Outputs of a run by name (`ID/NAME`).
pub type OutputMap<'a> = BTreeMap<&'a str, &'a HostTensor>;

/// Indexes a run's outputs by name.
pub fn output_map(outputs: &[(String, HostTensor)]) -> OutputMap<'_> {
    outputs.iter().map(|(n, t)| (n.as_str(), t)).collect()
}

/// What is wrong with one case's result, or `None` when it passes: a refusal where the
/// reference refused, else every output within tolerance (top-k results also checked
/// for distinct rows whose recomputed scores are the returned ones).
pub fn judge_case(file: &CaseFile, case: &Case, report: &CaseReport, outputs: &OutputMap<'_>) -> Option<String> {
    if case.expect_error {
        return (report.status != "error")
            .then(|| format!("accepted an input the reference refuses ({})", case.reference_error.as_deref().unwrap_or("?")));
    }
    if report.status != "ok" {
        return Some(format!("refused: {}", report.message.as_deref().unwrap_or("?")));
    }
    let exact = exact_norm(file, case);
    for name in &case.outputs {
        let Some(want) = file.expected(&case.id, name) else {
            return Some(format!("the case file has no expected value for {name}"));
        };
        let Some(got) = outputs.get(format!("{}/{name}", case.id).as_str()) else {
            return Some(format!("output {name} missing"));
        };
        if let Some(problem) = compare(case, op(&case.op).map(|o| o.tolerance), want, got, exact.as_deref()) {
            return Some(format!("{name}: {problem}"));
        }
    }
    if op(&case.op).map(|o| o.tolerance) == Some(Tolerance::Ranking) {
        return judge_ranking(file, case, outputs);
    }
    None
}

/// Judges every case of `file` as reported in `report`; one line per failing case.
pub fn judge(file: &CaseFile, outputs: &[(String, HostTensor)], report: &Report) -> Vec<String> {
    let outputs = output_map(outputs);
    let by_id: BTreeMap<&str, &CaseReport> = report.cases.iter().map(|c| (c.id.as_str(), c)).collect();
    file.cases
        .iter()
        .filter_map(|case| {
            let problem = match by_id.get(case.id.as_str()) {
                None => Some("not in the report".to_string()),
                Some(rep) => judge_case(file, case, rep, &outputs),
            };
            problem.map(|p| format!("{} [{}]: {p}", case.id, case.op))
        })
        .collect()
}

/// Top-k: each returned row is a row of the table, distinct within its query, and its
/// score is the inner product of that row (as the scheme stores it: the case's
/// `_table` when it has one, f16-rounded for `f16`) with the query, within tolerance.
fn judge_ranking(file: &CaseFile, case: &Case, outputs: &OutputMap<'_>) -> Option<String> {
    let inputs = CaseInputs { case, file };
    let (scores, rows) = (outputs.get(format!("{}/scores", case.id).as_str())?, outputs.get(format!("{}/indices", case.id).as_str())?);
    let table = file.expected(&case.id, "_table").or(inputs.get("table").ok()?)?;
    let queries = inputs.get("queries").ok()??;
    let [n, d] = table.shape[..] else { return Some(format!("table of shape {:?}", table.shape)) };
    let params = inputs.params();
    let f16 = file.expected(&case.id, "_table").is_none() && params.opt_str("scheme").ok()? == Some("f16");
    let cosine = params.opt_str("metric").ok()? == Some("cosine");
    let normalise = |row: Vec<f64>| -> Vec<f64> {
        if !cosine {
            return row;
        }
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        row.iter().map(|x| x / norm).collect()
    };
    // f16 storage rounds the table, not the queries.
    let stored_row = |row: &[f64]| -> Vec<f64> {
        normalise(if f16 { row.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect() } else { row.to_vec() })
    };
    let k = *scores.shape.last()?;
    let (table, queries, scores, rows) = (table.to_f64(), queries.to_f64(), scores.to_f64(), rows.to_f64());
    let (atol, rtol) = (case.atol.unwrap_or(0.0), case.rtol.unwrap_or(0.0));
    for (q, (query, (qs, qr))) in queries.chunks(d.max(1)).zip(scores.chunks(k.max(1)).zip(rows.chunks(k.max(1)))).enumerate() {
        let query = normalise(query.to_vec());
        for (&score, &row) in qs.iter().zip(qr) {
            if row < 0.0 || row >= n as f64 {
                return Some(format!("query {q}: row {row} outside the table of {n} rows"));
            }
            let r = row as usize;
            let stored = stored_row(&table[r * d..(r + 1) * d]);
            let real: f64 = stored.iter().zip(&query).map(|(a, b)| a * b).sum();
            if (real - score).abs() > atol + rtol * score.abs() {
                return Some(format!("query {q}: row {r} returned with score {score:.7}, its score is {real:.7}"));
            }
        }
    }
    None
}
