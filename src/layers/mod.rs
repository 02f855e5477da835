//! The layers: each is one module here and one shader family in `shaders/`. A layer
//! checks its arguments on the host, then names its kernel, bindings and pass fields
//! and hands them to a plan of `gpu::plan`, which walks the segments.

pub mod axial;
pub mod embedding;
pub mod embedding_backward;
pub mod embedding_bag;
pub mod indices;
pub(crate) mod init;
pub mod layer_norm;
pub mod layer_norm_backward;
pub mod quantized;
pub mod retriever;
pub mod stable_embedding;
pub mod sum_layer_norm;
pub mod table;
pub mod table_batched;

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    //! The kernels' own defence, below the check kernel: out-of-range GPU-resident
    //! indices are never read (their output is zero) and the first one is reported.

    use crate::error::Error;
    use crate::gpu::context::Context;
    use crate::gpu::plan::BagPlan;
    use crate::gpu::status::Status;
    use crate::gpu::tensor::{DType, GpuTensor};
    use crate::layers::embedding::record_lookup;
    use crate::layers::embedding_bag::{record_bags, BagMode, BagSpec};
    use crate::Block;

    fn context() -> Context {
        Context::new().block().expect("a GPU adapter (lavapipe on CI)")
    }

    /// A table whose every value is >= 100, so a zero cannot come from it.
    fn table(ctx: &Context, v: usize, d: usize) -> (Vec<f32>, GpuTensor) {
        let w: Vec<f32> = (0..v * d).map(|i| 100.0 + i as f32).collect();
        let t = GpuTensor::from_f32(ctx, &w, &[v, d]).unwrap();
        (w, t)
    }

    #[test]
    fn lookup_kernel_writes_zeros_for_bad_gpu_indices_and_reports_the_first() {
        let ctx = context();
        // d = 8 takes the vectorised kernel, d = 3 the scalar one.
        for d in [8usize, 3] {
            let (w, t) = table(&ctx, 10, d);
            let idx_values = [1i32, 10, -3, 2, 1_000_000, 9];
            let idx = GpuTensor::from_i32(&ctx, &idx_values, &[6]).unwrap();
            let out = GpuTensor::zeros(&ctx, &[6, d], DType::F32, d).unwrap();
            let status = Status::new(&ctx);
            let mut encoder = ctx.encoder();
            record_lookup(&ctx, &mut encoder, &t, &idx, &out, &status, None).unwrap();
            ctx.submit(encoder).unwrap();
            let got = out.read_f32(&ctx).block().unwrap();
            for (pos, &i) in idx_values.iter().enumerate() {
                let row = &got[pos * d..(pos + 1) * d];
                if (0..10).contains(&i) {
                    assert_eq!(row, &w[i as usize * d..(i as usize + 1) * d], "d={d} pos={pos}");
                } else {
                    assert!(row.iter().all(|&x| x == 0.0), "d={d} pos={pos}: read outside the table: {row:?}");
                }
            }
            match status.check(&ctx, "indices", &idx, 10) {
                Err(Error::IndexOutOfRange { name: "indices", position: 1, value: 10, num_embeddings: 10 }) => {}
                other => panic!("d={d}: expected IndexOutOfRange at position 1, got {other:?}"),
            }
        }
    }

    #[test]
    fn bag_kernel_skips_bad_gpu_indices_and_reports_the_first() {
        let ctx = context();
        for d in [8usize, 3] {
            let (w, t) = table(&ctx, 10, d);
            // Bags: [3, -1, 4] [] [7, 12]
            let idx_values = [3i32, -1, 4, 7, 12];
            let bounds = [0u32, 3, 3, 5];
            let idx = GpuTensor::from_i32(&ctx, &idx_values, &[5]).unwrap();
            let out = GpuTensor::zeros_with(&ctx, &[3, d], DType::F32, d, BagPlan::bags_per_segment(&ctx, d).unwrap()).unwrap();
            let status = Status::new(&ctx);
            let spec = BagSpec { mode: BagMode::Sum, padding_idx: None, num_embeddings: 10 };
            let mut encoder = ctx.encoder();
            record_bags(&ctx, &mut encoder, &t, &idx, None, &bounds, &out, &status, spec).unwrap();
            ctx.submit(encoder).unwrap();
            let got = out.read_f32(&ctx).block().unwrap();
            let row = |r: usize, c: usize| w[r * d + c];
            for c in 0..d {
                assert_eq!(got[c], row(3, c) + row(4, c), "d={d} bag 0 col {c}");
                assert_eq!(got[d + c], 0.0, "d={d} bag 1 col {c}");
                assert_eq!(got[2 * d + c], row(7, c), "d={d} bag 2 col {c}");
            }
            match status.check(&ctx, "input", &idx, 10) {
                Err(Error::IndexOutOfRange { name: "input", position: 1, value: -1, .. }) => {}
                other => panic!("d={d}: expected IndexOutOfRange at position 1, got {other:?}"),
            }
        }
    }
}
