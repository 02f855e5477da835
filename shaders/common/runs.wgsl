// Walking the runs of a sorted gradient list (one run per distinct table row), shared
// by the backward's run sums (embedding_backward.wgsl) and the fused sparse optimizer
// step (optimizer.wgsl). The including file defines `contribution(j, col)`: columns
// col .. col + WIDTH of the gradient that entry j adds to its row. Entries: (source
// row, factor); chunk sums: sums of whole chunks of arg0 entries of one row (hot
// rows). Parts before this one: common/grid.wgsl, common/pass.wgsl.

// Pass flags of the run sums: divide by the row's frequency (scale_grad_by_freq);
// the output row of a run is its slot (sparse gradients), not its table row.
const FLAG_SCALE_BY_FREQ: u32 = 32u;
const FLAG_SPARSE: u32 = 128u;

// Columns one group sums: 4 when rows are whole vec4 words, else 1.
override WIDTH: u32 = 1u; // values: 1, 4
// Column groups one run-sum invocation sums: several on CPU adapters, where each
// invocation costs more than its loads; one on GPUs.
override GROUPS: u32 = 1u; // values: 1, 4, 8
const MAX_GROUPS: u32 = 8u;

@group(0) @binding(16) var<storage, read> entries: array<vec2<u32>>;
@group(0) @binding(17) var<storage, read> chunk_sums: array<f32>;
// Runs of the sorted list, one per distinct row: (first entry, row); the entry after
// the last run ends it.
@group(0) @binding(18) var<storage, read> runs: array<vec2<u32>>;
@group(0) @binding(23) var<storage, read> slot_ranges: array<vec2<u32>>;

// First entry in [lo, hi) (of one row, so ordered by source row) whose source row is
// >= `source`.
fn first_entry_from(lo_in: u32, hi_in: u32, source: u32) -> u32 {
    var lo = lo_in;
    var hi = hi_in;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (entries[mid].x < source) { lo = mid + 1u; } else { hi = mid; }
    }
    return lo;
}

// The sum of entries [a, b) of one row's run over columns col .. col + WIDTH: runs
// longer than two chunks add the chunk sums of their whole chunks.
fn run_sum(a: u32, b: u32, col: u32) -> vec4<f32> {
    let size = params.arg0;
    var acc = vec4<f32>(0.0);
    let c0 = (a + size - 1u) / size;
    let c1 = b / size;
    if (b - a <= 2u * size || c0 >= c1) {
        for (var j = a; j < b; j++) { acc += contribution(j, col); }
        return acc;
    }
    for (var j = a; j < c0 * size; j++) { acc += contribution(j, col); }
    for (var c = c0; c < c1; c++) {
        let s = c * params.dim + col;
        acc += vec4<f32>(chunk_sums[s], chunk_sums[s + min(1u, WIDTH - 1u)],
                         chunk_sums[s + min(2u, WIDTH - 1u)], chunk_sums[s + min(3u, WIDTH - 1u)]);
    }
    for (var j = c1 * size; j < b; j++) { acc += contribution(j, col); }
    return acc;
}

// What one run-sum invocation works on: its block of GROUPS column units (of `units`
// per row), its run's entries [start, end), those [a, b) that read the bound source
// segment, and the output row; `valid` is false past the output segment's runs.
// arg2: the output segment's number (its slot range), arg3: its first row.
struct RunWork {
    valid: bool,
    block: u32,
    start: u32,
    end: u32,
    a: u32,
    b: u32,
    out_row: u32,
}

fn run_work(id: u32, units: u32) -> RunWork {
    var w: RunWork;
    let blocks = (units + GROUPS - 1u) / GROUPS;
    let local = id / blocks;
    w.block = id - local * blocks;
    let range = slot_ranges[params.arg2];
    let slot = range.x + local;
    w.valid = slot < range.y;
    if (!w.valid) { return w; }
    let run = runs[slot];
    w.start = run.x;
    w.end = runs[slot + 1u].x;
    w.a = w.start;
    w.b = w.end;
    if (has_flag(FLAG_MULTI_SOURCE)) {
        w.a = first_entry_from(w.start, w.end, params.index_first);
        w.b = first_entry_from(w.a, w.end, params.index_first + params.index_count);
    }
    w.out_row = run.y - params.arg3;
    if (has_flag(FLAG_SPARSE)) { w.out_row = slot - params.arg3; }
    return w;
}

fn frequency_scale(w: RunWork) -> f32 {
    return select(1.0, 1.0 / f32(w.end - w.start), has_flag(FLAG_SCALE_BY_FREQ));
}
