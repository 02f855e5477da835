//! Conformance: case files, the op registry, and the runner that `wgpu-embed
//! run-cases` and `wgpu-embed check` use.

pub mod cases;
pub mod exact;
#[cfg(not(target_arch = "wasm32"))] // reads the runner's report
pub mod judge;
pub mod registry;
#[cfg(not(target_arch = "wasm32"))] // blocking read-backs: the CLI's, not the browser's
pub mod runner;
