// Backward of torch.nn.Embedding and EmbeddingBag: the gradient of each table row is
// the sum of the output gradients of the positions that read it. Deterministic and
// without float atomics (WGSL has none): positions are sorted by row (sort.wgsl), each
// output row then sums its own run of the sorted list in a fixed order, so every row
// is written by one invocation per column group and two runs give the same bits.
// A hot row does not fall on one invocation: whole chunks of its run are summed by a
// first pass (`chunk_sums`), and the row adds those chunk sums (src/gpu/plan.rs,
// GroupPlan). Parts: common/grid.wgsl, common/pass.wgsl, common/table.wgsl,
// common/bag.wgsl, common/runs.wgsl, then this file.
//
// Entries of the sorted list: (source row, factor). The source row is the row of the
// output gradient an index position reads (the position itself for Embedding, its
// bag for EmbeddingBag); the factor is 1, the bag's per-sample weight, 1 / the bag's
// size (mean), or for max the position (compared with the bag's argmax per column).

// `gather_entries` mode besides the bag modes: the source row is position / arg2.
const MODE_POSITIONS: u32 = 3u;
// No argmax yet (an empty bag, or a column of padding rows only).
const NO_POSITION: u32 = 0xffffffffu;

@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(9) var<storage, read> grad_argmax: array<u32>;
// The same, for rows of whole vec4 words (reduce_runs4).
@group(0) @binding(2) var<storage, read> grad4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> grad_argmax4: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> out4_rows: array<vec4<f32>>;
@group(0) @binding(17) var<storage, read> chunk_sums4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> sample_weights: array<f32>;
@group(0) @binding(10) var<storage, read_write> position_keys_out: array<u32>;
@group(0) @binding(11) var<storage, read_write> positions_out: array<u32>;
@group(0) @binding(12) var<storage, read_write> flags_out: array<u32>;
@group(0) @binding(12) var<storage, read> heads: array<u32>;
@group(0) @binding(13) var<storage, read> sorted_keys: array<u32>;
@group(0) @binding(11) var<storage, read> sorted_positions: array<u32>;
@group(0) @binding(14) var<storage, read> bag_bounds: array<u32>;
@group(0) @binding(15) var<storage, read> prefix: array<u32>;
@group(0) @binding(16) var<storage, read_write> entries_out: array<vec2<u32>>;
@group(0) @binding(17) var<storage, read_write> chunk_sums_out: array<f32>;
@group(0) @binding(18) var<storage, read_write> runs_out: array<vec2<u32>>;
// Per output segment: (first row, rows) in, the slots of the runs it holds out.
@group(0) @binding(19) var<storage, read> segment_rows: array<vec2<u32>>;
@group(0) @binding(23) var<storage, read_write> slot_ranges_out: array<vec2<u32>>;
@group(0) @binding(20) var<storage, read_write> argmax_value: array<f32>;
@group(0) @binding(21) var<storage, read_write> argmax_out: array<u32>;
@group(0) @binding(22) var<storage, read> bag_grad: array<f32>;

// Sort keys of the index positions: the row, or num_embeddings (sorted last, never
// summed) for padding and for positions past the last bag (include_last_offset).
// flags_out marks the positions that count (their prefix sums give bag sizes).
// The sort key of index position p: its row, or num_embeddings for padding, bad
// indices and positions past the last bag. Host indices were range-checked before
// upload; the kernel still never lets a bad one through as a row.
fn position_key(p: u32) -> u32 {
    let row = table_row(indices[p]);
    if (row == BAD_ROW || row == params.padding_idx || p >= params.arg0) { return params.num_embeddings; }
    return row;
}

@compute @workgroup_size(WG_SIZE)
fn position_keys(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = linear_id(wid, nwg, lid);
    let n = params.index_count;
    if (p == n) { flags_out[n] = 0u; }
    if (p >= n) { return; }
    let key = position_key(p);
    position_keys_out[p] = key;
    positions_out[p] = p;
    flags_out[p] = select(0u, 1u, key < params.num_embeddings);
}

// The bag holding position p: the last b with bag_bounds[b] <= p (empty bags skipped).
fn bag_of(p: u32) -> u32 {
    var lo = 0u;
    var hi = params.arg3 + 1u;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (bag_bounds[mid] <= p) { lo = mid + 1u; } else { hi = mid; }
    }
    return lo - 1u;
}

// The entry (source row, factor) of index position p, in bag b of `size` counted
// positions (the bag and size matter to bag modes, the size to means only).
fn entry_of(p: u32, b: u32, size: u32) -> vec2<u32> {
    if (params.mode == MODE_POSITIONS) { return vec2<u32>(p / params.arg2, bitcast<u32>(1.0)); }
    if (params.mode == MODE_MAX) { return vec2<u32>(b, p); }
    var factor = 1.0;
    if (params.mode == MODE_MEAN) {
        factor = 1.0 / f32(max(size, 1u));
    } else if (has_flag(FLAG_HAS_WEIGHTS)) {
        factor = sample_weights[p];
    }
    return vec2<u32>(b, bitcast<u32>(factor));
}

// entries_out[j]: the entry of the j-th sorted position.
@compute @workgroup_size(WG_SIZE)
fn gather_entries(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = linear_id(wid, nwg, lid);
    if (j >= params.index_count) { return; }
    let p = sorted_positions[j];
    var b = 0u;
    var size = 0u;
    if (params.mode != MODE_POSITIONS) { b = bag_of(p); }
    if (params.mode == MODE_MEAN) { size = prefix[bag_bounds[b + 1u]] - prefix[bag_bounds[b]]; }
    entries_out[j] = entry_of(p, b, size);
}

// Columns col .. col + WIDTH of the gradient entry j contributes (source rows of the
// bound segment: index_first .. + index_count).
fn contribution(j: u32, col: u32) -> vec4<f32> {
    let e = entries[j];
    let base = (e.x - params.index_first) * params.dim + col;
    var g = vec4<f32>(grad[base], 0.0, 0.0, 0.0);
    if (WIDTH == 4u) { g = vec4<f32>(grad[base], grad[base + 1u], grad[base + 2u], grad[base + 3u]); }
    if (params.mode == MODE_MAX) {
        var chosen = vec4<bool>(grad_argmax[base] == e.y, false, false, false);
        if (WIDTH == 4u) {
            chosen = vec4<bool>(grad_argmax[base] == e.y, grad_argmax[base + 1u] == e.y,
                                grad_argmax[base + 2u] == e.y, grad_argmax[base + 3u] == e.y);
        }
        return select(vec4<f32>(0.0), g, chosen);
    }
    return g * bitcast<f32>(e.y);
}

// Whether entry j reads a source row of the bound segment.
fn in_source_segment(j: u32) -> bool {
    let s = entries[j].x;
    return s >= params.index_first && s - params.index_first < params.index_count;
}

// Sums of whole chunks of arg0 entries that belong to one row and read the bound
// source segment; other chunks are left alone (no row sums them through here).
@compute @workgroup_size(WG_SIZE)
fn chunk_sums_of_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    let groups = params.dim / WIDTH;
    let chunk = id / groups;
    let col = (id - chunk * groups) * WIDTH;
    let size = params.arg0;
    let first = chunk * size;
    if (first + size > params.arg1) { return; }
    let last = first + size - 1u;
    if (sorted_keys[first] != sorted_keys[last] || !in_source_segment(first) || !in_source_segment(last)) { return; }
    var acc = vec4<f32>(0.0);
    for (var j = first; j <= last; j++) { acc += contribution(j, col); }
    let dst = chunk * params.dim + col;
    chunk_sums_out[dst] = acc.x;
    if (WIDTH == 4u) {
        chunk_sums_out[dst + 1u] = acc.y;
        chunk_sums_out[dst + 2u] = acc.z;
        chunk_sums_out[dst + 3u] = acc.w;
    }
}


// The gradient of one run's row over GROUPS column groups: the sum of its entries
// that read the bound source segment, written by the first source segment's pass and
// added by later ones. Rows without a run are left as they are (zero). arg2: the
// output segment's number (its slot range), arg3: its first row.
@compute @workgroup_size(WG_SIZE)
fn reduce_runs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let groups = params.dim / WIDTH;
    let w = run_work(linear_id(wid, nwg, lid), groups);
    if (!w.valid) { return; }
    let scale = frequency_scale(w);
    let g_end = min(groups, (w.block + 1u) * GROUPS);
    for (var g = w.block * GROUPS; g < g_end; g++) {
        let col = g * WIDTH;
        var acc = run_sum(w.a, w.b, col) * scale;
        let dst = w.out_row * params.dim + col;
        if (!has_flag(FLAG_FIRST_PASS)) {
            acc += vec4<f32>(out[dst], out[dst + min(1u, WIDTH - 1u)], out[dst + min(2u, WIDTH - 1u)], out[dst + min(3u, WIDTH - 1u)]);
        }
        out[dst] = acc.x;
        if (WIDTH == 4u) {
            out[dst + 1u] = acc.y;
            out[dst + 2u] = acc.z;
            out[dst + 3u] = acc.w;
        }
    }
}

// reduce_runs for rows of whole vec4 words: the same sums with 16-byte loads and
// stores (CPU adapters emulate each load lane by lane, so one vec4 costs as one f32).
fn contribution4(j: u32, word: u32) -> vec4<f32> {
    return entry_contribution4(entries[j], word);
}

fn entry_contribution4(e: vec2<u32>, word: u32) -> vec4<f32> {
    let at = (e.x - params.index_first) * (params.dim / 4u) + word;
    let g = grad4[at];
    if (params.mode == MODE_MAX) { return select(vec4<f32>(0.0), g, grad_argmax4[at] == vec4<u32>(e.y)); }
    return g * bitcast<f32>(e.y);
}

fn run_sum4(a: u32, b: u32, word: u32) -> vec4<f32> {
    let size = params.arg0;
    var acc = vec4<f32>(0.0);
    let c0 = (a + size - 1u) / size;
    let c1 = b / size;
    if (b - a <= 2u * size || c0 >= c1) {
        for (var j = a; j < b; j++) { acc += contribution4(j, word); }
        return acc;
    }
    for (var j = a; j < c0 * size; j++) { acc += contribution4(j, word); }
    for (var c = c0; c < c1; c++) { acc += chunk_sums4[c * (params.dim / 4u) + word]; }
    for (var j = c1 * size; j < b; j++) { acc += contribution4(j, word); }
    return acc;
}

@compute @workgroup_size(WG_SIZE)
fn reduce_runs4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let words = params.dim / 4u;
    let w = run_work(linear_id(wid, nwg, lid), words);
    if (!w.valid) { return; }
    let scale = frequency_scale(w);
    let w0 = w.block * GROUPS;
    let w_end = min(words, w0 + GROUPS);
    if (w.b - w.a <= 2u * params.arg0) {
        // A short run (most are): each entry is read once for all GROUPS words, whose
        // sums stay in registers (GROUPS is a constant, so the word loop unrolls).
        var acc: array<vec4<f32>, MAX_GROUPS>;
        for (var j = w.a; j < w.b; j++) {
            let e = entries[j];
            for (var k = 0u; k < GROUPS; k++) {
                if (w0 + k < w_end) { acc[k] += entry_contribution4(e, w0 + k); }
            }
        }
        for (var k = 0u; k < GROUPS; k++) {
            if (w0 + k < w_end) { store_word4(w.out_row * words + w0 + k, acc[k] * scale); }
        }
        return;
    }
    for (var word = w0; word < w_end; word++) {
        store_word4(w.out_row * words + word, run_sum4(w.a, w.b, word) * scale);
    }
}

// Writes (first source segment) or adds a run's sum to output word `dst`.
fn store_word4(dst: u32, value: vec4<f32>) {
    var v = value;
    if (!has_flag(FLAG_FIRST_PASS)) { v += out4_rows[dst]; }
    out4_rows[dst] = v;
}

// slot_ranges_out[k]: the slots of the runs whose output row output segment k holds
// (segment_rows[k]: its first row and rows; rows = the segments). Dense gradients:
// runs whose table row is in the segment, found by binary search (runs are ascending
// by row); sparse: the slots themselves.
@compute @workgroup_size(WG_SIZE)
fn segment_slots(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let k = linear_id(wid, nwg, lid);
    if (k >= params.rows) { return; }
    let count = prefix[params.index_count];
    let seg = segment_rows[k];
    if (has_flag(FLAG_SPARSE)) {
        slot_ranges_out[k] = vec2<u32>(min(seg.x, count), min(seg.x + seg.y, count));
        return;
    }
    var bounds = vec2<u32>(0u);
    for (var side = 0u; side < 2u; side++) {
        let row = seg.x + side * seg.y;
        var lo = 0u;
        var hi = count;
        while (lo < hi) {
            let mid = (lo + hi) / 2u;
            if (runs[mid].y < row) { lo = mid + 1u; } else { hi = mid; }
        }
        bounds[side] = lo;
    }
    slot_ranges_out[k] = bounds;
}

// Sparse gradients: heads[j] marks the first entry of each row's run (padding's
// sorted-last key excluded); flags_out[n] is 0, so the scan's last value is the count.
@compute @workgroup_size(WG_SIZE)
fn run_heads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = linear_id(wid, nwg, lid);
    let n = params.index_count;
    if (j > n) { return; }
    var head = false;
    if (j < n) {
        let k = sorted_keys[j];
        head = k < params.num_embeddings && (j == 0u || sorted_keys[j - 1u] != k);
    }
    flags_out[j] = select(0u, 1u, head);
}

// runs_out[s]: where the s-th distinct row's run starts, and its row, from the
// scanned heads; runs_out[count] ends the last run (before padding).
@compute @workgroup_size(WG_SIZE)
fn compact_runs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = linear_id(wid, nwg, lid);
    let n = params.index_count;
    if (j > n) { return; }
    if (j == n) {
        var lo = 0u;
        var hi = n;
        while (lo < hi) {
            let mid = (lo + hi) / 2u;
            if (sorted_keys[mid] < params.num_embeddings) { lo = mid + 1u; } else { hi = mid; }
        }
        runs_out[prefix[n]] = vec2<u32>(lo, NO_POSITION);
        return;
    }
    if (heads[j] == 1u) { runs_out[prefix[j]] = vec2<u32>(j, sorted_keys[j]); }
}

// Sparse gradients' rows: out[s] = the row of run s (as i32 bits in the f32 binding).
@group(0) @binding(3) var<storage, read_write> rows_out: array<u32>;

@compute @workgroup_size(WG_SIZE)
fn run_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = linear_id(wid, nwg, lid);
    if (s >= params.index_count) { return; }
    rows_out[s] = runs[s].y;
}

// Max mode: the position each bag's maximum came from, per column, as the forward
// chose it (the first of equal maxima; NaN wins, as it propagates). One pass per
// table slice; argmax_value keeps the running maxima between passes. Bags of the
// whole batch: rows = B, bag_bounds the B + 1 offsets.
@compute @workgroup_size(WG_SIZE)
fn bag_argmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = output_element(wid, nwg, lid);
    if (e.x == NO_ELEMENT) { return; }
    var best = neg_inf();
    var arg = NO_POSITION;
    if (!has_flag(FLAG_FIRST_PASS)) {
        best = argmax_value[e.x];
        arg = argmax_out[e.x];
    }
    for (var p = bag_bounds[e.y]; p < bag_bounds[e.y + 1u]; p++) {
        let row = table_row(indices[p]);
        if (row == BAD_ROW || row == params.padding_idx || !slice_holds_row(row)) { continue; }
        let v = table_element(row, e.z);
        var take = false;
        if (arg == NO_POSITION) {
            take = true;
        } else if (is_nan(best)) {
            take = is_nan(v) && p < arg;
        } else {
            take = is_nan(v) || v > best || (v == best && p < arg);
        }
        if (take) {
            best = v;
            arg = p;
        }
    }
    argmax_value[e.x] = best;
    argmax_out[e.x] = arg;
}

// Gradient of the per-sample weights: position p's is grad_out[bag] · table[row]
// (0 for padding). One pass per table slice; positions whose row another slice holds
// are left to its pass. grad is the whole [B, D] output gradient.
@compute @workgroup_size(WG_SIZE)
fn sample_weight_grads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_id) lid: vec3<u32>) {
    let p = linear_id(wid, nwg, lid);
    if (p >= params.index_count) { return; }
    let row = table_row(indices[p]);
    if (row == BAD_ROW || row == params.padding_idx || p >= params.arg0) {
        if (has_flag(FLAG_FIRST_PASS)) { out[p] = 0.0; }
        return;
    }
    if (!slice_holds_row(row)) { return; }
    let base = bag_of(p) * params.dim;
    var acc = 0.0;
    for (var c = 0u; c < params.dim; c++) { acc += bag_grad[base + c] * table_element(row, c); }
    out[p] = acc;
}

// ---- short lists: one workgroup ------------------------------------------------------

// Lists of at most SMALL_LIST positions (a training step's batch of tokens) are made
// ready in one dispatch of one workgroup: what position_keys, the sort (sort.wgsl),
// gather_entries, run_heads, the scans and compact_runs do in seven. The (key,
// position) pairs are sorted bitonically in workgroup memory: positions are distinct,
// so the order is the stable sort's. Writes the sorted keys (binding 13), the entries,
// the scanned run heads (binding 15; the last is the run count) and the runs.
const SMALL_LIST: u32 = 1024u;

@group(0) @binding(13) var<storage, read_write> sorted_keys_out: array<u32>;
@group(0) @binding(15) var<storage, read_write> prefix_out: array<u32>;

var<workgroup> list_keys: array<u32, SMALL_LIST>;
var<workgroup> list_positions: array<u32, SMALL_LIST>;
var<workgroup> list_scan: array<u32, 1025>;

@compute @workgroup_size(WG_SIZE)
fn prepare_short_list(@builtin(local_invocation_id) lid: vec3<u32>) {
    let n = params.index_count;
    let v = params.num_embeddings;
    let lane = lid.x;
    var width = 1u;
    while (width < n) { width *= 2u; }
    for (var i = lane; i < width; i += WG_SIZE) {
        if (i < n) {
            list_keys[i] = position_key(i);
            list_positions[i] = i;
        } else {
            list_keys[i] = 0xffffffffu;
            list_positions[i] = 0xffffffffu;
        }
    }
    workgroupBarrier();
    for (var k = 2u; k <= width; k *= 2u) {
        for (var j = k / 2u; j > 0u; j /= 2u) {
            for (var i = lane; i < width; i += WG_SIZE) {
                let l = i ^ j;
                if (l > i) {
                    let ka = list_keys[i];
                    let kb = list_keys[l];
                    let pa = list_positions[i];
                    let pb = list_positions[l];
                    let greater = ka > kb || (ka == kb && pa > pb);
                    if (greater == ((i & k) == 0u)) {
                        list_keys[i] = kb;
                        list_keys[l] = ka;
                        list_positions[i] = pb;
                        list_positions[l] = pa;
                    }
                }
            }
            workgroupBarrier();
        }
    }
    // Means: the counted positions before each position (in position order).
    if (lane == 0u && params.mode == MODE_MEAN) {
        var run = 0u;
        for (var p = 0u; p <= n; p++) {
            list_scan[p] = run;
            if (p < n && position_key(p) < v) { run += 1u; }
        }
    }
    workgroupBarrier();
    for (var j = lane; j < n; j += WG_SIZE) {
        let p = list_positions[j];
        var b = 0u;
        var size = 0u;
        if (params.mode != MODE_POSITIONS) { b = bag_of(p); }
        if (params.mode == MODE_MEAN) { size = list_scan[bag_bounds[b + 1u]] - list_scan[bag_bounds[b]]; }
        entries_out[j] = entry_of(p, b, size);
        sorted_keys_out[j] = list_keys[j];
    }
    workgroupBarrier();
    // The runs: heads of distinct rows (padding's sorted-last key excluded), scanned.
    if (lane == 0u) {
        var run = 0u;
        for (var j = 0u; j <= n; j++) {
            list_scan[j] = run;
            prefix_out[j] = run;
            let key = list_keys[min(j, SMALL_LIST - 1u)];
            if (j < n && key < v && (j == 0u || list_keys[j - 1u] != key)) { run += 1u; }
        }
    }
    workgroupBarrier();
    for (var j = lane; j <= n; j += WG_SIZE) {
        if (j == n) {
            // Where padding's keys start: the end of the last run.
            var lo = 0u;
            var hi = n;
            while (lo < hi) {
                let mid = (lo + hi) / 2u;
                if (list_keys[mid] < v) { lo = mid + 1u; } else { hi = mid; }
            }
            runs_out[list_scan[n]] = vec2<u32>(lo, NO_POSITION);
        } else if (list_scan[j + 1u] != list_scan[j]) {
            runs_out[list_scan[j]] = vec2<u32>(j, list_keys[j]);
        }
    }
}
