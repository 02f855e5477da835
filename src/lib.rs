//! # wgpu-embed
//!
//! Embedding layers with PyTorch / bitsandbytes semantics, run as WGSL compute
//! shaders through wgpu on any GPU (Vulkan, Metal, DX12, GL) and in the browser.
//!
//! ```no_run
//! use wgpu_embed::{Block, Context, Embedding, Indices};
//! let ctx = Context::new().block()?;
//! let table: Vec<f32> = (0..10 * 4).map(|i| i as f32).collect();
//! let emb = Embedding::from_pretrained(&ctx, &table, 10, 4)?;
//! let out = emb.forward(&ctx, Indices::i64(&[1, 2, 9], &[3]))?;
//! assert_eq!(out.read_f32(&ctx).block()?[..4], [4.0, 5.0, 6.0, 7.0]);
//! # Ok::<(), wgpu_embed::Error>(())
//! ```
//!
//! Layout: `gpu` (the runtime, which knows nothing about layers), `layers` (one module
//! and one shader family each), `quant` (bitsandbytes' quantization), `conformance`
//! (case files, the op registry, the runner) and `cli` (the `wgpu-embed` command,
//! behind the `cli` feature).

#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
pub mod block;
pub mod checkpoint;
#[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
pub mod cli;
#[cfg(feature = "conformance")]
#[doc(hidden)] // the CLI's, the test pages' and the tests': not a stable API
pub mod conformance;
pub mod error;
pub mod gpu;
#[doc = include_str!("guide/layers.md")]
pub mod guide {}
pub mod layers;
mod names;
pub mod optim;
pub mod quant;
pub mod save;

// The README's Rust quick start, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeQuickStart;

#[cfg(not(target_arch = "wasm32"))]
pub use block::Block;
pub use checkpoint::{Checkpoint, HostTable};
pub use error::{Error, Result};
pub use gpu::context::{Context, ContextOptions, TableReads};
#[doc(hidden)]
pub use gpu::kernel::ShaderFamily;
pub use gpu::pool::MemoryStats;
pub use gpu::recording::{ExecutionStats, Outputs, ReadId, Recording, Submitted};
pub use gpu::tensor::{DType, GpuTensor, TensorWriter};
pub use layers::axial::{AxialGrads, AxialPositionEmbedding};
pub use layers::embedding::Embedding;
pub use layers::embedding_backward::{BagGradients, GradOptions, Gradient};
pub use layers::embedding_bag::{BagMode, EmbeddingBag, PerSampleWeights};
pub use layers::indices::{IndexData, Indices};
pub use layers::layer_norm::LayerNorm;
pub use layers::layer_norm_backward::{LayerNormGrads, SumLayerNormGrads};
pub use layers::quantized::{QuantizedEmbedding, QuantizedEmbeddingBag};
pub use layers::retriever::{Metric, RetrievalTable, Retriever, TopK};
pub use layers::stable_embedding::{StableEmbedding, STABLE_EMBEDDING_EPS};
pub use layers::sum_layer_norm::EmbeddingSumLayerNorm;
pub use layers::table::{EmbeddingOptions, MaxNorm};
pub use layers::table_batched::{Pooling, TableBatchedEmbeddingBags, TablePrecision, TableRows, VariableBatch};
pub use optim::{Optimizer, OptimizerKind, ParamConfig, TrainableLayer};
pub use quant::blockwise::{dequantize_blockwise, quantize_blockwise, Blockwise};
pub use quant::codes::{CodeMap, FourBit};
pub use quant::table::{QuantizedTable, Scheme};
pub use save::StateDict;

/// Every shader family, as the runtime composes it (common helpers, then the family's
/// own file), for tools that validate them (tests/naga.rs). Not a stable API.
#[doc(hidden)]
pub static SHADERS: &[&ShaderFamily] = &[
    &layers::embedding::FAMILY,
    &layers::embedding_bag::FAMILY,
    &layers::embedding_backward::FAMILY,
    &gpu::sort::FAMILY,
    &optim::FAMILY,
    &layers::layer_norm::FAMILY,
    &layers::layer_norm_backward::FAMILY,
    &layers::axial::FAMILY,
    &layers::init::FAMILY,
    &layers::quantized::FAMILY,
    &layers::retriever::FAMILY,
    &layers::table_batched::FAMILY,
    &quant::blockwise::FAMILY,
    &gpu::plan::FINALIZE_FAMILY,
    &gpu::recording::FAMILY,
    &gpu::COPY_FAMILY,
];
