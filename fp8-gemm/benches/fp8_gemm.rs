//! Criterion benchmarks of the FP8 GEMMs over `fp8_gemm::cases` (the list `harness bench` uses).
//! With a GPU (built with `--features cuda`) each iteration batch is timed with CUDA events via
//! `iter_custom`; without one the CPU reference (the CPU backend's fast path) is timed on the
//! cases small enough for it, labelled `cpu/`. `harness bench` adds the cuBLAS / cuBLASLt peers and
//! the device ceilings measured in the same run.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fp8_gemm::cases::{cpu_runner, fp8_cases};
use kernels::rng::Rng;

/// Cases above this many flops are left out of the CPU run (minutes per sample otherwise).
const CPU_MAX_FLOPS: f64 = 4e10;

fn cpu_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    for case in fp8_cases(true)
        .into_iter()
        .filter(|c| c.flops() <= CPU_MAX_FLOPS)
    {
        let mut run = cpu_runner(&case, &mut Rng::fresh());
        group.throughput(Throughput::Elements(case.flops() as u64));
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
    for case in fp8_cases(false) {
        let mut run =
            fp8_gemm::cases::gpu_runner(gpu, &case, &mut Rng::fresh()).expect("case setup");
        // Elements = flops, so criterion's throughput column reads as FLOP/s.
        group.throughput(Throughput::Elements(case.flops() as u64));
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
        Err(e) => kernels::report_skip("gpu benches", &format!("{e}; timing the CPU reference")),
    }
    #[cfg(not(feature = "cuda"))]
    kernels::report_skip(
        "gpu benches",
        "no CUDA device (built without --features cuda); timing the CPU reference",
    );
    cpu_benches(c);
}

criterion_group!(fp8_gemm_benches, benches);
criterion_main!(fp8_gemm_benches);
