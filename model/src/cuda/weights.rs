//! The model's weights on the device, uploaded once at load.
//!
//! - FP8 linear weights stay exactly as stored: e4m3 codes `[N, K]` and the f32 block scales
//!   `[ceil(N/128), K/128]` (`weight_scale_inv`), never upcast. An MLP's `gate_proj` and `up_proj`
//!   are stacked into one `[2 * inter, K]` weight (rows, and whole 128-row scale blocks, so
//!   `inter` must be a multiple of 128) so one GEMM writes the `[T, 2 * inter]` gate|up input of
//!   the fused `silu_and_mul_quantize_fp8`. Routed experts are stacked `[E, 2 * inter, K]` /
//!   `[E, hidden, inter]` for the grouped GEMM. A checkpoint that stores these weights in BF16,
//!   F16 or F32 has them quantized per 128x128 block at load, as `dsv3 convert --to fp8` would
//!   (see [`fp8`]).
//! - BF16 tensors (embedding, norms, router gate, lm_head) stay BF16; norm weights stored in F32
//!   are rounded to BF16 once (the kernels take BF16 weights).
//! - `kv_b_proj` is dequantized once at load (FP8 code x block scale in f32) and rounded to BF16
//!   into the layouts the absorption kernels read: `W_UK [H, d_nope, d_c]` and
//!   `W_UV [H, d_v, d_c]`. This BF16 rounding of the weights is the one place the CUDA backend's
//!   arithmetic departs from the CPU `fp8` path (which keeps them in f32): a relative error of
//!   at most 2^-9 per weight, averaging out in the 128/512-long dot products.

use half::bf16;
use kernels::gpu::{DeviceElement, DeviceTensor, Gpu};
use kernels::E4m3;
use moe_dispatch::reference::routing::RoutingConfig;

use crate::checkpoint::{Checkpoint, Fp8Weight, LinearWeight};
use crate::config::ModelConfig;
use crate::cpu::weights::routing_config;
use crate::error::{ModelError, Result};

/// Maps a device error of an upload or allocation to one naming what was being allocated.
pub fn alloc_err(what: impl Into<String>) -> impl FnOnce(kernels::Error) -> ModelError {
    let what = what.into();
    move |e| {
        ModelError::Kernel(kernels::Error::Cuda {
            context: format!("allocating {what} on the GPU"),
            detail: e.to_string(),
        })
    }
}

/// Uploads `data` as a tensor of `shape`, naming `what` on failure.
pub fn upload<T: DeviceElement>(
    gpu: &Gpu,
    data: &[T],
    shape: &[usize],
    what: &str,
) -> Result<DeviceTensor<T>> {
    gpu.upload(data, shape).map_err(alloc_err(what))
}

/// A zeroed device tensor, naming `what` on failure.
pub fn zeros<T: DeviceElement>(gpu: &Gpu, shape: &[usize], what: &str) -> Result<DeviceTensor<T>> {
    gpu.zeros(shape).map_err(alloc_err(what))
}

/// A block-scaled FP8 weight `[N, K]` (or `[G, N, K]` for stacked experts) and its scales.
#[derive(Debug)]
pub struct Fp8Linear {
    pub w: DeviceTensor<E4m3>,
    pub scales: DeviceTensor<f32>,
    pub n: usize,
    pub k: usize,
    /// The activations this weight multiplies are quantized with power-of-two scales (the
    /// checkpoint's `scale_fmt: "ue8m0"`, DeepSeek-V3.1), as the CPU `fp8` path does.
    pub ue8m0: bool,
}

/// The FP8 weight `name`. A weight the released checkpoints store in FP8 but this one stores in
/// BF16, F16 or F32 (a community BF16 conversion, a Moonlight-style release, a checkpoint saved
/// by transformers in float32) is quantized per 128x128 block at load by the released rule: the
/// codes and scales `dsv3 convert --to fp8` writes and the CPU `fp8` path multiplies
/// (`cpu::weights::linear_weight`), so the backends still compute the same function.
fn fp8(ckpt: &Checkpoint, name: &str) -> Result<Fp8Weight> {
    let w = match crate::cpu::weights::linear_weight(ckpt, name, crate::cpu::Precision::Fp8)? {
        LinearWeight::Fp8(w) => w,
        LinearWeight::Bf16 { .. } | LinearWeight::F32 { .. } => {
            return Err(ModelError::config(
                name,
                format!(
                    "is stored in {} and is not one of the weights released checkpoints store \
                     in FP8, so the CUDA backend has no FP8 GEMM for it (use --backend cpu)",
                    crate::checkpoint::safetensors_dtype_name(ckpt.info(name)?.dtype)
                ),
            ))
        }
    };
    if w.k % 128 != 0 || w.n % 16 != 0 {
        return Err(ModelError::config(
            name,
            format!(
                "[{}, {}] cannot run on the FP8 GEMM (K must be a multiple of 128, N of 16)",
                w.n, w.k
            ),
        ));
    }
    Ok(w)
}

impl Fp8Linear {
    pub fn load(gpu: &Gpu, ckpt: &Checkpoint, name: &str) -> Result<Self> {
        let w = fp8(ckpt, name)?;
        Self::from_parts(gpu, ckpt, name, &w.q, &w.scales, w.n, w.k)
    }

    fn from_parts(
        gpu: &Gpu,
        ckpt: &Checkpoint,
        name: &str,
        q: &[E4m3],
        scales: &[f32],
        n: usize,
        k: usize,
    ) -> Result<Self> {
        Ok(Fp8Linear {
            w: upload(gpu, q, &[n, k], name)?,
            scales: upload(
                gpu,
                scales,
                &[n.div_ceil(128), k / 128],
                &format!("{name} scales"),
            )?,
            n,
            k,
            ue8m0: ckpt.config().ue8m0_scales(),
        })
    }

    /// `gate_proj` stacked over `up_proj` (`{prefix}.gate_proj.weight`, `.up_proj.weight`).
    fn gate_up(gpu: &Gpu, ckpt: &Checkpoint, prefix: &str) -> Result<Self> {
        let (q, s, inter, k) = gate_up_host(ckpt, prefix)?;
        Self::from_parts(
            gpu,
            ckpt,
            &format!("{prefix}.gate_up"),
            &q,
            &s,
            2 * inter,
            k,
        )
    }
}

/// Host codes and scales of gate over up: `([2 * inter, K], [2 * inter / 128, K / 128], inter, K)`.
fn gate_up_host(ckpt: &Checkpoint, prefix: &str) -> Result<(Vec<E4m3>, Vec<f32>, usize, usize)> {
    let gate_name = format!("{prefix}.gate_proj.weight");
    let gate = fp8(ckpt, &gate_name)?;
    let up = fp8(ckpt, &format!("{prefix}.up_proj.weight"))?;
    if gate.n % 128 != 0 || (up.n, up.k) != (gate.n, gate.k) {
        return Err(ModelError::config(
            gate_name,
            format!(
                "gate [{}, {}] / up [{}, {}]: the CUDA backend stacks them and needs equal shapes \
                 with rows a multiple of 128",
                gate.n, gate.k, up.n, up.k
            ),
        ));
    }
    let mut q = gate.q;
    q.extend_from_slice(&up.q);
    let mut s = gate.scales;
    s.extend_from_slice(&up.scales);
    Ok((q, s, gate.n, gate.k))
}

/// Dense MLP (also the shared experts): gate|up stacked, down.
#[derive(Debug)]
pub struct GpuMlp {
    pub gate_up: Fp8Linear,
    pub down: Fp8Linear,
}

impl GpuMlp {
    fn load(gpu: &Gpu, ckpt: &Checkpoint, prefix: &str) -> Result<Self> {
        Ok(GpuMlp {
            gate_up: Fp8Linear::gate_up(gpu, ckpt, prefix)?,
            down: Fp8Linear::load(gpu, ckpt, &format!("{prefix}.down_proj.weight"))?,
        })
    }

    pub fn inter(&self) -> usize {
        self.gate_up.n / 2
    }
}

/// The routed experts stacked for the grouped GEMM: gate_up `[E, 2 * inter, hidden]`, down
/// `[E, hidden, inter]`, scales `[E, ceil(N/128), K/128]`.
#[derive(Debug)]
pub struct GpuExperts {
    pub gate_up: DeviceTensor<E4m3>,
    pub gate_up_scales: DeviceTensor<f32>,
    pub down: DeviceTensor<E4m3>,
    pub down_scales: DeviceTensor<f32>,
    pub inter: usize,
}

impl GpuExperts {
    fn load(gpu: &Gpu, ckpt: &Checkpoint, prefix: &str, experts: usize) -> Result<Self> {
        // Stacked on the host one tensor at a time (one layer's experts), then uploaded.
        let (mut gu_q, mut gu_s, mut d_q, mut d_s) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut inter, mut hidden) = (0, 0);
        for e in 0..experts {
            let p = format!("{prefix}.experts.{e}");
            let (q, s, i, k) = gate_up_host(ckpt, &p)?;
            let down = fp8(ckpt, &format!("{p}.down_proj.weight"))?;
            if e > 0 && (i, k) != (inter, hidden) {
                return Err(ModelError::config(
                    p,
                    "experts of one layer have different shapes",
                ));
            }
            (inter, hidden) = (i, k);
            gu_q.extend_from_slice(&q);
            gu_s.extend_from_slice(&s);
            d_q.extend_from_slice(&down.q);
            d_s.extend_from_slice(&down.scales);
        }
        let what = format!("{prefix}.experts");
        Ok(GpuExperts {
            gate_up: upload(
                gpu,
                &gu_q,
                &[experts, 2 * inter, hidden],
                &format!("{what} gate_up"),
            )?,
            gate_up_scales: upload(
                gpu,
                &gu_s,
                &[experts, 2 * inter / 128, hidden / 128],
                &format!("{what} gate_up scales"),
            )?,
            down: upload(
                gpu,
                &d_q,
                &[experts, hidden, inter],
                &format!("{what} down"),
            )?,
            down_scales: upload(
                gpu,
                &d_s,
                &[experts, hidden.div_ceil(128), inter / 128],
                &format!("{what} down scales"),
            )?,
            inter,
        })
    }
}

/// Router and experts of an MoE layer.
#[derive(Debug)]
pub struct GpuMoe {
    /// `mlp.gate.weight` [E, hidden] BF16.
    pub gate: DeviceTensor<bf16>,
    pub bias: Option<DeviceTensor<f32>>,
    pub routing: RoutingConfig,
    pub experts: GpuExperts,
    pub shared: Option<GpuMlp>,
    /// Power-of-two activation scales (see [`Fp8Linear::ue8m0`]).
    pub ue8m0: bool,
}

/// (One per layer: the variants' size difference does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum GpuFfn {
    Dense(GpuMlp),
    Moe(GpuMoe),
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum GpuQuery {
    Lora {
        q_a: Fp8Linear,
        q_a_norm: DeviceTensor<bf16>,
        q_b: Fp8Linear,
    },
    Direct(Fp8Linear),
}

/// MLA weights of one layer.
#[derive(Debug)]
pub struct GpuAttention {
    pub q: GpuQuery,
    pub kv_a: Fp8Linear,
    pub kv_a_norm: DeviceTensor<bf16>,
    /// `[H, d_nope, d_c]` BF16 (see the module docs).
    pub w_uk: DeviceTensor<bf16>,
    /// `[H, d_v, d_c]` BF16.
    pub w_uv: DeviceTensor<bf16>,
    pub o: Fp8Linear,
}

#[derive(Debug)]
pub struct GpuLayer {
    pub input_norm: DeviceTensor<bf16>,
    pub post_attention_norm: DeviceTensor<bf16>,
    pub attention: GpuAttention,
    pub ffn: GpuFfn,
}

/// A vector (norm weight) as BF16 (stored as BF16, or F16 / F32 rounded to BF16).
pub fn bf16_vector(gpu: &Gpu, ckpt: &Checkpoint, name: &str) -> Result<DeviceTensor<bf16>> {
    let v = ckpt.to_bf16(name)?;
    upload(gpu, &v, &[v.len()], name)
}

/// A matrix `[n, k]` as BF16 (stored as BF16, or F16 / F32 rounded to BF16): embeddings,
/// lm_head, the router gate.
pub fn bf16_matrix(
    gpu: &Gpu,
    ckpt: &Checkpoint,
    name: &str,
    n: usize,
    k: usize,
) -> Result<DeviceTensor<bf16>> {
    let v = ckpt.to_bf16(name)?;
    upload(gpu, &v, &[n, k], name)
}

/// W_UK `[H, d_nope, d_c]` and W_UV `[H, d_v, d_c]` from `kv_b_proj` `[H * (d_nope + d_v), d_c]`.
pub(crate) fn absorb_weights(cfg: &ModelConfig, kv_b: &[f32]) -> (Vec<bf16>, Vec<bf16>) {
    let (heads, d_c) = (cfg.num_attention_heads, cfg.kv_lora_rank);
    let (d_nope, d_v) = (cfg.qk_nope_head_dim, cfg.v_head_dim);
    let mut uk = Vec::with_capacity(heads * d_nope * d_c);
    let mut uv = Vec::with_capacity(heads * d_v * d_c);
    for h in 0..heads {
        let base = h * (d_nope + d_v);
        for r in 0..d_nope {
            uk.extend(
                kv_b[(base + r) * d_c..][..d_c]
                    .iter()
                    .map(|&v| bf16::from_f32(v)),
            );
        }
        for r in 0..d_v {
            uv.extend(
                kv_b[(base + d_nope + r) * d_c..][..d_c]
                    .iter()
                    .map(|&v| bf16::from_f32(v)),
            );
        }
    }
    (uk, uv)
}

impl GpuLayer {
    /// Uploads main layer `l`.
    pub fn load(gpu: &Gpu, ckpt: &Checkpoint, l: usize) -> Result<Self> {
        let cfg = ckpt.config();
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        let q = match cfg.q_lora_rank {
            Some(_) => GpuQuery::Lora {
                q_a: Fp8Linear::load(gpu, ckpt, &format!("{a}.q_a_proj.weight"))?,
                q_a_norm: bf16_vector(gpu, ckpt, &format!("{a}.q_a_layernorm.weight"))?,
                q_b: Fp8Linear::load(gpu, ckpt, &format!("{a}.q_b_proj.weight"))?,
            },
            None => GpuQuery::Direct(Fp8Linear::load(gpu, ckpt, &format!("{a}.q_proj.weight"))?),
        };
        let kv_b_name = format!("{a}.kv_b_proj.weight");
        // Through the same load-time quantization as every other FP8-in-release weight (a no-op
        // for an FP8 checkpoint), as the CPU fp8 path reads it.
        let kv_b =
            crate::cpu::weights::linear_weight(ckpt, &kv_b_name, crate::cpu::Precision::Fp8)?;
        let (uk, uv) = absorb_weights(cfg, &kv_b.to_f32());
        let (heads, d_c) = (cfg.num_attention_heads, cfg.kv_lora_rank);
        let attention = GpuAttention {
            q,
            kv_a: Fp8Linear::load(gpu, ckpt, &format!("{a}.kv_a_proj_with_mqa.weight"))?,
            kv_a_norm: bf16_vector(gpu, ckpt, &format!("{a}.kv_a_layernorm.weight"))?,
            w_uk: upload(
                gpu,
                &uk,
                &[heads, cfg.qk_nope_head_dim, d_c],
                &format!("{kv_b_name} (W_UK)"),
            )?,
            w_uv: upload(
                gpu,
                &uv,
                &[heads, cfg.v_head_dim, d_c],
                &format!("{kv_b_name} (W_UV)"),
            )?,
            o: Fp8Linear::load(gpu, ckpt, &format!("{a}.o_proj.weight"))?,
        };
        let m = format!("{p}.mlp");
        let ffn = if cfg.is_moe_layer(l) {
            let bias = if cfg.has_score_bias() {
                let name = format!("{m}.gate.e_score_correction_bias");
                Some(upload(
                    gpu,
                    &ckpt.to_f32(&name)?,
                    &[cfg.n_routed_experts],
                    &name,
                )?)
            } else {
                None
            };
            GpuFfn::Moe(GpuMoe {
                gate: bf16_matrix(
                    gpu,
                    ckpt,
                    &format!("{m}.gate.weight"),
                    cfg.n_routed_experts,
                    cfg.hidden_size,
                )?,
                bias,
                routing: routing_config(cfg)?,
                experts: GpuExperts::load(gpu, ckpt, &m, cfg.n_routed_experts)?,
                shared: if cfg.n_shared_experts > 0 {
                    Some(GpuMlp::load(gpu, ckpt, &format!("{m}.shared_experts"))?)
                } else {
                    None
                },
                ue8m0: cfg.ue8m0_scales(),
            })
        } else {
            GpuFfn::Dense(GpuMlp::load(gpu, ckpt, &m)?)
        };
        Ok(GpuLayer {
            input_norm: bf16_vector(gpu, ckpt, &format!("{p}.input_layernorm.weight"))?,
            post_attention_norm: bf16_vector(
                gpu,
                ckpt,
                &format!("{p}.post_attention_layernorm.weight"),
            )?,
            attention,
            ffn,
        })
    }
}
