//! Device discovery, the context + stream, module loading and checked launches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{
    result, CudaContext, CudaFunction, CudaModule, CudaStream, LaunchArgs, LaunchConfig,
};
use cudarc::nvrtc::Ptx;

use super::{cuda_err, DeviceInfo};
use crate::error::{Error, Result};
use crate::Cubin;

/// An open GPU: context, the one stream, the loaded modules.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    sync_launches: bool,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Gpu {
    /// Opens device `ordinal`. Returns [`Error::NoCudaDevice`] (never panics) when there is no
    /// driver or no device, and [`Error::UnsupportedDevice`] for anything but compute capability
    /// 9.0 (the kernels are sm_90a code).
    ///
    /// Set `DSV3_SYNC_LAUNCHES=1` to synchronize after every launch, so an asynchronous fault is
    /// reported at the kernel that caused it.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        // SAFETY: only probes whether libcuda can be dlopen'ed.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::NoCudaDevice(
                "libcuda.so was not found (no NVIDIA driver installed)".into(),
            ));
        }
        result::init().map_err(|e| Error::NoCudaDevice(format!("cuInit failed: {e}")))?;
        let count = CudaContext::device_count()
            .map_err(|e| Error::NoCudaDevice(format!("cuDeviceGetCount failed: {e}")))?;
        if count <= 0 {
            return Err(Error::NoCudaDevice("the driver reports 0 devices".into()));
        }
        if ordinal >= count as usize {
            return Err(Error::NoCudaDevice(format!(
                "device {ordinal} requested, the driver reports {count}"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(cuda_err(format!("creating a context on device {ordinal}")))?;
        let attr = |a: Attr| {
            ctx.attribute(a)
                .map_err(cuda_err(format!("reading device attribute {a:?}")))
        };
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(cuda_err("reading the device name"))?,
            compute_capability: ctx
                .compute_capability()
                .map_err(cuda_err("reading the compute capability"))?,
            multiprocessors: attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            l2_bytes: attr(Attr::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?,
            max_shared_mem_per_block_optin: attr(
                Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )?,
            total_mem_bytes: ctx
                .total_mem()
                .map_err(cuda_err("reading the memory size"))?,
            driver_cuda_version: driver_version()?,
        };
        let (major, minor) = info.compute_capability;
        if (major, minor) != (9, 0) {
            return Err(Error::UnsupportedDevice {
                name: info.name,
                major,
                minor,
            });
        }
        // One stream only: cudarc's cross-stream event tracking would add an event record per
        // buffer per launch for nothing.
        // SAFETY: every buffer of this context is used on `stream` alone.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let sync_launches =
            std::env::var("DSV3_SYNC_LAUNCHES").is_ok_and(|v| v != "0" && !v.is_empty());
        Ok(Gpu {
            ctx,
            stream,
            info,
            modules: Mutex::default(),
            functions: Mutex::default(),
            sync_launches,
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

    /// Free and total device memory in bytes. Synchronizes the stream first: buffers are freed
    /// stream-ordered (`cuMemFreeAsync`, all on this stream), and the memory pool keeps freed
    /// memory reserved, counted as used by `cuMemGetInfo`, until a synchronization point
    /// releases it.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.synchronize()?;
        self.ctx.mem_get_info().map_err(cuda_err("cuMemGetInfo"))
    }

    /// Waits for all queued work; an asynchronous kernel fault surfaces here.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err(
            "synchronizing the stream (a kernel may have faulted)",
        ))
    }

    /// Kernel `name` from `cubin`, loading the module on first use.
    pub fn function(&self, cubin: &Cubin, name: &'static str) -> Result<CudaFunction> {
        let key = (cubin.name, name);
        if let Some(f) = self.functions.lock().unwrap().get(&key) {
            return Ok(f.clone());
        }
        let module = self.module(cubin)?;
        let f = module.load_function(name).map_err(cuda_err(format!(
            "looking up kernel {name} in {}",
            cubin.name
        )))?;
        self.functions.lock().unwrap().insert(key, f.clone());
        Ok(f)
    }

    fn module(&self, cubin: &Cubin) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap();
        if let Some(m) = modules.get(cubin.name) {
            return Ok(m.clone());
        }
        if cubin.image.is_empty() {
            return Err(Error::Cuda {
                context: format!("loading {}", cubin.name),
                detail: "empty image".into(),
            });
        }
        // Copy into a Vec: the driver wants the fatbin suitably aligned, include_bytes! is not.
        let module = self
            .ctx
            .load_module(Ptx::from_binary(cubin.image.to_vec()))
            .map_err(cuda_err(format!(
                "loading module {} (built for sm_90a)",
                cubin.name
            )))?;
        modules.insert(cubin.name, module.clone());
        Ok(module)
    }

    /// Raises a kernel's dynamic shared-memory limit (needed above 48 KiB).
    pub fn set_max_dynamic_smem(&self, f: &CudaFunction, bytes: u32) -> Result<()> {
        use cudarc::driver::sys::CUfunction_attribute as FA;
        f.set_attribute(
            FA::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(cuda_err("raising the dynamic shared-memory limit"))
    }

    /// Launches a prepared argument list and checks the launch; with `DSV3_SYNC_LAUNCHES` it also
    /// synchronizes so that a fault is attributed to `kernel`.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameter list and the buffers must be large enough
    /// for the grid (each ops wrapper checks shapes before calling this).
    pub unsafe fn launch(
        &self,
        kernel: &str,
        mut args: LaunchArgs<'_>,
        cfg: LaunchConfig,
    ) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { args.launch(cfg) }
            .map_err(cuda_err(format!("launching {kernel} with {cfg:?}")))?;
        if self.sync_launches {
            self.stream.synchronize().map_err(cuda_err(format!(
                "kernel {kernel} faulted (DSV3_SYNC_LAUNCHES)"
            )))?;
        }
        Ok(())
    }
}

fn driver_version() -> Result<i32> {
    let mut v = 0;
    // SAFETY: plain out-parameter query; the library is loaded (checked by the caller).
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(cuda_err("cuDriverGetVersion"))?;
    Ok(v)
}
