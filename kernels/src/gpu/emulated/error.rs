//! The emulated device's counterpart of cudarc's `DriverError`.

/// What the emulated driver or the interpreter reported.
#[derive(Clone, Debug)]
pub struct EmuError(pub String);

impl std::fmt::Display for EmuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EmuError {}
