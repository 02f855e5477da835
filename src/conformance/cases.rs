//! Case files (see `FORMAT.md` of the conformance suite): their cases and tensors,
//! a case's inputs by role, outputs written as safetensors, and the comparison with
//! expected values that `check.py` makes.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layers::indices::Indices;

/// One case of a case file.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Case {
    pub id: String,
    pub op: String,
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    #[serde(default)]
    pub expect_error: bool,
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub atol: Option<f64>,
    #[serde(default)]
    pub rtol: Option<f64>,
    #[serde(default)]
    pub reference_error: Option<String>,
}

/// A host tensor read from or written to a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
}

/// Host data with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub data: HostData,
    pub shape: Vec<usize>,
}

impl HostTensor {
    /// An f32 tensor.
    pub fn f32(data: Vec<f32>, shape: Vec<usize>) -> Self {
        HostTensor { data: HostData::F32(data), shape }
    }

    /// An i64 tensor.
    pub fn i64(data: Vec<i64>, shape: Vec<usize>) -> Self {
        HostTensor { data: HostData::I64(data), shape }
    }

    /// A u8 tensor.
    pub fn u8(data: Vec<u8>, shape: Vec<usize>) -> Self {
        HostTensor { data: HostData::U8(data), shape }
    }

    /// The values as f32, if that is the dtype.
    pub fn as_f32(&self, role: &'static str) -> Result<&[f32]> {
        match &self.data {
            HostData::F32(v) => Ok(v),
            other => Err(Error::arg(role, format!("expected F32, got {}", dtype_name(other)))),
        }
    }

    /// The values widened to f64.
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            HostData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::U8(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// The values as u8 codes.
    pub fn as_u8(&self, role: &'static str) -> Result<&[u8]> {
        match &self.data {
            HostData::U8(v) => Ok(v),
            other => Err(Error::arg(role, format!("expected U8, got {}", dtype_name(other)))),
        }
    }

    /// The values as an index tensor (I64 or I32).
    pub fn as_indices(&self, role: &'static str) -> Result<Indices<'_>> {
        match &self.data {
            HostData::I64(v) => Ok(Indices::i64(v, &self.shape)),
            HostData::I32(v) => Ok(Indices::i32(v, &self.shape)),
            other => Err(Error::arg(role, format!("expected I64 or I32 indices, got {}", dtype_name(other)))),
        }
    }

    fn to_view(&self) -> (safetensors::Dtype, &[u8]) {
        match &self.data {
            HostData::F32(v) => (safetensors::Dtype::F32, bytemuck::cast_slice(v)),
            HostData::I64(v) => (safetensors::Dtype::I64, bytemuck::cast_slice(v)),
            HostData::I32(v) => (safetensors::Dtype::I32, bytemuck::cast_slice(v)),
            HostData::U8(v) => (safetensors::Dtype::U8, v),
        }
    }
}

fn dtype_name(d: &HostData) -> &'static str {
    match d {
        HostData::F32(_) => "F32",
        HostData::I64(_) => "I64",
        HostData::I32(_) => "I32",
        HostData::U8(_) => "U8",
    }
}

/// A parsed case file: its cases and tensors.
#[derive(Debug, Clone, Default)]
pub struct CaseFile {
    pub cases: Vec<Case>,
    pub tensors: HashMap<String, HostTensor>,
}

impl CaseFile {
    /// Parses the bytes of a case file. Malformed files give [`Error::Format`].
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let tensors = Self::parse_tensors(bytes)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::Format(format!("bad header: {e}")))?;
        let cases_json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("cases"))
            .ok_or_else(|| Error::Format("no \"cases\" entry in the file's __metadata__".into()))?;
        let cases: Vec<Case> = serde_json::from_str(cases_json).map_err(|e| Error::Format(format!("cases JSON: {e}")))?;
        Ok(CaseFile { cases, tensors })
    }

    /// The tensors of a safetensors file, by name (dtypes F32, F16 and BF16 as f32, I64,
    /// I32, U8; others left out). Malformed files give [`Error::Format`].
    pub fn parse_tensors(bytes: &[u8]) -> Result<HashMap<String, HostTensor>> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::Format(format!("not a safetensors file: {e}")))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let raw = view.data();
            let data = match view.dtype() {
                safetensors::Dtype::F32 => HostData::F32(bytemuck::pod_collect_to_vec(raw)),
                safetensors::Dtype::I64 => HostData::I64(bytemuck::pod_collect_to_vec(raw)),
                safetensors::Dtype::I32 => HostData::I32(bytemuck::pod_collect_to_vec(raw)),
                safetensors::Dtype::U8 => HostData::U8(raw.to_vec()),
                safetensors::Dtype::F16 => {
                    HostData::F32(raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
                }
                safetensors::Dtype::BF16 => {
                    HostData::F32(raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
                }
                // Tensors of other dtypes are kept out; a case naming one fails with a clear message.
                _ => continue,
            };
            tensors.insert(name, HostTensor { data, shape });
        }
        Ok(tensors)
    }

    /// The expected output `name` of case `id`, as stored in public case files.
    pub fn expected(&self, id: &str, name: &str) -> Option<&HostTensor> {
        self.tensors.get(&format!("{id}/expected/{name}"))
    }
}

/// The inputs of one case, by role.
pub struct CaseInputs<'a> {
    pub(crate) case: &'a Case,
    pub(crate) file: &'a CaseFile,
}

impl<'a> CaseInputs<'a> {
    /// The tensor of `role`, if the case names one.
    pub fn get(&self, role: &str) -> Result<Option<&'a HostTensor>> {
        match self.case.inputs.get(role) {
            None => Ok(None),
            Some(name) => self.file.tensors.get(name).map(Some).ok_or_else(|| {
                Error::Format(format!(
                    "case {}: input {role} names tensor {name:?}, which the file lacks or has in an unsupported dtype",
                    self.case.id
                ))
            }),
        }
    }

    /// The tensor of `role`, which the case must name.
    pub fn require(&self, role: &'static str) -> Result<&'a HostTensor> {
        self.get(role)?.ok_or_else(|| Error::arg(role, format!("case {} gives no `{role}` input", self.case.id)))
    }

    /// The case's parameters.
    pub fn params(&self) -> Params<'a> {
        Params(&self.case.params)
    }
}

/// Typed access to a case's `params`.
#[derive(Clone, Copy)]
pub struct Params<'a>(&'a serde_json::Map<String, serde_json::Value>);

impl Params<'_> {
    /// An optional number (absent or null: `None`).
    pub fn opt_f64(&self, key: &'static str) -> Result<Option<f64>> {
        match self.0.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| Error::arg(key, format!("expected a number, got {v}"))),
        }
    }

    /// An optional integer.
    pub fn opt_i64(&self, key: &'static str) -> Result<Option<i64>> {
        match self.0.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| Error::arg(key, format!("expected an integer, got {v}"))),
        }
    }

    /// A number with a default.
    pub fn f64_or(&self, key: &'static str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    /// A boolean with a default.
    pub fn bool_or(&self, key: &'static str, default: bool) -> Result<bool> {
        match self.0.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| Error::arg(key, format!("expected true or false, got {v}"))),
        }
    }

    /// A string, if present.
    pub fn opt_str(&self, key: &'static str) -> Result<Option<&str>> {
        match self.0.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| Error::arg(key, format!("expected a string, got {v}"))),
        }
    }

    /// A list of strings, if present.
    pub fn opt_str_list(&self, key: &'static str) -> Result<Option<Vec<String>>> {
        match self.0.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| Error::arg(key, format!("expected strings, got {v}"))))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(Error::arg(key, format!("expected a list, got {v}"))),
        }
    }

    /// A list of pairs of integers (FBGEMM's `embedding_specs`: `[[rows, dim], ...]`).
    pub fn usize_pairs(&self, key: &'static str) -> Result<Vec<(usize, usize)>> {
        let pair = |v: &serde_json::Value| match v.as_array().map(|a| a.iter().map(|x| x.as_u64()).collect::<Vec<_>>()).as_deref() {
            Some([Some(a), Some(b)]) => Ok((*a as usize, *b as usize)),
            _ => Err(Error::arg(key, format!("expected pairs of non-negative integers, got {v}"))),
        };
        match self.0.get(key) {
            Some(serde_json::Value::Array(a)) => a.iter().map(pair).collect(),
            other => Err(Error::arg(key, format!("expected a list of pairs, got {}", other.map_or("nothing".into(), |v| v.to_string())))),
        }
    }

    /// A list of lists of integers (such as FBGEMM's `batch_size_per_feature_per_rank`),
    /// if present.
    pub fn opt_usize_lists(&self, key: &'static str) -> Result<Option<Vec<Vec<usize>>>> {
        let list = |v: &serde_json::Value| {
            v.as_array()
                .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>())
                .ok_or_else(|| Error::arg(key, format!("expected lists of non-negative integers, got {v}")))
        };
        match self.0.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Array(a)) => a.iter().map(list).collect::<Result<Vec<_>>>().map(Some),
            Some(v) => Err(Error::arg(key, format!("expected a list of lists, got {v}"))),
        }
    }

    /// A list of integers, if present.
    pub fn opt_usize_list(&self, key: &'static str) -> Result<Option<Vec<usize>>> {
        match self.0.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|x| x as usize).ok_or_else(|| Error::arg(key, format!("expected non-negative integers, got {v}"))))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(Error::arg(key, format!("expected a list, got {v}"))),
        }
    }
}

/// How an op's outputs are compared with the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tolerance {
    /// Every value within the case's `atol + rtol * |expected|`.
    Values,
    /// The same, except that up to 1 in 1000 values may miss: a value on a rounding
    /// boundary may take the neighbouring code.
    Codes,
    /// Top-k results: scores by value; the rows of a query distinct, and free to differ
    /// from the reference's where scores tie (`check.py` also recomputes each score).
    Ranking,
}

/// Serialises outputs as safetensors bytes.
pub fn outputs_to_safetensors(outputs: &[(String, HostTensor)]) -> Result<Vec<u8>> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = outputs
        .iter()
        .map(|(name, t)| {
            let (dtype, bytes) = t.to_view();
            safetensors::tensor::TensorView::new(dtype, t.shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Format(format!("output {name}: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::Format(e.to_string()))
}

/// Compares an output with the expected tensor as `check.py` does, by the op's
/// `tolerance` (the registry's); `None` when it passes.
/// `exact`: the exact result of a LayerNorm-family case ([`crate::conformance::exact`]),
/// which a value may match instead of the expected one.
pub fn compare(case: &Case, tolerance: Option<Tolerance>, want: &HostTensor, got: &HostTensor, exact: Option<&[f64]>) -> Option<String> {
    if want.shape != got.shape {
        return Some(format!("shape {:?}, expected {:?}", got.shape, want.shape));
    }
    let (w, g) = (want.to_f64(), got.to_f64());
    let exact = exact.filter(|e| e.len() == w.len());
    let (atol, rtol) = (case.atol.unwrap_or(0.0), case.rtol.unwrap_or(0.0));
    let mut miss = 0usize;
    let mut worst = (0.0f64, 0usize);
    for (i, (&w, &g)) in w.iter().zip(&g).enumerate() {
        if w.is_nan() || g.is_nan() {
            if w.is_nan() != g.is_nan() {
                miss += 1;
            }
            continue;
        }
        let err = (g - w).abs();
        let near_exact = exact.is_some_and(|e| (g - e[i]).abs() <= atol + rtol * e[i].abs());
        if err > atol + rtol * w.abs() && !near_exact {
            miss += 1;
        }
        if err > worst.0 {
            worst = (err, i);
        }
    }
    if tolerance == Some(Tolerance::Ranking) && matches!(want.data, HostData::I64(_)) {
        // Rows of tied scores may come in another order: each query's rows distinct.
        let k = *want.shape.last().unwrap_or(&1);
        for (q, rows) in g.chunks(k.max(1)).enumerate() {
            let distinct: std::collections::BTreeSet<i64> = rows.iter().map(|&r| r as i64).collect();
            if distinct.len() != rows.len() {
                return Some(format!("query {q}: repeated rows"));
            }
        }
        return None;
    }
    let codes = tolerance == Some(Tolerance::Codes);
    let allowed = if codes { (w.len() as f64 * 1e-3) as usize } else { 0 };
    if miss > allowed {
        let i = worst.1;
        return Some(format!(
            "{miss} of {} values off (max |err| {:.3e} at flat index {i}: got {}, expected {})",
            w.len(),
            worst.0,
            g.get(i).copied().unwrap_or(f64::NAN),
            w.get(i).copied().unwrap_or(f64::NAN)
        ));
    }
    None
}
