//! wgpu-embed in the browser: the library's layers exposed to JavaScript through
//! wasm-bindgen, running on the page's WebGPU device.
//!
//! Every call that touches the GPU is async: it runs the library's (synchronous)
//! recording and submission inside WebGPU error scopes and awaits them, so device
//! errors become JS exceptions instead of console noise. Bad arguments become
//! exceptions carrying the library's message (an `Error` whose `message` names the
//! argument and the value); nothing here panics on user input.

use std::rc::Rc;
use std::str::FromStr;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wgpu_embed as lib;

/// A JS class of a crate layer: the layer and the context it runs on.
macro_rules! js_layer {
    ($(#[$doc:meta])* $name:ident, $lib:ty) => {
        $(#[$doc])*
        #[wasm_bindgen]
        pub struct $name {
            pub(crate) ctx: Rc<lib::Context>,
            pub(crate) layer: $lib,
        }
    };
}

/// [`js_layer!`] with the `forward(indices, shape)` of a lookup.
macro_rules! lookup_layer {
    ($(#[$doc:meta])* $name:ident, $lib:ty) => {
        js_layer!($(#[$doc])* $name, $lib);

        #[wasm_bindgen]
        impl $name {
            /// Looks up `indices` (of `shape`, default 1-D); the result stays on the GPU.
            pub async fn forward(
                &self,
                #[wasm_bindgen(unchecked_param_type = "IndexArray")] indices: JsValue,
                #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] shape: JsValue,
            ) -> Result<Tensor, JsValue> {
                let (values, shape) = indices_and_shape(&indices, &shape, "indices")?;
                let out = gpu_call(&self.ctx, || self.layer.forward(&self.ctx, values.as_indices(&shape))).await?;
                Ok(Tensor::new(self.ctx.clone(), out))
            }
        }
    };
}

mod args;
mod backward;
mod layers;
mod optim;
mod recording;
mod retrieval;
mod safetensors_file;
mod save;
mod streamed;

pub use layers::*;

pub use safetensors_file::SafetensorsFile;

use args::{index_list, opt_bool, opt_f64, opt_i64, opt_str, shape_arg, IndexList};
use layers::indices_and_shape;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Index values: 32-bit or 64-bit integers, or plain numbers. */
export type IndexArray = Int32Array | BigInt64Array | Uint32Array | number[];

/** Options of `Gpu.create`. */
export interface GpuOptions {
  /** Behave as if one storage binding could span at most this many bytes, so that
   *  tables are split into several buffers as on small devices. */
  maxBindingSize?: number;
}

/** Options of `Gpu.embedding` (as `torch.nn.Embedding`). */
export interface EmbeddingOptions {
  paddingIdx?: number | null;
  /** Rows referenced by a forward whose norm exceeds this are renormalised in place. */
  maxNorm?: number | null;
  /** p of the p-norm for `maxNorm` (default 2). */
  normType?: number;
}

/** Options of `Gpu.embeddingBag` (as `torch.nn.EmbeddingBag`). */
export interface EmbeddingBagOptions extends EmbeddingOptions {
  mode?: "sum" | "mean" | "max";
  includeLastOffset?: boolean;
}

/** What `Gpu.adapterInfo()` returns. */
export interface AdapterInfo {
  name: string;
  backend: string;
  deviceType: string;
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  /** Bytes one binding spans here (the device limit or `GpuOptions.maxBindingSize`). */
  maxBindingSize: number;
}

/** Options of `Gpu.quantizeBlockwise` / `Gpu.dequantizeBlockwise` (bitsandbytes' defaults). */
export interface BlockwiseOptions {
  blocksize?: number | null;
  code?: "dynamic" | "linear";
}

/** Options of `Gpu.optimizer`: torch.optim's names (snake_case), bitsandbytes' for 8-bit Adam. */
export interface OptimizerOptions {
  optimizer: "sgd" | "adam" | "adamw" | "adagrad" | "sparse_adam" | "rowwise_adagrad" | "adam8bit" | "adamw8bit" | "adam32bit" | "adam8bit_blockwise";
  lr: number;
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
  weight_decay?: number;
  betas?: [number, number];
  eps?: number;
  initial_accumulator_value?: number;
  lr_decay?: number;
  blocksize?: number;
  /** bitsandbytes: tensors with fewer elements keep 32-bit states (default 4096). */
  min_8bit_size?: number;
  /** One parameter's `GlobalOptimManager.override_config`. */
  overrides?: { optim_bits?: 8 | 32; lr?: number; betas?: [number, number]; eps?: number; weight_decay?: number };
}

/** Options of `Gpu.retriever`: how the table is stored and how queries are compared. */
export interface RetrieverOptions {
  metric?: "dot" | "cosine";
  scheme?: "f32" | "f16" | "bf16" | "int8_rowwise" | "int8_blockwise" | "nf4" | "fp4";
  blocksize?: number | null;
}

/** What `SafetensorsFile.info(name)` returns. */
export interface TensorInfo {
  dtype: string;
  shape: number[];
}
"#;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(message: &str);
}

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// A JS exception carrying `error`'s message.
pub(crate) fn js_error(error: impl std::fmt::Display) -> JsValue {
    JsError::new(&error.to_string()).into()
}

/// Runs `f` (recording and submitting GPU work) inside validation and out-of-memory
/// error scopes and awaits them. Both scopes are popped before the first await, so
/// calls that interleave on the JS event loop never pop each other's scopes.
pub(crate) async fn gpu_call<T>(ctx: &lib::Context, f: impl FnOnce() -> lib::Result<T>) -> Result<T, JsValue> {
    ctx.check_alive().map_err(js_error)?;
    let device = ctx.device();
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let result = f();
    let validation = validation.pop();
    let oom = oom.pop();
    let (v, o) = (validation.await, oom.await);
    // The library's own scopes (the recordings of one-call methods), awaited here.
    if let Err(e) = ctx.deferred_errors().await {
        if result.is_ok() {
            return Err(js_error(e));
        }
    }
    ctx.check_alive().map_err(js_error)?;
    if let Some(e) = o {
        return Err(js_error(lib::Error::OutOfMemory(e.to_string())));
    }
    if let Some(e) = v {
        return Err(js_error(lib::Error::Device(e.to_string())));
    }
    result.map_err(js_error)
}

/// A WebGPU device with the library's compiled pipelines: the entry point.
#[wasm_bindgen]
pub struct Gpu {
    pub(crate) ctx: Rc<lib::Context>,
}

#[wasm_bindgen]
impl Gpu {
    /// Creates a context on the browser's default WebGPU adapter. Throws when the
    /// browser has no WebGPU or no adapter.
    pub async fn create(#[wasm_bindgen(unchecked_param_type = "GpuOptions | undefined")] options: JsValue) -> Result<Gpu, JsValue> {
        if !has_webgpu() {
            return Err(js_error(lib::Error::NoAdapter(
                "this browser has no WebGPU (navigator.gpu is missing); try a recent Chrome, Edge or Safari, or enable WebGPU".into(),
            )));
        }
        let max_binding_size = opt_f64(&options, "maxBindingSize")?;
        let max_binding_size = match max_binding_size {
            None => None,
            Some(m) if m.is_finite() && m >= 256.0 && m.fract() == 0.0 => Some(m as u64),
            Some(m) => {
                return Err(js_error(lib::Error::arg("maxBindingSize", format!("expected a whole number of bytes >= 256, got {m}"))))
            }
        };
        let options = lib::ContextOptions::default().backends(wgpu::Backends::BROWSER_WEBGPU).max_binding_size(max_binding_size);
        let ctx = lib::Context::with_options(options).await.map_err(js_error)?;
        // Errors outside our scopes (there should be none) are logged, never a panic.
        ctx.device()
            .on_uncaptured_error(std::sync::Arc::new(|e: wgpu::Error| console_error(&format!("wgpu-embed: uncaptured GPU error: {e}"))));
        Ok(Gpu { ctx: Rc::new(ctx) })
    }

    /// The adapter and the limits that matter here.
    /// The `GPUDevice` the library runs on, for WebGPU interop: another library given it
    /// (e.g. `ort.env.webgpu.device`) shares buffers with this one (`Tensor.gpuBuffers`).
    #[wasm_bindgen(getter, unchecked_return_type = "GPUDevice")]
    pub fn device(&self) -> Result<JsValue, JsValue> {
        let device = self.ctx.device().as_webgpu().ok_or_else(|| js_error(lib::Error::Unsupported("not a WebGPU device".into())))?;
        Ok(JsValue::from(device.clone()))
    }

    /// A `GPUAdapter`-shaped object whose `requestDevice()` resolves to this library's
    /// device (its `limits`, `features` and `info` are the device's). Libraries that
    /// take an adapter but always request their own device from it, as
    /// onnxruntime-web's WebGPU backend does (`ort.env.webgpu.adapter`), then run on
    /// our device, so that `Tensor.gpuBuffers` can be their inputs without a copy.
    #[wasm_bindgen(js_name = sharedAdapter, unchecked_return_type = "GPUAdapter")]
    pub fn shared_adapter(&self) -> Result<JsValue, JsValue> {
        let device = self.device()?;
        let adapter = js_sys::Object::new();
        for (key, from) in [("limits", "limits"), ("features", "features"), ("info", "adapterInfo")] {
            js_sys::Reflect::set(&adapter, &key.into(), &js_sys::Reflect::get(&device, &from.into())?)?;
        }
        // Whatever descriptor is asked for, the device is the one already made: its
        // limits are what `limits` above promised.
        let request_device =
            Closure::<dyn FnMut(JsValue) -> js_sys::Promise>::new(move |_descriptor: JsValue| js_sys::Promise::resolve(&device));
        js_sys::Reflect::set(&adapter, &"requestDevice".into(), &request_device.into_js_value())?;
        Ok(adapter.into())
    }

    #[wasm_bindgen(js_name = adapterInfo, unchecked_return_type = "AdapterInfo")]
    pub fn adapter_info(&self) -> JsValue {
        let info = self.ctx.adapter_info();
        let limits = self.ctx.limits();
        let o = js_sys::Object::new();
        let set = |k: &str, v: JsValue| {
            let _ = js_sys::Reflect::set(&o, &k.into(), &v);
        };
        set("name", info.name.as_str().into());
        set("backend", format!("{:?}", info.backend).into());
        set("deviceType", format!("{:?}", info.device_type).into());
        set("maxStorageBufferBindingSize", (limits.max_storage_buffer_binding_size as f64).into());
        set("maxBufferSize", (limits.max_buffer_size as f64).into());
        set("maxBindingSize", (self.ctx.max_binding_size() as f64).into());
        o.into()
    }

    /// Uploads an f32 tensor of the given shape (rows are the last dimension).
    pub async fn tensor(
        &self,
        data: js_sys::Float32Array,
        #[wasm_bindgen(unchecked_param_type = "number[]")] shape: JsValue,
    ) -> Result<Tensor, JsValue> {
        let shape = shape_arg(&shape, "shape")?.unwrap_or_else(|| vec![data.length() as usize]);
        let values = data.to_vec();
        let expected: usize = shape.iter().product();
        if expected != values.len() {
            return Err(js_error(lib::Error::arg(
                "data",
                format!("{} values given for shape {shape:?} ({expected} expected)", values.len()),
            )));
        }
        let ctx = self.ctx.clone();
        let t = gpu_call(&ctx, || lib::GpuTensor::from_f32(&ctx, &values, &shape)).await?;
        Ok(Tensor::new(ctx, t))
    }

    /// An `nn.Embedding` over `weight` (a `[V, D]` f32 tensor on this GPU).
    pub fn embedding(
        &self,
        weight: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "EmbeddingOptions | undefined")] options: JsValue,
    ) -> Result<Embedding, JsValue> {
        let (padding_idx, max_norm, norm_type) = common_options(&options)?;
        let layer = lib::Embedding::from_tensor(weight.gpu()?.clone())
            .and_then(|l| l.with_padding_idx(padding_idx))
            .and_then(|l| l.with_max_norm(max_norm, norm_type))
            .map_err(js_error)?;
        Ok(Embedding { ctx: self.ctx.clone(), layer })
    }

    /// An `nn.EmbeddingBag` over `weight` (a `[V, D]` f32 tensor on this GPU).
    #[wasm_bindgen(js_name = embeddingBag)]
    pub fn embedding_bag(
        &self,
        weight: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "EmbeddingBagOptions | undefined")] options: JsValue,
    ) -> Result<EmbeddingBag, JsValue> {
        let (padding_idx, max_norm, norm_type) = common_options(&options)?;
        let mode = lib::BagMode::from_str(opt_str(&options, "mode")?.as_deref().unwrap_or("mean")).map_err(js_error)?;
        let include_last_offset = opt_bool(&options, "includeLastOffset")?.unwrap_or(false);
        let layer = lib::EmbeddingBag::from_tensor(weight.gpu()?.clone(), mode)
            .and_then(|l| l.with_padding_idx(padding_idx))
            .and_then(|l| l.with_max_norm(max_norm, norm_type))
            .map(|l| l.with_include_last_offset(include_last_offset))
            .map_err(js_error)?;
        Ok(EmbeddingBag { ctx: self.ctx.clone(), layer })
    }
}

fn common_options(options: &JsValue) -> Result<(Option<i64>, Option<f32>, f32), JsValue> {
    let padding_idx = opt_i64(options, "paddingIdx")?;
    let max_norm = opt_f64(options, "maxNorm")?.map(|m| m as f32);
    let norm_type = opt_f64(options, "normType")?.unwrap_or(2.0) as f32;
    Ok((padding_idx, max_norm, norm_type))
}

fn has_webgpu() -> bool {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).unwrap_or(JsValue::UNDEFINED);
    if navigator.is_undefined() || navigator.is_null() {
        return false;
    }
    let gpu = js_sys::Reflect::get(&navigator, &"gpu".into()).unwrap_or(JsValue::UNDEFINED);
    !(gpu.is_undefined() || gpu.is_null())
}

/// A tensor that lives on the GPU until freed. Layers take and return these, so data
/// stays on the device between calls; read it back with `toFloat32Array()`.
#[wasm_bindgen]
pub struct Tensor {
    pub(crate) ctx: Rc<lib::Context>,
    inner: Option<lib::GpuTensor>,
}

impl Tensor {
    pub(crate) fn new(ctx: Rc<lib::Context>, inner: lib::GpuTensor) -> Self {
        Tensor { ctx, inner: Some(inner) }
    }

    pub(crate) fn gpu(&self) -> Result<&lib::GpuTensor, JsValue> {
        self.inner.as_ref().ok_or_else(|| js_error(lib::Error::arg("tensor", "this tensor has been released")))
    }
}

#[wasm_bindgen]
impl Tensor {
    /// The `GPUBuffer`s holding the rows, in order (one per segment; rows row-major and
    /// tightly packed from offset 0, a buffer may be longer than its data): hand them to
    /// another WebGPU library on the same device, e.g. ONNX Runtime Web's
    /// `Tensor.fromGpuBuffer`, with no read-back.
    #[wasm_bindgen(getter, js_name = gpuBuffers, unchecked_return_type = "GPUBuffer[]")]
    pub fn gpu_buffers(&self) -> Result<js_sys::Array, JsValue> {
        let mut out = Vec::new();
        for seg in self.gpu()?.segments() {
            let buffer =
                seg.buffer().as_webgpu().ok_or_else(|| js_error(lib::Error::Unsupported("this buffer is not a WebGPU buffer".into())))?;
            out.push(JsValue::from(buffer.clone()));
        }
        Ok(out.into_iter().collect())
    }

    /// The shape.
    #[wasm_bindgen(getter, unchecked_return_type = "number[]")]
    pub fn shape(&self) -> Result<JsValue, JsValue> {
        Ok(self.gpu()?.shape().iter().map(|&d| JsValue::from(d as f64)).collect::<js_sys::Array>().into())
    }

    /// The element type: "F32", "I32", "U32", "U8", "F16" or "BF16".
    #[wasm_bindgen(getter)]
    pub fn dtype(&self) -> Result<String, JsValue> {
        Ok(format!("{:?}", self.gpu()?.dtype()))
    }

    /// Bytes of GPU memory this tensor holds.
    #[wasm_bindgen(getter, js_name = gpuBytes)]
    pub fn gpu_bytes(&self) -> Result<f64, JsValue> {
        Ok(self.gpu()?.gpu_bytes() as f64)
    }

    /// Buffers holding the rows (more than one when the tensor is larger than a binding).
    #[wasm_bindgen(getter)]
    pub fn segments(&self) -> Result<u32, JsValue> {
        Ok(self.gpu()?.segments().len() as u32)
    }

    /// Copies an f32 tensor back to the CPU.
    #[wasm_bindgen(js_name = toFloat32Array)]
    pub async fn to_float32_array(&self) -> Result<js_sys::Float32Array, JsValue> {
        let t = self.gpu()?.clone();
        let values = t.read_f32(&self.ctx).await.map_err(js_error)?;
        Ok(js_sys::Float32Array::from(&values[..]))
    }

    /// Copies the raw bytes back (e.g. the U8 codes of `quantizeBlockwise`).
    #[wasm_bindgen(js_name = toUint8Array)]
    pub async fn to_uint8_array(&self) -> Result<js_sys::Uint8Array, JsValue> {
        let t = self.gpu()?.clone();
        let bytes = t.read_bytes(&self.ctx).await.map_err(js_error)?;
        Ok(js_sys::Uint8Array::from(&bytes[..]))
    }

    /// Frees the GPU memory now (browsers otherwise free it at garbage collection).
    /// Layers built over this tensor keep their own handle and stay usable; the memory
    /// goes when the last handle is released. Also frees the JS object.
    pub fn release(mut self) {
        if let Some(t) = self.inner.take() {
            t.release();
        }
    }
}

lookup_layer!(
    /// `torch.nn.Embedding`'s forward on the GPU (`forward(indices, shape)`: shape
    /// `[...shape, embeddingDim]`).
    Embedding, lib::Embedding
);

#[wasm_bindgen]
impl Embedding {
    /// Looks up indices already on the GPU (an I32 tensor of any shape, e.g. a
    /// retriever's top-k `indices` or another library's output), bounds-checked in the
    /// same submission: a bad one rejects with its position and value, and nothing (not
    /// the `maxNorm` table) is written.
    #[wasm_bindgen(js_name = forwardTensor)]
    pub async fn forward_tensor(&self, indices: &Tensor) -> Result<Tensor, JsValue> {
        let idx = indices.gpu()?.clone();
        let r = self.layer.forward_gpu(&self.ctx, &idx).await;
        Ok(Tensor::new(self.ctx.clone(), backward::checked(&self.ctx, r).await?))
    }

    /// The table (after any in-place renormalisation by `maxNorm`).
    #[wasm_bindgen(getter)]
    pub fn weight(&self) -> Tensor {
        Tensor::new(self.ctx.clone(), self.layer.weight().clone())
    }

    #[wasm_bindgen(getter, js_name = numEmbeddings)]
    pub fn num_embeddings(&self) -> u32 {
        self.layer.num_embeddings() as u32
    }

    #[wasm_bindgen(getter, js_name = embeddingDim)]
    pub fn embedding_dim(&self) -> u32 {
        self.layer.embedding_dim() as u32
    }
}

js_layer!(
    /// `torch.nn.EmbeddingBag`'s forward on the GPU.
    EmbeddingBag, lib::EmbeddingBag
);

/// The JS `forward` of a bag layer (`EmbeddingBag`, `QuantizedEmbeddingBag`), in an
/// `impl` block of its own.
#[macro_export]
#[doc(hidden)]
macro_rules! bag_forward {
    ($layer:ident, $doc:literal) => {
        #[wasm_bindgen]
        impl $layer {
            #[doc = $doc]
            pub async fn forward(
                &self,
                #[wasm_bindgen(unchecked_param_type = "IndexArray")] input: JsValue,
                #[wasm_bindgen(unchecked_param_type = "IndexArray | null | undefined")] offsets: JsValue,
                #[wasm_bindgen(unchecked_param_type = "Float32Array | null | undefined")] per_sample_weights: JsValue,
                #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] input_shape: JsValue,
                #[wasm_bindgen(unchecked_param_type = "number[] | undefined")] per_sample_weights_shape: JsValue,
            ) -> Result<$crate::Tensor, JsValue> {
                let a = $crate::BagArgs::read(&input, &offsets, &per_sample_weights, &input_shape, &per_sample_weights_shape)?;
                let out = $crate::gpu_call(&self.ctx, || self.layer.forward(&self.ctx, a.input(), a.offsets(), a.weights())).await?;
                Ok($crate::Tensor::new(self.ctx.clone(), out))
            }
        }
    };
}

bag_forward!(
    EmbeddingBag,
    "Reduces bags: 1-D `input` with `offsets` (bag starts), or 2-D `input` of `inputShape` `[B, N]` without. \
     `perSampleWeights` (mode \"sum\" only) has the shape of `input` (or `perSampleWeightsShape`). Returns a \
     `[B, D]` tensor on the GPU."
);

#[wasm_bindgen]
impl EmbeddingBag {
    /// The table (after any in-place renormalisation by `maxNorm`).
    #[wasm_bindgen(getter)]
    pub fn weight(&self) -> Tensor {
        Tensor::new(self.ctx.clone(), self.layer.weight().clone())
    }

    /// "sum", "mean" or "max".
    #[wasm_bindgen(getter)]
    pub fn mode(&self) -> String {
        self.layer.mode().name().to_string()
    }
}

/// The arguments of a bag forward, read from JS.
pub(crate) struct BagArgs {
    input: IndexList,
    shape: Vec<usize>,
    offsets: Option<(IndexList, Vec<usize>)>,
    weights: Option<(Vec<f32>, Vec<usize>)>,
}

impl BagArgs {
    pub(crate) fn read(
        input: &JsValue,
        offsets: &JsValue,
        per_sample_weights: &JsValue,
        input_shape: &JsValue,
        per_sample_weights_shape: &JsValue,
    ) -> Result<BagArgs, JsValue> {
        let values = index_list(input, "input")?;
        let shape = shape_arg(input_shape, "inputShape")?.unwrap_or_else(|| vec![values.len()]);
        let offsets = if offsets.is_undefined() || offsets.is_null() {
            None
        } else {
            let o = index_list(offsets, "offsets")?;
            let n = o.len();
            Some((o, vec![n]))
        };
        let weights = if per_sample_weights.is_undefined() || per_sample_weights.is_null() {
            None
        } else {
            let w = per_sample_weights
                .dyn_ref::<js_sys::Float32Array>()
                .ok_or_else(|| js_error(lib::Error::arg("per_sample_weights", "expected a Float32Array")))?;
            let ws = shape_arg(per_sample_weights_shape, "perSampleWeightsShape")?.unwrap_or_else(|| shape.clone());
            Some((w.to_vec(), ws))
        };
        Ok(BagArgs { input: values, shape, offsets, weights })
    }

    pub(crate) fn input(&self) -> lib::Indices<'_> {
        self.input.as_indices(&self.shape)
    }

    pub(crate) fn offsets(&self) -> Option<lib::Indices<'_>> {
        self.offsets.as_ref().map(|(o, s)| o.as_indices(s))
    }

    pub(crate) fn weights(&self) -> Option<(&[f32], &[usize])> {
        self.weights.as_ref().map(|(w, s)| (&w[..], &s[..]))
    }
}

impl IndexList {
    pub(crate) fn as_indices<'a>(&'a self, shape: &'a [usize]) -> lib::Indices<'a> {
        match self {
            IndexList::I32(v) => lib::Indices::i32(v, shape),
            IndexList::I64(v) => lib::Indices::i64(v, shape),
        }
    }
}

/// The names of the ops of the conformance format that this package runs (the
/// library's op registry).
#[wasm_bindgen(js_name = supportedOps)]
pub fn supported_ops() -> Vec<String> {
    lib::conformance::registry::supported_ops().iter().map(|s| s.to_string()).collect()
}
