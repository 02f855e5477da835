//! Texture copies of lookup tables, read by the lookup and bag kernels on devices where
//! a texel fetch is much cheaper than a storage-buffer load (CPU adapters; see
//! [`crate::TableReads`]).
//!
//! The table's bytes are laid end to end as `rgba32uint` texels: texel `t` (vec4 word
//! `t` of the whole table, across its segments) sits at x = t mod W, in texture row
//! r = t / W, which is row r mod H of layer r / H. W and H are powers of two so the
//! shaders split `t` with shifts and masks; a table that fits one layer has H = 2^31
//! (except on GL, see `table_texture`).

use std::sync::Arc;

use crate::context::Context;
use crate::tensor::{GpuTensor, Segment};

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
}

impl TableTexture {
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::TextureView(&self.view)
    }

    /// The shaders' `tex_width_shift` and `tex_layer_shift` for `texture` (zeros without one).
    pub(crate) fn shifts(texture: Option<&Self>) -> (u32, u32) {
        texture.map_or((0, 0), |t| (t.width_shift, t.layer_shift))
    }

    /// Records copies of every segment of `table` into the texture.
    fn record_copy(&self, encoder: &mut wgpu::CommandEncoder, table: &GpuTensor) {
        let words = (table.row_len() * table.dtype().size() / 16) as u64;
        let width = 1u64 << self.width_shift;
        let height = 1u64 << self.layer_shift;
        for seg in table.segments() {
            let (start, end) = (seg.first_row * words, (seg.first_row + seg.rows) * words);
            let mut t = start;
            while t < end {
                let (x, r) = (t % width, t / width);
                let (y, layer) = (r % height, r / height);
                // A partial texture row, or as many whole rows as the layer has left.
                let (w, h) = if x != 0 || end - t < width {
                    ((width - x).min(end - t), 1)
                } else {
                    (width, ((end - t) / width).min(height - y))
                };
                encoder.copy_buffer_to_texture(
                    wgpu::TexelCopyBufferInfo {
                        buffer: &seg.buffer,
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

/// The texture copy that lookups of `table` read, when this context reads tables from
/// textures and the table suits one (rows of whole vec4 words, within the device's
/// texture limits and the context's memory budget); `None`: read the buffers.
/// Made on first use, its copy submitted at once so that any later submission sees it.
pub(crate) fn table_texture(ctx: &Context, table: &GpuTensor) -> Option<Arc<TableTexture>> {
    if !ctx.reads_tables_from_textures() {
        return None;
    }
    let row_bytes = (table.row_len() * table.dtype().size()) as u64;
    if row_bytes == 0 || row_bytes % 16 != 0 || table.rows() == 0 {
        return None;
    }
    let mut slot = table.texture.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = slot.as_ref() {
        return Some(t.clone());
    }
    let limits = ctx.limits();
    let max_dim = prev_power_of_two(limits.max_texture_dimension_2d);
    let width = max_dim.min(MAX_WIDTH);
    let texels = table.rows() * (row_bytes / 16);
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
    let (texture, view) = word_texture(&ctx.device, "table-texture", width, height, layers as u32);
    let t = Arc::new(TableTexture { texture, view, width_shift: width.trailing_zeros(), layer_shift });
    let mut encoder = ctx.encoder();
    t.record_copy(&mut encoder, table);
    ctx.queue.submit([encoder.finish()]);
    *slot = Some(t.clone());
    Some(t)
}

/// An `rgba32uint` 2-D array texture the kernels can read and copies can fill, and its
/// array view.
pub(crate) fn word_texture(device: &wgpu::Device, label: &str, width: u32, height: u32, layers: u32) -> (wgpu::Texture, wgpu::TextureView) {
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some(label),
        size: wgpu::Extent3d { width, height, depth_or_array_layers: layers },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Uint,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    let view = texture.create_view(&wgpu::TextureViewDescriptor {
        dimension: Some(wgpu::TextureViewDimension::D2Array),
        ..Default::default()
    });
    (texture, view)
}

/// Where one dispatch of a lookup or bag kernel reads rows from: rows
/// `first_row .. first_row + rows` of a buffer segment, or (`segment` None) every row
/// from the table's texture copy.
pub(crate) struct RowSource<'a> {
    pub first_row: u64,
    pub rows: u64,
    pub segment: Option<&'a Segment>,
}

impl RowSource<'_> {
    /// The table-buffer slot's binding: the segment, or a placeholder when reading the texture.
    pub(crate) fn buffer_binding<'c>(&'c self, ctx: &'c Context) -> wgpu::BindingResource<'c> {
        self.segment.map_or_else(|| ctx.placeholder_buffer().as_entire_binding(), |s| s.binding())
    }
}

/// The dispatches' row sources of `table`: its texture copy as one source, else its segments.
pub(crate) fn row_sources<'a>(table: &'a GpuTensor, texture: Option<&TableTexture>) -> Vec<RowSource<'a>> {
    match texture {
        Some(_) => vec![RowSource { first_row: 0, rows: table.rows(), segment: None }],
        None => table.segments().iter().map(|s| RowSource { first_row: s.first_row, rows: s.rows, segment: Some(s) }).collect(),
    }
}

/// The texture slot's binding: `texture`, or a placeholder when reading buffers.
pub(crate) fn texture_binding<'c>(ctx: &'c Context, texture: Option<&'c TableTexture>) -> wgpu::BindingResource<'c> {
    texture.map_or_else(|| ctx.placeholder_texture(), |t| t.binding())
}

/// After `table`'s buffers were rewritten in `encoder` (max-norm renormalisation),
/// records the copy that brings its texture copy, if it has one, up to date.
pub(crate) fn refresh_table_texture(encoder: &mut wgpu::CommandEncoder, table: &GpuTensor) {
    if let Some(t) = table.texture.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        t.record_copy(encoder, table);
    }
}

/// Frees a texture copy now (from [`GpuTensor::release`]).
pub(crate) fn destroy(t: TableTexture) {
    t.texture.destroy();
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
