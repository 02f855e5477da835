// Lookups and bags over a quantized table, dequantizing each element inside the
// kernel (the table is never expanded in memory).
//
// Index entries are a row, or (arg0 = 2) a row and its weight's bits. Parts:
// common/grid.wgsl, common/pass.wgsl, common/table.wgsl, common/bag.wgsl, common/bag_scalar.wgsl,
// common/codes.wgsl, common/quantized_table.wgsl, then this file.

fn bag_row(entry: u32, pos: u32, report: bool) -> u32 {
    return table_row(indices[entry * params.arg0]);
}

fn bag_weight(entry: u32) -> f32 {
    if (params.arg0 == 2u) { return bitcast<f32>(indices[entry * 2u + 1u]); }
    return 1.0;
}

fn bag_holds(row: u32, col: u32) -> bool {
    let e = row * params.dim + col;
    return e >= params.lo && e < params.hi;
}

fn bag_value(row: u32, col: u32) -> f32 {
    return element(row * params.dim + col);
}

@compute @workgroup_size(WG_SIZE)
fn lookup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = output_element(wid, nwg, lid);
    if (e.x == NO_ELEMENT) { return; }
    // Indices were checked on the host; a bad one is still never read.
    let index = table_row(indices[e.y]);
    if (index != BAD_ROW && bag_holds(index, e.z)) { out[e.x] = bag_value(index, e.z); }
}

// One invocation reduces one column of one bag.
@compute @workgroup_size(WG_SIZE)
fn bag(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_id) lid: vec3<u32>) {
    bag_element(output_element(wid, nwg, lid));
}

// ---- bags over whole words of codes ------------------------------------------------
// For int8 tables with D % 16 == 0 and 4-bit ones with D % 32 == 0 whose codes and
// scales each fit one binding (src/layers/quantized.rs): the codes plane is read as a
// dense table of byte rows (common/table.wgsl: a texture copy on CPU adapters, vec4
// loads elsewhere), 16 int8 or 32 4-bit codes a word. LANES invocations share one bag
// (as embedding_bag.wgsl's bag_vec4); each takes words_per_sweep() adjacent words of
// every row per sweep over the bag's indices, so an index is read once per 64 values,
// and dequantizes them in registers. Adjacent words mostly share a block (64 values:
// exactly one word sweep), whose scale is then fetched once per index.
// Values and sums are those of `bag`, bit for bit: same products, same order.
override LANES: u32 = 16u; // values: 1, 2, 4, 8, 16, 32, 64

// Codes per vec4 word, and words per sweep (16 output vec4s).
fn codes_per_word() -> u32 {
    return select(16u, 32u, SCHEME == 2u);
}
fn words_per_sweep() -> u32 {
    return select(4u, 2u, SCHEME == 2u);
}

// The constants as a uniform block (src/quant/table.rs, uniform_constants): lanes
// looking codes up at once load its words without the per-lane emulation of a storage
// load. First the code values one to a vec4 (the 8-bit map's 256, then the 16 4-bit
// ones), read with no component to pick; then common/codes.wgsl's words as they are.
const SPREAD_T4: u32 = 256u;
const SPREAD_WORDS: u32 = 272u;
@group(0) @binding(13) var<uniform> consts_block: array<vec4<u32>, 416>; // SPREAD_WORDS + CONSTS_WORDS / 4

fn const_word(i: u32) -> u32 {
    return consts_block[SPREAD_WORDS + i / 4u][i % 4u];
}

// The 8-bit map's value of `code`, and the 4-bit table's, as bits.
fn map_value(code: u32) -> u32 {
    return consts_block[code].x;
}
fn t4_value(code: u32) -> u32 {
    return consts_block[SPREAD_T4 + code].x;
}

// The scale of the word whose first element is table element e: its row's, or its block's.
fn word_scale(e: u32) -> f32 {
    let g = e / params.group;
    if (SCHEME != 2u) { return bitcast<f32>(scales[g]); }
    let q = (scales[g / 4u] >> (8u * (g & 3u))) & 0xffu;
    let absmax2 = scales2[e / (params.group * 256u)];
    return rounded_by(bitcast<f32>(map_value(q)) * absmax2, const_word(C_ZERO)) + bitcast<f32>(const_word(C_OFFSET));
}

// As common/codes.wgsl's `rounded`, with the zero word given.
fn rounded_by(x: f32, zero: u32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) | zero);
}

// Values 4j .. 4j + 3 of a word (j < 4 for int8, j < 8 for 4-bit), before scaling.
// int8: byte k of a u32 is element k; 4-bit: byte k holds elements 2k (high nibble)
// and 2k + 1 (low).
fn word_codes(w: vec4<u32>, j: u32) -> vec4<f32> {
    if (SCHEME == 2u) {
        let x = w[j / 2u] >> (16u * (j & 1u));
        let c = (vec4<u32>(x) >> vec4<u32>(4u, 0u, 12u, 8u)) & vec4<u32>(15u);
        return bitcast<vec4<f32>>(vec4<u32>(t4_value(c.x), t4_value(c.y), t4_value(c.z), t4_value(c.w)));
    }
    let x = w[j];
    if (SCHEME == 1u) {
        return vec4<f32>(vec4<i32>(i32(x << 24u), i32(x << 16u), i32(x << 8u), i32(x)) >> vec4<u32>(24u));
    }
    let c = (vec4<u32>(x) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
    return bitcast<vec4<f32>>(vec4<u32>(map_value(c.x), map_value(c.y), map_value(c.z), map_value(c.w)));
}

// Adds word c0 + k of table row `row` (when k < words_per_sweep() and the row
// has it), times `weight`, to its output vec4s acc[vpw * k ..]. Called once per k with
// a constant k, not from a loop (lavapipe caps an invocation's loop iterations).
fn accumulate_codes(acc: ptr<function, array<vec4<f32>, 16>>, scale: ptr<function, vec2<u32>>, k: u32, c0: u32, row: u32,
                    in_words: u32, weight: f32) {
    let c = c0 + k;
    if (k >= words_per_sweep() || c >= in_words) { return; }
    let w = table_word((row - params.first0) * in_words + c);
    // The row's words share a scale while they are in one block: fetched once then.
    let e = row * params.dim + c * codes_per_word();
    let block = e / params.group;
    if ((*scale).x != block) { *scale = vec2<u32>(block, bitcast<u32>(word_scale(e))); }
    let s = bitcast<f32>((*scale).y);
    let a = select(4u * k, 8u * k, SCHEME == 2u);
    (*acc)[a] = reduce4((*acc)[a], word_codes(w, 0u) * s * weight);
    (*acc)[a + 1u] = reduce4((*acc)[a + 1u], word_codes(w, 1u) * s * weight);
    (*acc)[a + 2u] = reduce4((*acc)[a + 2u], word_codes(w, 2u) * s * weight);
    (*acc)[a + 3u] = reduce4((*acc)[a + 3u], word_codes(w, 3u) * s * weight);
    if (SCHEME == 2u) {
        (*acc)[a + 4u] = reduce4((*acc)[a + 4u], word_codes(w, 4u) * s * weight);
        (*acc)[a + 5u] = reduce4((*acc)[a + 5u], word_codes(w, 5u) * s * weight);
        (*acc)[a + 6u] = reduce4((*acc)[a + 6u], word_codes(w, 6u) * s * weight);
        (*acc)[a + 7u] = reduce4((*acc)[a + 7u], word_codes(w, 7u) * s * weight);
    }
}

@compute @workgroup_size(WG_SIZE)
fn bag_words(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = group_index(wid, nwg) * (WG_SIZE / LANES) + lid.x / LANES;
    let lane = lid.x % LANES;
    if (b >= params.rows) { return; }
    let vpw = codes_per_word() / 4u;
    let in_words = params.dim / codes_per_word();
    let dst = b * (params.dim / 4u);
    let lo = max(offsets[b], params.index_first);
    let hi = min(offsets[b + 1u], params.index_first + params.index_count);
    let init = vec4<f32>(bag_identity());
    for (var c0 = lane * words_per_sweep(); c0 < in_words; c0 += words_per_sweep() * LANES) {
        // acc[vpw * k + j] is output vec4 j of word c0 + k.
        var acc: array<vec4<f32>, 16>;
        for (var i = 0u; i < 16u; i++) {
            let c = c0 + i / vpw;
            if (!has_flag(FLAG_FIRST_PASS) && c < in_words) { acc[i] = out4[dst + c * vpw + i % vpw]; } else { acc[i] = init; }
        }
        var n = 0u;
        for (var pos = lo; pos < hi; pos++) {
            let entry = pos - params.index_first;
            let row = bag_row(entry, pos, c0 == 0u);
            if (row == BAD_ROW || row == params.padding_idx) { continue; }
            n += 1u;
            if (!slice_holds_row(row)) { continue; }
            let weight = bag_weight(entry);
            var scale = vec2<u32>(0xffffffffu, 0u); // (block, its scale's bits)
            accumulate_codes(&acc, &scale, 0u, c0, row, in_words, weight);
            accumulate_codes(&acc, &scale, 1u, c0, row, in_words, weight);
            accumulate_codes(&acc, &scale, 2u, c0, row, in_words, weight);
            accumulate_codes(&acc, &scale, 3u, c0, row, in_words, weight);
        }
        for (var i = 0u; i < 16u; i++) {
            let c = c0 + i / vpw;
            if (c < in_words) { out4[dst + c * vpw + i % vpw] = finish4(acc[i], n); }
        }
        if (c0 == 0u) { count_bag(b, n); }
    }
}
