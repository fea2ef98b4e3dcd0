//! Criterion benchmarks of the shared ops over `kernels::cases` (the list `harness bench` uses).
//! With a GPU (built with `--features cuda`) each iteration batch is timed with CUDA events via
//! `iter_custom`; without one the Rust references are timed, labelled `cpu/`. The CPU runs the
//! quick case list unless DSV3_BENCH_FULL=1 (the full list takes minutes on the reference path).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kernels::cases::{cpu_runner, shared_op_cases};
use kernels::rng::Rng;

fn cpu_benches(c: &mut Criterion) {
    let full = std::env::var("DSV3_BENCH_FULL").is_ok_and(|v| v == "1");
    let mut group = c.benchmark_group("cpu");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for case in shared_op_cases(!full) {
        let mut run = cpu_runner(&case, &mut Rng::fresh());
        group.throughput(Throughput::Bytes(case.bytes() as u64));
        group.bench_function(case.name(), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    run();
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

#[cfg(feature = "cuda")]
fn gpu_benches(c: &mut Criterion, gpu: &kernels::gpu::Gpu) {
    let mut group = c.benchmark_group("gpu");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for case in shared_op_cases(false) {
        let mut run =
            kernels::cases::gpu_runner(gpu, &case, &mut Rng::fresh()).expect("case setup");
        group.throughput(Throughput::Bytes(case.bytes() as u64));
        group.bench_function(case.name(), |b| {
            b.iter_custom(|iters| gpu.time_iters(iters, &mut run).expect("timed launches"))
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    #[cfg(feature = "cuda")]
    match kernels::gpu::Gpu::new(0) {
        Ok(gpu) => return gpu_benches(c, &gpu),
        Err(e) => kernels::report_skip("gpu benches", &format!("{e}; timing the CPU references")),
    }
    #[cfg(not(feature = "cuda"))]
    kernels::report_skip(
        "gpu benches",
        "no CUDA device (built without --features cuda); timing the CPU references",
    );
    cpu_benches(c);
}

criterion_group!(shared_ops, benches);
criterion_main!(shared_ops);
