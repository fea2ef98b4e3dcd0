//! Published figures of the reference implementations, shown next to ours in REPORT.md and the
//! plots. They are quoted, not measured here: the hardware (H800: the same FP8 peak and memory
//! bandwidth as H100 SXM) and the byte counting are the publishers'.

/// One published number for a (kernel, shape) of ours.
#[derive(Clone, Copy, Debug)]
pub struct Anchor {
    pub kernel: &'static str,
    pub shape: &'static str,
    pub value: f64,
    /// "TFLOP/s" or "GB/s".
    pub unit: &'static str,
    pub source: &'static str,
}

const DEEPGEMM: &str = "DeepGEMM README, H800 (published)";

const fn dg(kernel: &'static str, shape: &'static str, value: f64, unit: &'static str) -> Anchor {
    Anchor {
        kernel,
        shape,
        value,
        unit,
        source: DEEPGEMM,
    }
}

/// DeepGEMM's published FP8 GEMM figures for the shapes of `fp8_gemm::cases`.
pub const ANCHORS: &[Anchor] = &[
    dg("fp8_gemm_nt", "4096x2112x7168", 1058.0, "TFLOP/s"),
    dg("fp8_gemm_nt", "4096x24576x1536", 990.0, "TFLOP/s"),
    dg("fp8_gemm_nt", "4096x32768x512", 590.0, "TFLOP/s"),
    dg("fp8_gemm_nt", "4096x7168x16384", 1358.0, "TFLOP/s"),
    dg("fp8_gemm_nt", "4096x4096x7168", 1304.0, "TFLOP/s"),
    dg("fp8_gemm_nt", "4096x7168x2048", 1025.0, "TFLOP/s"),
    dg("fp8_gemm_nt", "64x2112x7168", 1688.0, "GB/s"),
    dg("fp8_gemm_nt", "64x24576x1536", 2455.0, "GB/s"),
    dg("fp8_gemm_nt", "64x32768x512", 2143.0, "GB/s"),
    dg("fp8_gemm_nt", "64x7168x16384", 2668.0, "GB/s"),
    dg("fp8_gemm_nt", "64x4096x7168", 2320.0, "GB/s"),
    dg("fp8_gemm_nt", "64x7168x2048", 2470.0, "GB/s"),
    dg("fp8_gemm_nt", "128x2112x7168", 1509.0, "GB/s"),
    dg("fp8_gemm_nt", "128x24576x1536", 2448.0, "GB/s"),
    dg("fp8_gemm_nt", "128x32768x512", 2103.0, "GB/s"),
    dg("fp8_gemm_nt", "128x7168x16384", 2604.0, "GB/s"),
    dg("fp8_gemm_nt", "128x4096x7168", 2221.0, "GB/s"),
    dg("fp8_gemm_nt", "128x7168x2048", 2277.0, "GB/s"),
    dg(
        "fp8_gemm_grouped_contiguous",
        "4x8192x4096x7168",
        1297.0,
        "TFLOP/s",
    ),
    dg(
        "fp8_gemm_grouped_contiguous",
        "4x8192x7168x2048",
        1099.0,
        "TFLOP/s",
    ),
    dg(
        "fp8_gemm_grouped_masked",
        "4x256x4096x7168",
        932.0,
        "TFLOP/s",
    ),
    dg(
        "fp8_gemm_grouped_masked",
        "4x256x7168x2048",
        815.0,
        "TFLOP/s",
    ),
];

pub fn find(kernel: &str, shape: &str) -> Option<&'static Anchor> {
    ANCHORS
        .iter()
        .find(|a| a.kernel == kernel && a.shape == shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every anchor names a case the benchmark list actually has.
    #[test]
    fn anchors_match_benchmark_cases() {
        let cases = fp8_gemm::cases::fp8_cases(false);
        for a in ANCHORS {
            assert!(
                cases
                    .iter()
                    .any(|c| c.kernel() == a.kernel && c.shape() == a.shape),
                "{} {} is not a benchmark case",
                a.kernel,
                a.shape
            );
        }
    }
}
