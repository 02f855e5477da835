//! Saving for JavaScript: tensors and optimizer states to safetensors bytes (wrap them
//! in a `Blob` to download or keep them), and an optimizer resumed from them.

use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wgpu_embed as lib;

use crate::backward::checked;
use crate::optim::Optimizer;
use crate::{js_error, Gpu, Tensor};

/// Tensors and optimizer states to save (`gpu.stateDict()`), named as PyTorch's
/// `state_dict()` names them.
#[wasm_bindgen]
pub struct StateDict {
    ctx: Rc<lib::Context>,
    inner: lib::StateDict,
}

#[wasm_bindgen]
impl Gpu {
    /// An empty set of tensors to save.
    #[wasm_bindgen(js_name = stateDict)]
    pub fn state_dict(&self) -> StateDict {
        StateDict { ctx: self.ctx.clone(), inner: lib::StateDict::new() }
    }
}

#[wasm_bindgen]
impl StateDict {
    /// Adds `tensor` as `name` (e.g. `"weight"` for an embedding's table, what
    /// `torch.nn.Embedding.load_state_dict` takes).
    pub fn tensor(&mut self, name: &str, tensor: &Tensor) -> Result<(), JsValue> {
        let t = tensor.gpu()?;
        self.inner = std::mem::take(&mut self.inner).tensor(name, t);
        Ok(())
    }

    /// Adds an optimizer's state as `{prefix}state.0.{name}` (torch.optim's and
    /// bitsandbytes' state names), its step count as the scalar `{prefix}state.0.step`
    /// and its hyper-parameters as metadata.
    pub fn optimizer(&mut self, prefix: &str, optimizer: &Optimizer) {
        let opt = optimizer.inner.borrow();
        self.inner = std::mem::take(&mut self.inner).optimizer(prefix, &opt);
    }

    /// The safetensors bytes of everything added, read from the GPU in one
    /// submission: `new Blob([bytes])` to keep or download them.
    #[wasm_bindgen(js_name = toBytes)]
    pub async fn to_bytes(&self) -> Result<js_sys::Uint8Array, JsValue> {
        let bytes = checked(&self.ctx, self.inner.to_bytes(&self.ctx).await).await?;
        Ok(js_sys::Uint8Array::from(&bytes[..]))
    }
}

#[wasm_bindgen]
impl Optimizer {
    /// Restores the state saved under `prefix` (see `StateDict.optimizer`) from
    /// safetensors `bytes` (e.g. `new Uint8Array(await blob.arrayBuffer())`): the states
    /// and the step count, so the next step is the saved optimizer's next step.
    #[wasm_bindgen(js_name = loadState)]
    pub fn load_state(&self, bytes: &[u8], prefix: &str) -> Result<(), JsValue> {
        let saved = lib::Checkpoint::from_bytes(bytes.to_vec()).map_err(js_error)?;
        self.inner.borrow_mut().load_state(&self.ctx, &saved, prefix).map_err(js_error)
    }
}
