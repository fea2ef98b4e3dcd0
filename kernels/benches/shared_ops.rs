//! Criterion benchmarks of the shared ops over `kernels::cases` (the list `harness bench` uses).
//! With a GPU (built with `--features cuda`) each iteration batch is timed with CUDA events via
//! `iter_custom`; without one the Rust references are timed, labelled `cpu/`. The CPU runs the
//! quick case list unless DSV3_BENCH_FULL=1 (the full list takes minutes on the reference path).

#[path = "support/mod.rs"]
mod support;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kernels::cases::{cpu_runner, shared_op_cases, Case};
use support::Named;

fn describe(case: &Case) -> Named {
    Named {
        name: case.name(),
        throughput: Throughput::Bytes(case.bytes() as u64),
    }
}

fn benches(c: &mut Criterion) {
    let full = std::env::var("DSV3_BENCH_FULL").is_ok_and(|v| v == "1");
    support::gpu_or_cpu(
        c,
        #[cfg(feature = "cuda")]
        |c, gpu| {
            let cases = shared_op_cases(false);
            support::gpu_group(c, gpu, &cases, describe, kernels::cases::gpu_runner)
        },
        |c| support::cpu_group(c, &shared_op_cases(!full), describe, cpu_runner),
    );
}

criterion_group!(shared_ops, benches);
criterion_main!(shared_ops);
