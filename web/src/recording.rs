//! Recorded execution for JavaScript: `gpu.record()` collects the commands of many
//! calls, `submit()` hands them to the queue once and resolves with the reads, after
//! the deferred errors (bad GPU-resident indices, device errors) are checked.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wgpu_embed as lib;

use crate::layers::{array_arg, EmbeddingSumLayerNorm};
use crate::optim::Optimizer;
use crate::retrieval::Retriever;
use crate::{args::index_list, args::shape_arg, layers::indices_and_shape};
use crate::{js_error, BagArgs, Embedding, EmbeddingBag, Gpu, IndexList, Tensor};

/// The commands of many calls, submitted once (`gpu.record()`). Each method records a
/// call and returns its outputs at once (tensors usable by later calls of the same
/// recording); `read(tensor)` asks for a tensor's values; `submit()` resolves with
/// them, in the order they were asked for.
#[wasm_bindgen]
pub struct Recording {
    // Declared before `ctx`, so dropped first: it borrows the context `ctx` keeps alive.
    inner: RefCell<Option<lib::Recording<'static>>>,
    reads: RefCell<Vec<lib::ReadId>>,
    ctx: Rc<lib::Context>,
}

#[wasm_bindgen]
impl Gpu {
    /// A new recording on this device.
    pub fn record(&self) -> Recording {
        let ctx = self.ctx.clone();
        // SAFETY: the recording borrows the context behind `ctx`, an `Rc` stored in the
        // same struct and dropped after it (field order); the context never moves.
        let inner: lib::Recording<'static> = unsafe { std::mem::transmute(ctx.record()) };
        Recording { inner: RefCell::new(Some(inner)), reads: RefCell::default(), ctx }
    }

    /// What this device has done so far: `{ submissions, waits, pipelinesCreated,
    /// dispatches, readbacks, bytesReadBack }` (see the crate's `Context::stats`).
    pub fn stats(&self) -> Result<JsValue, JsValue> {
        let s = self.ctx.stats();
        let o = js_sys::Object::new();
        for (key, value) in [
            ("submissions", s.submissions),
            ("waits", s.waits),
            ("pipelinesCreated", s.pipelines_created),
            ("dispatches", s.dispatches),
            ("readbacks", s.readbacks),
            ("bytesReadBack", s.bytes_read_back),
        ] {
            js_sys::Reflect::set(&o, &key.into(), &JsValue::from(value as f64))?;
        }
        Ok(o.into())
    }
}

impl Recording {
    fn with<T>(&self, f: impl FnOnce(&mut lib::Recording<'static>) -> lib::Result<T>) -> Result<T, JsValue> {
        let mut slot = self.inner.borrow_mut();
        let run = slot.as_mut().ok_or_else(|| js_error(lib::Error::arg("recording", "this recording was already submitted")))?;
        f(run).map_err(js_error)
    }

    fn tensor(&self, t: lib::GpuTensor) -> Tensor {
        Tensor::new(self.ctx.clone(), t)
    }
}

#[wasm_bindgen]
impl Recording {
    /// `embedding.forward(indices, shape)`, recorded.
    pub fn lookup(
        &self,
        layer: &Embedding,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] indices: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] shape: JsValue,
    ) -> Result<Tensor, JsValue> {
        let (values, shape) = indices_and_shape(&indices, &shape, "indices")?;
        let out = self.with(|run| layer.layer.record(run, values.as_indices(&shape)))?;
        Ok(self.tensor(out))
    }

    /// A lookup of indices already on the GPU (an I32 tensor of any shape, e.g. a
    /// retriever's top-k `indices`), bounds-checked in the same submission: a bad one
    /// rejects `submit()` with its position and value, and writes nothing.
    #[wasm_bindgen(js_name = lookupTensor)]
    pub fn lookup_tensor(&self, layer: &Embedding, indices: &Tensor) -> Result<Tensor, JsValue> {
        let idx = indices.gpu()?.clone();
        let out = self.with(|run| layer.layer.record_gpu(run, &idx))?;
        Ok(self.tensor(out))
    }

    /// `block.forward(indices, shape)` (BERT's embedding block), recorded.
    #[wasm_bindgen(js_name = embeddingSumLayerNorm)]
    pub fn embedding_sum_layer_norm(
        &self,
        block: &EmbeddingSumLayerNorm,
        #[wasm_bindgen(unchecked_param_type = "IndexArray[]")] indices: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] shape: JsValue,
    ) -> Result<Tensor, JsValue> {
        let lists = array_arg(&indices, "indices")?.iter().map(|v| index_list(v, "indices")).collect::<Result<Vec<IndexList>, _>>()?;
        let shape = shape_arg(&shape, "shape")?.unwrap_or_else(|| vec![lists.first().map_or(0, |l| l.len())]);
        let out = self.with(|run| {
            let idx: Vec<lib::Indices<'_>> = lists.iter().map(|l| l.as_indices(&shape)).collect();
            block.layer.record(run, &idx)
        })?;
        Ok(self.tensor(out))
    }

    /// `bag.forward(input, offsets, ...)`, recorded; the rest of `forward`'s arguments,
    /// when needed, as `{ perSampleWeights, inputShape, perSampleWeightsShape }`.
    pub fn bag(
        &self,
        layer: &EmbeddingBag,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] input: JsValue,
        #[wasm_bindgen(unchecked_param_type = "IndexArray | null | undefined")] offsets: JsValue,
        #[wasm_bindgen(
            unchecked_param_type = "{ perSampleWeights?: Float32Array, inputShape?: number[], perSampleWeightsShape?: number[] } | undefined"
        )]
        more: JsValue,
    ) -> Result<Tensor, JsValue> {
        let field = |key: &str| -> Result<JsValue, JsValue> {
            if more.is_undefined() || more.is_null() {
                return Ok(JsValue::UNDEFINED);
            }
            js_sys::Reflect::get(&more, &key.into())
        };
        let (psw, input_shape, psw_shape) = (field("perSampleWeights")?, field("inputShape")?, field("perSampleWeightsShape")?);
        let a = BagArgs::read(&input, &offsets, &psw, &input_shape, &psw_shape)?;
        let out = self.with(|run| layer.layer.record(run, a.input(), a.offsets(), a.weights()))?;
        Ok(self.tensor(out))
    }

    /// `retriever.searchTensor(queries, k)`, recorded: `{ scores, indices }` on the GPU.
    #[wasm_bindgen(unchecked_return_type = "{ scores: Tensor, indices: Tensor }")]
    pub fn search(&self, retriever: &Retriever, queries: &Tensor, k: f64) -> Result<JsValue, JsValue> {
        if !(k.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&k)) {
            return Err(js_error(lib::Error::arg("k", format!("expected a non-negative integer, got {k}"))));
        }
        let q = queries.gpu()?.clone();
        let top = self.with(|run| retriever.inner.record(run, &q, k as usize))?;
        retriever.result(top)
    }

    /// `optimizer.stepEmbedding(layer, indices, gradOut, shape)`, recorded as the fused
    /// backward and step.
    #[wasm_bindgen(js_name = stepEmbedding)]
    pub fn step_embedding(
        &self,
        optimizer: &Optimizer,
        layer: &Embedding,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] indices: JsValue,
        grad_out: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] shape: JsValue,
    ) -> Result<(), JsValue> {
        let g = grad_out.gpu()?.clone();
        let (values, shape) = indices_and_shape(&indices, &shape, "indices")?;
        let mut opt = optimizer.inner.borrow_mut();
        self.with(|run| opt.record_step_embedding(run, &layer.layer, values.as_indices(&shape), &g))
    }

    /// [`Recording::step_embedding`] for indices already on the GPU (an I32 tensor, e.g.
    /// a retriever's top-k `indices`), bounds-checked in the same submission: a bad one
    /// rejects `submit()` and leaves the table and the optimizer's states as they were.
    #[wasm_bindgen(js_name = stepEmbeddingTensor)]
    pub fn step_embedding_tensor(
        &self,
        optimizer: &Optimizer,
        layer: &Embedding,
        indices: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(), JsValue> {
        let (idx, g) = (indices.gpu()?.clone(), grad_out.gpu()?.clone());
        let mut opt = optimizer.inner.borrow_mut();
        self.with(|run| opt.record_step_embedding_gpu(run, &layer.layer, &idx, &g))
    }

    /// Asks for `tensor`'s bytes as they are at this point of the recording; `submit()`
    /// resolves with them. Returns the read's position in that list.
    pub fn read(&self, tensor: &Tensor) -> Result<u32, JsValue> {
        let t = tensor.gpu()?.clone();
        let id = self.with(|run| Ok(run.read(&t)))?;
        let mut reads = self.reads.borrow_mut();
        reads.push(id);
        Ok(reads.len() as u32 - 1)
    }

    /// Submits everything recorded, once, and resolves with the reads (`Uint8Array`s, in
    /// the order of `read`) after checking the deferred errors: it rejects with the
    /// library's message for a bad GPU-resident index (naming the argument, position and
    /// value) or a device error.
    #[wasm_bindgen(unchecked_return_type = "Uint8Array[]")]
    pub async fn submit(&self) -> Result<JsValue, JsValue> {
        let run =
            self.inner.borrow_mut().take().ok_or_else(|| js_error(lib::Error::arg("recording", "this recording was already submitted")))?;
        let done = run.submit().map_err(js_error)?;
        let out = done.finish().await.map_err(js_error)?;
        let reads: js_sys::Array = self.reads.borrow().iter().map(|&id| JsValue::from(js_sys::Uint8Array::from(out.bytes(id)))).collect();
        Ok(reads.into())
    }
}
