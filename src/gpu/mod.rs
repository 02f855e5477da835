//! The GPU runtime, which knows nothing about layers: the context (device, queue,
//! caches of modules, layouts and pipelines), tensors split into segments that each fit
//! a binding, table access (buffer segments, texture copies, quantized planes), the
//! dispatch plans every layer runs through, and the report of bad GPU-resident indices.

pub mod context;
pub(crate) mod kernel;
pub(crate) mod plan;
pub(crate) mod pool;
pub mod recording;
pub(crate) mod sort;
pub(crate) mod status;
pub(crate) mod table;
pub mod tensor;
pub(crate) mod texture;

/// The reference copy kernel the benchmark measures every kernel against.
pub(crate) static COPY_FAMILY: kernel::ShaderFamily =
    kernel::ShaderFamily { name: "copy", parts: &[kernel::common::GRID, include_str!("../../shaders/copy.wgsl")] };
