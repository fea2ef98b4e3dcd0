//! Kernel-vs-reference checks for the GPU tests and `harness verify`.

pub mod permute;
pub mod routing;

use kernels::checks::CheckReport;
use kernels::gpu::Gpu;

/// Every routing, permute and combine case `harness verify` runs.
pub fn all_checks(gpu: &Gpu, quick: bool) -> Vec<kernels::Result<CheckReport>> {
    let mut out = routing::all_checks(gpu, quick);
    out.extend(permute::all_checks(gpu, quick));
    out
}
