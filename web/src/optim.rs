//! Optimizers for JavaScript: a table's optimizer state on the GPU and its steps.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wgpu_embed as lib;

use crate::layers::indices_and_shape;
use crate::{gpu_call, js_error, Gpu, Tensor};

/// An optimizer over one table (`gpu.optimizer(table, options)`).
#[wasm_bindgen]
pub struct Optimizer {
    ctx: Rc<lib::Context>,
    inner: RefCell<lib::Optimizer>,
}

#[wasm_bindgen]
impl Gpu {
    /// An optimizer for `table` (an F32 `[V, D]` tensor, e.g. a layer's `weight`):
    /// options `{ optimizer: "sgd" | "adam" | "adamw" | "adagrad" | "sparse_adam" |
    /// "rowwise_adagrad" | "adam8bit_blockwise", lr, ... }` with torch.optim's
    /// hyper-parameter names (snake_case: `weight_decay`, `betas`, `eps`, ...).
    pub fn optimizer(
        &self,
        table: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "OptimizerOptions")] options: JsValue,
    ) -> Result<Optimizer, JsValue> {
        let json = js_sys::JSON::stringify(&options).map_err(|_| js_error(lib::Error::arg("options", "expected a plain object")))?;
        let params: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&String::from(json))
            .map_err(|e| js_error(lib::Error::arg("options", format!("expected a plain object: {e}"))))?;
        let kind = lib::OptimizerKind::from_json(&params).map_err(js_error)?;
        let inner = lib::Optimizer::new(&self.ctx, kind, table.gpu()?).map_err(js_error)?;
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

#[wasm_bindgen]
impl Optimizer {
    /// One step from a dense gradient (`[V, D]`, e.g. `backward(...).weight`); the table
    /// changes in place.
    pub async fn step(&self, table: &Tensor, grad: &Tensor) -> Result<(), JsValue> {
        let (t, g) = (table.gpu()?.clone(), grad.gpu()?.clone());
        gpu_call(&self.ctx, || self.inner.borrow_mut().step(&self.ctx, &t, &lib::Gradient::Dense(g))).await
    }

    /// One step from a sparse gradient: distinct `indices` (I32 on the GPU, as a sparse
    /// `backward` returns them) and their `values` (`[nnz, D]`).
    #[wasm_bindgen(js_name = stepSparse)]
    pub async fn step_sparse(&self, table: &Tensor, indices: &Tensor, values: &Tensor) -> Result<(), JsValue> {
        let t = table.gpu()?.clone();
        let num_embeddings = t.shape().first().copied().unwrap_or(0);
        let grad = lib::Gradient::Sparse { indices: indices.gpu()?.clone(), values: values.gpu()?.clone(), num_embeddings };
        gpu_call(&self.ctx, || self.inner.borrow_mut().step(&self.ctx, &t, &grad)).await
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
