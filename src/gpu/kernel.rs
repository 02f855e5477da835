//! Kernels: an entry point of a shader family and the bindings it reads, by role.
//!
//! A shader family is one `.wgsl` file of `shaders/` with the helpers of
//! `shaders/common/` it needs put in front of it (plain concatenation: every helper is
//! written once, and WGSL lets a module use a declaration before it appears). Kernels
//! name each binding's role; the dispatch plan (`plan.rs`) binds the resource that
//! plays that role in each pass.

/// A WGSL module made of `parts` in order: common helpers first, the family's own file last.
#[derive(Debug)]
pub struct ShaderFamily {
    /// The family's name (its own file's stem), also the pipeline cache key.
    pub name: &'static str,
    /// The WGSL sources composed into the family's module, in order (common helpers,
    /// then the family's own file).
    pub parts: &'static [&'static str],
}

impl ShaderFamily {
    /// The module's source, as the runtime compiles it.
    pub fn source(&self) -> String {
        self.parts.concat()
    }
}

/// The helpers in `shaders/common/`, by file.
pub mod common {
    /// `WG_SIZE` and the linear invocation / workgroup index past 65 535 workgroups.
    pub const GRID: &str = include_str!("../../shaders/common/grid.wgsl");
    /// The `Pass` uniform every plan kernel reads, its flags, and the input and output bindings.
    pub const PASS: &str = include_str!("../../shaders/common/pass.wgsl");
    /// Reading f32 / f16 / bf16 tables from their buffer or texture copy.
    pub const TABLE: &str = include_str!("../../shaders/common/table.wgsl");
    /// Bag reductions: modes, NaN-propagating max, offsets and counts.
    pub const BAG: &str = include_str!("../../shaders/common/bag.wgsl");
    /// The scalar bag kernel's loop over a bag's entries (after `BAG`).
    pub const BAG_SCALAR: &str = include_str!("../../shaders/common/bag_scalar.wgsl");
    /// The constants buffer of code maps (quantization and quantized tables).
    pub const CODES: &str = include_str!("../../shaders/common/codes.wgsl");
    /// Encoding to 8-bit code maps: correctly rounded division, the map's bin search (after `CODES`).
    pub const ENCODE: &str = include_str!("../../shaders/common/encode.wgsl");
    /// A quantized table's planes and its dequantized `element(e)` (after `CODES`).
    pub const QUANTIZED_TABLE: &str = include_str!("../../shaders/common/quantized_table.wgsl");
    /// Walking the runs of a sorted gradient list (backward run sums, fused steps).
    pub const RUNS: &str = include_str!("../../shaders/common/runs.wgsl");
}

/// What a binding slot holds; a bind-group layout is a list of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    Uniform,
    Read,
    ReadWrite,
    /// A `texture_2d_array<u32>` (a table's texture copy).
    Texture,
}

/// Who provides a binding in a pass; the plan resolves each role per pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The pass's `Pass` uniform.
    Params,
    /// The segment of table plane `k` that the pass's table slice binds.
    Table(usize),
    /// The table's texture copy (a placeholder when reading buffers).
    Texture,
    /// The input segment paired with the output segment (indices, or rows of x).
    Input,
    /// The output segment.
    Out,
    /// Further inputs or states, segmented like the input (argmaxes beside gradients) or
    /// like the output (an optimizer's states beside its table): number `k`.
    Aux(usize),
    /// Bags: the output segment's bag bounds.
    Offsets,
    /// Bags: the output segment's bag sizes, summed over passes.
    Counts,
    /// Bags: the per-sample weights of the bound index segment (a placeholder without).
    Weights,
    /// The bad-index report.
    Status,
    /// The layer's own buffer number `k` (of `Call::extra`).
    Extra(usize),
    /// The layer's buffer for the pass's table slice (of `Call::per_slice`).
    PerSlice,
}

/// The bindings the common helpers declare (`shaders/common/pass.wgsl`, `table.wgsl`,
/// `bag.wgsl`), by number, slot and role; a kernel lists those its entry point uses.
pub mod binding {
    use super::{Role, Slot};

    pub const PARAMS: (u32, Slot, Role) = (0, Slot::Uniform, Role::Params);
    pub const TABLE: (u32, Slot, Role) = (1, Slot::Read, Role::Table(0));
    pub const INPUT: (u32, Slot, Role) = (2, Slot::Read, Role::Input);
    pub const OUT: (u32, Slot, Role) = (3, Slot::ReadWrite, Role::Out);
    pub const TEXTURE: (u32, Slot, Role) = (4, Slot::Texture, Role::Texture);
    pub const OFFSETS: (u32, Slot, Role) = (5, Slot::Read, Role::Offsets);
    pub const COUNTS: (u32, Slot, Role) = (6, Slot::ReadWrite, Role::Counts);
    pub const STATUS: (u32, Slot, Role) = (8, Slot::ReadWrite, Role::Status);
}

/// A compute kernel: an entry point of one family and its bindings (number, slot, role).
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    pub family: &'static ShaderFamily,
    pub entry: &'static str,
    pub bindings: &'static [(u32, Slot, Role)],
}

impl Kernel {
    pub const fn new(family: &'static ShaderFamily, entry: &'static str, bindings: &'static [(u32, Slot, Role)]) -> Self {
        Kernel { family, entry, bindings }
    }

    /// The bind-group layout's key: binding numbers and slots.
    pub(crate) fn layout_key(&self) -> Vec<(u32, Slot)> {
        self.bindings.iter().map(|&(b, s, _)| (b, s)).collect()
    }
}

/// The value of WGSL constant `name` of `module`, if it is a `u32` literal (for tests
/// that check constants Rust and WGSL share).
#[cfg(test)]
pub(crate) fn wgsl_u32_constant(module: &naga::Module, name: &str) -> Option<u32> {
    let (_, c) = module.constants.iter().find(|(_, c)| c.name.as_deref() == Some(name))?;
    match module.global_expressions[c.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => Some(v),
        _ => None,
    }
}
