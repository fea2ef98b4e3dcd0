//! [`Transport`] over NCCL (cudarc's bindings; `libnccl` is loaded at run time, so a binary
//! built with `--features cuda` starts without it and reports a clear error here).
//!
//! One process per GPU: [`NcclTransport::from_env`] reads `RANK` / `WORLD_SIZE` / `LOCAL_RANK`,
//! shares the unique id through [`IdExchange`] and joins the communicator on the given [`Gpu`]'s
//! stream. Both all-to-alls are grouped point-to-point operations (`ncclGroupStart`, one
//! `ncclSend` + one `ncclRecv` per peer with a non-empty buffer, `ncclGroupEnd`), the rank itself
//! included (NCCL copies to self inside a group).
//!
//! The [`Transport`] methods take host buffers and stage them through device memory: pack to one
//! device buffer, send/recv slices of it, copy the receive buffer back and synchronize. That is
//! simple and correct (and what the CPU reference path needs). A device-resident path, where the
//! dispatch kernels pack the rows straight into the send buffer and the grouped GEMM reads the
//! receive buffer, would use [`NcclTransport::all_to_all_device`] on device slices (counts still
//! go through [`Transport::all_to_all_counts`], whose result sizes the receive buffers).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use cudarc::nccl::{self, result::NcclError, Comm, Id};
use kernels::error::{Error, Result};
use kernels::gpu::Gpu;

use super::bootstrap::{IdBytes, IdExchange, WorldEnv, NCCL_ID_BYTES};
use super::transport::{check_peers, Transport};

/// Whether `libnccl` can be loaded; the error says what was searched for.
pub fn nccl_available() -> Result<()> {
    // SAFETY: only tries to dlopen the library under its usual names.
    if unsafe { nccl::sys::is_culib_present() } {
        return Ok(());
    }
    Err(Error::Cuda {
        context: "loading libnccl".into(),
        detail: "the NCCL library was not found: cudarc looks for libnccl.so (and \
                 libnccl.so.<CUDA major>, .12, .11, ...) on the loader path; a system with only \
                 libnccl.so.2 (e.g. the libnccl2 package or pip nvidia-nccl-cu*) needs a \
                 libnccl.so -> libnccl.so.2 link in a directory on LD_LIBRARY_PATH (or the \
                 libnccl-dev package)"
            .into(),
    })
}

/// The NCCL version as `major * 10000 + minor * 100 + patch` (NCCL >= 2.9 encoding).
pub fn nccl_version() -> Result<i32> {
    nccl_available()?;
    nccl::result::get_nccl_version().map_err(nccl_err("ncclGetVersion"))
}

/// Maps an NCCL error to [`Error::Cuda`] with NCCL's own description.
fn nccl_err(context: impl Into<String>) -> impl FnOnce(NcclError) -> Error {
    let context = context.into();
    move |e| {
        // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any code.
        let text = unsafe {
            let p = nccl::sys::ncclGetErrorString(e.0);
            if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Error::Cuda {
            context,
            detail: format!("{:?}: {text} (set NCCL_DEBUG=WARN for details)", e.0),
        }
    }
}

fn cuda_err(context: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    let context = context.into();
    move |e| Error::Cuda {
        context,
        detail: e.to_string(),
    }
}

/// One rank of an NCCL communicator on one GPU.
#[derive(Debug)]
pub struct NcclTransport {
    comm: Comm,
    stream: Arc<CudaStream>,
    rank: usize,
    world_size: usize,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not
// overlap; `Transport` methods take `&mut self` and `NcclTransport` is not `Sync`, so moving it to
// another thread is the only thing this allows. The stream is already `Send`.
unsafe impl Send for NcclTransport {}

impl NcclTransport {
    /// Joins the communicator `id` as `rank` of `world_size`, with every operation on `stream`
    /// (collective: blocks until all ranks joined). Event tracking of the stream's context should
    /// be off ([`Gpu`] turns it off); NCCL is only ordered with the work on `stream`.
    pub fn new(
        stream: Arc<CudaStream>,
        rank: usize,
        world_size: usize,
        id: IdBytes,
    ) -> Result<Self> {
        nccl_available()?;
        if world_size == 0 || rank >= world_size {
            return Err(Error::invalid(
                "NcclTransport::new",
                format!("rank {rank} of world size {world_size}"),
            ));
        }
        stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context before ncclCommInitRank"))?;
        let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
        let comm = Comm::from_rank(stream.clone(), rank, world_size, id).map_err(nccl_err(
            format!("ncclCommInitRank (rank {rank} of {world_size})"),
        ))?;
        Ok(Self {
            comm,
            stream,
            rank,
            world_size,
        })
    }

    /// A fresh unique id (what rank 0 shares).
    pub fn unique_id() -> Result<IdBytes> {
        nccl_available()?;
        let id = Id::new().map_err(nccl_err("ncclGetUniqueId"))?;
        let mut out = [0u8; NCCL_ID_BYTES];
        for (o, &c) in out.iter_mut().zip(id.internal()) {
            *o = c as u8;
        }
        Ok(out)
    }

    /// A world of one on `gpu` (no id exchange).
    pub fn single(gpu: &Gpu) -> Result<Self> {
        Self::new(gpu.stream().clone(), 0, 1, Self::unique_id()?)
    }

    /// Joins the world described by the environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, and
    /// `DSV3_NCCL_ID_FILE`, `DSV3_NCCL_ID_ADDR` or `MASTER_ADDR` / `MASTER_PORT`, see
    /// [`super::bootstrap`]) on `gpu`, which must be device `LOCAL_RANK`.
    pub fn from_env(gpu: &Gpu) -> Result<Self> {
        let env = WorldEnv::from_env()?;
        if gpu.info().ordinal != env.local_rank {
            return Err(Error::invalid(
                "NcclTransport::from_env",
                format!(
                    "LOCAL_RANK={} but the GPU passed is device {} (open Gpu::new(LOCAL_RANK))",
                    env.local_rank,
                    gpu.info().ordinal
                ),
            ));
        }
        let exchange = IdExchange::from_env(&env)?;
        nccl_available()?;
        let id = exchange.share(env.rank, env.world_size, Self::unique_id)?;
        Self::new(gpu.stream().clone(), env.rank, env.world_size, id)
    }

    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Device-resident all-to-all: `send[ send_offsets[p] .. send_offsets[p + 1] ]` goes to rank
    /// `p`, rank `p`'s part lands in `recv[ recv_offsets[p] .. recv_offsets[p + 1] ]`. Offsets are
    /// in elements (`world_size + 1` each, non-decreasing, within the buffers); the receive sizes
    /// must match what the peers send. Enqueued on the transport's stream, not synchronized.
    pub fn all_to_all_device<T: nccl::NcclType + cudarc::driver::DeviceRepr>(
        &self,
        send: &CudaSlice<T>,
        send_offsets: &[usize],
        recv: &mut CudaSlice<T>,
        recv_offsets: &[usize],
    ) -> Result<()> {
        const OP: &str = "NcclTransport::all_to_all_device";
        let w = self.world_size;
        check_peers(OP, "send_offsets", send_offsets.len(), w + 1)?;
        check_peers(OP, "recv_offsets", recv_offsets.len(), w + 1)?;
        for (what, off, len) in [
            ("send_offsets", send_offsets, send.len()),
            ("recv_offsets", recv_offsets, recv.len()),
        ] {
            if off.windows(2).any(|p| p[0] > p[1]) || off[w] > len {
                return Err(Error::shape(
                    OP,
                    format!("{what} {off:?} are not non-decreasing within a buffer of {len}"),
                ));
            }
        }
        self.stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))?;
        nccl::group_start().map_err(nccl_err("ncclGroupStart"))?;
        let mut first_err = None;
        for p in 0..w {
            let (s0, s1) = (send_offsets[p], send_offsets[p + 1]);
            if s1 > s0 {
                if let Err(e) = self.comm.send(&send.slice(s0..s1), p as i32) {
                    first_err.get_or_insert((format!("ncclSend to rank {p}"), e));
                }
            }
            let (r0, r1) = (recv_offsets[p], recv_offsets[p + 1]);
            if r1 > r0 {
                if let Err(e) = self.comm.recv(&mut recv.slice_mut(r0..r1), p as i32) {
                    first_err.get_or_insert((format!("ncclRecv from rank {p}"), e));
                }
            }
        }
        // Always close the group, even after a failed enqueue.
        let end = nccl::group_end();
        if let Some((what, e)) = first_err {
            return Err(nccl_err(what)(e));
        }
        end.map_err(nccl_err("ncclGroupEnd"))?;
        Ok(())
    }

    /// Host bytes -> device -> all-to-all -> host.
    fn staged_all_to_all<T>(&self, send: &[Vec<T>], recv_len: &[usize]) -> Result<Vec<Vec<T>>>
    where
        T: nccl::NcclType
            + cudarc::driver::DeviceRepr
            + cudarc::driver::ValidAsZeroBits
            + Copy
            + Default,
    {
        let w = self.world_size;
        let offsets = |lens: &mut dyn Iterator<Item = usize>| {
            let mut o = vec![0usize];
            for l in lens {
                o.push(o.last().copied().unwrap_or(0) + l);
            }
            o
        };
        let send_offsets = offsets(&mut send.iter().map(|v| v.len()));
        let recv_offsets = offsets(&mut recv_len.iter().copied());
        let packed: Vec<T> = send.iter().flatten().copied().collect();
        // cudarc cannot allocate 0 elements; 1-element buffers stand in for empty ones.
        let send_dev = if packed.is_empty() {
            self.stream.alloc_zeros::<T>(1)
        } else {
            self.stream.clone_htod(&packed)
        }
        .map_err(cuda_err("uploading the all-to-all send buffer"))?;
        let mut recv_dev = self
            .stream
            .alloc_zeros::<T>(recv_offsets[w].max(1))
            .map_err(cuda_err("allocating the all-to-all receive buffer"))?;
        self.all_to_all_device(&send_dev, &send_offsets, &mut recv_dev, &recv_offsets)?;
        let host = self
            .stream
            .clone_dtoh(&recv_dev)
            .map_err(cuda_err("downloading the all-to-all receive buffer"))?;
        self.stream
            .synchronize()
            .map_err(cuda_err("synchronizing after the NCCL all-to-all"))?;
        drop(packed);
        Ok((0..w)
            .map(|p| host[recv_offsets[p]..recv_offsets[p + 1]].to_vec())
            .collect())
    }
}

impl Transport for NcclTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_to_all_counts(&mut self, send: &[u64]) -> Result<Vec<u64>> {
        check_peers("all_to_all_counts", "send", send.len(), self.world_size)?;
        let send: Vec<Vec<u64>> = send.iter().map(|&c| vec![c]).collect();
        let got = self.staged_all_to_all(&send, &vec![1; self.world_size])?;
        Ok(got.into_iter().map(|v| v[0]).collect())
    }

    fn all_to_all_bytes(&mut self, send: &[Vec<u8>], recv_len: &[usize]) -> Result<Vec<Vec<u8>>> {
        check_peers("all_to_all_bytes", "send", send.len(), self.world_size)?;
        check_peers(
            "all_to_all_bytes",
            "recv_len",
            recv_len.len(),
            self.world_size,
        )?;
        self.staged_all_to_all(send, recv_len)
    }
}
