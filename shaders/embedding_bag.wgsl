// torch.nn.EmbeddingBag: sum / mean / max over bags, accumulated in f32.
// A pass covers one output segment of bags against one index segment and one table
// slice (src/gpu/plan.rs, BagPlan). Parts: common/grid.wgsl, common/pass.wgsl,
// common/table.wgsl, common/bag.wgsl, common/bag_scalar.wgsl, then this file.

@group(0) @binding(7) var<storage, read> weights: array<f32>;
// The same index entries as `indices`, four a load (tensor buffers are whole 16-byte
// words): bag_vec4 reads them so, as CPU adapters emulate each load lane by lane.
@group(0) @binding(2) var<storage, read> indices4: array<vec4<i32>>;
// The bags' offsets likewise (src/gpu/plan.rs pads them to whole words).
@group(0) @binding(5) var<storage, read> offsets4: array<vec4<u32>>;

// Offset i and index entry e from the vec4 last loaded (`word`, at `at` = i / 4),
// loading the next one when they lie past it.
fn cached_offset(i: u32, word: ptr<function, vec4<u32>>, at: ptr<function, u32>) -> u32 {
    if (i / 4u != *at) {
        *at = i / 4u;
        *word = offsets4[*at];
    }
    return (*word)[i & 3u];
}
fn cached_entry(e: u32, word: ptr<function, vec4<i32>>, at: ptr<function, u32>) -> i32 {
    if (e / 4u != *at) {
        *at = e / 4u;
        *word = indices4[*at];
    }
    return (*word)[e & 3u];
}

fn bag_row(entry: u32, pos: u32, report: bool) -> u32 {
    return checked_row(indices[entry], pos, report);
}

fn bag_weight(entry: u32) -> f32 {
    if (has_flag(FLAG_HAS_WEIGHTS)) { return weights[entry]; }
    return 1.0;
}

fn bag_holds(row: u32, col: u32) -> bool {
    return slice_holds_row(row);
}

fn bag_value(row: u32, col: u32) -> f32 {
    return table_element(row, col);
}

// One invocation reduces one column of one bag.
@compute @workgroup_size(WG_SIZE)
fn bag(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_id) lid: vec3<u32>) {
    bag_element(output_element(wid, nwg, lid));
}

// Vectorised bags, for tables whose rows are whole vec4 words (F32 with D % 4 == 0,
// F16 / BF16 with D % 8 == 0). LANES invocations share one bag: each owns the vec4
// columns lane, lane + LANES, ... and walks the bag's indices keeping its sums in
// registers, so every table row is read once with contiguous 16-byte loads (the
// warp-per-bag scheme of FBGEMM's TBE forward and PyTorch's embedding_bag kernel).
override LANES: u32 = 16u; // values: 1, 2, 4, 8, 16, 32, 64

// Table words one invocation accumulates per sweep over a bag's indices: each index
// (and its checks) is read once per CHUNK words rather than once per word. GPUs spread
// a row over lanes (4); CPU adapters give an invocation a whole row or more of it (16),
// where each lane's index load is emulated and costs as much as several rows of texels.
override CHUNK: u32 = 4u; // values: 1, 2, 4, 8, 16
const MAX_CHUNK: u32 = 16u;

// Adds word c0 + k * LANES of the table row at `base` (when k < CHUNK and the row has
// it) to the accumulators of its output words. Called once per k with a constant k,
// not from a loop: lavapipe ends an invocation's loops after 65 535 iterations in all,
// and a loop over k that its compiler keeps would spend CHUNK of them per index.
fn accumulate_word(acc: ptr<function, array<vec4<f32>, 32>>, k: u32, c0: u32, base: u32, in_words: u32, scale: f32) {
    let c = c0 + k * LANES;
    if (k >= CHUNK || c >= in_words) { return; }
    let w = table_word(base + c);
    if (TABLE_FORMAT != 0u) {
        (*acc)[2u * k] = reduce4((*acc)[2u * k], widen_half4(w, false) * scale);
        (*acc)[2u * k + 1u] = reduce4((*acc)[2u * k + 1u], widen_half4(w, true) * scale);
    } else {
        (*acc)[k] = reduce4((*acc)[k], bitcast<vec4<f32>>(w) * scale);
    }
}

// Consecutive bags one invocation group reduces in turn: 1, or (small bags of narrow
// rows on CPU adapters) 16, so that a bag's end offset is the next one's start, and
// their index entries, adjacent, share vec4 loads.
override BAGS: u32 = 1u; // values: 1, 16
// Set (host side) for f32 rows of one word, LANES = 1 and CHUNK = 1.
override ONE_WORD_ROWS: bool = false;

@compute @workgroup_size(WG_SIZE)
fn bag_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let first_bag = (group_index(wid, nwg) * (WG_SIZE / LANES) + lid.x / LANES) * BAGS;
    let lane = lid.x % LANES;
    if (first_bag >= params.rows) { return; }
    let out_words = params.dim / 4u;
    let half = TABLE_FORMAT != 0u;
    let in_words = select(out_words, out_words / 2u, half);
    let init = vec4<f32>(bag_identity());
    // Table word c holds output word c (f32) or output words 2c and 2c + 1 (halves);
    // this invocation's words are c0 + k * LANES for k < CHUNK.
    let per_word = select(1u, 2u, half);
    let index_end = params.index_first + params.index_count;
    // The vec4s of offsets and of index entries last loaded, and their positions.
    var bounds = vec4<u32>(0u);
    var bounds_at = 0xffffffffu;
    var entries = vec4<i32>(0);
    var entries_at = 0xffffffffu;
    var end = cached_offset(first_bag, &bounds, &bounds_at);

    if (ONE_WORD_ROWS) {
        // f32 rows of one word (D = 4) with a whole bag per invocation: no sweep over
        // words and one accumulator, which lavapipe runs about 1.5 times as fast.
        for (var j = 0u; j < BAGS; j++) {
            let b = first_bag + j;
            if (b >= params.rows) { return; }
            let start = end;
            end = cached_offset(b + 1u, &bounds, &bounds_at);
            var acc = init;
            if (!has_flag(FLAG_FIRST_PASS)) { acc = out4[b]; }
            var n = 0u;
            for (var pos = max(start, params.index_first); pos < min(end, index_end); pos++) {
                let entry = pos - params.index_first;
                let row = checked_row(cached_entry(entry, &entries, &entries_at), pos, true);
                if (row == BAD_ROW || row == params.padding_idx) { continue; }
                n += 1u;
                if (slice_holds_row(row)) {
                    acc = reduce4(acc, bitcast<vec4<f32>>(table_word(row - params.first0)) * bag_weight(entry));
                }
            }
            out4[b] = finish4(acc, n);
            count_bag(b, n);
        }
        return;
    }
    for (var j = 0u; j < BAGS; j++) {
        let b = first_bag + j;
        if (b >= params.rows) { return; }
        let dst = b * out_words;
        let start = end;
        end = cached_offset(b + 1u, &bounds, &bounds_at);
        let lo = max(start, params.index_first);
        let hi = min(end, index_end);
        for (var c0 = lane; c0 < in_words; c0 += CHUNK * LANES) {
            var acc: array<vec4<f32>, 32>; // 2 * MAX_CHUNK output words; 2 * CHUNK are used
            for (var k = 0u; k < 2u * CHUNK; k++) {
                let o = dst + per_word * (c0 + (k / per_word) * LANES) + k % per_word;
                if (!has_flag(FLAG_FIRST_PASS) && k < per_word * CHUNK && c0 + (k / per_word) * LANES < in_words) {
                    acc[k] = out4[o];
                } else {
                    acc[k] = init;
                }
            }
            var n = 0u;
            for (var pos = lo; pos < hi; pos++) {
                let entry = pos - params.index_first;
                let row = checked_row(cached_entry(entry, &entries, &entries_at), pos, c0 == 0u);
                if (row == BAD_ROW || row == params.padding_idx) { continue; }
                n += 1u;
                if (!slice_holds_row(row)) { continue; }
                let scale = bag_weight(entry);
                let base = (row - params.first0) * in_words;
                // k = 0 .. MAX_CHUNK - 1, one call each (see accumulate_word).
                accumulate_word(&acc, 0u, c0, base, in_words, scale);
                accumulate_word(&acc, 1u, c0, base, in_words, scale);
                accumulate_word(&acc, 2u, c0, base, in_words, scale);
                accumulate_word(&acc, 3u, c0, base, in_words, scale);
                accumulate_word(&acc, 4u, c0, base, in_words, scale);
                accumulate_word(&acc, 5u, c0, base, in_words, scale);
                accumulate_word(&acc, 6u, c0, base, in_words, scale);
                accumulate_word(&acc, 7u, c0, base, in_words, scale);
                accumulate_word(&acc, 8u, c0, base, in_words, scale);
                accumulate_word(&acc, 9u, c0, base, in_words, scale);
                accumulate_word(&acc, 10u, c0, base, in_words, scale);
                accumulate_word(&acc, 11u, c0, base, in_words, scale);
                accumulate_word(&acc, 12u, c0, base, in_words, scale);
                accumulate_word(&acc, 13u, c0, base, in_words, scale);
                accumulate_word(&acc, 14u, c0, base, in_words, scale);
                accumulate_word(&acc, 15u, c0, base, in_words, scale);
            }
            for (var k = 0u; k < per_word * CHUNK; k++) {
                let c = c0 + (k / per_word) * LANES;
                if (c < in_words) { out4[dst + per_word * c + k % per_word] = finish4(acc[k], n); }
            }
            if (c0 == 0u) { count_bag(b, n); }
        }
    }
}
