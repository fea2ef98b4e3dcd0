//! What the harness reports about the device (the real one or the emulated one).

/// What the harness reports about the device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
    pub l2_bytes: i32,
    pub max_shared_mem_per_block_optin: i32,
    pub total_mem_bytes: usize,
    /// cuDriverGetVersion, e.g. 13000 for CUDA 13.0.
    pub driver_cuda_version: i32,
}
