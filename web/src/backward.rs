//! The layers' backward passes, for JavaScript: each returns a plain object of
//! gradient tensors that stay on the GPU.

use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wgpu_embed as lib;

use crate::args::{index_list, opt_bool, shape_arg};
use crate::layers::{indices_and_shape, AxialPositionEmbedding, EmbeddingSumLayerNorm, LayerNorm, StableEmbedding};
use crate::{gpu_call, js_error, BagArgs, Embedding, EmbeddingBag, Tensor};

/// `{ scaleGradByFreq?, sparse? }`.
fn grad_options(options: &JsValue) -> Result<lib::GradOptions, JsValue> {
    Ok(lib::GradOptions::default()
        .scale_grad_by_freq(opt_bool(options, "scaleGradByFreq")?.unwrap_or(false))
        .sparse(opt_bool(options, "sparse")?.unwrap_or(false)))
}

/// An object of named tensors (absent ones left out).
fn object(ctx: &Rc<lib::Context>, named: Vec<(&str, Option<lib::GpuTensor>)>) -> Result<JsValue, JsValue> {
    let o = js_sys::Object::new();
    for (name, t) in named {
        if let Some(t) = t {
            js_sys::Reflect::set(&o, &name.into(), &JsValue::from(Tensor::new(ctx.clone(), t)))?;
        }
    }
    Ok(o.into())
}

/// A table gradient: `{ weight }` when dense, `{ indices, values }` when sparse.
fn gradient(g: lib::Gradient) -> Vec<(&'static str, Option<lib::GpuTensor>)> {
    match g {
        lib::Gradient::Dense(w) => vec![("weight", Some(w))],
        lib::Gradient::Sparse { indices, values, .. } => vec![("indices", Some(indices)), ("values", Some(values))],
    }
}

/// Runs an async backward and turns GPU errors it raised into an exception: the
/// sparse path awaits a read-back between submissions, so it cannot sit inside one
/// pair of error scopes; the context records such errors instead.
pub(crate) async fn checked<T>(ctx: &lib::Context, result: lib::Result<T>) -> Result<T, JsValue> {
    let value = result.map_err(js_error)?;
    ctx.check_alive().map_err(js_error)?;
    // The library's own scopes (the recordings of one-call methods), awaited here.
    ctx.deferred_errors().await.map_err(js_error)?;
    if let Some(e) = ctx.take_uncaptured_error() {
        return Err(js_error(lib::Error::Device(e)));
    }
    Ok(value)
}

fn gpu_tensor(t: &Tensor) -> Result<lib::GpuTensor, JsValue> {
    t.gpu().cloned()
}

#[wasm_bindgen]
impl Embedding {
    /// The table's gradient for `gradOut` (`[...shape, D]` on the GPU): `{ weight }`, or
    /// with `sparse` `{ indices, values }` (distinct rows ascending, summed rows).
    /// Options `{ scaleGradByFreq?, sparse? }`.
    pub async fn backward(
        &self,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] indices: JsValue,
        grad_out: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] shape: JsValue,
        #[wasm_bindgen(unchecked_param_type = "{ scaleGradByFreq?: boolean, sparse?: boolean } | undefined")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let (values, shape) = indices_and_shape(&indices, &shape, "indices")?;
        let (g, opts) = (gpu_tensor(grad_out)?, grad_options(&options)?);
        let r = self.layer.backward(&self.ctx, values.as_indices(&shape), &g, opts).await;
        object(&self.ctx, gradient(checked(&self.ctx, r).await?))
    }

    /// [`Embedding::backward`] for indices already on the GPU (an I32 tensor of any
    /// shape; `gradOut` is `[...indices.shape, D]`): bounds-checked in the same
    /// submission as a bad one is reported, before the gradient is made.
    #[wasm_bindgen(js_name = backwardTensor)]
    pub async fn backward_tensor(
        &self,
        indices: &Tensor,
        grad_out: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "{ scaleGradByFreq?: boolean, sparse?: boolean } | undefined")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let (idx, g, opts) = (gpu_tensor(indices)?, gpu_tensor(grad_out)?, grad_options(&options)?);
        let r = self.layer.backward_gpu(&self.ctx, &idx, &g, opts).await;
        object(&self.ctx, gradient(checked(&self.ctx, r).await?))
    }
}

#[wasm_bindgen]
impl EmbeddingBag {
    /// The gradients for `gradOut` (`[B, D]` on the GPU), with the arguments of
    /// `forward`: `{ weight }` or `{ indices, values }`, and `perSampleWeights` when given.
    #[wasm_bindgen(js_name = backward)]
    #[allow(clippy::too_many_arguments)]
    pub async fn backward(
        &self,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] input: JsValue,
        #[wasm_bindgen(unchecked_param_type = "IndexArray | null | undefined")] offsets: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Float32Array | null | undefined")] per_sample_weights: JsValue,
        grad_out: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] input_shape: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] per_sample_weights_shape: JsValue,
        #[wasm_bindgen(unchecked_param_type = "{ scaleGradByFreq?: boolean, sparse?: boolean } | undefined")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let a = BagArgs::read(&input, &offsets, &per_sample_weights, &input_shape, &per_sample_weights_shape)?;
        let (g, opts) = (gpu_tensor(grad_out)?, grad_options(&options)?);
        let r = self.layer.backward(&self.ctx, a.input(), a.offsets(), a.weights(), &g, opts).await;
        let grads = checked(&self.ctx, r).await?;
        let mut named = gradient(grads.weight);
        named.push(("perSampleWeights", grads.per_sample_weights));
        object(&self.ctx, named)
    }
}

#[wasm_bindgen]
impl LayerNorm {
    /// Gradients for `gradOut` of the input `x` (both on the GPU): `{ x, gamma?, beta? }`.
    pub async fn backward(&self, x: &Tensor, grad_out: &Tensor) -> Result<JsValue, JsValue> {
        let (x, g) = (gpu_tensor(x)?, gpu_tensor(grad_out)?);
        let grads = gpu_call(&self.ctx, || self.layer.backward(&self.ctx, &x, &g)).await?;
        object(&self.ctx, vec![("x", Some(grads.x)), ("gamma", grads.gamma), ("beta", grads.beta)])
    }
}

/// `{ weight, gamma?, beta? }` (one table) or `{ tables, gamma?, beta? }`.
fn sum_grads(ctx: &Rc<lib::Context>, grads: lib::SumLayerNormGrads, one_table: bool) -> Result<JsValue, JsValue> {
    let o = object(ctx, vec![("gamma", grads.gamma), ("beta", grads.beta)])?;
    if one_table {
        let weight = grads.tables.into_iter().next().map(|t| JsValue::from(Tensor::new(ctx.clone(), t)));
        js_sys::Reflect::set(&o, &"weight".into(), &weight.unwrap_or(JsValue::NULL))?;
    } else {
        let tables: js_sys::Array = grads.tables.into_iter().map(|t| JsValue::from(Tensor::new(ctx.clone(), t))).collect();
        js_sys::Reflect::set(&o, &"tables".into(), &tables)?;
    }
    Ok(o)
}

#[wasm_bindgen]
impl StableEmbedding {
    /// Gradients for `gradOut` (`[...shape, D]` on the GPU): `{ weight, gamma, beta }`.
    pub async fn backward(
        &self,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] indices: JsValue,
        grad_out: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] shape: JsValue,
    ) -> Result<JsValue, JsValue> {
        let (values, shape) = indices_and_shape(&indices, &shape, "indices")?;
        let g = gpu_tensor(grad_out)?;
        let grads = gpu_call(&self.ctx, || self.layer.backward(&self.ctx, values.as_indices(&shape), &g)).await?;
        sum_grads(&self.ctx, grads, true)
    }
}

#[wasm_bindgen]
impl EmbeddingSumLayerNorm {
    /// Gradients for `gradOut` (on the GPU): `{ tables, gamma?, beta? }`. `shapes` gives
    /// each index array's shape (they broadcast, e.g. positions `[1, S]` with ids `[B, S]`).
    pub async fn backward(
        &self,
        #[wasm_bindgen(unchecked_param_type = "IndexArray[]")] indices: JsValue,
        grad_out: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "number[][]")] shapes: JsValue,
    ) -> Result<JsValue, JsValue> {
        let lists = js_sys::Array::from(&indices).iter().map(|v| index_list(&v, "indices")).collect::<Result<Vec<_>, _>>()?;
        let shapes = js_sys::Array::from(&shapes)
            .iter()
            .map(|s| shape_arg(&s, "shapes").map(|s| s.unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()?;
        if shapes.len() != lists.len() {
            return Err(js_error(lib::Error::arg(
                "shapes",
                format!("expected {} shapes (one per index array), got {}", lists.len(), shapes.len()),
            )));
        }
        let g = gpu_tensor(grad_out)?;
        let grads = gpu_call(&self.ctx, || {
            let idx: Vec<lib::Indices<'_>> = lists.iter().zip(&shapes).map(|(l, s)| l.as_indices(s)).collect();
            self.layer.backward(&self.ctx, &idx, &g)
        })
        .await?;
        sum_grads(&self.ctx, grads, false)
    }
}

#[wasm_bindgen]
impl AxialPositionEmbedding {
    /// Gradients of the two axial weights for `gradOut` (`[...shape, d0 + d1]` on the
    /// GPU), as transformers' `AxialPositionEmbeddings` gives them under autograd:
    /// `{ weight0: [n1, d0], weight1: [n2, d1] }`.
    pub async fn backward(
        &self,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] position_ids: JsValue,
        grad_out: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] shape: JsValue,
    ) -> Result<JsValue, JsValue> {
        let (values, shape) = indices_and_shape(&position_ids, &shape, "position_ids")?;
        let g = gpu_tensor(grad_out)?;
        let r = self.layer.backward(&self.ctx, values.as_indices(&shape), &g).await;
        let grads = checked(&self.ctx, r).await?;
        object(&self.ctx, vec![("weight0", Some(grads.weight0)), ("weight1", Some(grads.weight1))])
    }
}

#[wasm_bindgen]
impl AxialPositionEmbedding {
    /// The two weights, `[n1, d0]` and `[n2, d1]` (what `step`'s optimizers update):
    /// `gpu.optimizer(axial.weight(k), options)`.
    pub fn weight(&self, k: usize) -> Result<Tensor, JsValue> {
        let w = self.layer.weights().get(k).map(|w| (*w).clone());
        w.map(|w| Tensor::new(self.ctx.clone(), w))
            .ok_or_else(|| js_error(lib::Error::arg("k", format!("expected 0 or 1 (two axial weights), got {k}"))))
    }

    /// The backward and one step of each weight (`optimizer0` made for `weight(0)`,
    /// `optimizer1` for `weight(1)`): fused into the backward for the optimizers that
    /// take sparse gradients, as the library's `AxialPositionEmbedding::step`.
    #[allow(clippy::await_holding_refcell_ref)] // as Optimizer.stepEmbedding: the borrows refuse a second step meanwhile
    pub async fn step(
        &self,
        optimizer0: &crate::optim::Optimizer,
        optimizer1: &crate::optim::Optimizer,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] position_ids: JsValue,
        grad_out: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] shape: JsValue,
    ) -> Result<(), JsValue> {
        let (values, shape) = indices_and_shape(&position_ids, &shape, "position_ids")?;
        let g = gpu_tensor(grad_out)?;
        let (mut o0, mut o1) = (optimizer0.busy_or_mut()?, optimizer1.busy_or_mut()?);
        let r = self.layer.step(&self.ctx, [&mut o0, &mut o1], values.as_indices(&shape), &g).await;
        checked(&self.ctx, r).await
    }
}
