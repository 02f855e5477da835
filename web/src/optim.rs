//! Optimizers for JavaScript: a table's optimizer state on the GPU and its steps.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wgpu_embed as lib;

use crate::backward::checked;
use crate::layers::indices_and_shape;
use crate::{gpu_call, js_error, BagArgs, Embedding, EmbeddingBag, Gpu, StableEmbedding, Tensor};

/// An optimizer over one table (`gpu.optimizer(table, options)`).
#[wasm_bindgen]
pub struct Optimizer {
    pub(crate) ctx: Rc<lib::Context>,
    pub(crate) inner: RefCell<lib::Optimizer>,
}

#[wasm_bindgen]
impl Gpu {
    /// An optimizer for `table` (an F32 `[V, D]` tensor, e.g. a layer's `weight`, or a
    /// 1-D one such as LayerNorm's gamma): options `{ optimizer: "sgd" | "adam" |
    /// "adamw" | "adagrad" | "sparse_adam" | "rowwise_adagrad" | "adam8bit" |
    /// "adamw8bit" | "adam32bit" | "adam8bit_blockwise", lr, ..., overrides? }` with
    /// torch.optim's and bitsandbytes' hyper-parameter names (snake_case:
    /// `weight_decay`, `betas`, `eps`, `min_8bit_size`, ...); `overrides` is one
    /// parameter's `GlobalOptimManager.override_config` (`{ optim_bits: 32, lr }`).
    pub fn optimizer(
        &self,
        table: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "OptimizerOptions")] options: JsValue,
    ) -> Result<Optimizer, JsValue> {
        let (kind, config) = optimizer_options(&json_options(&options)?)?;
        let inner = lib::Optimizer::with_config(&self.ctx, kind, table.gpu()?, &config).map_err(js_error)?;
        Ok(Optimizer { ctx: self.ctx.clone(), inner: RefCell::new(inner) })
    }

    /// Row indices on the GPU (I32), e.g. a sparse gradient's rows.
    #[wasm_bindgen(js_name = indexTensor)]
    pub async fn index_tensor(
        &self,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] indices: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] shape: JsValue,
    ) -> Result<Tensor, JsValue> {
        let (values, shape) = indices_and_shape(&indices, &shape, "indices")?;
        let rows = values.as_indices(&shape).to_rows_i32("indices").map_err(js_error)?;
        let ctx = self.ctx.clone();
        let t = gpu_call(&ctx, || lib::GpuTensor::from_i32(&ctx, &rows, &shape)).await?;
        Ok(Tensor::new(ctx, t))
    }
}

/// The kind and the overrides of `gpu.optimizer`'s options.
fn optimizer_options(params: &serde_json::Map<String, serde_json::Value>) -> Result<(lib::OptimizerKind, lib::ParamConfig), JsValue> {
    let kind = lib::OptimizerKind::from_json(params).map_err(js_error)?;
    let config = match params.get("overrides") {
        None | Some(serde_json::Value::Null) => lib::ParamConfig::default(),
        Some(serde_json::Value::Object(o)) => lib::ParamConfig::from_json(o).map_err(js_error)?,
        Some(v) => return Err(js_error(lib::Error::arg("overrides", format!("expected an object, got {v}")))),
    };
    Ok((kind, config))
}

/// `options` as a JSON object.
fn json_options(options: &JsValue) -> Result<serde_json::Map<String, serde_json::Value>, JsValue> {
    let json = js_sys::JSON::stringify(options).map_err(|_| js_error(lib::Error::arg("options", "expected a plain object")))?;
    serde_json::from_str(&String::from(json)).map_err(|e| js_error(lib::Error::arg("options", format!("expected a plain object: {e}"))))
}

#[wasm_bindgen]
impl StableEmbedding {
    /// The table, `[V, D]` (what `optimizer` steps).
    #[wasm_bindgen(getter)]
    pub fn weight(&self) -> Tensor {
        Tensor::new(self.ctx.clone(), self.layer.weight().clone())
    }

    /// An optimizer for this layer's table with bitsandbytes' rule
    /// (`Optimizer::for_layer`): 8-bit Adam keeps 32-bit states here, as
    /// `bnb.optim.Adam8bit` does over `bnb.nn.StableEmbedding`. Options as `gpu.optimizer`'s.
    pub fn optimizer(&self, #[wasm_bindgen(unchecked_param_type = "OptimizerOptions")] options: JsValue) -> Result<Optimizer, JsValue> {
        let (kind, _) = optimizer_options(&json_options(&options)?)?;
        let inner = lib::Optimizer::for_layer(&self.ctx, kind, &self.layer).map_err(js_error)?;
        Ok(Optimizer { ctx: self.ctx.clone(), inner: RefCell::new(inner) })
    }
}

#[wasm_bindgen]
impl Optimizer {
    /// One step from a dense gradient (`[V, D]`, e.g. `backward(...).weight`); the table
    /// changes in place.
    #[allow(clippy::await_holding_refcell_ref)] // as step_embedding
    pub async fn step(&self, table: &Tensor, grad: &Tensor) -> Result<(), JsValue> {
        let (t, g) = (table.gpu()?.clone(), grad.gpu()?.clone());
        let mut opt = self.busy_or_mut()?;
        let r = opt.step(&self.ctx, &t, &lib::Gradient::Dense(g)).await;
        checked(&self.ctx, r).await
    }

    /// One step from a sparse gradient: distinct `indices` (I32 on the GPU, as a sparse
    /// `backward` returns them) and their `values` (`[nnz, D]`). The rows are
    /// bounds-checked in the same submission: a bad one rejects with its position and
    /// value, and nothing is written.
    #[wasm_bindgen(js_name = stepSparse)]
    pub async fn step_sparse(&self, table: &Tensor, indices: &Tensor, values: &Tensor) -> Result<(), JsValue> {
        let t = table.gpu()?.clone();
        let num_embeddings = t.shape().first().copied().unwrap_or(0);
        let grad = lib::Gradient::Sparse { indices: indices.gpu()?.clone(), values: values.gpu()?.clone(), num_embeddings };
        let mut run = self.ctx.record();
        self.inner.borrow_mut().record_step(&mut run, &t, &grad).map_err(js_error)?;
        run.submit().map_err(js_error)?.finish().await.map_err(js_error)?;
        Ok(())
    }

    /// Backward of `layer` (an `Embedding` over this optimizer's table) and this step in
    /// one pass, for the optimizers that take sparse gradients: the gradient is never
    /// written. `indices` and `shape` as `Embedding.forward` takes them; `gradOut` is
    /// `[...shape, D]`. Gives what `backward` (sparse) then `stepSparse` give.
    #[wasm_bindgen(js_name = stepEmbedding)]
    // The borrow is held over the await on purpose: it is what refuses a second step
    // started before this one resolves (busy_or_mut), and JS runs one task at a time.
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn step_embedding(
        &self,
        layer: &Embedding,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] indices: JsValue,
        grad_out: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] shape: JsValue,
    ) -> Result<(), JsValue> {
        let (values, shape) = indices_and_shape(&indices, &shape, "indices")?;
        let g = grad_out.gpu()?.clone();
        let mut opt = self.busy_or_mut()?;
        let r = opt.step_embedding(&self.ctx, &layer.layer, values.as_indices(&shape), &g).await;
        checked(&self.ctx, r).await
    }

    /// [`Optimizer::step_embedding`] for an `EmbeddingBag` (sum or mean), its arguments as
    /// `EmbeddingBag.forward` takes them; resolves to the per-sample weights' gradient
    /// (a Tensor) when they are given, else undefined.
    #[wasm_bindgen(js_name = stepEmbeddingBag, unchecked_return_type = "Tensor | undefined")]
    #[allow(clippy::too_many_arguments, clippy::await_holding_refcell_ref)] // as step_embedding
    pub async fn step_embedding_bag(
        &self,
        layer: &EmbeddingBag,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] input: JsValue,
        #[wasm_bindgen(unchecked_param_type = "IndexArray | null | undefined")] offsets: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Float32Array | null | undefined")] per_sample_weights: JsValue,
        grad_out: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] input_shape: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] per_sample_weights_shape: JsValue,
    ) -> Result<JsValue, JsValue> {
        let a = BagArgs::read(&input, &offsets, &per_sample_weights, &input_shape, &per_sample_weights_shape)?;
        let g = grad_out.gpu()?.clone();
        let mut opt = self.busy_or_mut()?;
        let r = opt.step_embedding_bag(&self.ctx, &layer.layer, a.input(), a.offsets(), a.weights(), &g).await;
        let grads = checked(&self.ctx, r).await?;
        Ok(grads.map_or(JsValue::UNDEFINED, |t| Tensor::new(self.ctx.clone(), t).into()))
    }

    /// The optimizer, unless another of its steps is still running (JS may call again
    /// before a step's promise resolves): refused rather than a trap.
    pub(crate) fn busy_or_mut(&self) -> Result<std::cell::RefMut<'_, lib::Optimizer>, JsValue> {
        self.inner.try_borrow_mut().map_err(|_| js_error(lib::Error::arg("optimizer", "another step of this optimizer is still running")))
    }

    /// The state tensor called `name` (`exp_avg`, `exp_avg_sq`, `sum`, `momentum_buffer`,
    /// `momentum`, `state1`, `absmax1`, `state2`, `absmax2`), if this optimizer has it.
    pub fn state(&self, name: &str) -> Option<Tensor> {
        self.inner.borrow().state(name).map(|t| Tensor::new(self.ctx.clone(), t.clone()))
    }

    /// The names of its states.
    #[wasm_bindgen(getter, js_name = stateNames)]
    pub fn state_names(&self) -> Vec<String> {
        self.inner.borrow().state_names().into_iter().map(String::from).collect()
    }
}
