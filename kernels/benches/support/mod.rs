//! What every crate's criterion bench shares (included by path from each `benches/*.rs`, since a
//! bench cannot depend on another crate's benches): pick the GPU or say visibly why the CPU
//! references run instead, and time a list of cases with CUDA events (`iter_custom`) or the
//! host clock.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use kernels::rng::Rng;

/// One case: its criterion name and throughput.
pub struct Named {
    pub name: String,
    pub throughput: Throughput,
}

/// Times `runner(case)` on the CPU for each case (10 samples, about 2 s each).
pub fn cpu_group<T>(
    c: &mut Criterion,
    cases: &[T],
    describe: impl Fn(&T) -> Named,
    runner: impl Fn(&T, &mut Rng) -> Box<dyn FnMut()>,
) {
    let mut group = c.benchmark_group("cpu");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for case in cases {
        let Named { name, throughput } = describe(case);
        let mut run = runner(case, &mut Rng::fresh());
        group.throughput(throughput);
        group.bench_function(name, |b| {
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

/// A GPU runner: uploads a case and returns one launch per call.
#[cfg(feature = "cuda")]
pub type GpuRunner<T> = for<'g> fn(
    &'g kernels::gpu::Gpu,
    &T,
    &mut Rng,
)
    -> kernels::Result<Box<dyn FnMut() -> kernels::Result<()> + 'g>>;

/// Times each case's launches with CUDA events (30 samples, about 2 s each).
#[cfg(feature = "cuda")]
pub fn gpu_group<T>(
    c: &mut Criterion,
    gpu: &kernels::gpu::Gpu,
    cases: &[T],
    describe: impl Fn(&T) -> Named,
    runner: GpuRunner<T>,
) {
    let mut group = c.benchmark_group("gpu");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for case in cases {
        let Named { name, throughput } = describe(case);
        let mut run = runner(gpu, case, &mut Rng::fresh()).expect("case setup");
        group.throughput(throughput);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| gpu.time_iters(iters, &mut run).expect("timed launches"))
        });
    }
    group.finish();
}

/// Runs `gpu` on device 0 when this build has the kernels and a device is there; otherwise
/// prints why and runs `cpu`.
pub fn gpu_or_cpu(
    c: &mut Criterion,
    #[cfg(feature = "cuda")] gpu: impl FnOnce(&mut Criterion, &kernels::gpu::Gpu),
    cpu: impl FnOnce(&mut Criterion),
) {
    #[cfg(feature = "cuda")]
    match kernels::gpu::Gpu::new(0) {
        Ok(device) => return gpu(c, &device),
        Err(e) => kernels::report_skip("gpu benches", &format!("{e}; timing the CPU references")),
    }
    #[cfg(not(feature = "cuda"))]
    kernels::report_skip(
        "gpu benches",
        "no CUDA device (built without --features cuda); timing the CPU references",
    );
    cpu(c);
}
