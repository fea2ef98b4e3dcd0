//! Expert parallelism (EP): the routed experts of a MoE layer split over ranks (one GPU each),
//! tokens sent to the ranks holding their experts and the expert outputs sent back.
//!
//! - [`Transport`]: the two all-to-all collectives EP needs, on host buffers; implemented by
//!   [`InProcess`] (N ranks as N threads, for tests) and, with the `cuda` feature,
//!   [`NcclTransport`] (one process per GPU, NCCL grouped send/recv).
//! - [`ExpertPlacement`]: experts partitioned contiguously over ranks (`E % W == 0`).
//! - [`ep_dispatch`] / [`ep_combine`]: the data movement, generic over the transport, bit for bit
//!   equal to the single-rank reference (`reference::permute`) on the concatenated tokens; see
//!   [`dispatch`] for the protocol, the row order and the argument.
//! - [`NodeLimit`], [`node_limited_topk`]: node-limited routing (each token on at most M nodes).
//! - [`bootstrap`]: `RANK` / `WORLD_SIZE` / `LOCAL_RANK` and the NCCL unique-id exchange (a file
//!   or TCP, `MASTER_ADDR` / `MASTER_PORT` for several nodes), each launch under its own run id;
//!   [`LocalLaunch`] for a launcher that starts the ranks of one node itself.

pub mod bootstrap;
pub mod dispatch;
pub mod node_limit;
pub mod placement;
pub mod transport;

// NCCL needs the real driver: not in the interpreter build (feature `emulate`).
#[cfg(all(feature = "cuda", not(feature = "emulate")))]
pub mod nccl;

pub use bootstrap::{IdExchange, LocalLaunch, RunId, TcpVia, WorldEnv};
pub use dispatch::{
    ep_combine, ep_dispatch, EpConfig, EpDispatch, EpTokens, ExpertInputs, RecvPair, WireRow,
};
pub use node_limit::{node_limited_mask, node_limited_topk, select_nodes, NodeLimit};
pub use placement::ExpertPlacement;
pub use transport::{InProcess, Transport};

#[cfg(all(feature = "cuda", not(feature = "emulate")))]
pub use nccl::{nccl_available, nccl_version, NcclTransport};
