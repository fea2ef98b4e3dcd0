//! Criterion benchmarks of the FP8 GEMMs over `fp8_gemm::cases` (the list `harness bench` uses).
//! With a GPU (built with `--features cuda`) each iteration batch is timed with CUDA events via
//! `iter_custom`; without one the CPU reference (the CPU backend's fast path) is timed on the
//! quick cases small enough for it, labelled `cpu/`. `harness bench` adds the cuBLAS / cuBLASLt
//! peers and the device ceilings measured in the same run. Throughput is in flops (criterion's
//! "elements").

#[path = "../../kernels/benches/support/mod.rs"]
mod support;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fp8_gemm::cases::{cpu_runner, fp8_cases, Fp8Case};
use support::Named;

/// Cases above this many flops are left out of the CPU run (minutes per sample otherwise).
const CPU_MAX_FLOPS: f64 = 4e10;

fn describe(case: &Fp8Case) -> Named {
    Named {
        name: case.name(),
        throughput: Throughput::Elements(case.flops() as u64),
    }
}

fn benches(c: &mut Criterion) {
    support::gpu_or_cpu(
        c,
        #[cfg(feature = "cuda")]
        |c, gpu| {
            let cases = fp8_cases(false);
            support::gpu_group(c, gpu, &cases, describe, fp8_gemm::cases::gpu_runner)
        },
        |c| {
            let cases: Vec<Fp8Case> = fp8_cases(true)
                .into_iter()
                .filter(|c| c.flops() <= CPU_MAX_FLOPS)
                .collect();
            support::cpu_group(c, &cases, describe, cpu_runner)
        },
    );
}

criterion_group!(fp8_gemm_benches, benches);
criterion_main!(fp8_gemm_benches);
