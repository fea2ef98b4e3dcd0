//! Launch wrappers of `cuda/routing.cu`: the fused top-k router, the BF16 gate GEMM and
//! per-expert counts.
//!
//! Each wrapper checks the config and every shape on the host (a bad shape is an error naming the
//! argument, never an out-of-bounds access on the device), treats an empty batch as a no-op and
//! launches on the `Gpu`'s stream without synchronizing.
//!
//! [`route`] is bit-identical to [`crate::reference::routing::route`] for the same logits (ids,
//! their order and weights): see the reference's module docs for why.

use half::bf16;
use kernels::gpu::{grid_1d, DeviceStatus, DeviceTensor, Gpu, LaunchConfig, PushKernelArg};
use kernels::{Error, Result};

use crate::cubins::ROUTING;
use crate::reference::routing::{check_bias, RoutingConfig, Scoring, TopkMethod};

/// Tokens per block of `route_topk` (one warp each).
const ROUTE_WARPS: usize = 4;
/// Threads of the gate GEMM blocks.
const GEMM_THREADS: u32 = 128;
/// Threads of the counts kernel and the most blocks it uses.
const COUNT_THREADS: u32 = 256;
const COUNT_MAX_BLOCKS: usize = 1024;
/// Experts the counts kernel's shared-memory histogram holds (48 KiB of i32).
pub const COUNTS_MAX_EXPERTS: usize = 12 * 1024;

fn as_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} does not fit in i32")))
}

fn as_u32(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} exceeds the grid limit")))
}

/// The `[a, b]` shape of `t`, or a shape error naming `what`.
fn dims2<T: kernels::gpu::DeviceElement>(
    op: &'static str,
    what: &str,
    expected: &str,
    t: &DeviceTensor<T>,
) -> Result<(usize, usize)> {
    match *t.shape() {
        [a, b] => Ok((a, b)),
        _ => Err(Error::shape(
            op,
            format!("{what} must be {expected}, got {:?}", t.shape()),
        )),
    }
}

fn scoring_code(s: Scoring) -> i32 {
    match s {
        Scoring::Sigmoid => 0,
        Scoring::Softmax => 1,
    }
}

fn method_code(m: TopkMethod) -> i32 {
    match m {
        TopkMethod::NoauxTc => 0,
        TopkMethod::Greedy => 1,
        TopkMethod::GroupLimitedGreedy => 2,
    }
}

/// Routes every token: z [T, E] f32 router logits; `bias` [E] (`e_score_correction_bias`,
/// required by `noaux_tc`, rejected otherwise); writes ids [T, K] and weights [T, K] in the
/// reference's output order (best first).
pub fn route(
    gpu: &Gpu,
    z: &DeviceTensor<f32>,
    bias: Option<&DeviceTensor<f32>>,
    cfg: &RoutingConfig,
    ids: &mut DeviceTensor<i32>,
    weights: &mut DeviceTensor<f32>,
) -> Result<()> {
    const OP: &str = "route";
    cfg.validate()?;
    let (tokens, experts) = dims2(OP, "z", "[tokens, n_routed_experts]", z)?;
    if experts != cfg.num_experts {
        return Err(Error::shape(
            OP,
            format!(
                "z has {experts} columns, expected n_routed_experts = {}",
                cfg.num_experts
            ),
        ));
    }
    check_bias(bias.map(DeviceTensor::len), cfg)?;
    if let Some(b) = bias {
        b.expect_shape(OP, "bias", &[experts])?;
    }
    ids.expect_shape(OP, "ids", &[tokens, cfg.top_k])?;
    weights.expect_shape(OP, "weights", &[tokens, cfg.top_k])?;
    if tokens == 0 {
        return Ok(());
    }
    let f = gpu.function(&ROUTING, "route_topk")?;
    let (zp, bp, ip, wp) = (
        z.device_ptr(gpu),
        bias.map_or(0, |b| b.device_ptr(gpu)),
        ids.device_ptr(gpu),
        weights.device_ptr(gpu),
    );
    let tokens_i = as_i32(OP, "tokens", tokens)?;
    let experts_i = as_i32(OP, "n_routed_experts", experts)?;
    let top_k = as_i32(OP, "num_experts_per_tok", cfg.top_k)?;
    let n_group = as_i32(OP, "n_group", cfg.n_group)?;
    let topk_group = as_i32(OP, "topk_group", cfg.topk_group)?;
    let scoring = scoring_code(cfg.scoring);
    let method = method_code(cfg.method);
    let norm = i32::from(cfg.norm_topk_prob);
    let scale = cfg.routed_scaling_factor;
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&zp)
        .arg(&bp)
        .arg(&ip)
        .arg(&wp)
        .arg(&tokens_i)
        .arg(&experts_i)
        .arg(&top_k)
        .arg(&n_group)
        .arg(&topk_group)
        .arg(&scoring)
        .arg(&method)
        .arg(&norm)
        .arg(&scale);
    let blocks = as_u32(OP, "blocks", tokens.div_ceil(ROUTE_WARPS))?;
    // SAFETY: z [tokens, E], bias [E] or null exactly when the kernel reads it (noaux_tc),
    // ids / weights [tokens, K], all checked above; the config is validated (E <= 512, K <= 16,
    // n_group <= 16, K experts available), which is what the kernel assumes.
    unsafe {
        gpu.launch(
            "route_topk",
            args,
            grid_1d(blocks, (ROUTE_WARPS * 32) as u32, 0),
        )
    }
}

/// The two instantiations of the gate GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateTile {
    /// 64 tokens x 64 experts per block, 2 x 2 warps (prefill).
    Large,
    /// 16 tokens x 16 experts per block, K split over 4 warps (decode: more blocks).
    Small,
}

impl GateTile {
    /// The 64x64 tile when it alone fills the device, else the K-split 16x16 tile.
    pub fn choose(gpu: &Gpu, tokens: usize, experts: usize) -> GateTile {
        let sms = usize::try_from(gpu.info().multiprocessors)
            .unwrap_or(1)
            .max(1);
        if tokens.div_ceil(64) * experts.div_ceil(64) >= sms {
            GateTile::Large
        } else {
            GateTile::Small
        }
    }
}

/// The router GEMM: z [T, E] f32 = x [T, hidden] . weight [E, hidden]^T with BF16 inputs and f32
/// accumulation (tensor cores; agrees with [`crate::reference::routing::gate_logits`] to f32
/// summation error, deterministic from run to run).
pub fn gate_logits(
    gpu: &Gpu,
    x: &DeviceTensor<bf16>,
    weight: &DeviceTensor<bf16>,
    z: &mut DeviceTensor<f32>,
) -> Result<()> {
    gate_logits_with(gpu, x, weight, z, None)
}

/// [`gate_logits`] with the tile forced (`None` = [`GateTile::choose`]); for tests and benches.
pub fn gate_logits_with(
    gpu: &Gpu,
    x: &DeviceTensor<bf16>,
    weight: &DeviceTensor<bf16>,
    z: &mut DeviceTensor<f32>,
    tile: Option<GateTile>,
) -> Result<()> {
    const OP: &str = "gate_logits";
    let (tokens, hidden) = dims2(OP, "x", "[tokens, hidden]", x)?;
    let (experts, hidden_w) = dims2(OP, "weight", "[num_experts, hidden]", weight)?;
    if hidden_w != hidden {
        return Err(Error::shape(
            OP,
            format!("weight has hidden = {hidden_w}, x has hidden = {hidden}"),
        ));
    }
    if hidden == 0 {
        return Err(Error::invalid(OP, "hidden size is 0"));
    }
    z.expect_shape(OP, "z", &[tokens, experts])?;
    if tokens == 0 || experts == 0 {
        return Ok(());
    }
    let (xp, wp, zp) = (x.device_ptr(gpu), weight.device_ptr(gpu), z.device_ptr(gpu));
    let vec = i32::from(hidden % 8 == 0 && xp % 16 == 0 && wp % 16 == 0);
    let (name, tile) = match tile.unwrap_or_else(|| GateTile::choose(gpu, tokens, experts)) {
        GateTile::Large => ("gate_gemm_64x64", 64),
        GateTile::Small => ("gate_gemm_16x16", 16),
    };
    let grid_y = tokens.div_ceil(tile);
    if grid_y > 65_535 {
        return Err(Error::invalid(
            OP,
            format!("{tokens} tokens exceed the grid limit (65535 x {tile})"),
        ));
    }
    let f = gpu.function(&ROUTING, name)?;
    let (t_i, e_i, h_i) = (
        as_i32(OP, "tokens", tokens)?,
        as_i32(OP, "num_experts", experts)?,
        as_i32(OP, "hidden", hidden)?,
    );
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&xp)
        .arg(&wp)
        .arg(&zp)
        .arg(&t_i)
        .arg(&e_i)
        .arg(&h_i)
        .arg(&vec);
    let cfg = LaunchConfig {
        grid_dim: (
            as_u32(OP, "expert tiles", experts.div_ceil(tile))?,
            grid_y as u32,
            1,
        ),
        block_dim: (GEMM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: x [T, H], weight [E, H], z [T, E] checked above; the kernel bounds-checks every row
    // and column against T, E and H, and uses 16-byte loads only when `vec` says they are aligned.
    unsafe { gpu.launch(name, args, cfg) }
}

/// Tokens per expert: counts [num_experts] (i32) = how many entries of `ids` (any shape, e.g.
/// `[T, K]`) equal each expert. `counts` is overwritten. An id outside `0..num_experts` is not
/// counted and records status code 4 in `status` (check it with `status.check`).
pub fn expert_counts(
    gpu: &Gpu,
    ids: &DeviceTensor<i32>,
    num_experts: usize,
    counts: &mut DeviceTensor<i32>,
    status: &mut DeviceStatus,
) -> Result<()> {
    const OP: &str = "expert_counts";
    if num_experts == 0 || num_experts > COUNTS_MAX_EXPERTS {
        return Err(Error::invalid(
            OP,
            format!("num_experts = {num_experts} must be in 1..={COUNTS_MAX_EXPERTS}"),
        ));
    }
    counts.expect_shape(OP, "counts", &[num_experts])?;
    gpu.fill_bytes(counts, 0)?;
    let n = ids.len();
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&ROUTING, "expert_counts_i32")?;
    let (ip, cp, sp) = (
        ids.device_ptr(gpu),
        counts.device_ptr(gpu),
        status.word().device_ptr(gpu),
    );
    let n_i = i64::try_from(n).map_err(|_| Error::invalid(OP, "too many ids"))?;
    let e_i = as_i32(OP, "num_experts", num_experts)?;
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&ip).arg(&n_i).arg(&e_i).arg(&cp).arg(&sp);
    let blocks = n.div_ceil(COUNT_THREADS as usize).min(COUNT_MAX_BLOCKS) as u32;
    let smem = (num_experts * std::mem::size_of::<i32>()) as u32;
    // SAFETY: ids has n elements, counts [num_experts] (zeroed above), status one i32; the
    // dynamic shared memory holds num_experts i32 (<= 48 KiB, the default limit).
    unsafe {
        gpu.launch(
            "expert_counts_i32",
            args,
            grid_1d(blocks, COUNT_THREADS, smem),
        )
    }
}
