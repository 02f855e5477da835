// The scalar bag kernel's body, shared by the dense and the quantized bag families
// (after common/bag.wgsl). A family supplies
//   fn bag_row(entry: u32, pos: u32, report: bool) -> u32   // the entry's table row, or BAD_ROW
//   fn bag_weight(entry: u32) -> f32                        // its per-sample weight (1 without)
//   fn bag_holds(row: u32, col: u32) -> bool                // the bound slice holds that element
//   fn bag_value(row: u32, col: u32) -> f32                 // and its value

// Output element `id` of the bound output segment: one column of one bag, over the
// bag's entries in the bound index segment and the table elements of the bound slice.
fn bag_element(e: vec3<u32>) {
    if (e.x == NO_ELEMENT) { return; }
    let id = e.x;
    let b = e.y;
    let col = e.z;
    let lo = max(offsets[b], params.index_first);
    let hi = min(offsets[b + 1u], params.index_first + params.index_count);
    var acc = bag_identity();
    if (!has_flag(FLAG_FIRST_PASS)) { acc = out[id]; }
    var n = 0u;
    for (var pos = lo; pos < hi; pos++) {
        let entry = pos - params.index_first;
        let row = bag_row(entry, pos, col == 0u);
        if (row == BAD_ROW || row == params.padding_idx) { continue; }
        n += 1u;
        if (!bag_holds(row, col)) { continue; }
        acc = reduce(acc, bag_value(row, col) * bag_weight(entry));
    }
    out[id] = finish(acc, n);
    if (col == 0u) { count_bag(b, n); }
}
