//! Texture copies of tables, read by the lookup and bag kernels on devices where a
//! texel fetch is much cheaper than a storage-buffer load (CPU adapters; see
//! [`crate::TableReads`]). `table.rs` decides when a table gets one.
//!
//! The table's bytes are laid end to end as `rgba32uint` texels: texel `t` (vec4 word
//! `t` of the whole table, across its segments) sits at x = t mod W, in texture row
//! r = t / W, which is row r mod H of layer r / H. W and H are powers of two so the
//! shaders split `t` with shifts and masks; a table that fits one layer has H = 2^31
//! (except on GL, see `table_texture`).

use crate::gpu::context::{word_texture, Context};

/// Widest texture row used (WebGPU guarantees 8192).
const MAX_WIDTH: u32 = 8192;

/// A table's texture copy and how its texels are addressed.
#[derive(Debug)]
pub(crate) struct TableTexture {
    texture: wgpu::Texture,
    view: wgpu::TextureView,
    /// log2 of the width W in texels.
    pub width_shift: u32,
    /// log2 of the rows per layer H (31 when there is one layer).
    pub layer_shift: u32,
    /// Set once the submission holding the copy that fills it is on the queue: only then
    /// may other recordings read it (theirs are submitted after it).
    filled: std::sync::atomic::AtomicBool,
}

impl TableTexture {
    /// Whether the copy that fills it has been submitted.
    pub(crate) fn is_filled(&self) -> bool {
        self.filled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Called once the submission holding its filling copy is on the queue.
    pub(crate) fn mark_filled(&self) {
        self.filled.store(true, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::TextureView(&self.view)
    }

    /// Records copies of `segments` (buffer, first row, rows; rows of `words` vec4 words)
    /// into the texture.
    pub(crate) fn record_copy<'b>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        words: u64,
        segments: impl Iterator<Item = (&'b wgpu::Buffer, u64, u64)>,
    ) {
        let width = 1u64 << self.width_shift;
        let height = 1u64 << self.layer_shift;
        for (buffer, first_row, rows) in segments {
            let (start, end) = (first_row * words, (first_row + rows) * words);
            let mut t = start;
            while t < end {
                let (x, r) = (t % width, t / width);
                let (y, layer) = (r % height, r / height);
                // A partial texture row, or as many whole rows as the layer has left.
                let (w, h) =
                    if x != 0 || end - t < width { ((width - x).min(end - t), 1) } else { (width, ((end - t) / width).min(height - y)) };
                encoder.copy_buffer_to_texture(
                    wgpu::TexelCopyBufferInfo {
                        buffer,
                        layout: wgpu::TexelCopyBufferLayout {
                            offset: (t - start) * 16,
                            bytes_per_row: Some((width * 16) as u32),
                            rows_per_image: None,
                        },
                    },
                    wgpu::TexelCopyTextureInfo {
                        texture: &self.texture,
                        mip_level: 0,
                        origin: wgpu::Origin3d { x: x as u32, y: y as u32, z: layer as u32 },
                        aspect: wgpu::TextureAspect::All,
                    },
                    wgpu::Extent3d { width: w as u32, height: h as u32, depth_or_array_layers: 1 },
                );
                t += w * h;
            }
        }
    }
}

/// A texture copy of `texels` vec4 words within the device's texture limits and the
/// context's memory budget, or `None` (the table is then read from its buffers).
pub(crate) fn make(ctx: &Context, texels: u64) -> Option<TableTexture> {
    let limits = ctx.limits();
    let max_dim = prev_power_of_two(limits.max_texture_dimension_2d);
    let width = max_dim.min(MAX_WIDTH);
    if texels > u32::MAX as u64 {
        return None; // the shaders address texels with u32
    }
    let tex_rows = texels.div_ceil(width as u64);
    let (height, layers, layer_shift) = if ctx.adapter_info().backend == wgpu::Backend::Gl && tex_rows <= max_dim as u64 {
        // wgpu's GL backend makes a one-layer texture a GL_TEXTURE_2D, which then reads
        // as zeros through the shaders' 2-D array view: there the rows go over two layers
        // (of a power-of-two height, so up to twice the table's bytes).
        let height = tex_rows.div_ceil(2).next_power_of_two() as u32;
        (height, 2, height.trailing_zeros())
    } else if tex_rows <= max_dim as u64 {
        (tex_rows as u32, 1, 31)
    } else {
        (max_dim, tex_rows.div_ceil(max_dim as u64), max_dim.trailing_zeros())
    };
    if layers > limits.max_texture_array_layers as u64 {
        return None;
    }
    if ctx.check_allocation("a table's texture copy", width as u64 * height as u64 * layers * 16).is_err() {
        return None;
    }
    let (texture, view) = word_texture(ctx.device(), "table-texture", width, height, layers as u32);
    Some(TableTexture { texture, view, width_shift: width.trailing_zeros(), layer_shift, filled: false.into() })
}

impl TableTexture {
    /// Frees the texture now (from `GpuTensor::release`).
    pub(crate) fn destroy(self) {
        self.texture.destroy();
    }
}

fn prev_power_of_two(n: u32) -> u32 {
    if n == 0 {
        0
    } else {
        1 << (31 - n.leading_zeros())
    }
}

#[cfg(test)]
mod tests {
    use super::prev_power_of_two;

    #[test]
    fn powers_of_two_round_down() {
        assert_eq!(prev_power_of_two(8192), 8192);
        assert_eq!(prev_power_of_two(16383), 8192);
        assert_eq!(prev_power_of_two(1), 1);
        assert_eq!(prev_power_of_two(0), 0);
    }
}
