//! Criterion benchmarks of MLA decode attention over `mla_attention::cases` (the list
//! `harness bench` uses). With a GPU (built with `--features cuda`) each iteration batch (plan,
//! decode, combine) is timed with CUDA events via `iter_custom`; without one the Rust reference
//! (`reference::paged_decode`) is timed on the quick cases small enough for it, labelled `cpu/`.
//! Throughput is in bytes (the KV cache read dominates). On the GPU every case is also timed for
//! the naive cuBLAS peer (`mla_attention::peer`: paged-KV gather, two strided-batched GEMMs and a
//! softmax, all four timed), named `<case>@cublas_naive`, with the same minimal byte count so the
//! throughputs compare directly. FP8-cache cases (`mla_decode_fp8/...`) are timed for our kernel
//! only; compare them with the BF16-cache case of the same shape.

#[path = "../../kernels/benches/support/mod.rs"]
mod support;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mla_attention::cases::{cpu_runner, decode_cases, DecodeCase};
use support::Named;

/// Cases above this many flops are left out of the CPU run (the reference is single-threaded).
const CPU_MAX_FLOPS: f64 = 2e9;

fn describe(case: &DecodeCase) -> Named {
    Named {
        name: case.name(),
        throughput: Throughput::Bytes(case.bytes() as u64),
    }
}

#[cfg(feature = "cuda")]
fn describe_peer(case: &DecodeCase) -> Named {
    Named {
        name: format!("{}@{}", case.name(), mla_attention::peer::NAME),
        ..describe(case)
    }
}

fn benches(c: &mut Criterion) {
    support::gpu_or_cpu(
        c,
        #[cfg(feature = "cuda")]
        |c, gpu| {
            let cases = decode_cases(false);
            support::gpu_group(c, gpu, &cases, describe, mla_attention::cases::gpu_runner);
            // The cuBLAS peer computes over a BF16 cache: its cases are the BF16 ones.
            let peer_cases: Vec<DecodeCase> =
                cases.iter().copied().filter(|c| !c.fp8_cache).collect();
            match mla_attention::peer::cublas_missing() {
                None => support::gpu_group(
                    c,
                    gpu,
                    &peer_cases,
                    describe_peer,
                    mla_attention::cases::peer_gpu_runner,
                ),
                Some(why) => kernels::report_note("mla_decode peer", &format!("skipped: {why}")),
            }
        },
        |c| {
            let cases: Vec<DecodeCase> = decode_cases(true)
                .into_iter()
                .filter(|c| c.flops() <= CPU_MAX_FLOPS)
                .collect();
            support::cpu_group(c, &cases, describe, cpu_runner)
        },
    );
}

criterion_group!(mla_decode_benches, benches);
criterion_main!(mla_decode_benches);
