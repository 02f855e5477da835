//! The dispatch plans every layer runs through.
//!
//! A layer states what it needs, a [`Call`]: its kernel (whose bindings name their
//! roles), override constants, grid, and the [`PassParams`] fields of its own. A plan
//! walks the segments (output segments, the input segments paired with them or
//! overlapping their bags, the table's slices), fills each pass's `Pass` uniform,
//! binds the resource of each role and records the dispatch (spread past 65 535
//! workgroups by `Context::dispatch_groups`) into the caller's encoder:
//! - [`RowPlan`]: each output row reads its own input row (lookups, LayerNorm, axial
//!   positions), once per table slice that holds some of its rows;
//! - [`BagPlan`]: each output row reduces a bag of input rows, accumulating over passes
//!   when the bags' indices or the table span several bindings, then a finalize pass
//!   (means divide by the bag sizes, empty maxima become 0).

use wgpu::util::DeviceExt;

use crate::gpu::context::{Context, WORKGROUP_SIZE};
use crate::gpu::kernel::{binding, common, Kernel, Role, ShaderFamily};
use crate::gpu::recording::Recording;
use crate::gpu::status::Status;
use crate::gpu::table::{TableAccess, TableSlice};
use crate::gpu::tensor::{GpuTensor, Segment};

/// The uniform every plan kernel reads: `struct Pass` of `shaders/common/pass.wgsl`
/// (a test checks that the two agree field by field).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PassParams {
    /// Output rows (or bags) in the bound output segment.
    pub rows: u32,
    pub dim: u32,
    /// Position of the bound input segment's first row in the whole input.
    pub index_first: u32,
    /// Rows in the bound input segment.
    pub index_count: u32,
    pub num_embeddings: u32,
    /// `NO_PADDING` when there is none.
    pub padding_idx: u32,
    /// Bags: `MODE_SUM`, `MODE_MEAN` or `MODE_MAX`.
    pub mode: u32,
    /// `FIRST_PASS | LAST_PASS | COUNT_PASS | REPORT_BAD | HAS_WEIGHTS`, set by the plan.
    pub flags: u32,
    /// Table units `[lo, hi)` held by the bound slice (rows, or elements of planes).
    pub lo: u32,
    pub hi: u32,
    /// First row (of its tensor) of each plane's bound segment.
    pub first0: u32,
    pub first1: u32,
    pub first2: u32,
    /// The texture copy's layout: log2 of its width and of its rows per layer.
    pub tex_width_shift: u32,
    pub tex_layer_shift: u32,
    /// Quantized tables: elements per scale.
    pub group: u32,
    /// The layer's own values.
    pub arg0: u32,
    pub arg1: u32,
    pub arg2: u32,
    pub arg3: u32,
}

/// `PassParams::flags` bits (`FLAG_*` in `pass.wgsl`).
pub const FIRST_PASS: u32 = 1;
pub const LAST_PASS: u32 = 2;
pub const COUNT_PASS: u32 = 4;
pub const REPORT_BAD: u32 = 8;
pub const HAS_WEIGHTS: u32 = 16;
/// Grouped sums (`GroupPlan`): the source spans several segments.
pub const MULTI_SOURCE: u32 = 64;
/// `PassParams::padding_idx` without a padding row.
pub const NO_PADDING: u32 = u32::MAX;
/// `PassParams::mode` of bag reductions.
pub const MODE_SUM: u32 = 0;
pub const MODE_MEAN: u32 = 1;
pub const MODE_MAX: u32 = 2;

impl PassParams {
    fn with_slice(mut self, slice: &TableSlice<'_>) -> Self {
        self.lo = slice.lo as u32;
        self.hi = slice.hi as u32;
        self.first0 = slice.first_row(0) as u32;
        self.first1 = slice.first_row(1) as u32;
        self.first2 = slice.first_row(2) as u32;
        (self.tex_width_shift, self.tex_layer_shift) = slice.texture().map_or((0, 0), |t| (t.width_shift, t.layer_shift));
        self
    }
}

/// How many workgroups a pass over `rows` output rows needs.
#[derive(Debug, Clone, Copy)]
pub enum Grid {
    /// One invocation per output element: `rows × width` invocations.
    Elements(u64),
    /// A workgroup per this many output rows.
    RowsPerGroup(u64),
    /// `width` invocations per chunk of `rows` output rows.
    Chunks { rows: u64, width: u64 },
    /// A workgroup per `block` elements of output rows of `width`.
    Blocks { width: u64, block: u64 },
}

impl Grid {
    fn groups(self, rows: u64) -> u64 {
        match self {
            Grid::Elements(width) => (rows * width).div_ceil(WORKGROUP_SIZE as u64),
            Grid::RowsPerGroup(per) => rows.div_ceil(per.max(1)),
            Grid::Chunks { rows: per, width } => (rows.div_ceil(per.max(1)) * width).div_ceil(WORKGROUP_SIZE as u64),
            Grid::Blocks { width, block } => (rows * width).div_ceil(block.max(1)),
        }
    }
}

/// What a layer asks a plan to run.
pub struct Call<'a> {
    pub kernel: &'a Kernel,
    pub constants: &'a [(&'static str, f64)],
    pub grid: Grid,
    /// The layer's fields of every pass's uniform (the plan sets the rest).
    pub params: PassParams,
    /// Buffers of [`Role::Extra`] bindings.
    pub extra: &'a [wgpu::Buffer],
    /// [`Role::PerSlice`]: one buffer per table slice.
    pub per_slice: &'a [wgpu::Buffer],
}

impl<'a> Call<'a> {
    pub fn new(kernel: &'a Kernel, constants: &'a [(&'static str, f64)], grid: Grid, params: PassParams) -> Self {
        Call { kernel, constants, grid, params, extra: &[], per_slice: &[] }
    }
}

/// The resources of one pass, by role.
struct PassResources<'r> {
    params: &'r wgpu::Buffer,
    slice: Option<(usize, &'r TableSlice<'r>)>,
    input: Option<&'r Segment>,
    out: Option<&'r Segment>,
    aux: [Option<&'r Segment>; 2],
    offsets: Option<&'r wgpu::Buffer>,
    counts: Option<&'r wgpu::Buffer>,
    weights: Option<&'r Segment>,
    status: Option<&'r Status>,
}

impl<'r> PassResources<'r> {
    /// A pass that binds only its uniform (placeholders for every other role).
    fn new(params: &'r wgpu::Buffer) -> Self {
        PassResources {
            params,
            slice: None,
            input: None,
            out: None,
            aux: [None; 2],
            offsets: None,
            counts: None,
            weights: None,
            status: None,
        }
    }
}

fn record<'r>(ctx: &'r Context, encoder: &mut Recording<'_>, call: &Call<'_>, r: &PassResources<'r>, rows: u64) {
    // Roles a pass does not fill get the context's placeholder buffer.
    fn or_placeholder<'b>(b: Option<&'b wgpu::Buffer>, placeholder: &'b wgpu::Buffer) -> wgpu::BindingResource<'b> {
        b.unwrap_or(placeholder).as_entire_binding()
    }
    let placeholder = ctx.placeholder_buffer();
    let buffer = |b| or_placeholder(b, placeholder);
    let segment = |s: Option<&'r Segment>| or_placeholder(s.map(|s| &s.buffer), placeholder);
    let bindings: Vec<wgpu::BindingResource<'_>> = call
        .kernel
        .bindings
        .iter()
        .map(|&(_, _, role)| match role {
            Role::Params => r.params.as_entire_binding(),
            Role::Table(k) => segment(r.slice.and_then(|(_, s)| s.segment(k))),
            Role::Texture => r.slice.and_then(|(_, s)| s.texture()).map_or_else(|| ctx.placeholder_texture(), |t| t.binding()),
            Role::Input => segment(r.input),
            Role::Out => segment(r.out),
            Role::Aux(k) => segment(r.aux[k]),
            Role::Weights => segment(r.weights),
            Role::Offsets => buffer(r.offsets),
            Role::Counts => buffer(r.counts),
            Role::Status => buffer(r.status.map(|s| s.buffer())),
            Role::Extra(k) => call.extra[k].as_entire_binding(),
            Role::PerSlice => call.per_slice[r.slice.map_or(0, |(t, _)| t)].as_entire_binding(),
        })
        .collect();
    ctx.dispatch_groups(encoder, call.kernel, call.constants, &bindings, call.grid.groups(rows));
}

/// One pass with no segments to walk: the call's uniform and extra buffers and, where
/// given, an input and an output segment, over `items` (the rows of the call's grid).
pub fn record_flat(
    ctx: &Context,
    encoder: &mut Recording<'_>,
    call: &Call<'_>,
    input: Option<&Segment>,
    out: Option<&Segment>,
    items: u64,
) {
    let params = ctx.uniform(&call.params);
    let r = PassResources { input, out, ..PassResources::new(&params) };
    record(ctx, encoder, call, &r, items);
}

/// Passes over a table's slices with a flat grid of `items`: each pass binds one
/// slice (the first with `FIRST_PASS`), the input and output segments and the
/// call's extra buffers stay bound. For kernels whose items read rows anywhere in
/// the table (argmax recomputation, gradients of per-sample weights).
pub struct SlicePlan<'a> {
    pub table: &'a TableAccess<'a>,
    pub input: Option<&'a Segment>,
    pub out: Option<&'a Segment>,
}

impl SlicePlan<'_> {
    pub fn record(&self, ctx: &Context, encoder: &mut Recording<'_>, call: &Call<'_>, items: u64) {
        self.record_each(ctx, encoder, call, |_| items);
    }

    /// Like [`SlicePlan::record`], each pass over the table rows its slice touches (rows
    /// of `units_per_row` units: 1 for row slices, D for element slices), from row
    /// `lo / units_per_row`.
    pub fn record_rows(&self, ctx: &Context, encoder: &mut Recording<'_>, call: &Call<'_>, units_per_row: u64) {
        let u = units_per_row.max(1);
        self.record_each(ctx, encoder, call, |slice| slice.hi.div_ceil(u) - slice.lo / u);
    }

    fn record_each(&self, ctx: &Context, encoder: &mut Recording<'_>, call: &Call<'_>, items: impl Fn(&TableSlice<'_>) -> u64) {
        for (t, slice) in self.table.slices().iter().enumerate() {
            let mut p = call.params.with_slice(slice);
            p.flags |= flag(t == 0, FIRST_PASS);
            let params = ctx.uniform(&p);
            let r = PassResources { slice: Some((t, slice)), input: self.input, out: self.out, ..PassResources::new(&params) };
            record(ctx, encoder, call, &r, items(slice));
        }
    }
}

/// Grouped sums over a sorted list of entries: each run of the list (the entries of one
/// key) is summed into one output row, each entry reading one row of `source` (and of
/// `aux`, segmented alike). Within a run, entries are ordered by the source row they
/// read, so those of one source segment are consecutive: passes walk source segments ×
/// output segments, the first source segment's passes write and later ones add, in a
/// fixed order (deterministic). Runs longer than two chunks add chunk sums that
/// `record_chunks` made, so a hot key's entries are not walked by one invocation.
pub struct GroupPlan<'a> {
    pub source: &'a GpuTensor,
    pub aux: Option<&'a GpuTensor>,
    /// Entries in the sorted list, and per chunk.
    pub entries: u64,
    pub chunk: u64,
}

impl GroupPlan<'_> {
    fn source_params(&self, call: &Call<'_>, seg: &Segment) -> PassParams {
        let mut p = PassParams {
            index_first: seg.first_row as u32,
            index_count: seg.rows as u32,
            arg0: self.chunk as u32,
            arg1: self.entries as u32,
            ..call.params
        };
        p.flags |= flag(self.source.segments().len() > 1, MULTI_SOURCE);
        p
    }

    /// Records `call` (the chunk sums) once per source segment, over the whole chunks.
    pub fn record_chunks(&self, ctx: &Context, encoder: &mut Recording<'_>, call: &Call<'_>) {
        for (s, seg) in self.source.segments().iter().enumerate() {
            let params = ctx.uniform(&self.source_params(call, seg));
            let aux = self.aux.map(|a| &a.segments()[s]);
            let r = PassResources { input: Some(seg), aux: [aux, None], ..PassResources::new(&params) };
            record(ctx, encoder, call, &r, self.entries / self.chunk);
        }
    }

    /// Records `call` (the run sums into `out`) for every source × output segment. The
    /// kernel finds output segment `arg2`'s runs itself (at most one per entry and per
    /// row); `arg3` is that segment's first row. `beside_out`: tensors segmented like
    /// `out` (an optimizer's states), bound as the aux roles when the plan has no aux.
    pub fn record_groups(
        &self,
        ctx: &Context,
        encoder: &mut Recording<'_>,
        call: &Call<'_>,
        out: &GpuTensor,
        beside_out: [Option<&GpuTensor>; 2],
    ) {
        // Absent states (SGD keeps none) get writable stand-ins too: two placeholders would alias.
        let stand_ins = if self.aux.is_none() { stand_ins(ctx, beside_out) } else { [None, None] };
        for (s, seg) in self.source.segments().iter().enumerate() {
            for (o, out) in out.segments().iter().enumerate() {
                let mut p = self.source_params(call, seg);
                p.rows = out.rows as u32;
                p.arg2 = o as u32;
                p.arg3 = out.first_row as u32;
                p.flags |= flag(s == 0, FIRST_PASS);
                let params = ctx.uniform(&p);
                let aux = match self.aux {
                    Some(a) => [Some(&a.segments()[s]), None],
                    None => [0, 1].map(|k| beside_out[k].map(|t| &t.segments()[o]).or(stand_ins[k].as_ref())),
                };
                let r = PassResources { input: Some(seg), aux, out: Some(out), ..PassResources::new(&params) };
                record(ctx, encoder, call, &r, out.rows.min(self.entries));
            }
        }
    }
}

/// Buffers for absent states of in-place updates: writable bindings may not share the
/// placeholder (WebGPU refuses aliased writable bindings).
fn stand_ins(ctx: &Context, states: [Option<&GpuTensor>; 2]) -> [Option<Segment>; 2] {
    states.map(|st| {
        st.is_none().then(|| Segment { buffer: crate::gpu::context::words(ctx, "absent-state", 4), first_row: 0, rows: 0, lease: None })
    })
}

/// In-place updates of a `target` tensor (a table) and of states segmented like it
/// (`Role::Aux(k)`), from the rows of `source`: dense (source row `r` updates target
/// row `r`, source segmented like the target) or sparse (source row `k` updates the
/// target row the call's index list names; passes walk source × target segments and
/// each invocation skips rows another target segment holds). Target segment `t` is
/// bound as the output, its rows `[lo, hi)`; the source segment as the input, its rows
/// `index_first ..+ index_count`.
pub struct UpdatePlan<'a> {
    pub target: &'a GpuTensor,
    pub states: [Option<&'a GpuTensor>; 2],
    pub source: &'a GpuTensor,
}

impl UpdatePlan<'_> {
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &self,
        ctx: &Context,
        encoder: &mut Recording<'_>,
        call: &Call<'_>,
        stand_ins: &[Option<Segment>; 2],
        s: usize,
        t: usize,
        items: u64,
    ) {
        let (src, dst) = (&self.source.segments()[s], &self.target.segments()[t]);
        let p = PassParams {
            rows: src.rows as u32,
            index_first: src.first_row as u32,
            index_count: src.rows as u32,
            lo: dst.first_row as u32,
            hi: (dst.first_row + dst.rows) as u32,
            ..call.params
        };
        let params = ctx.uniform(&p);
        let aux = [0, 1].map(|k| self.states[k].map(|st| &st.segments()[t]).or(stand_ins[k].as_ref()));
        let r = PassResources { input: Some(src), out: Some(dst), aux, ..PassResources::new(&params) };
        record(ctx, encoder, call, &r, items);
    }

    /// Dense updates: one pass per target segment (the source segmented alike).
    pub fn record_dense(&self, ctx: &Context, encoder: &mut Recording<'_>, call: &Call<'_>) {
        let stand_ins = stand_ins(ctx, self.states);
        for t in 0..self.target.segments().len() {
            self.pass(ctx, encoder, call, &stand_ins, t, t, self.target.segments()[t].rows);
        }
    }

    /// Sparse updates: every source segment against every target segment.
    pub fn record_sparse(&self, ctx: &Context, encoder: &mut Recording<'_>, call: &Call<'_>) {
        let stand_ins = stand_ins(ctx, self.states);
        for s in 0..self.source.segments().len() {
            for t in 0..self.target.segments().len() {
                self.pass(ctx, encoder, call, &stand_ins, s, t, self.source.segments()[s].rows);
            }
        }
    }
}

/// Given an input segment and a table's slices, which slices its rows refer to.
pub type UsedSlices<'f> = dyn Fn(&Segment, &[TableSlice<'_>]) -> Vec<bool> + 'f;

/// Row-wise passes: output row `i` of each output segment reads input row `i` of the
/// input segment paired with it (both segmented alike), once per table slice.
pub struct RowPlan<'a> {
    /// Segmented like `out` (or, without `out`, the rows the passes run over).
    pub input: Option<&'a GpuTensor>,
    /// A second input, segmented like `input`.
    pub aux: Option<&'a GpuTensor>,
    pub out: Option<&'a GpuTensor>,
    pub table: Option<&'a TableAccess<'a>>,
    pub status: Option<&'a Status>,
}

impl RowPlan<'_> {
    /// Records `call` over every (input, output) segment pair and table slice. `used`,
    /// given an input segment and the slices, says which slices its rows refer to
    /// (e.g. from host indices); the others get no dispatch. The first slice's pass
    /// reports bad indices.
    pub fn record(&self, ctx: &Context, encoder: &mut Recording<'_>, call: &Call<'_>, used: Option<&UsedSlices<'_>>) {
        let slices = self.table.map(|t| t.slices()).unwrap_or_default();
        // Without a table, one pass per segment that binds no slice.
        let passes: Vec<Option<(usize, &TableSlice<'_>)>> =
            if slices.is_empty() { vec![None] } else { slices.iter().enumerate().map(Some).collect() };
        let segments = self.input.or(self.out).map_or(&[][..], |t| t.segments());
        for (k, seg) in segments.iter().enumerate() {
            let input = self.input.map(|t| &t.segments()[k]);
            let out = self.out.map(|t| &t.segments()[k]);
            let aux = self.aux.map(|t| &t.segments()[k]);
            let base = PassParams {
                rows: seg.rows as u32,
                index_first: input.map_or(0, |s| s.first_row) as u32,
                index_count: input.map_or(0, |s| s.rows) as u32,
                ..call.params
            };
            let wanted = match (used, input) {
                (Some(used), Some(input)) if slices.len() > 1 => Some(used(input, &slices)),
                _ => None,
            };
            for &slice in &passes {
                if let (Some((t, _)), Some(wanted)) = (slice, &wanted) {
                    if !wanted[t] {
                        continue;
                    }
                }
                let mut p = slice.map_or(base, |(_, s)| base.with_slice(s));
                p.flags |= flag(slice.is_none_or(|(t, _)| t == 0), FIRST_PASS | REPORT_BAD);
                let params = ctx.uniform(&p);
                let r = PassResources { slice, input, out, aux: [aux, None], status: self.status, ..PassResources::new(&params) };
                record(ctx, encoder, call, &r, seg.rows);
            }
        }
    }
}

/// The `bag_finalize` family: after accumulating passes, means divide by the bag
/// sizes and empty maxima become 0.
pub(crate) static FINALIZE_FAMILY: ShaderFamily = ShaderFamily {
    name: "bag_finalize",
    parts: &[common::GRID, common::PASS, common::BAG, include_str!("../../shaders/bag_finalize.wgsl")],
};

const FINALIZE: Kernel = Kernel::new(&FINALIZE_FAMILY, "finalize", &[binding::PARAMS, binding::OUT, binding::COUNTS]);

/// Bag passes: output row `b` reduces input rows `bounds[b] .. bounds[b + 1]`.
pub struct BagPlan<'a> {
    pub table: &'a TableAccess<'a>,
    /// Index entries (rows of one index, or of an index and its weight's bits).
    pub entries: &'a GpuTensor,
    /// Per-sample weights, segmented like `entries`.
    pub weights: Option<&'a GpuTensor>,
    /// `bags + 1` positions into `entries`.
    pub bounds: &'a [u32],
    pub out: &'a GpuTensor,
    pub status: Option<&'a Status>,
}

impl BagPlan<'_> {
    /// Bags per output segment for rows of `dim` f32: each segment, and its `bags + 1`
    /// offsets, fit one binding.
    pub fn bags_per_segment(ctx: &Context, dim: usize) -> crate::Result<u64> {
        let per = GpuTensor::rows_per_segment(ctx, dim, crate::DType::F32)?;
        // bags + 1 offsets, padded to whole words (at most 3 more).
        Ok(per.min(ctx.max_binding_size() / 4 - 4))
    }

    /// The zeroed `[bags, dim]` f32 output, segmented as `record` expects.
    pub fn output(ctx: &Context, bags: usize, dim: usize) -> crate::Result<GpuTensor> {
        GpuTensor::zeros_with(ctx, &[bags, dim], crate::DType::F32, dim, Self::bags_per_segment(ctx, dim)?)
    }

    /// Records `call` for every output segment over the index segments its bags span
    /// and every table slice, then the finalize pass where there were several.
    pub fn record(&self, ctx: &Context, encoder: &mut Recording<'_>, call: &Call<'_>) {
        let slices = self.table.slices();
        for out_seg in self.out.segments() {
            let b0 = out_seg.first_row as usize;
            let seg_bounds = &self.bounds[b0..=b0 + out_seg.rows as usize];
            // Whole 16-byte words, so kernels may read them four at a time.
            let mut padded = seg_bounds.to_vec();
            padded.resize(seg_bounds.len().next_multiple_of(4), seg_bounds[seg_bounds.len() - 1]);
            let offsets = ctx.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("offsets"),
                contents: bytemuck::cast_slice(&padded),
                usage: wgpu::BufferUsages::STORAGE,
            });
            let (span_lo, span_hi) = (seg_bounds[0] as u64, seg_bounds[seg_bounds.len() - 1] as u64);
            let mut index_segs: Vec<usize> = (0..self.entries.segments().len())
                .filter(|&k| {
                    let s = &self.entries.segments()[k];
                    s.first_row < span_hi && s.first_row + s.rows > span_lo
                })
                .collect();
            if index_segs.is_empty() {
                // Every bag here is empty: one dispatch still writes their values.
                index_segs.push(0);
            }
            let passes = index_segs.len() * slices.len();
            let counts = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("bag-counts"),
                size: (out_seg.rows * 4).max(16),
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            let mut pass = 0;
            for &k in &index_segs {
                let iseg = &self.entries.segments()[k];
                for (t, slice) in slices.iter().enumerate() {
                    let mut p = PassParams {
                        rows: out_seg.rows as u32,
                        index_first: iseg.first_row as u32,
                        index_count: iseg.rows as u32,
                        ..call.params
                    }
                    .with_slice(slice);
                    p.flags |= flag(pass == 0, FIRST_PASS)
                        | flag(passes == 1, LAST_PASS)
                        | flag(t == 0, COUNT_PASS | REPORT_BAD)
                        | flag(self.weights.is_some(), HAS_WEIGHTS);
                    let params = ctx.uniform(&p);
                    let r = PassResources {
                        slice: Some((t, slice)),
                        input: Some(iseg),
                        out: Some(out_seg),
                        offsets: Some(&offsets),
                        counts: Some(&counts),
                        weights: self.weights.map(|w| &w.segments()[k]),
                        status: self.status,
                        ..PassResources::new(&params)
                    };
                    record(ctx, encoder, call, &r, out_seg.rows);
                    pass += 1;
                }
            }
            if passes > 1 {
                let p = PassParams { rows: out_seg.rows as u32, ..call.params };
                let finalize = Call::new(&FINALIZE, &[], Grid::Elements(call.params.dim as u64), p);
                let params = ctx.uniform(&p);
                let r = PassResources { out: Some(out_seg), counts: Some(&counts), ..PassResources::new(&params) };
                record(ctx, encoder, &finalize, &r, out_seg.rows);
            }
        }
    }
}

fn flag(on: bool, bits: u32) -> u32 {
    if on {
        bits
    } else {
        0
    }
}

/// Rows per segment of tensors that are segmented alike: the fewest that every one of
/// `rows` (elements per row and type) fits in one binding.
pub fn rows_per_segment(ctx: &Context, rows: &[(usize, crate::DType)]) -> crate::Result<u64> {
    let mut per = u64::MAX;
    for &(len, dtype) in rows {
        per = per.min(GpuTensor::rows_per_segment(ctx, len, dtype)?);
    }
    Ok(per)
}

#[cfg(test)]
mod tests {
    //! Rust and WGSL share the `Pass` layout and the flag constants: checked here from
    //! the WGSL source as naga parses it.
    use super::*;

    fn module() -> naga::Module {
        let source = [common::GRID, common::PASS, common::BAG].concat();
        naga::front::wgsl::parse_str(&source).expect("common helpers parse")
    }

    #[test]
    fn pass_struct_matches_pass_params() {
        let module = module();
        let (_, ty) = module.types.iter().find(|(_, t)| t.name.as_deref() == Some("Pass")).expect("struct Pass");
        let naga::TypeInner::Struct { members, span } = &ty.inner else { panic!("Pass is not a struct") };
        assert_eq!(*span as usize, std::mem::size_of::<PassParams>(), "size of Pass");
        let rust: Vec<(&str, usize)> = vec![
            ("rows", std::mem::offset_of!(PassParams, rows)),
            ("dim", std::mem::offset_of!(PassParams, dim)),
            ("index_first", std::mem::offset_of!(PassParams, index_first)),
            ("index_count", std::mem::offset_of!(PassParams, index_count)),
            ("num_embeddings", std::mem::offset_of!(PassParams, num_embeddings)),
            ("padding_idx", std::mem::offset_of!(PassParams, padding_idx)),
            ("mode", std::mem::offset_of!(PassParams, mode)),
            ("flags", std::mem::offset_of!(PassParams, flags)),
            ("lo", std::mem::offset_of!(PassParams, lo)),
            ("hi", std::mem::offset_of!(PassParams, hi)),
            ("first0", std::mem::offset_of!(PassParams, first0)),
            ("first1", std::mem::offset_of!(PassParams, first1)),
            ("first2", std::mem::offset_of!(PassParams, first2)),
            ("tex_width_shift", std::mem::offset_of!(PassParams, tex_width_shift)),
            ("tex_layer_shift", std::mem::offset_of!(PassParams, tex_layer_shift)),
            ("group", std::mem::offset_of!(PassParams, group)),
            ("arg0", std::mem::offset_of!(PassParams, arg0)),
            ("arg1", std::mem::offset_of!(PassParams, arg1)),
            ("arg2", std::mem::offset_of!(PassParams, arg2)),
            ("arg3", std::mem::offset_of!(PassParams, arg3)),
        ];
        let wgsl: Vec<(&str, usize)> = members.iter().map(|m| (m.name.as_deref().unwrap(), m.offset as usize)).collect();
        assert_eq!(wgsl, rust);
    }

    #[test]
    fn shared_constants_agree() {
        let want = [
            ("FLAG_FIRST_PASS", FIRST_PASS),
            ("FLAG_LAST_PASS", LAST_PASS),
            ("FLAG_COUNT_PASS", COUNT_PASS),
            ("FLAG_REPORT_BAD", REPORT_BAD),
            ("FLAG_HAS_WEIGHTS", HAS_WEIGHTS),
            ("FLAG_MULTI_SOURCE", MULTI_SOURCE),
            ("NO_PADDING", NO_PADDING),
            ("MODE_SUM", MODE_SUM),
            ("MODE_MEAN", MODE_MEAN),
            ("MODE_MAX", MODE_MAX),
        ];
        let module = module();
        for (name, value) in want {
            assert_eq!(crate::gpu::kernel::wgsl_u32_constant(&module, name), Some(value), "{name}");
        }
    }
}
