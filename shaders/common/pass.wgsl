// What every plan kernel shares (src/gpu/plan.rs): the `Pass` uniform at binding 0,
// the input rows at 2 (indices), the output at 3 and the bad-index report at 8.

struct Pass {
    rows: u32,            // output rows (or bags) in the bound output segment
    dim: u32,
    index_first: u32,     // position of the bound input segment's first row in the whole input
    index_count: u32,     // rows in the bound input segment
    num_embeddings: u32,
    padding_idx: u32,     // NO_PADDING when there is none
    mode: u32,            // bags: MODE_SUM, MODE_MEAN or MODE_MAX
    flags: u32,           // FLAG_* below
    lo: u32,              // table units [lo, hi) held by the bound slice (rows, or
    hi: u32,              //   elements of a quantized table's planes)
    first0: u32,          // first row (of its tensor) of each plane's bound segment
    first1: u32,
    first2: u32,
    tex_width_shift: u32, // texture copy of the table: log2 of its width
    tex_layer_shift: u32, //   and of its rows per layer
    group: u32,           // quantized tables: elements per scale
    arg0: u32,            // the layer's own values
    arg1: u32,
    arg2: u32,
    arg3: u32,
}

const FLAG_FIRST_PASS: u32 = 1u;  // start from the initial value, not from `out`
const FLAG_LAST_PASS: u32 = 2u;   // the only pass: finish the reduction here
const FLAG_COUNT_PASS: u32 = 4u;  // add this pass's bag sizes to `counts`
const FLAG_REPORT_BAD: u32 = 8u;  // this pass zeroes and reports out-of-range indices
const FLAG_HAS_WEIGHTS: u32 = 16u;
const FLAG_MULTI_SOURCE: u32 = 64u; // grouped sums: the source spans several segments
const NO_PADDING: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> params: Pass;
@group(0) @binding(2) var<storage, read> indices: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;
// [0]: smallest position of an out-of-range index (0xffffffff: none).
@group(0) @binding(8) var<storage, read_write> status: array<atomic<u32>>;

// For kernels with an invocation per output element (rows of `dim`): this
// invocation's element, row and column, or NO_ELEMENT past the bound output segment.
const NO_ELEMENT: u32 = 0xffffffffu;

fn output_element(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> vec3<u32> {
    let id = linear_id(wid, nwg, lid);
    if (id >= params.rows * params.dim) { return vec3<u32>(NO_ELEMENT); }
    let row = id / params.dim;
    return vec3<u32>(id, row, id - row * params.dim);
}

fn has_flag(flag: u32) -> bool {
    return (params.flags & flag) != 0u;
}

// Index `index` as a table row, or BAD_ROW when it is outside the table (never read).
const BAD_ROW: u32 = 0xfffffffeu;

fn table_row(index: i32) -> u32 {
    return select(u32(index), BAD_ROW, index < 0 || u32(index) >= params.num_embeddings);
}

// The same for the index at input position `pos`; a bad one's position is reported
// (by the pass that reports, when `report`). Binds `status`.
fn checked_row(index: i32, pos: u32, report: bool) -> u32 {
    let row = table_row(index);
    if (row == BAD_ROW && report && has_flag(FLAG_REPORT_BAD)) { atomicMin(&status[0], pos); }
    return row;
}
