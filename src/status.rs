//! Where kernels report out-of-range indices that only the GPU saw.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::tensor::GpuTensor;

/// A one-word buffer: the smallest position of a bad index, or `u32::MAX`.
pub(crate) struct Status {
    buffer: wgpu::Buffer,
}

impl Status {
    pub(crate) fn new(ctx: &Context) -> Self {
        use wgpu::util::DeviceExt;
        let buffer = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("status"),
            contents: bytemuck::cast_slice(&[u32::MAX, 0, 0, 0]),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
        Status { buffer }
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Reads the report back; a bad index becomes [`Error::IndexOutOfRange`] naming
    /// its position and value.
    pub(crate) async fn check_async(&self, ctx: &Context, name: &'static str, idx: &GpuTensor, num_rows: u64) -> Result<()> {
        let t = GpuTensor::from_buffer(self.buffer.clone(), &[4], crate::tensor::DType::U32);
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&t.read_bytes(ctx).await?);
        let position = words[0];
        if position == u32::MAX {
            return Ok(());
        }
        let values: Vec<i32> = bytemuck::pod_collect_to_vec(&idx.read_bytes(ctx).await?);
        let value = values.get(position as usize).copied().unwrap_or(-1) as i64;
        Err(Error::IndexOutOfRange { name, position: position as u64, value, num_embeddings: num_rows })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn check(&self, ctx: &Context, name: &'static str, idx: &GpuTensor, num_rows: u64) -> Result<()> {
        pollster::block_on(self.check_async(ctx, name, idx, num_rows))
    }
}
