//! What every crate's GPU tests share: one device per test process, and a visible skip line when
//! there is none (libtest captures `println!`, so [`crate::report_skip`] writes to stderr).

use std::sync::{Mutex, OnceLock};

use super::Gpu;
use crate::checks::CheckReport;

/// The process-wide device for tests, or `None` after printing
/// `<test>: skipped: no CUDA device: <why>` (once per test name).
///
/// In the interpreter build (feature `emulate`) this is the emulated device, which always opens:
/// nothing skips, and the first call says once on stderr that the tests run on it.
pub fn test_gpu(test: &'static str) -> Option<&'static Gpu> {
    if cfg!(feature = "emulate") {
        static ANNOUNCED: std::sync::Once = std::sync::Once::new();
        ANNOUNCED.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "GPU tests run on the emulated device (kernel interpreter on the CPU)"
            );
        });
    }
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    static SKIPPED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let why = match GPU.get_or_init(|| Gpu::new(0).map_err(|e| e.to_string())) {
        Ok(g) => return Some(g),
        Err(why) => why,
    };
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if !skipped.contains(&test) {
        skipped.push(test);
        let why = if why.starts_with("no CUDA device") {
            why.clone()
        } else {
            format!("no CUDA device usable: {why}")
        };
        crate::report_skip(test, &why);
    }
    None
}

/// Panics with the report's numbers unless the check ran and passed.
pub fn assert_pass(r: crate::Result<CheckReport>) {
    let r = r.expect("check ran");
    assert!(
        r.passed,
        "{} {}: {} = {:e} (tolerance {:e}) {}",
        r.kernel, r.case, r.metric, r.error, r.tolerance, r.note
    );
}
