//! The vendor-library peers in the interpreter build (feature `emulate`): cuBLAS and cuBLASLt
//! need the real driver, so on the emulated device every constructor answers "not available"
//! (`Ok(Err(why))`, which the bench records as a skipped peer) and nothing else can be reached.

use fp8_gemm::reference::Fp8Weights;
use kernels::gpu::Gpu;
use kernels::reference::fp8_quant::Fp8Activations;
use kernels::rng::Rng;
use kernels::Result;

/// Why a vendor peer does not run here.
fn why(library: &str) -> String {
    format!("{library} is not available on the emulated device (interpreter build)")
}

/// No value exists: the peers below cannot be constructed.
#[derive(Debug)]
enum Never {}

/// Stand-in for `ceilings::CublasBf16`.
#[derive(Debug)]
pub struct CublasBf16(Never);

impl CublasBf16 {
    pub fn new(
        _gpu: &Gpu,
        _rng: &mut Rng,
        _shape: (usize, usize, usize),
    ) -> Result<std::result::Result<Self, String>> {
        Ok(Err(why("cuBLAS")))
    }

    pub fn run(&mut self) -> Result<()> {
        match self.0 {}
    }

    pub fn sampled_error(&self, _gpu: &Gpu, _rng: &mut Rng) -> Result<f64> {
        match self.0 {}
    }
}

/// Stand-in for `peers::cublaslt_fp8::CublasLtFp8`.
#[derive(Debug)]
pub struct CublasLtFp8(Never);

impl CublasLtFp8 {
    pub fn new(
        _gpu: &Gpu,
        _a: &Fp8Activations,
        _b: &Fp8Weights,
    ) -> Result<std::result::Result<Self, String>> {
        Ok(Err(why("cuBLASLt")))
    }

    pub fn run(&mut self) -> Result<()> {
        match self.0 {}
    }

    pub fn check(
        &mut self,
        _gpu: &Gpu,
        _a: &Fp8Activations,
        _b: &Fp8Weights,
    ) -> Result<(f64, bool)> {
        match self.0 {}
    }
}
