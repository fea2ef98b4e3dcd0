//! Criterion benchmarks of routing, the layout build, FP8 dispatch and combine over
//! `moe_dispatch::cases` (the list `harness bench` uses). With a GPU (built with
//! `--features cuda`) each iteration batch is timed with CUDA events via `iter_custom`; without
//! one the Rust references are timed on the quick list, labelled `cpu/`.

#[path = "../../kernels/benches/support/mod.rs"]
mod support;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moe_dispatch::cases::{cpu_runner, moe_cases, MoeCase};
use support::Named;

fn describe(case: &MoeCase) -> Named {
    Named {
        name: case.name(),
        throughput: Throughput::Bytes(case.bytes() as u64),
    }
}

fn benches(c: &mut Criterion) {
    support::gpu_or_cpu(
        c,
        #[cfg(feature = "cuda")]
        |c, gpu| {
            let cases = moe_cases(false);
            support::gpu_group(c, gpu, &cases, describe, moe_dispatch::cases::gpu_runner)
        },
        |c| support::cpu_group(c, &moe_cases(true), describe, cpu_runner),
    );
}

criterion_group!(moe_benches, benches);
criterion_main!(moe_benches);
