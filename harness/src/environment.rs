//! Facts about where a run happened: commit, date, and what `nvidia-smi` says of the GPU.

use std::process::Command;

/// The commit this binary was built from (`<sha>-dirty` if tracked files had changes).
pub const BUILD_COMMIT: &str = env!("DSV3_BUILD_COMMIT");

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`. Hand-written to avoid a date crate for one line:
/// days-since-epoch to civil date is Howard Hinnant's published algorithm.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
/// The `nvidia-smi` fields a benchmark report records, read at one moment.
pub const SMI_FIELDS: [&str; 7] = [
    "driver_version",
    "clocks.sm",
    "clocks.max.sm",
    "clocks.mem",
    "pstate",
    "temperature.gpu",
    "power.draw",
];

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
/// Reads [`SMI_FIELDS`] for GPU `ordinal`; `None` when nvidia-smi is missing or fails (the
/// report then says so instead of inventing values).
pub fn nvidia_smi(ordinal: usize) -> Option<Vec<(String, String)>> {
    let out = Command::new("nvidia-smi")
        .arg(format!("--query-gpu={}", SMI_FIELDS.join(",")))
        .args(["--format=csv,noheader,nounits", "-i", &ordinal.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let values: Vec<String> = text
        .lines()
        .next()?
        .split(',')
        .map(|v| v.trim().to_string())
        .collect();
    (values.len() == SMI_FIELDS.len()).then(|| {
        SMI_FIELDS
            .iter()
            .map(|k| k.to_string())
            .zip(values)
            .collect()
    })
}

/// Host facts for a CPU run: logical CPUs.
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_now_is_well_formed() {
        let s = utc_now();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20"), "{s}");
        assert_eq!(&s[10..11], "T");
    }
}
