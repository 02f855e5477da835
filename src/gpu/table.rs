//! Table access: what one dispatch can bind of a table.
//!
//! A table is one or more planes (tensors split into segments that each fit a
//! binding): a dense table is one plane counted in rows; a quantized table is its
//! codes, scales and nested scales counted in elements. A [`TableSlice`] is the units
//! `[lo, hi)` that one segment of every plane holds, so one dispatch binding those
//! segments sees all of them; a dense table read from its texture copy is one slice.
//! Kernels skip the units outside the slice bound to them and leave them to the
//! dispatch that binds theirs.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::recording::Recording;
use crate::gpu::tensor::{GpuTensor, Segment};
use crate::gpu::texture::{self, TableTexture};

/// One tensor holding part of a table: each of its rows covers `per_row` table units.
#[derive(Clone, Copy)]
pub struct Plane<'a> {
    pub tensor: &'a GpuTensor,
    pub per_row: u64,
}

impl<'a> Plane<'a> {
    pub fn new(tensor: &'a GpuTensor, per_row: u64) -> Self {
        Plane { tensor, per_row }
    }
}

/// Units `[lo, hi)` of a table and the segment of each plane that holds them (or the
/// texture copy that holds every unit).
pub struct TableSlice<'a> {
    pub lo: u64,
    pub hi: u64,
    segments: Vec<&'a Segment>,
    texture: Option<&'a TableTexture>,
}

impl<'a> TableSlice<'a> {
    /// The segment of plane `plane` this slice binds; `None` when reading a texture copy.
    pub fn segment(&self, plane: usize) -> Option<&'a Segment> {
        self.segments.get(plane).copied()
    }

    /// The segment of plane `plane` of a slice of planes (not of a texture copy).
    pub fn plane_segment(&self, plane: usize) -> &'a Segment {
        self.segments[plane]
    }

    /// The first row (of its tensor) of plane `plane`'s bound segment.
    pub fn first_row(&self, plane: usize) -> u64 {
        self.segment(plane).map_or(0, |s| s.first_row)
    }

    /// The texture copy this slice reads, if any.
    pub fn texture(&self) -> Option<&'a TableTexture> {
        self.texture
    }
}

/// How the kernels of one call read a table.
pub struct TableAccess<'a> {
    units: u64,
    planes: Vec<Plane<'a>>,
    texture: Option<Arc<TableTexture>>,
}

impl<'a> TableAccess<'a> {
    /// A dense table (rows of its last dimension), read from its buffers.
    pub fn rows(table: &'a GpuTensor) -> Self {
        TableAccess { units: table.rows(), planes: vec![Plane::new(table, 1)], texture: None }
    }

    /// A dense table read from its texture copy where the context reads tables from
    /// textures and the table suits one (see [`table_texture`]), else from its buffers.
    pub fn rows_or_texture(run: &mut Recording<'_>, table: &'a GpuTensor) -> Self {
        TableAccess { texture: table_texture(run, table), ..Self::rows(table) }
    }

    /// [`TableAccess::rows_or_texture`] outside a recording: a texture copy made now is
    /// submitted at once.
    pub fn rows_or_texture_now(ctx: &Context, table: &'a GpuTensor) -> Result<Self> {
        let mut run = ctx.encoder();
        let access = Self::rows_or_texture(&mut run, table);
        // Submitted only when it recorded a copy (otherwise it holds nothing).
        if run.filled_textures() {
            run.submit_now()?;
        }
        Ok(access)
    }

    /// A table of `units` units held by `planes` (e.g. a quantized table's elements).
    pub fn planes(units: u64, planes: Vec<Plane<'a>>) -> Self {
        TableAccess { units, planes, texture: None }
    }

    /// The texture copy the kernels read, if any.
    pub fn texture(&self) -> Option<&TableTexture> {
        self.texture.as_deref()
    }

    /// The slices, in unit order: one per run of units that one segment of every plane
    /// holds (the texture copy is one slice).
    pub fn slices(&self) -> Vec<TableSlice<'_>> {
        if let Some(t) = self.texture.as_deref() {
            return vec![TableSlice { lo: 0, hi: self.units, segments: Vec::new(), texture: Some(t) }];
        }
        let mut cuts: Vec<u64> = vec![0, self.units];
        for plane in &self.planes {
            for seg in plane.tensor.segments() {
                cuts.push((seg.first_row * plane.per_row).min(self.units));
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        cuts.windows(2)
            .map(|w| {
                let segments = self
                    .planes
                    .iter()
                    .map(|plane| {
                        let segs = plane.tensor.segments();
                        segs.iter().find(|s| s.rows > 0 && (s.first_row + s.rows) * plane.per_row > w[0]).unwrap_or(&segs[0])
                    })
                    .collect();
                TableSlice { lo: w[0], hi: w[1], segments, texture: None }
            })
            .collect()
    }
}

/// The texture copy that lookups of `table` read, when this context reads tables from
/// textures and the table suits one (rows of whole vec4 words, within the device's
/// texture limits and the context's memory budget); `None`: read the buffers.
/// Made on first use, its copy recorded into `run` (before the kernels that read it,
/// after those that wrote the table).
pub(crate) fn table_texture(run: &mut Recording<'_>, table: &GpuTensor) -> Option<Arc<TableTexture>> {
    let ctx = run.context();
    if !ctx.reads_tables_from_textures() || table.stepped.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let row_bytes = (table.row_len() * table.dtype().size()) as u64;
    if row_bytes == 0 || !row_bytes.is_multiple_of(16) || table.rows() == 0 {
        return None;
    }
    let mut slot = table.texture.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = slot.as_ref() {
        // Another thread's recording may hold the copy that fills it, not yet submitted:
        // until it is, this recording reads the buffers.
        return (t.is_filled() || run.fills_texture(&table.texture)).then(|| t.clone());
    }
    let t = Arc::new(texture::make(ctx, table.rows() * (row_bytes / 16))?);
    record_texture_copy(run, &t, table);
    *slot = Some(t.clone());
    drop(slot);
    run.filled_texture(table.texture.clone());
    Some(t)
}

fn record_texture_copy(encoder: &mut Recording<'_>, texture: &TableTexture, table: &GpuTensor) {
    let words = (table.row_len() * table.dtype().size() / 16) as u64;
    texture.record_copy(encoder, words, table.segments().iter().map(|s| (&s.buffer, s.first_row, s.rows)));
}

/// From now on `table` is rewritten in place by optimizer steps: its texture copy, if
/// any, is dropped and lookups read its buffers.
pub(crate) fn mark_stepped(table: &GpuTensor) {
    table.stepped.store(true, std::sync::atomic::Ordering::Relaxed);
    *table.texture.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// After `table`'s buffers were rewritten in `encoder` (max-norm renormalisation),
/// records the copy that brings its texture copy, if it has one, up to date.
pub(crate) fn refresh_table_texture(encoder: &mut Recording<'_>, table: &GpuTensor) {
    if let Some(t) = table.texture.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        record_texture_copy(encoder, t, table);
    }
}

/// `rows` rows of `dim`: a positive width, and rows that i32 indices address.
pub(crate) fn check_table_shape(rows: usize, dim: usize) -> Result<()> {
    if dim == 0 {
        return Err(Error::arg("embedding_dim", "expected a positive embedding_dim, got 0"));
    }
    if rows as u64 >= i32::MAX as u64 {
        return Err(Error::arg("num_embeddings", format!("{rows} rows is more than i32 indices can address")));
    }
    Ok(())
}

/// A table of `len` values holds `rows` rows of `dim`, within what the kernels address.
pub(crate) fn check_table(len: usize, rows: usize, dim: usize) -> Result<()> {
    check_table_shape(rows, dim)?;
    if rows.checked_mul(dim) != Some(len) {
        return Err(Error::arg("weight", format!("expected {rows} x {dim} = {} values, got {len}", rows.saturating_mul(dim))));
    }
    Ok(())
}
