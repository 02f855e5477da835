//! Top-k retrieval beyond the conformance cases: tables split over bindings (dense rows
//! per segment, quantized planes cut mid-row), many query batches, k from 1 to N, ties,
//! GPU-resident queries, and refusals. Checked against a float64 reference on the host.

mod common;

use common::{context_reading, Rng};
use wgpu_embed::Block;
use wgpu_embed::{
    BagMode, Context, EmbeddingBag, GpuTensor, Indices, Metric, QuantizedEmbedding, QuantizedTable, Retriever, Scheme, TableReads, TopK,
};

/// The reference top-k of `queries` against `table` (rows of `d`): scores descending.
fn reference_scores(table: &[f32], queries: &[f32], d: usize, k: usize, metric: Metric) -> Vec<Vec<f64>> {
    let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt().max(1e-12);
    queries
        .chunks(d)
        .map(|q| {
            let mut s: Vec<f64> = table
                .chunks(d)
                .map(|r| {
                    let dot: f64 = r.iter().zip(q).map(|(&a, &b)| a as f64 * b as f64).sum();
                    if metric == Metric::Cosine {
                        dot / (norm(r) * norm(q))
                    } else {
                        dot
                    }
                })
                .collect();
            s.sort_by(|a, b| b.total_cmp(a));
            s.truncate(k);
            s
        })
        .collect()
}

/// Scores agree with the float64 reference within this, relative (plus as much absolute).
const TOLERANCE: f64 = 1e-5;

/// Checks `top` as check.py does: scores match the reference's position by position,
/// rows are distinct and in the table, and each returned row has its returned score.
fn check(ctx: &Context, top: &TopK, table: &[f32], queries: &[f32], d: usize, k: usize, metric: Metric) {
    let q = queries.len() / d;
    assert_eq!(top.scores.shape(), [q, k]);
    let scores = top.scores.read_f32(ctx).block().unwrap();
    let rows: Vec<i32> = bytemuck::pod_collect_to_vec(&top.indices.read_bytes(ctx).block().unwrap());
    let want = reference_scores(table, queries, d, k, metric);
    for (qi, want) in want.iter().enumerate() {
        let got = &scores[qi * k..(qi + 1) * k];
        let got_rows = &rows[qi * k..(qi + 1) * k];
        let mut seen = std::collections::HashSet::new();
        for j in 0..k {
            let bound = TOLERANCE * (1.0 + want[j].abs());
            assert!((got[j] as f64 - want[j]).abs() <= bound, "query {qi}, rank {j}: score {} expected {}", got[j], want[j]);
            let r = got_rows[j];
            assert!(r >= 0 && (r as usize) < table.len() / d, "query {qi}: row {r} outside the table");
            assert!(seen.insert(r), "query {qi}: row {r} twice");
            let own = reference_scores(&table[r as usize * d..(r as usize + 1) * d], &queries[qi * d..(qi + 1) * d], d, 1, metric)[0][0];
            assert!((got[j] as f64 - own).abs() <= bound, "query {qi}: row {r} returned with {} but scores {own}", got[j]);
        }
    }
}

#[test]
fn dense_tables_over_several_bindings_and_many_batches() {
    // 1 MiB bindings, buffer reads: the 70 000 x 8 table spans three segments, and a
    // batch holds 3 queries' scores, so 40 queries take 14 batches.
    let ctx = context_reading(Some(1 << 20), TableReads::Buffer);
    let (n, d) = (70_000usize, 8usize);
    let mut rng = Rng(31);
    let table = rng.vec_f32(n * d);
    let queries = rng.vec_f32(40 * d);
    let t = GpuTensor::from_f32(&ctx, &table, &[n, d]).unwrap();
    assert_eq!(t.segments().len(), 3);
    for metric in [Metric::Dot, Metric::Cosine] {
        let retriever = Retriever::new(t.clone(), metric).unwrap();
        for k in [1, 37, 5000] {
            let top = retriever.search(&ctx, &queries, k).unwrap();
            assert!(top.scores.segments().len() > 1, "several batches expected");
            check(&ctx, &top, &table, &queries, d, k, metric);
        }
    }
    // k = N: every row, sorted.
    let top = Retriever::new(t, Metric::Dot).unwrap().search(&ctx, &queries[..2 * d], n).unwrap();
    check(&ctx, &top, &table, &queries[..2 * d], d, n, Metric::Dot);
}

#[test]
fn dense_rows_of_whole_words_from_texture_copies() {
    let ctx = context_reading(None, TableReads::Auto);
    let (n, d) = (3_000usize, 64usize);
    let mut rng = Rng(32);
    let table = rng.vec_f32(n * d);
    let queries = rng.vec_f32(5 * d);
    let retriever = Retriever::new(GpuTensor::from_f32(&ctx, &table, &[n, d]).unwrap(), Metric::Dot).unwrap();
    let top = retriever.search(&ctx, &queries, 100).unwrap();
    check(&ctx, &top, &table, &queries, d, 100, Metric::Dot);
}

#[test]
fn equal_scores_come_in_row_order() {
    let ctx = context_reading(None, TableReads::Auto);
    let (n, d) = (1_000usize, 4usize);
    // Rows 3 and 500 score 2, every other row 1.
    let mut table = vec![0.25f32; n * d];
    for r in [3usize, 500] {
        table[r * d..(r + 1) * d].fill(0.5);
    }
    let retriever = Retriever::new(GpuTensor::from_f32(&ctx, &table, &[n, d]).unwrap(), Metric::Dot).unwrap();
    let top = retriever.search(&ctx, &[1.0; 4], 6).unwrap();
    let rows: Vec<i32> = bytemuck::pod_collect_to_vec(&top.indices.read_bytes(&ctx).block().unwrap());
    assert_eq!(rows, [3, 500, 0, 1, 2, 4]);
    assert_eq!(top.scores.read_f32(&ctx).block().unwrap(), [2.0, 2.0, 1.0, 1.0, 1.0, 1.0]);
}

#[test]
fn quantized_tables_scored_from_their_codes_across_planes() {
    // 1 MiB bindings: the 120 000 x 10 codes plane (1.2 M bytes) is cut inside a row,
    // 40 000 x 32 between rows (element by element); with the device's limit, int8
    // rows of 32 are read 16 codes a word from the buffer or a texture copy.
    let mut rng = Rng(33);
    for (binding, reads) in [(Some(1 << 20), TableReads::Buffer), (None, TableReads::Buffer), (None, TableReads::Auto)] {
        let ctx = context_reading(binding, reads);
        for (n, d, scheme) in [
            (120_000usize, 10usize, Scheme::Int8Blockwise),
            (120_000, 10, Scheme::Int8Rowwise),
            (120_000, 10, Scheme::Nf4),
            (40_000, 32, Scheme::Int8Blockwise),
            (40_000, 32, Scheme::Int8Rowwise),
            (40_000, 32, Scheme::Fp4),
        ] {
            let weight = rng.vec_f32(n * d);
            let queries = rng.vec_f32(3 * d);
            let qt = QuantizedTable::from_pretrained(&ctx, &weight, n, d, scheme, None).unwrap();
            // The table as the kernels see it: every row looked up.
            let all: Vec<i64> = (0..n as i64).collect();
            let dequantized =
                QuantizedEmbedding::from_table(qt.clone()).forward(&ctx, Indices::i64(&all, &[n])).unwrap().read_f32(&ctx).block().unwrap();
            let top = Retriever::quantized(qt, Metric::Dot).search(&ctx, &queries, 50).unwrap();
            check(&ctx, &top, &dequantized, &queries, d, 50, Metric::Dot);
        }
    }
}

#[test]
fn queries_already_on_the_gpu() {
    // Embed, then search, with no read-back: the mean of each bag is a query.
    let ctx = context_reading(None, TableReads::Auto);
    let (v, d, n) = (500usize, 16usize, 2_000usize);
    let mut rng = Rng(34);
    let vocab = rng.vec_f32(v * d);
    let corpus = rng.vec_f32(n * d);
    let bag = EmbeddingBag::from_pretrained(&ctx, &vocab, v, d, BagMode::Mean).unwrap();
    let ids: Vec<i64> = (0..12).map(|_| rng.below(v as u64) as i64).collect();
    let queries = bag.forward(&ctx, Indices::i64(&ids, &[3, 4]), None, None).unwrap();
    let retriever = Retriever::new(GpuTensor::from_f32(&ctx, &corpus, &[n, d]).unwrap(), Metric::Cosine).unwrap();
    let on_gpu = retriever.search_gpu(&ctx, &queries, 10).unwrap();
    let host_queries = queries.read_f32(&ctx).block().unwrap();
    let from_host = retriever.search(&ctx, &host_queries, 10).unwrap();
    assert_eq!(on_gpu.indices.read_bytes(&ctx).block().unwrap(), from_host.indices.read_bytes(&ctx).block().unwrap());
    check(&ctx, &on_gpu, &corpus, &host_queries, d, 10, Metric::Cosine);
}

#[test]
fn refusals_name_the_argument() {
    let ctx = context_reading(None, TableReads::Auto);
    let retriever = Retriever::new(GpuTensor::from_f32(&ctx, &[1.0; 40], &[10, 4]).unwrap(), Metric::Dot).unwrap();
    let err = retriever.search(&ctx, &[1.0; 8], 11).unwrap_err().to_string();
    assert!(err.contains("`k`") && err.contains("11") && err.contains("10 rows"), "{err}");
    let err = retriever.search(&ctx, &[1.0; 10], 3).unwrap_err().to_string();
    assert!(err.contains("`queries`") && err.contains("10 values"), "{err}");
    let wrong = GpuTensor::from_f32(&ctx, &[1.0; 10], &[2, 5]).unwrap();
    let err = retriever.search_gpu(&ctx, &wrong, 3).unwrap_err().to_string();
    assert!(err.contains("[Q, 4]") && err.contains("[2, 5]"), "{err}");
    // No queries: empty results.
    let top = retriever.search(&ctx, &[], 3).unwrap();
    assert_eq!(top.scores.shape(), [0, 3]);
}

#[test]
fn selection_past_65535_workgroups() {
    // 64 queries x 300 000 rows in one batch: the histogram and compaction passes run
    // 75 008 workgroups (a tile of 256 keys each), spread over a second dimension.
    let ctx = context_reading(None, TableReads::Auto);
    let (n, d, q) = (300_000usize, 4usize, 64usize);
    let mut rng = Rng(35);
    let table = rng.vec_f32(n * d);
    let queries = rng.vec_f32(q * d);
    let retriever = Retriever::new(GpuTensor::from_f32(&ctx, &table, &[n, d]).unwrap(), Metric::Dot).unwrap();
    let top = retriever.search(&ctx, &queries, 3).unwrap();
    assert_eq!(top.scores.segments().len(), 1, "one batch expected");
    check(&ctx, &top, &table, &queries, d, 3, Metric::Dot);
}

#[test]
fn query_blocks_and_column_chunks() {
    // The uniform query block holds 4 096 columns: D = 256 puts 16 queries in a block
    // (40 queries: three blocks), D = 5 000 splits each query's columns in two chunks.
    let ctx = context_reading(None, TableReads::Auto);
    let mut rng = Rng(36);
    for (n, d, q, k) in [(2_000usize, 256usize, 40usize, 7usize), (300, 5_000, 3, 5)] {
        let table = rng.vec_f32(n * d);
        let queries = rng.vec_f32(q * d);
        for metric in [Metric::Dot, Metric::Cosine] {
            let retriever = Retriever::new(GpuTensor::from_f32(&ctx, &table, &[n, d]).unwrap(), metric).unwrap();
            check(&ctx, &retriever.search(&ctx, &queries, k).unwrap(), &table, &queries, d, k, metric);
        }
    }
    // The same through int8 codes read 16 a word (D = 4 112: chunks of 4 096 and 16).
    for (n, d, q, k) in [(1_000usize, 256usize, 40usize, 7usize), (200, 4_112, 3, 5)] {
        let weight = rng.vec_f32(n * d);
        let queries = rng.vec_f32(q * d);
        let qt = QuantizedTable::from_pretrained(&ctx, &weight, n, d, Scheme::Int8Rowwise, None).unwrap();
        let all: Vec<i64> = (0..n as i64).collect();
        let dequantized =
            QuantizedEmbedding::from_table(qt.clone()).forward(&ctx, Indices::i64(&all, &[n])).unwrap().read_f32(&ctx).block().unwrap();
        let top = Retriever::quantized(qt, Metric::Cosine).search(&ctx, &queries, k).unwrap();
        check(&ctx, &top, &dequantized, &queries, d, k, Metric::Cosine);
    }
}

#[test]
fn small_and_grid_wide_selections_agree() {
    // k = 256 is selected by one workgroup per query, k = 257 by the grid-wide passes:
    // the first 256 of the latter are the former, bit for bit, ties and a NaN row
    // (ranked first, as torch.topk ranks it) included.
    let ctx = context_reading(None, TableReads::Auto);
    let (n, d) = (3_000usize, 8usize);
    let mut rng = Rng(37);
    let mut table = rng.vec_f32(n * d);
    let queries = rng.vec_f32(3 * d);
    // Rows 7, 40, 900 and 2 999 are ten times query 0: its best four, all equal.
    for r in [7usize, 40, 900, 2_999] {
        for c in 0..d {
            table[r * d + c] = 10.0 * queries[c];
        }
    }
    table[123 * d] = f32::NAN;
    let retriever = Retriever::new(GpuTensor::from_f32(&ctx, &table, &[n, d]).unwrap(), Metric::Dot).unwrap();
    let (small, grid) = (retriever.search(&ctx, &queries, 256).unwrap(), retriever.search(&ctx, &queries, 257).unwrap());
    let bits = |t: &GpuTensor| -> Vec<u32> { bytemuck::pod_collect_to_vec(&t.read_bytes(&ctx).block().unwrap()) };
    let (small_rows, grid_rows, small_scores, grid_scores) =
        (bits(&small.indices), bits(&grid.indices), bits(&small.scores), bits(&grid.scores));
    for qi in 0..3 {
        assert_eq!(small_rows[qi * 256..(qi + 1) * 256], grid_rows[qi * 257..qi * 257 + 256], "query {qi}: rows");
        assert_eq!(small_scores[qi * 256..(qi + 1) * 256], grid_scores[qi * 257..qi * 257 + 256], "query {qi}: scores");
        assert_eq!(small_rows[qi * 256], 123, "query {qi}: the NaN row first");
    }
    assert_eq!(small_rows[1..5], [7, 40, 900, 2_999], "equal scores in row order");
    // Without the NaN row, both against the float64 reference, cosine too.
    table[123 * d] = 0.5;
    for metric in [Metric::Dot, Metric::Cosine] {
        let retriever = Retriever::new(GpuTensor::from_f32(&ctx, &table, &[n, d]).unwrap(), metric).unwrap();
        for k in [1, 10, 256, 257] {
            check(&ctx, &retriever.search(&ctx, &queries, k).unwrap(), &table, &queries, d, k, metric);
        }
    }
}
