//! Top-k retrieval for JavaScript: a table (dense or quantized) that queries are
//! scored against on the GPU, the best `k` rows of each kept.

use std::rc::Rc;
use std::str::FromStr;

use wasm_bindgen::prelude::*;
use wgpu_embed as lib;

use crate::args::{opt_i64, opt_str, shape_arg};
use crate::{gpu_call, js_error, Gpu, Tensor};

/// Scores queries against a table's rows (`gpu.retriever(table, shape, options)`).
#[wasm_bindgen]
pub struct Retriever {
    pub(crate) ctx: Rc<lib::Context>,
    pub(crate) inner: lib::Retriever,
}

#[wasm_bindgen]
impl Gpu {
    /// A retriever over the `[rows, dim]` f32 `table`, stored as `scheme` says: "f32"
    /// (default), "f16", "bf16", or quantized on the GPU ("int8_rowwise",
    /// "int8_blockwise", "nf4", "fp4", with `blocksize`) and scored from its codes.
    /// `metric`: "dot" (default) or "cosine".
    pub async fn retriever(
        &self,
        table: js_sys::Float32Array,
        #[wasm_bindgen(unchecked_param_type = "number[]")] shape: JsValue,
        #[wasm_bindgen(unchecked_param_type = "RetrieverOptions | undefined")] options: JsValue,
    ) -> Result<Retriever, JsValue> {
        let (n, d) = match shape_arg(&shape, "shape")?.as_deref() {
            Some(&[n, d]) => (n, d),
            other => return Err(js_error(lib::Error::arg("shape", format!("expected a table shape [rows, dim], got {other:?}")))),
        };
        let values = table.to_vec();
        if values.len() != n * d {
            return Err(js_error(lib::Error::arg("table", format!("{} values for a [{n}, {d}] table", values.len()))));
        }
        let metric = lib::Metric::from_str(opt_str(&options, "metric")?.as_deref().unwrap_or("dot")).map_err(js_error)?;
        let scheme = opt_str(&options, "scheme")?.unwrap_or_else(|| "f32".into());
        let blocksize = blocksize(&options)?;
        let ctx = self.ctx.clone();
        let inner = gpu_call(&ctx, || match scheme.as_str() {
            "f32" => lib::Retriever::new(lib::GpuTensor::from_f32(&ctx, &values, &[n, d])?, metric),
            "f16" => {
                let halves: Vec<half::f16> = values.iter().map(|&x| half::f16::from_f32(x)).collect();
                lib::Retriever::new(lib::GpuTensor::from_f16(&ctx, &halves, &[n, d])?, metric)
            }
            "bf16" => {
                let halves: Vec<half::bf16> = values.iter().map(|&x| half::bf16::from_f32(x)).collect();
                lib::Retriever::new(lib::GpuTensor::from_bf16(&ctx, &halves, &[n, d])?, metric)
            }
            other => {
                let scheme = lib::Scheme::from_str(other)?;
                let table = lib::QuantizedTable::from_pretrained(&ctx, &values, n, d, scheme, blocksize)?;
                Ok(lib::Retriever::quantized(table, metric))
            }
        })
        .await?;
        Ok(Retriever { ctx: self.ctx.clone(), inner })
    }
}

#[wasm_bindgen]
impl Gpu {
    /// A retriever over a `[rows, dim]` F32 tensor already on this GPU (e.g. an
    /// `EmbeddingBag`'s output): used as it is (`scheme` "f32", the default), or
    /// quantized on the GPU ("int8_rowwise", "int8_blockwise", "nf4", "fp4").
    #[wasm_bindgen(js_name = tensorRetriever)]
    pub async fn tensor_retriever(
        &self,
        table: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "RetrieverOptions | undefined")] options: JsValue,
    ) -> Result<Retriever, JsValue> {
        let metric = lib::Metric::from_str(opt_str(&options, "metric")?.as_deref().unwrap_or("dot")).map_err(js_error)?;
        let scheme = opt_str(&options, "scheme")?.unwrap_or_else(|| "f32".into());
        let blocksize = blocksize(&options)?;
        let (t, ctx) = (table.gpu()?.clone(), self.ctx.clone());
        let inner = gpu_call(&ctx, || match scheme.as_str() {
            "f32" => lib::Retriever::new(t.clone(), metric),
            other => {
                let table = lib::QuantizedTable::from_tensor(&ctx, &t, lib::Scheme::from_str(other)?, blocksize)?;
                Ok(lib::Retriever::quantized(table, metric))
            }
        })
        .await?;
        Ok(Retriever { ctx: self.ctx.clone(), inner })
    }
}

fn blocksize(options: &JsValue) -> Result<Option<usize>, JsValue> {
    match opt_i64(options, "blocksize")? {
        None => Ok(None),
        Some(b) if b >= 0 => Ok(Some(b as usize)),
        Some(b) => Err(js_error(lib::Error::arg("blocksize", format!("blocksize {b} is not supported")))),
    }
}

#[wasm_bindgen]
impl Retriever {
    /// The best `k` rows for each query of `queries` (`Q × dim` values):
    /// `{scores: Tensor [Q, k] F32 descending, indices: Tensor [Q, k] I32}` on the GPU.
    #[wasm_bindgen(unchecked_return_type = "{ scores: Tensor, indices: Tensor }")]
    pub async fn search(&self, queries: js_sys::Float32Array, k: f64) -> Result<JsValue, JsValue> {
        let (values, k) = (queries.to_vec(), count(k)?);
        let top = gpu_call(&self.ctx, || self.inner.search(&self.ctx, &values, k)).await?;
        self.result(top)
    }

    /// [`Retriever::search`] for queries already on the GPU (an F32 `[Q, dim]` tensor,
    /// e.g. an `EmbeddingBag` mean): nothing is read back.
    #[wasm_bindgen(js_name = searchTensor, unchecked_return_type = "{ scores: Tensor, indices: Tensor }")]
    pub async fn search_tensor(&self, queries: &Tensor, k: f64) -> Result<JsValue, JsValue> {
        let (q, k) = (queries.gpu()?.clone(), count(k)?);
        let top = gpu_call(&self.ctx, || self.inner.search_gpu(&self.ctx, &q, k)).await?;
        self.result(top)
    }

    /// Rows of the table.
    #[wasm_bindgen(getter, js_name = numRows)]
    pub fn num_rows(&self) -> usize {
        self.inner.num_rows()
    }

    pub(crate) fn result(&self, top: lib::TopK) -> Result<JsValue, JsValue> {
        let o = js_sys::Object::new();
        js_sys::Reflect::set(&o, &"scores".into(), &Tensor::new(self.ctx.clone(), top.scores).into())?;
        js_sys::Reflect::set(&o, &"indices".into(), &Tensor::new(self.ctx.clone(), top.indices).into())?;
        Ok(o.into())
    }
}

fn count(k: f64) -> Result<usize, JsValue> {
    if k.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&k) {
        Ok(k as usize)
    } else {
        Err(js_error(lib::Error::arg("k", format!("expected a non-negative integer, got {k}"))))
    }
}
