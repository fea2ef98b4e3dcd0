//! Criterion benchmarks of routing, the layout build, FP8 dispatch and combine over
//! `moe_dispatch::cases` (the list `harness bench` uses). With a GPU (built with
//! `--features cuda`) each iteration batch is timed with CUDA events via `iter_custom`; without
//! one the Rust references are timed, labelled `cpu/`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kernels::rng::Rng;
use moe_dispatch::cases::{cpu_runner, moe_cases};

fn cpu_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for case in moe_cases(true) {
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
    for case in moe_cases(false) {
        let mut run =
            moe_dispatch::cases::gpu_runner(gpu, &case, &mut Rng::fresh()).expect("case setup");
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

criterion_group!(moe_benches, benches);
criterion_main!(moe_benches);
