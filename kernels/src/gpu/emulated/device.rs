//! The emulated device: a fixed description of an H100 SXM, kernel lookup in the host-compiled
//! tables, and launches checked against the driver's rules before the interpreter runs them.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::launch::DEFAULT_DYNAMIC_SMEM;
use super::{ffi, CudaContext, CudaFunction, CudaStream, EmuError, LaunchArgs, LaunchConfig};
use crate::error::{Error, Result};
use crate::gpu::{cuda_err, DeviceInfo};
use crate::Cubin;

/// cudaDevAttrMaxSharedMemoryPerBlockOptin of sm_90 (227 KiB).
const MAX_DYNAMIC_SMEM_OPTIN: u32 = 232_448;

/// The emulated device: host memory, one in-order "stream", launches run by the interpreter.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    /// Launches per `module/kernel`, for the coverage line of `harness verify --emulate`.
    launches: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Gpu {
    /// Opens the emulated device; there is one, ordinal 0. It reports an H100 SXM's shape
    /// (132 SMs, 50 MiB L2, 227 KiB opt-in shared memory) so heuristics that size tiles or
    /// grids from it choose as on the real part; its memory is the host's.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        if ordinal != 0 {
            return Err(Error::NoCudaDevice(format!(
                "device {ordinal} requested, the emulated build has one device (0)"
            )));
        }
        let info = DeviceInfo {
            ordinal,
            name: "emulated sm_90a (kernel interpreter on the CPU)".into(),
            compute_capability: (9, 0),
            multiprocessors: 132,
            l2_bytes: 50 * 1024 * 1024,
            max_shared_mem_per_block_optin: MAX_DYNAMIC_SMEM_OPTIN as i32,
            total_mem_bytes: host_memory().1,
            driver_cuda_version: 13000,
        };
        Ok(Gpu {
            ctx: Arc::new(CudaContext::default()),
            stream: Arc::new(CudaStream::default()),
            info,
            functions: Mutex::default(),
            launches: Mutex::default(),
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Free and total memory in bytes: the host's (MemAvailable, MemTotal).
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        Ok(host_memory())
    }

    /// Nothing is ever queued: launches return when the grid has run.
    pub fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Kernel `name` from `cubin`'s kernel table.
    pub fn function(&self, cubin: &Cubin, name: &'static str) -> Result<CudaFunction> {
        let key = (cubin.name, name);
        if let Some(f) = self.functions.lock().unwrap().get(&key) {
            return Ok(f.clone());
        }
        let lookup = format!("looking up kernel {name} in {}", cubin.name);
        let Some(accessor) = cubin.emulated else {
            return Err(Error::Cuda {
                context: lookup,
                detail: "the module has no kernel table (its crate was built without the \
                         emulate feature)"
                    .into(),
            });
        };
        // SAFETY: the generated accessor returns a pointer to a static table of `count` entries
        // whose names are static NUL-terminated strings.
        let kernels = unsafe {
            let module = &*accessor();
            if module.count == 0 {
                &[]
            } else {
                std::slice::from_raw_parts(module.kernels, module.count)
            }
        };
        // SAFETY: as above.
        let entries: Vec<(&'static CStr, _)> = kernels
            .iter()
            .map(|k| (unsafe { CStr::from_ptr(k.name) }, k.invoke))
            .collect();
        let Some(&(cname, invoke)) = entries
            .iter()
            .find(|(n, _)| n.to_bytes() == name.as_bytes())
        else {
            let have: Vec<_> = entries.iter().map(|(n, _)| n.to_string_lossy()).collect();
            // What cuModuleGetFunction says for a name the module lacks.
            return Err(Error::Cuda {
                context: lookup,
                detail: format!(
                    "CUDA_ERROR_NOT_FOUND: named symbol not found (the module's kernels: {})",
                    have.join(", ")
                ),
            });
        };
        let f = CudaFunction {
            name: cname,
            module: cubin.name,
            invoke,
            max_dynamic_smem: Arc::new(AtomicU32::new(DEFAULT_DYNAMIC_SMEM)),
        };
        self.functions.lock().unwrap().insert(key, f.clone());
        Ok(f)
    }

    /// Raises a kernel's dynamic shared-memory limit (needed above 48 KiB), up to the opt-in
    /// maximum, as cuFuncSetAttribute allows.
    pub fn set_max_dynamic_smem(&self, f: &CudaFunction, bytes: u32) -> Result<()> {
        if bytes > MAX_DYNAMIC_SMEM_OPTIN {
            return Err(cuda_err("raising the dynamic shared-memory limit")(
                EmuError(format!(
                    "CUDA_ERROR_INVALID_VALUE: {bytes} bytes for {} exceed the opt-in maximum \
                     {MAX_DYNAMIC_SMEM_OPTIN}",
                    f.name.to_string_lossy()
                )),
            ));
        }
        f.max_dynamic_smem.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Checks the launch against the driver's rules, then runs the grid in the interpreter;
    /// returns when it has finished (or with the interpreter's report of what went wrong).
    ///
    /// # Safety
    /// The arguments must match the kernel's parameter list and the buffers must be large enough
    /// for the grid (each ops wrapper checks shapes before calling this). The interpreter catches
    /// many violations (guard pages), not all.
    pub unsafe fn launch(
        &self,
        kernel: &str,
        mut args: LaunchArgs<'_>,
        cfg: LaunchConfig,
    ) -> Result<()> {
        let context = format!("launching {kernel} with {cfg:?}");
        let f = args.func;
        check_config(f, &cfg).map_err(|detail| Error::Cuda {
            context: context.clone(),
            detail,
        })?;
        let (g, b) = (cfg.grid_dim, cfg.block_dim);
        *self
            .launches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{}/{}", f.module, f.name.to_string_lossy()))
            .or_default() += 1;
        // No lock: the interpreter keeps its state per OS thread, so launches from several host
        // threads (the test harness's) run side by side, like kernels on several streams. Each
        // caller owns its buffers; nothing here relies on one stream's ordering across threads.
        // SAFETY: forwarded to the caller; `args` borrows every value until this returns.
        unsafe {
            ffi::launch(
                f.name,
                f.invoke,
                [g.0, g.1, g.2],
                [b.0, b.1, b.2],
                cfg.shared_mem_bytes,
                &mut args.args,
            )
        }
        .map_err(|detail| Error::Cuda {
            context: format!("{context} ({})", f.module),
            detail,
        })
    }
}

/// The launch rules cuLaunchKernel enforces on sm_90 (CUDA_ERROR_INVALID_VALUE otherwise).
fn check_config(f: &CudaFunction, cfg: &LaunchConfig) -> std::result::Result<(), String> {
    let (g, b) = (cfg.grid_dim, cfg.block_dim);
    let bad = |why: String| Err(format!("CUDA_ERROR_INVALID_VALUE (emulated device: {why})"));
    if g.0 == 0 || g.1 == 0 || g.2 == 0 || b.0 == 0 || b.1 == 0 || b.2 == 0 {
        return bad("a grid or block dimension is 0".into());
    }
    if g.0 > i32::MAX as u32 || g.1 > 65_535 || g.2 > 65_535 {
        return bad(format!(
            "grid {g:?} exceeds the limits (2^31-1, 65535, 65535)"
        ));
    }
    if b.0 > 1024 || b.1 > 1024 || b.2 > 64 {
        return bad(format!("block {b:?} exceeds the limits (1024, 1024, 64)"));
    }
    let threads = u64::from(b.0) * u64::from(b.1) * u64::from(b.2);
    if threads > 1024 {
        return bad(format!("{threads} threads per block exceed 1024"));
    }
    let limit = f.max_dynamic_smem();
    if cfg.shared_mem_bytes > limit {
        return bad(format!(
            "{} bytes of dynamic shared memory exceed the kernel's limit {limit} (above 48 KiB \
             it must be raised with set_max_dynamic_smem first, up to {MAX_DYNAMIC_SMEM_OPTIN})",
            cfg.shared_mem_bytes
        ));
    }
    Ok(())
}

/// (available, total) host memory in bytes from /proc/meminfo; (0, 0) where it cannot be read.
fn host_memory() -> (usize, usize) {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return (0, 0);
    };
    let field = |name: &str| -> usize {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemAvailable:"), field("MemTotal:"))
}

impl Gpu {
    /// How many times each `module/kernel` was launched on this device so far.
    pub fn launch_counts(&self) -> HashMap<String, u64> {
        self.launches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Every kernel (`module/kernel`) in the kernel tables of `cubins`.
pub fn kernel_names(cubins: &[Cubin]) -> Vec<String> {
    let mut names = Vec::new();
    for cubin in cubins {
        let Some(accessor) = cubin.emulated else {
            continue;
        };
        // SAFETY: the generated accessor returns a pointer to a static table of `count` entries
        // whose names are static NUL-terminated strings.
        unsafe {
            let module = &*accessor();
            for i in 0..module.count {
                let k = &*module.kernels.add(i);
                names.push(format!(
                    "{}/{}",
                    cubin.name,
                    CStr::from_ptr(k.name).to_string_lossy()
                ));
            }
        }
    }
    names
}
