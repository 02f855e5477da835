// Top-k inner-product retrieval (REALM's retriever: topk(queries @ table.T)) over a
// dense or quantized table, for a batch of queries at a time:
//  1. scores[q, n] = <query q, row n> (score_dense / score_quantized, one pass per
//     table slice adding its part; cosine also sums each row's squares), queries
//     L2-normalised first for cosine (normalize_queries);
//  2. each score becomes a 32-bit key that orders descending scores ascending
//     (score_keys; NaN first, as torch.topk ranks it largest);
//  3. the k-th smallest key of each query by radix select: four rounds of an 8-bit
//     digit histogram (integer atomics: exact counts) and a pick (radix_histogram,
//     radix_pick); no sort of N per query;
//  4. the keys below it, and as many equal to it as k needs (lowest rows first), are
//     compacted in row order (tile_counts, an exclusive scan, compact_selected);
//  5. the k selected of each query are sorted by key (stable: equal scores keep row
//     order; gpu/sort.rs) and written out (write_topk).
// Parts: common/grid.wgsl, common/pass.wgsl, common/table.wgsl, common/codes.wgsl,
// common/quantized_table.wgsl, then this file.
// Pass fields: dim; arg0 = queries in the batch (Qb), arg1 = table rows (N), arg2 =
// k, arg3 = kernel-specific (below); mode = METRIC_*.

const METRIC_DOT: u32 = 0u;
const METRIC_COSINE: u32 = 1u;
// Elements a workgroup of the selection kernels covers: WG_SIZE (64) invocations × 4.
const TILE: u32 = 256u;

@group(0) @binding(13) var<storage, read_write> row_sq: array<f32>;
@group(0) @binding(13) var<storage, read> row_sq_in: array<f32>;
@group(0) @binding(14) var<storage, read> raw_queries: array<f32>;
@group(0) @binding(15) var<storage, read_write> keys: array<u32>;
@group(0) @binding(15) var<storage, read> keys_in: array<u32>;
@group(0) @binding(16) var<storage, read_write> counts: array<atomic<u32>>;
@group(0) @binding(16) var<storage, read> counts_in: array<u32>;
// Per query: (prefix of the k-th key so far, how many keys equal to it are still needed).
@group(0) @binding(17) var<storage, read_write> select_state: array<vec2<u32>>;
@group(0) @binding(17) var<storage, read> select_state_in: array<vec2<u32>>;
// Per (query, tile): keys below the k-th key, and keys equal to it; then their
// exclusive prefix sums over the batch's tiles.
@group(0) @binding(18) var<storage, read_write> tile_lt_totals: array<u32>;
@group(0) @binding(19) var<storage, read_write> tile_eq_totals: array<u32>;
@group(0) @binding(18) var<storage, read> lt_prefix: array<u32>;
@group(0) @binding(19) var<storage, read> eq_prefix: array<u32>;
@group(0) @binding(20) var<storage, read_write> selected_keys: array<u32>;
@group(0) @binding(20) var<storage, read> selected_keys_in: array<u32>;
@group(0) @binding(21) var<storage, read_write> selected_rows: array<u32>;
@group(0) @binding(21) var<storage, read> selected_rows_in: array<u32>;
@group(0) @binding(22) var<storage, read> order: array<u32>;
@group(0) @binding(23) var<storage, read_write> out_rows: array<u32>;

// ---- scores -------------------------------------------------------------------------

// Query q of the batch, scaled to unit length for cosine (torch's F.normalize: x /
// max(|x|, 1e-12)). One invocation per query.
@compute @workgroup_size(WG_SIZE)
fn normalize_queries(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let q = linear_id(wid, nwg, lid);
    if (q >= params.arg0) { return; }
    let d = params.dim;
    var sq = 0.0;
    for (var c = 0u; c < d; c++) { let x = raw_queries[q * d + c]; sq += x * x; }
    let scale = 1.0 / max(sqrt(sq), 1e-12);
    for (var c = 0u; c < d; c++) { out[q * d + c] = raw_queries[q * d + c] * scale; }
}

// The scoring kernels read the queries from a uniform block: every lane reads the same
// query word, which a CPU adapter then loads once for all lanes (storage loads it
// emulates lane by lane; on lavapipe this is 4x faster). A block holds columns
// [col0, col0 + cols) of queries [q0, q0 + count) of the batch, query-major; passes
// walk the blocks and add their parts to the zeroed scores (and, for cosine, the
// first query's pass to the rows' sums of squares).
// Pass fields: arg3 = q0, index_first = col0, index_count = count; cols = min(dim -
// col0, BLOCK_WORDS * 4) (several queries share a block only when cols = dim).
const BLOCK_WORDS: u32 = 1024u; // 16 KiB, what every WebGPU and GL device binds
@group(0) @binding(24) var<uniform> query_block: array<vec4<f32>, BLOCK_WORDS>;

fn block_cols() -> u32 {
    return min(params.dim - params.index_first, BLOCK_WORDS * 4u);
}

// Column c (of the block's columns) of the block's query j.
fn query_value(j: u32, c: u32) -> f32 {
    let i = j * block_cols() + c;
    return query_block[i / 4u][i % 4u];
}

// Adds a row's part of a score (and, for cosine, of its squares) to the accumulators.
fn add_score(j: u32, row: u32, dot_part: f32, sq_part: f32) {
    let q = params.arg3 + j;
    out[q * params.arg1 + row] += dot_part;
    if (params.mode == METRIC_COSINE && q == 0u) { row_sq[row] += sq_part; }
}

fn sum4(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// One invocation per table row of the bound slice, looping over the block's queries
// (the row's words are re-read from cache). Dense tables: rows lie whole in one slice.
// The invocation's row, or NO_ELEMENT past the slice.
fn dense_row(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    let row = params.lo + linear_id(wid, nwg, lid);
    return select(row, NO_ELEMENT, row >= params.hi);
}

// Rows element by element (from the buffer).
@compute @workgroup_size(WG_SIZE)
fn score_dense(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = dense_row(wid, nwg, lid);
    if (row == NO_ELEMENT) { return; }
    let col0 = params.index_first;
    let cols = block_cols();
    for (var j = 0u; j < params.index_count; j++) {
        var dot_sum = 0.0;
        var sq_sum = 0.0;
        for (var c = 0u; c < cols; c++) {
            let x = table_element(row, col0 + c);
            dot_sum += x * query_value(j, c);
            sq_sum += x * x;
        }
        add_score(j, row, dot_sum, sq_sum);
    }
}

// Rows of whole vec4 words (f32: 4 values per word; f16 / bf16: 8), from the buffer
// or the texture copy.
@compute @workgroup_size(WG_SIZE)
fn score_dense_words(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = dense_row(wid, nwg, lid);
    if (row == NO_ELEMENT) { return; }
    let per_word = select(8u, 4u, TABLE_FORMAT == 0u);
    let first = (row - params.first0) * (params.dim / per_word) + params.index_first / per_word;
    let block_words = block_cols() / 4u;
    for (var j = 0u; j < params.index_count; j++) {
        var dot_sum = vec4<f32>(0.0);
        var sq_sum = vec4<f32>(0.0);
        for (var w = 0u; w < block_cols() / per_word; w++) {
            let word = table_word(first + w);
            let qw = j * block_words + w * per_word / 4u;
            if (TABLE_FORMAT == 0u) {
                let x = bitcast<vec4<f32>>(word);
                dot_sum += x * query_block[qw];
                sq_sum += x * x;
            } else {
                let lo4 = widen_half4(word, false);
                let hi4 = widen_half4(word, true);
                dot_sum += lo4 * query_block[qw] + hi4 * query_block[qw + 1u];
                sq_sum += lo4 * lo4 + hi4 * hi4;
            }
        }
        add_score(j, row, sum4(dot_sum), sum4(sq_sum));
    }
}

// Quantized tables: slices hold table elements [lo, hi), which may cut a row; each
// pass adds the part of the row (within the block's columns) it holds. One
// invocation per row the slice touches.
@compute @workgroup_size(WG_SIZE)
fn score_quantized(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let d = params.dim;
    let row = params.lo / d + linear_id(wid, nwg, lid);
    let block_start = row * d + params.index_first;
    let start = max(block_start, params.lo);
    let end = min(block_start + block_cols(), params.hi);
    if (row >= params.arg1 || start >= end) { return; }
    for (var j = 0u; j < params.index_count; j++) {
        var dot_sum = 0.0;
        var sq_sum = 0.0;
        for (var e = start; e < end; e++) {
            let x = element(e);
            dot_sum += x * query_value(j, e - block_start);
            sq_sum += x * x;
        }
        add_score(j, row, dot_sum, sq_sum);
    }
}

// int8 tables (SCHEME 0, 1) with rows of whole vec4 words of codes (16 each), their
// codes in one buffer: the codes plane is bound as a dense table of rows of D bytes
// (rows as slices, or its texture copy on CPU adapters), 16 codes per word, the scales
// whole. Row-wise scales are applied once per row, block-wise ones per word (blocks
// are multiples of 16 elements).
fn int8_values(w: u32, scale: f32) -> vec4<f32> {
    if (SCHEME == 1u) {
        return vec4<f32>(vec4<i32>(i32(w << 24u), i32(w << 16u), i32(w << 8u), i32(w)) >> vec4<u32>(24u));
    }
    let c = (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
    return vec4<f32>(bitcast<f32>(consts[C_MAP + c.x]), bitcast<f32>(consts[C_MAP + c.y]),
                     bitcast<f32>(consts[C_MAP + c.z]), bitcast<f32>(consts[C_MAP + c.w])) * scale;
}

@compute @workgroup_size(WG_SIZE)
fn score_int8_words(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = dense_row(wid, nwg, lid);
    if (row == NO_ELEMENT) { return; }
    let d = params.dim;
    let block_start = row * d + params.index_first;
    let block_words = block_cols() / 4u;
    let first = (row - params.first0) * (d / 16u) + params.index_first / 16u;
    // Row-wise: the row's scale; block-wise: 1 here, each word's block scale below.
    var row_scale = 1.0;
    if (SCHEME == 1u) { row_scale = bitcast<f32>(scales[block_start / params.group]); }
    for (var j = 0u; j < params.index_count; j++) {
        var dot_sum = vec4<f32>(0.0);
        var sq_sum = vec4<f32>(0.0);
        for (var v = 0u; v < block_words / 4u; v++) {
            let codes16 = table_word(first + v);
            var scale = 1.0;
            if (SCHEME == 0u) { scale = bitcast<f32>(scales[(block_start + 16u * v) / params.group]); }
            for (var k = 0u; k < 4u; k++) {
                let x = int8_values(codes16[k], scale);
                dot_sum += x * query_block[j * block_words + 4u * v + k];
                sq_sum += x * x;
            }
        }
        add_score(j, row, sum4(dot_sum) * row_scale, sum4(sq_sum) * row_scale * row_scale);
    }
}

// ---- keys ---------------------------------------------------------------------------

// A key whose ascending order is the scores' descending order (NaN first).
fn descending_key(score: f32) -> u32 {
    var u = bitcast<u32>(score);
    if (score != score) { u = 0x7fc00000u; }
    let ordered = select(u | 0x80000000u, ~u, (u & 0x80000000u) != 0u);
    return ~ordered;
}

fn score_of_key(key: u32) -> f32 {
    let ordered = ~key;
    return bitcast<f32>(select(~ordered, ordered & 0x7fffffffu, (ordered & 0x80000000u) != 0u));
}

// keys[i] for the batch's Qb × N scores (`out`), cosine scores divided by the row norm.
@compute @workgroup_size(WG_SIZE)
fn score_keys(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= params.arg0 * params.arg1) { return; }
    var s = out[i];
    if (params.mode == METRIC_COSINE) {
        let row = i % params.arg1;
        s = s / max(sqrt(row_sq_in[row]), 1e-12);
    }
    keys[i] = descending_key(s);
}

// ---- radix select -------------------------------------------------------------------

var<workgroup> histogram: array<atomic<u32>, 256>;
var<workgroup> wg_lt: atomic<u32>;
var<workgroup> wg_eq: atomic<u32>;

// The digit (bits shift .. shift + 8) of round arg3 (0: the top byte), and the mask of
// the digits above it.
fn round_shift() -> u32 {
    return 24u - 8u * params.arg3;
}

fn round_mask() -> u32 {
    if (params.arg3 == 0u) { return 0u; }
    return 0xffffffffu << (32u - 8u * params.arg3);
}

// Workgroups: Qb × tiles of TILE keys of one query (tiles per query = ceil(N / TILE)).
// Which query and tile this workgroup covers.
fn tile_of(wid: vec3<u32>, nwg: vec3<u32>) -> vec2<u32> {
    let tiles = (params.arg1 + TILE - 1u) / TILE;
    let g = group_index(wid, nwg);
    let q = g / tiles;
    return vec2<u32>(q, g - q * tiles);
}

// Counts, per query, the keys that match the prefix so far by their digit of this
// round (counts: 256 per query, zeroed before the round).
@compute @workgroup_size(WG_SIZE)
fn radix_histogram(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let qt = tile_of(wid, nwg);
    for (var b = lid.x; b < 256u; b += WG_SIZE) { atomicStore(&histogram[b], 0u); }
    workgroupBarrier();
    if (qt.x < params.arg0) {
        let prefix = select_state_in[qt.x].x;
        let shift = round_shift();
        let mask = round_mask();
        for (var j = 0u; j < 4u; j++) {
            let n = qt.y * TILE + lid.x * 4u + j;
            if (n < params.arg1) {
                let key = keys_in[qt.x * params.arg1 + n];
                if ((key & mask) == prefix) { atomicAdd(&histogram[(key >> shift) & 0xffu], 1u); }
            }
        }
    }
    workgroupBarrier();
    if (qt.x < params.arg0) {
        for (var b = lid.x; b < 256u; b += WG_SIZE) {
            let c = atomicLoad(&histogram[b]);
            if (c != 0u) { atomicAdd(&counts[qt.x * 256u + b], c); }
        }
    }
}

// One invocation per query: the digit where the running count reaches the number of
// keys still needed; it joins the prefix, and the keys below it are taken.
@compute @workgroup_size(WG_SIZE)
fn radix_pick(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let q = linear_id(wid, nwg, lid);
    if (q >= params.arg0) { return; }
    var counts: array<u32, 256>;
    for (var b = 0u; b < 256u; b++) { counts[b] = counts_in[q * 256u + b]; }
    select_state[q] = pick_digit(&counts, select_state[q], round_shift());
}

// The digit (at `shift`) where the running count of `counts` reaches the keys still
// needed (state.y): it joins the prefix (state.x), and the keys below it are taken.
fn pick_digit(counts: ptr<function, array<u32, 256>>, state: vec2<u32>, shift: u32) -> vec2<u32> {
    var below = 0u;
    for (var b = 0u; b < 256u; b++) {
        let c = (*counts)[b];
        if (below + c >= state.y) { return vec2<u32>(state.x | (b << shift), state.y - below); }
        below += c;
    }
    return state;
}

// ---- compaction ---------------------------------------------------------------------

// Per tile: how many keys lie below the k-th key, and how many equal it.
@compute @workgroup_size(WG_SIZE)
fn tile_counts(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let qt = tile_of(wid, nwg);
    if (lid.x == 0u) {
        atomicStore(&wg_lt, 0u);
        atomicStore(&wg_eq, 0u);
    }
    workgroupBarrier();
    let c = lane_counts(qt, lid.x);
    if (c.x != 0u) { atomicAdd(&wg_lt, c.x); }
    if (c.y != 0u) { atomicAdd(&wg_eq, c.y); }
    workgroupBarrier();
    let tiles = (params.arg1 + TILE - 1u) / TILE;
    if (lid.x == 0u && qt.x < params.arg0) {
        tile_lt_totals[qt.x * tiles + qt.y] = atomicLoad(&wg_lt);
        tile_eq_totals[qt.x * tiles + qt.y] = atomicLoad(&wg_eq);
    }
}

// This invocation's 4 keys: how many lie below the threshold, how many equal it.
fn lane_counts(qt: vec2<u32>, lane: u32) -> vec2<u32> {
    var c = vec2<u32>(0u);
    if (qt.x >= params.arg0) { return c; }
    let threshold = select_state_in[qt.x].x;
    for (var j = 0u; j < 4u; j++) {
        let n = qt.y * TILE + lane * 4u + j;
        if (n < params.arg1) {
            let key = keys_in[qt.x * params.arg1 + n];
            c += vec2<u32>(select(0u, 1u, key < threshold), select(0u, 1u, key == threshold));
        }
    }
    return c;
}

var<workgroup> lane_offsets: array<vec2<u32>, 64>;

// Where a key goes among the k selected of its query, walking keys in row order (k:
// not selected): keys below the threshold (state.x) at their rank among them, then the
// first state.y keys equal to it. `ranks` counts the keys below and equal so far.
fn selected_slot(key: u32, state: vec2<u32>, k: u32, ranks: ptr<function, vec2<u32>>) -> u32 {
    var slot = k;
    if (key < state.x) {
        slot = (*ranks).x;
        (*ranks).x += 1u;
    } else if (key == state.x) {
        if ((*ranks).y < state.y) { slot = k - state.y + (*ranks).y; }
        (*ranks).y += 1u;
    }
    return slot;
}

// Writes the selected keys and rows of each tile in row order: the keys below the
// threshold at their rank among them, then the first `needed` equal ones after all of
// those (the scanned tile totals give each tile's start).
@compute @workgroup_size(WG_SIZE)
fn compact_selected(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let qt = tile_of(wid, nwg);
    // Exclusive scan of the lanes' counts (Hillis-Steele over WG_SIZE = 64 lanes).
    let own = lane_counts(qt, lid.x);
    lane_offsets[lid.x] = own;
    workgroupBarrier();
    for (var stride = 1u; stride < WG_SIZE; stride *= 2u) {
        var v = lane_offsets[lid.x];
        if (lid.x >= stride) { v += lane_offsets[lid.x - stride]; }
        workgroupBarrier();
        lane_offsets[lid.x] = v;
        workgroupBarrier();
    }
    if (qt.x >= params.arg0) { return; }
    let tiles = (params.arg1 + TILE - 1u) / TILE;
    let t = qt.x * tiles + qt.y;
    let first = qt.x * tiles;
    let state = select_state_in[qt.x];
    let k = params.arg2;
    var ranks = vec2<u32>(lt_prefix[t] - lt_prefix[first], eq_prefix[t] - eq_prefix[first]) + lane_offsets[lid.x] - own;
    for (var j = 0u; j < 4u; j++) {
        let n = qt.y * TILE + lid.x * 4u + j;
        if (n < params.arg1) {
            let key = keys_in[qt.x * params.arg1 + n];
            let slot = selected_slot(key, state, k, &ranks);
            if (slot < k) {
                selected_keys[qt.x * k + slot] = key;
                selected_rows[qt.x * k + slot] = n;
            }
        }
    }
}

// ---- output -------------------------------------------------------------------------

// order[p]: the selected entry that comes p-th (sorted by query, then key). Writes
// scores to `out` and rows to `out_rows` (the bound output segments; arg3 = the
// batch's first row in them).
@compute @workgroup_size(WG_SIZE)
fn write_topk(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = linear_id(wid, nwg, lid);
    if (p >= params.arg0 * params.arg2) { return; }
    let j = order[p];
    let dst = params.arg3 * params.arg2 + p;
    out[dst] = score_of_key(selected_keys_in[j]);
    out_rows[dst] = selected_rows_in[j];
}

// The sort key of selected entry j for the second (stable) sort: its query.
@compute @workgroup_size(WG_SIZE)
fn query_of_entries(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = linear_id(wid, nwg, lid);
    if (p >= params.arg0 * params.arg2) { return; }
    out_rows[p] = order[p] / params.arg2;
}

// ---- small selections: one workgroup per query --------------------------------------

// Where the table is small (N ≤ SMALL_N) and k ≤ SMALL_K, one workgroup per query does
// steps 2-5 in one dispatch: no pass of its own per radix round, scan or sort. Its
// WG_SIZE lanes each own a contiguous chunk of the query's N keys (written to `keys`
// by the lane in the first round, read back by the same lane after), so the selected
// entries come out in row order without a grid-wide scan. Cosine divides by the raw
// query's norm here (the scores are of the raw query). Pass fields: arg3 = the batch's
// first row in the output segments; the scores are bound at binding 25.
const SMALL_K: u32 = 256u;

@group(0) @binding(25) var<storage, read> scores_in: array<f32>;

var<workgroup> small_state: vec2<u32>;
var<workgroup> small_keys: array<u32, SMALL_K>;
var<workgroup> small_rows: array<u32, SMALL_K>;
var<workgroup> lane_sq: array<f32, 64>;

// 1 / max(|query q|, 1e-12) of the raw query (every lane gets it; a fixed-order sum).
fn small_inv_norm(q: u32, lane: u32) -> f32 {
    let d = params.dim;
    var sq = 0.0;
    for (var c = lane; c < d; c += WG_SIZE) { let x = raw_queries[q * d + c]; sq += x * x; }
    lane_sq[lane] = sq;
    workgroupBarrier();
    for (var stride = WG_SIZE / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) { lane_sq[lane] += lane_sq[lane + stride]; }
        workgroupBarrier();
    }
    return 1.0 / max(sqrt(lane_sq[0]), 1e-12);
}

@compute @workgroup_size(WG_SIZE)
fn select_small(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let q = group_index(wid, nwg);
    if (q >= params.arg0) { return; }
    let lane = lid.x;
    let n = params.arg1;
    let k = params.arg2;
    var inv_q = 1.0;
    if (params.mode == METRIC_COSINE) { inv_q = small_inv_norm(q, lane); }
    let chunk = (n + WG_SIZE - 1u) / WG_SIZE;
    let lo = min(lane * chunk, n);
    let hi = min(lo + chunk, n);
    let base = q * n;
    if (lane == 0u) { small_state = vec2<u32>(0u, k); }
    for (var round = 0u; round < 4u; round++) {
        for (var b = lane; b < 256u; b += WG_SIZE) { atomicStore(&histogram[b], 0u); }
        workgroupBarrier();
        let prefix = small_state.x;
        let shift = 24u - 8u * round;
        let mask = select(0xffffffffu << (32u - 8u * round), 0u, round == 0u);
        for (var r = lo; r < hi; r++) {
            var key = 0u;
            if (round == 0u) {
                var s = scores_in[base + r];
                if (params.mode == METRIC_COSINE) { s = (s * inv_q) / max(sqrt(row_sq_in[r]), 1e-12); }
                key = descending_key(s);
                keys[base + r] = key;
            } else {
                key = keys[base + r];
            }
            if ((key & mask) == prefix) { atomicAdd(&histogram[(key >> shift) & 0xffu], 1u); }
        }
        workgroupBarrier();
        if (lane == 0u) {
            var counts: array<u32, 256>;
            for (var b = 0u; b < 256u; b++) { counts[b] = atomicLoad(&histogram[b]); }
            small_state = pick_digit(&counts, small_state, shift);
        }
        workgroupBarrier();
    }
    // The k-th key and how many keys equal to it are taken (the lowest rows first).
    let state = small_state;
    var own = vec2<u32>(0u);
    for (var r = lo; r < hi; r++) {
        let key = keys[base + r];
        own += vec2<u32>(select(0u, 1u, key < state.x), select(0u, 1u, key == state.x));
    }
    lane_offsets[lane] = own;
    workgroupBarrier();
    if (lane == 0u) {
        var run = vec2<u32>(0u);
        for (var l = 0u; l < WG_SIZE; l++) {
            let c = lane_offsets[l];
            lane_offsets[l] = run;
            run += c;
        }
    }
    workgroupBarrier();
    var ranks = lane_offsets[lane];
    for (var r = lo; r < hi; r++) {
        let key = keys[base + r];
        let slot = selected_slot(key, state, k, &ranks);
        if (slot < k) {
            small_keys[slot] = key;
            small_rows[slot] = r;
        }
    }
    workgroupBarrier();
    // Sorted by key, equal keys in row order (slots hold each class in row order, the
    // taken equal keys after every smaller one): each entry's rank is how many precede it.
    let dst = (params.arg3 + q) * k;
    for (var i = lane; i < k; i += WG_SIZE) {
        let key = small_keys[i];
        var rank = 0u;
        for (var j = 0u; j < k; j++) {
            let other = small_keys[j];
            rank += select(0u, 1u, other < key || (other == key && j < i));
        }
        out[dst + rank] = score_of_key(key);
        out_rows[dst + rank] = small_rows[i];
    }
}
