//! Reading a safetensors file's bytes in the page: tensor names, shapes, metadata,
//! host copies of indices and values, and uploads of f32 tables to the GPU.

use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors};
use wasm_bindgen::prelude::*;
use wgpu_embed::Error;

use crate::{gpu_call, js_error, Gpu, Tensor};

struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A parsed safetensors file (the bytes stay in wasm memory; nothing is on the GPU
/// until `upload`).
#[wasm_bindgen]
pub struct SafetensorsFile {
    bytes: Vec<u8>,
    entries: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
    /// The file read as a conformance case file, on first use by `exactNorm`.
    cases: std::cell::OnceCell<Option<wgpu_embed::conformance::cases::CaseFile>>,
}

impl SafetensorsFile {
    fn entry(&self, name: &str) -> Result<&Entry, JsValue> {
        self.entries.get(name).ok_or_else(|| js_error(Error::arg("name", format!("no tensor named {name:?} in the file"))))
    }

    fn data(&self, e: &Entry) -> &[u8] {
        &self.bytes[e.start..e.end]
    }

    fn wrong_dtype(name: &str, e: &Entry, want: &str) -> JsValue {
        js_error(Error::arg("name", format!("tensor {name:?} is {:?}, expected {want}", e.dtype)))
    }
}

#[wasm_bindgen]
impl SafetensorsFile {
    /// Parses the file's header (throws on a malformed file).
    #[wasm_bindgen(constructor)]
    pub fn new(bytes: &[u8]) -> Result<SafetensorsFile, JsValue> {
        let bytes = bytes.to_vec();
        let (entries, metadata) = {
            let st = SafeTensors::deserialize(&bytes).map_err(|e| js_error(Error::Format(e.to_string())))?;
            let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| js_error(Error::Format(e.to_string())))?;
            let metadata: BTreeMap<String, String> = meta.metadata().clone().unwrap_or_default().into_iter().collect();
            let base = bytes.as_ptr() as usize;
            let entries = st
                .iter()
                .map(|(name, view)| {
                    let start = view.data().as_ptr() as usize - base;
                    let entry = Entry { dtype: view.dtype(), shape: view.shape().to_vec(), start, end: start + view.data().len() };
                    (name.to_string(), entry)
                })
                .collect();
            (entries, metadata)
        };
        Ok(SafetensorsFile { bytes, entries, metadata, cases: std::cell::OnceCell::new() })
    }

    /// The exact (float64) result of LayerNorm-family case `caseId` of a conformance
    /// file, which FORMAT.md accepts as well as PyTorch's (the library's own rule, as
    /// `wgpu-embed check` applies it); `undefined` for other cases.
    #[wasm_bindgen(js_name = exactNorm)]
    pub fn exact_norm(&self, case_id: &str) -> Option<js_sys::Float64Array> {
        let file = self.cases.get_or_init(|| wgpu_embed::conformance::cases::CaseFile::parse(&self.bytes).ok()).as_ref()?;
        let case = file.cases.iter().find(|c| c.id == case_id)?;
        wgpu_embed::conformance::exact::exact_norm(file, case).map(|v| js_sys::Float64Array::from(&v[..]))
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// The `__metadata__` strings.
    #[wasm_bindgen(unchecked_return_type = "Record<string, string>")]
    pub fn metadata(&self) -> JsValue {
        let o = js_sys::Object::new();
        for (k, v) in &self.metadata {
            let _ = js_sys::Reflect::set(&o, &k.into(), &v.into());
        }
        o.into()
    }

    /// Does the file hold a tensor of this name?
    pub fn has(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// dtype (safetensors' spelling, e.g. "F32", "I64") and shape.
    #[wasm_bindgen(unchecked_return_type = "TensorInfo")]
    pub fn info(&self, name: &str) -> Result<JsValue, JsValue> {
        let e = self.entry(name)?;
        let o = js_sys::Object::new();
        js_sys::Reflect::set(&o, &"dtype".into(), &format!("{:?}", e.dtype).into())?;
        let shape: js_sys::Array = e.shape.iter().map(|&d| JsValue::from(d as f64)).collect();
        js_sys::Reflect::set(&o, &"shape".into(), &shape)?;
        Ok(o.into())
    }

    /// An F32 tensor's values.
    pub fn float32(&self, name: &str) -> Result<js_sys::Float32Array, JsValue> {
        let e = self.entry(name)?;
        if e.dtype != Dtype::F32 {
            return Err(Self::wrong_dtype(name, e, "F32"));
        }
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(self.data(e));
        Ok(js_sys::Float32Array::from(&values[..]))
    }

    /// A U8 tensor's values (e.g. quantization codes).
    pub fn uint8(&self, name: &str) -> Result<js_sys::Uint8Array, JsValue> {
        let e = self.entry(name)?;
        if e.dtype != Dtype::U8 {
            return Err(Self::wrong_dtype(name, e, "U8"));
        }
        Ok(js_sys::Uint8Array::from(self.data(e)))
    }

    /// An I32 or I64 tensor's values (Int32Array or BigInt64Array), for use as indices.
    #[wasm_bindgen(unchecked_return_type = "Int32Array | BigInt64Array")]
    pub fn indices(&self, name: &str) -> Result<JsValue, JsValue> {
        let e = self.entry(name)?;
        match e.dtype {
            Dtype::I32 => Ok(js_sys::Int32Array::from(&bytemuck::pod_collect_to_vec::<u8, i32>(self.data(e))[..]).into()),
            Dtype::I64 => Ok(js_sys::BigInt64Array::from(&bytemuck::pod_collect_to_vec::<u8, i64>(self.data(e))[..]).into()),
            _ => Err(Self::wrong_dtype(name, e, "I32 or I64")),
        }
    }

    /// Uploads an F32 tensor to the GPU (rows are its last dimension).
    pub async fn upload(&self, gpu: &Gpu, name: &str) -> Result<Tensor, JsValue> {
        let e = self.entry(name)?;
        if e.dtype != Dtype::F32 {
            return Err(Self::wrong_dtype(name, e, "F32"));
        }
        let ctx = gpu.ctx.clone();
        let row_len = e.shape.last().copied().unwrap_or(1);
        let data = self.data(e);
        let t = gpu_call(&ctx, || wgpu_embed::GpuTensor::from_bytes(&ctx, data, &e.shape, wgpu_embed::DType::F32, row_len)).await?;
        Ok(Tensor::new(ctx, t))
    }
}
