//! Where kernels report out-of-range indices that only the GPU saw.

use crate::gpu::context::Context;
#[cfg(test)] // the kernel-level tests read the report back
use crate::{
    error::{Error, Result},
    gpu::tensor::{DType, GpuTensor},
};

/// A one-word buffer: the smallest position of a bad index, or `u32::MAX`.
pub(crate) struct Status {
    buffer: wgpu::Buffer,
}

impl Status {
    pub(crate) fn new(ctx: &Context) -> Self {
        use wgpu::util::DeviceExt;
        let buffer = ctx.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
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
    #[cfg(test)]
    pub(crate) async fn check_async(&self, ctx: &Context, name: &'static str, idx: &GpuTensor, num_rows: u64) -> Result<()> {
        let t = GpuTensor::from_buffer(self.buffer.clone(), &[4], DType::U32);
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&t.read_bytes(ctx).await?);
        let position = words[0];
        if position == u32::MAX {
            return Ok(());
        }
        let value = read_index(ctx, idx, position as u64).await?;
        Err(Error::IndexOutOfRange { name, position: position as u64, value, num_embeddings: num_rows })
    }

    /// Blocking [`Self::check_async`], for the kernel-level tests.
    #[cfg(test)]
    pub(crate) fn check(&self, ctx: &Context, name: &'static str, idx: &GpuTensor, num_rows: u64) -> Result<()> {
        pollster::block_on(self.check_async(ctx, name, idx, num_rows))
    }
}

/// The one value at `position` of a flat I32 tensor (only that word is read back).
#[cfg(test)]
async fn read_index(ctx: &Context, idx: &GpuTensor, position: u64) -> Result<i64> {
    let Some(seg) = idx.segment_of(position) else {
        return Ok(-1);
    };
    let word = ctx.scoped(|| {
        let word = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("bad-index"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = ctx.encoder();
        encoder.copy_buffer_to_buffer(&seg.buffer, (position - seg.first_row) * 4, &word, 0, 4);
        ctx.submit(encoder)?;
        Ok(word)
    })?;
    let bytes = GpuTensor::from_buffer(word, &[1], DType::I32).read_bytes(ctx).await?;
    Ok(i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as i64)
}
