// Axial position embeddings (Reformer, inference): row p of the output is
// weight0[p / n2] ++ weight1[p % n2]. One dispatch writes one half (`part`) of the
// rows of one output segment from one segment of that half's table; positions whose
// table row lies in another segment are left to another dispatch.

override WG_SIZE: u32 = 64u;

struct AxialParams {
    rows: u32,            // output rows in this segment
    out_dim: u32,         // d1 + d2
    part_dim: u32,        // d1 or d2
    col_offset: u32,      // 0 or d1
    n2: u32,
    part: u32,            // 0: row p / n2 of weight0; 1: row p % n2 of weight1
    table_first_row: u32,
    table_rows: u32,
}

@group(0) @binding(0) var<uniform> ap: AxialParams;
@group(0) @binding(1) var<storage, read> axial_table: array<f32>;
@group(0) @binding(2) var<storage, read> axial_positions: array<i32>;
@group(0) @binding(3) var<storage, read_write> axial_out: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn axial_part(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let id = ((wid.z * nwg.y + wid.y) * nwg.x + wid.x) * WG_SIZE + lid;
    if (id >= ap.rows * ap.part_dim) { return; }
    let row = id / ap.part_dim;
    let col = id - row * ap.part_dim;
    // Positions were checked against n1 * n2 on the host.
    let p = u32(axial_positions[row]);
    let r = select(p % ap.n2, p / ap.n2, ap.part == 0u);
    if (r < ap.table_first_row || r - ap.table_first_row >= ap.table_rows) { return; }
    axial_out[row * ap.out_dim + ap.col_offset + col] = axial_table[(r - ap.table_first_row) * ap.part_dim + col];
}
