//! Device faults surface as typed errors: a destroyed device makes the context clearly
//! dead (`Error::DeviceLost` on every later call), validation and allocation errors are
//! caught by error scopes and leave the context usable, and tensors over the budget are
//! refused before anything is allocated. Each test that breaks a device makes its own
//! context, so no other test is affected.

mod common;

use wgpu_embed::Block;
use wgpu_embed::{BagMode, Context, ContextOptions, DType, Embedding, EmbeddingBag, Error, GpuTensor, Indices};

fn table(v: usize, d: usize) -> Vec<f32> {
    (0..v * d).map(|i| i as f32 * 0.25 - 3.0).collect()
}

fn assert_lost<T: std::fmt::Debug>(r: wgpu_embed::Result<T>, what: &str) {
    match r {
        Err(Error::DeviceLost(msg)) => assert!(msg.contains("Destroyed"), "{what}: {msg}"),
        other => panic!("{what}: expected Error::DeviceLost, got {other:?}"),
    }
}

#[test]
fn destroyed_device_fails_every_later_call_with_device_lost() {
    let ctx = common::context(None);
    let (v, d) = (10, 4);
    let w = table(v, d);
    let emb = Embedding::from_pretrained(&ctx, &w, v, d).unwrap();
    let bag = EmbeddingBag::from_pretrained(&ctx, &w, v, d, BagMode::Sum).unwrap();
    let out = emb.forward(&ctx, Indices::i64(&[1, 9], &[2])).unwrap();
    assert_eq!(out.read_f32(&ctx).block().unwrap(), common::lookup(&w, d, &[1, 9]));

    ctx.device().destroy();

    assert_lost(ctx.check_alive(), "check_alive");
    assert_lost(emb.forward(&ctx, Indices::i64(&[1], &[1])), "Embedding::forward");
    assert_lost(bag.forward(&ctx, Indices::i64(&[1, 2], &[2]), Some(Indices::i64(&[0], &[1])), None), "EmbeddingBag::forward");
    assert_lost(Embedding::from_pretrained(&ctx, &w, v, d), "Embedding::from_pretrained");
    assert_lost(GpuTensor::from_f32(&ctx, &[1.0, 2.0], &[2]), "GpuTensor::from_f32");
    assert_lost(GpuTensor::zeros(&ctx, &[4], DType::F32, 1), "GpuTensor::zeros");
    assert_lost(out.read_f32(&ctx).block(), "read back an earlier result");
    let idx = GpuTensor::from_i32(&ctx, &[1], &[1]);
    assert_lost(idx, "GpuTensor::from_i32");
    assert_lost(ctx.wait_idle(), "wait_idle");
    // Still dead later: the state does not flip back.
    assert_lost(emb.forward(&ctx, Indices::i64(&[2], &[1])), "Embedding::forward again");
}

#[test]
fn device_destroyed_with_work_in_flight_reports_device_lost_at_the_next_wait() {
    let ctx = common::context(None);
    let w = table(300, 16);
    let emb = Embedding::from_pretrained(&ctx, &w, 300, 16).unwrap();
    let idx: Vec<i64> = (0..4000).map(|i| i % 300).collect();
    let pending = emb.forward(&ctx, Indices::i64(&idx, &[4000])).unwrap();
    ctx.device().destroy();
    // wgpu reports the loss once the queue has drained (as WebGPU does); reading the
    // result waits for that, so it fails with DeviceLost rather than hanging or
    // returning stale data, and so does every call after it.
    assert_lost(pending.read_f32(&ctx).block(), "read back a result in flight");
    assert_lost(emb.forward(&ctx, Indices::i64(&[1], &[1])), "Embedding::forward after");
    assert_lost(ctx.check_alive(), "check_alive after");
}

#[test]
fn context_destroy_is_clearly_dead_and_a_new_context_works() {
    let ctx = common::context(None);
    let w = table(6, 3);
    let emb = Embedding::from_pretrained(&ctx, &w, 6, 3).unwrap();
    ctx.destroy();
    match emb.forward(&ctx, Indices::i32(&[0], &[1])) {
        Err(Error::DeviceLost(msg)) => assert!(msg.contains("Context::destroy"), "{msg}"),
        other => panic!("expected Error::DeviceLost, got {other:?}"),
    }
    ctx.destroy(); // twice is harmless
                   // A fresh context is independent of the dead one.
    let fresh = common::context(None);
    let emb = Embedding::from_pretrained(&fresh, &w, 6, 3).unwrap();
    let out = emb.forward(&fresh, Indices::i32(&[5, 0], &[2])).unwrap().read_f32(&fresh).block().unwrap();
    assert_eq!(out, common::lookup(&w, 3, &[5, 0]));
}

#[test]
fn validation_error_in_scope_is_an_error_and_the_context_stays_usable() {
    let ctx = common::context(None);
    let too_big = ctx.limits().max_buffer_size + 4;
    let r = ctx.catch_errors(|| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("too big"),
            size: too_big,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    });
    match r {
        Err(Error::Device(msg)) | Err(Error::OutOfMemory(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected a device error, got {other:?}"),
    }
    let w = table(8, 2);
    let emb = Embedding::from_pretrained(&ctx, &w, 8, 2).unwrap();
    let out = emb.forward(&ctx, Indices::i64(&[7, 0, 3], &[3])).unwrap().read_f32(&ctx).block().unwrap();
    assert_eq!(out, common::lookup(&w, 2, &[7, 0, 3]));
}

#[test]
fn uncaptured_device_error_is_recorded_not_a_panic() {
    let ctx = common::context(None);
    // Outside any scope: wgpu's default handler would panic here.
    let _bad = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("bad usage"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::MAP_WRITE,
        mapped_at_creation: false,
    });
    let msg = ctx.take_uncaptured_error().expect("the error is recorded");
    assert!(!msg.is_empty());
    assert_eq!(ctx.take_uncaptured_error(), None, "reported once");
    let w = table(5, 3);
    let out = Embedding::from_pretrained(&ctx, &w, 5, 3).unwrap().forward(&ctx, Indices::i64(&[4], &[1])).unwrap();
    assert_eq!(out.read_f32(&ctx).block().unwrap(), common::lookup(&w, 3, &[4]));
}

#[test]
fn tensors_over_the_memory_budget_are_refused_before_allocating() {
    let ctx = Context::with_options(ContextOptions::default().max_tensor_bytes(64 * 1024)).block().unwrap();
    // A 128 KiB table: over the budget.
    let (v, d) = (1024, 32);
    let w = table(v, d);
    match Embedding::from_pretrained(&ctx, &w, v, d) {
        Err(Error::OutOfMemory(msg)) => {
            assert!(msg.contains("131072") && msg.contains("65536") && msg.contains("max_tensor_bytes"), "{msg}")
        }
        other => panic!("expected Error::OutOfMemory, got {other:?}"),
    }
    // A table within budget works; an output over it is refused with the table untouched.
    let emb = Embedding::from_pretrained(&ctx, &w[..256 * 32], 256, 32).unwrap();
    let many: Vec<i64> = (0..1024).map(|i| i % 256).collect();
    match emb.forward(&ctx, Indices::i64(&many, &[1024])) {
        Err(Error::OutOfMemory(msg)) => assert!(msg.contains("[1024, 32]"), "{msg}"),
        other => panic!("expected Error::OutOfMemory, got {other:?}"),
    }
    let out = emb.forward(&ctx, Indices::i64(&[255, 1], &[2])).unwrap().read_f32(&ctx).block().unwrap();
    assert_eq!(out, common::lookup(&w, 32, &[255, 1]));
}
