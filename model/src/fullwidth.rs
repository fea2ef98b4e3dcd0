//! The full-width synthetic benchmark's host side (`dsv3 bench --synthetic full-width`): the
//! configuration (DeepSeek-V3's real dimensions, `--layers` layers: 1 dense + the rest MoE), the
//! byte accounting behind the decode roofline, and the report (table, JSON, REPORT.md). The device
//! side, random weights on the GPU and the timed runs, is `cuda::synthetic` (feature `cuda`).
//!
//! Roofline of a decode step: every byte the step must read from device memory (the weights it
//! touches plus the KV cache of every sequence) divided by the measured device-to-device copy
//! bandwidth (bytes read + bytes written per second, as `harness`'s copy ceiling). The weights
//! touched at batch B: embedding rows, every layer's attention weights and norms, the dense MLP or
//! the router + shared expert + the routed experts the batch's tokens picked (counted from the
//! routed ids of a real step), the final norm and lm_head.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// Prompt length of the prefill measurement.
pub const PROMPT_LEN: usize = 4096;
/// Tokens already in the cache of every sequence in the decode measurements.
pub const CONTEXT: usize = 4096;
/// Batch sizes of the decode measurements.
pub const BATCHES: [usize; 3] = [1, 32, 128];
/// The decode roofline target at batch 1: measured / roofline at most this.
pub const TARGET_RATIO: f64 = 1.3;
/// What the report says about the KV cache.
pub const KV_NOTE: &str = "the KV cache of every decode sequence is filled with random BF16 \
    entries for its 4096 context tokens instead of running a 4096-token prefill per sequence \
    (decode time depends on the cache length, not on its values)";
/// What the report says about the weights.
pub const WEIGHTS_NOTE: &str = "weights are random (FP8 e4m3 codes ~ N(0, 112^2) saturated to \
    +-448 with random f32 128x128 block scales, BF16 norms ~ 1, random BF16 router and f32 bias), \
    generated on the GPU; the logits are meaningless, the timings are those of the real shapes";

/// DeepSeek-V3 at its real dimensions with `layers` decoder layers: the first dense, the rest MoE
/// (`first_k_dense_replace` 1), no MTP layer, the full 129280-token vocabulary.
pub fn full_width_config(layers: usize) -> Result<ModelConfig> {
    if layers == 0 {
        return Err(ModelError::request("--layers must be >= 1"));
    }
    let mut cfg = ModelConfig::deepseek_v3();
    cfg.num_hidden_layers = layers;
    cfg.first_k_dense_replace = 1;
    cfg.num_nextn_predict_layers = 0;
    cfg.validate()?;
    Ok(cfg)
}

/// [`full_width_config`] plus one MTP module (`num_nextn_predict_layers` 1, an MoE decoder layer
/// as DeepSeek-V3's): the model of `dsv3 bench --synthetic full-width --mtp-cost`.
pub fn full_width_mtp_config(layers: usize) -> Result<ModelConfig> {
    let mut cfg = full_width_config(layers)?;
    cfg.num_nextn_predict_layers = 1;
    cfg.validate()?;
    Ok(cfg)
}

/// Bytes of one MTP module on the device: enorm, hnorm, eh_proj (BF16 `[hidden, 2 * hidden]`),
/// the decoder layer, shared_head's norm and head and its own embedding (BF16
/// `[vocab, hidden]` each).
pub fn mtp_weight_bytes(cfg: &ModelConfig) -> u64 {
    let w = WeightBytes::new(cfg);
    let hidden = cfg.hidden_size as u64;
    let layer = w.attention
        + w.layer_norms
        + if cfg.is_moe_layer(cfg.mtp_layer_id(0)) {
            w.router + w.shared + cfg.n_routed_experts as u64 * w.expert
        } else {
            w.dense_mlp
        };
    3 * hidden * 2 + hidden * 2 * hidden * 2 + layer + 2 * w.vocab_matrix
}

/// Bytes of a block-scaled FP8 weight `[n, k]`: the e4m3 codes and the f32 scales
/// `[ceil(n / 128), k / 128]`.
pub fn fp8_linear_bytes(n: usize, k: usize) -> u64 {
    (n * k + n.div_ceil(128) * k.div_ceil(128) * 4) as u64
}

/// Bytes of the CUDA backend's device weights, by part, per layer or model-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightBytes {
    /// q_a (+ q_a norm) + q_b (or q_proj), kv_a + kv_a norm, W_UK + W_UV (BF16), o_proj.
    pub attention: u64,
    /// input and post-attention norms of one layer.
    pub layer_norms: u64,
    /// The dense MLP (gate|up, down) of a dense layer.
    pub dense_mlp: u64,
    /// The router (BF16 `[E, hidden]`) and score bias (f32 `[E]`).
    pub router: u64,
    /// The shared experts (one MLP of `n_shared * moe_inter`).
    pub shared: u64,
    /// One routed expert (gate|up, down, with scales).
    pub expert: u64,
    /// The embedding or lm_head, BF16 `[vocab, hidden]` (each).
    pub vocab_matrix: u64,
    /// The final norm.
    pub final_norm: u64,
}

impl WeightBytes {
    pub fn new(cfg: &ModelConfig) -> Self {
        let hidden = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        let q = match cfg.q_lora_rank {
            Some(r) => {
                fp8_linear_bytes(r, hidden) + (r * 2) as u64 + fp8_linear_bytes(cfg.q_proj_dim(), r)
            }
            None => fp8_linear_bytes(cfg.q_proj_dim(), hidden),
        };
        let absorb =
            (heads * (cfg.qk_nope_head_dim + cfg.v_head_dim) * cfg.kv_lora_rank * 2) as u64;
        let attention = q
            + fp8_linear_bytes(cfg.kv_a_dim(), hidden)
            + (cfg.kv_lora_rank * 2) as u64
            + absorb
            + fp8_linear_bytes(hidden, cfg.o_proj_in_dim());
        let mlp =
            |inter: usize| fp8_linear_bytes(2 * inter, hidden) + fp8_linear_bytes(hidden, inter);
        let experts = cfg.n_routed_experts;
        WeightBytes {
            attention,
            layer_norms: (2 * hidden * 2) as u64,
            dense_mlp: mlp(cfg.intermediate_size),
            router: (experts * hidden * 2 + if cfg.has_score_bias() { experts * 4 } else { 0 })
                as u64,
            shared: if cfg.n_shared_experts > 0 {
                mlp(cfg.shared_expert_dim())
            } else {
                0
            },
            expert: mlp(cfg.moe_intermediate_size),
            vocab_matrix: (cfg.vocab_size * hidden * 2) as u64,
            final_norm: (hidden * 2) as u64,
        }
    }

    /// Everything resident on the device: embedding, layers, final norm, lm_head.
    pub fn resident(&self, cfg: &ModelConfig) -> u64 {
        let mut total = 2 * self.vocab_matrix + self.final_norm;
        for l in 0..cfg.num_hidden_layers {
            total += self.attention + self.layer_norms;
            total += if cfg.is_moe_layer(l) {
                self.router + self.shared + cfg.n_routed_experts as u64 * self.expert
            } else {
                self.dense_mlp
            };
        }
        total
    }
}

/// KV cache bytes per token per layer (BF16 `[d_c + d_rope]`).
pub fn kv_entry_bytes(cfg: &ModelConfig) -> u64 {
    cfg.kv_bytes_per_token_per_layer() as u64
}

/// Expected distinct experts hit by `batch` tokens choosing `top_k` of `experts` uniformly.
pub fn expected_distinct_experts(experts: usize, top_k: usize, batch: usize) -> f64 {
    if experts == 0 {
        return 0.0;
    }
    experts as f64 * (1.0 - (1.0 - top_k as f64 / experts as f64).powi(batch as i32))
}

/// The bytes one decode step must move from device memory.
#[derive(Clone, Debug, PartialEq)]
pub struct StepBytes {
    pub batch: usize,
    /// Weights read (routed experts: the distinct ones the step's tokens picked).
    pub weights: f64,
    /// Of which routed experts.
    pub routed_experts: f64,
    /// Of which lm_head.
    pub lm_head: f64,
    /// KV cache read (the context plus the new entry, every layer) and written (the new entry).
    pub kv: f64,
    /// Distinct routed experts per MoE layer used for `routed_experts`.
    pub distinct_experts: Vec<f64>,
}

impl StepBytes {
    pub fn total(&self) -> f64 {
        self.weights + self.kv
    }
}

/// Bytes of one decode step of `batch` sequences with `context` cached tokens each.
/// `distinct_experts[i]` is the number of distinct routed experts of MoE layer `i` (in layer
/// order); missing entries use [`expected_distinct_experts`].
pub fn decode_step_bytes(
    cfg: &ModelConfig,
    batch: usize,
    context: usize,
    distinct_experts: &[usize],
) -> StepBytes {
    let w = WeightBytes::new(cfg);
    let hidden = cfg.hidden_size;
    let mut weights = (batch * hidden * 2) as f64 + w.final_norm as f64 + w.vocab_matrix as f64;
    let mut routed = 0.0;
    let mut distinct = Vec::new();
    let mut moe_index = 0;
    for l in 0..cfg.num_hidden_layers {
        weights += (w.attention + w.layer_norms) as f64;
        if cfg.is_moe_layer(l) {
            let d = distinct_experts.get(moe_index).map_or_else(
                || expected_distinct_experts(cfg.n_routed_experts, cfg.num_experts_per_tok, batch),
                |&d| d as f64,
            );
            moe_index += 1;
            distinct.push(d);
            routed += d * w.expert as f64;
            weights += (w.router + w.shared) as f64;
        } else {
            weights += w.dense_mlp as f64;
        }
    }
    weights += routed;
    let entry = kv_entry_bytes(cfg) as f64;
    let layers = cfg.num_hidden_layers as f64;
    let kv = batch as f64 * layers * entry * ((context + 1) as f64 + 1.0);
    StepBytes {
        batch,
        weights,
        routed_experts: routed,
        lm_head: w.vocab_matrix as f64,
        kv,
        distinct_experts: distinct,
    }
}

/// Milliseconds to move `bytes` at `gb_per_s` (1e9 bytes per second).
pub fn roofline_ms(bytes: f64, gb_per_s: f64) -> f64 {
    bytes / (gb_per_s * 1e9) * 1e3
}

/// Time of one op group in one measured pass.
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    pub op: &'static str,
    pub ms: f64,
}

/// One measurement: the prefill or the decode at one batch size.
#[derive(Clone, Debug)]
pub struct PhaseResult {
    /// `prefill` or `decode`.
    pub phase: &'static str,
    pub batch: usize,
    /// New tokens per forward call (prompt length, or the batch for decode).
    pub tokens_per_call: usize,
    /// Tokens in the cache before the call.
    pub context: usize,
    /// End-to-end time of one forward call (CUDA events around the whole call, host launch
    /// overhead included).
    pub timing: kernels::stats::TimingStats,
    /// Per op group, from one instrumented call (CUDA events between the groups).
    pub ops: Vec<OpTime>,
    /// Decode only: the roofline.
    pub bytes: Option<StepBytes>,
}

impl PhaseResult {
    /// Table cells: GB touched, roofline ms, measured / roofline (`-` without byte counts).
    fn roofline_cells(&self, copy_gb_per_s: f64) -> [String; 3] {
        match &self.bytes {
            Some(b) => [
                format!("{:.3}", gb(b.total())),
                format!("{:.3}", self.roofline_ms(copy_gb_per_s).unwrap_or(f64::NAN)),
                format!("{:.2}x", self.ratio(copy_gb_per_s).unwrap_or(f64::NAN)),
            ],
            None => ["-".into(), "-".into(), "-".into()],
        }
    }

    pub fn tokens_per_s(&self) -> f64 {
        self.tokens_per_call as f64 / (self.timing.median_ms * 1e-3)
    }

    pub fn roofline_ms(&self, copy_gb_per_s: f64) -> Option<f64> {
        self.bytes
            .as_ref()
            .map(|b| roofline_ms(b.total(), copy_gb_per_s))
    }

    /// Measured / roofline (> 1: slower than the bandwidth bound).
    pub fn ratio(&self, copy_gb_per_s: f64) -> Option<f64> {
        self.roofline_ms(copy_gb_per_s)
            .map(|r| self.timing.median_ms / r)
    }

    fn label(&self) -> String {
        match self.phase {
            "prefill" => format!("prefill {} x {}", self.tokens_per_call, self.batch),
            _ => format!("decode b={} ctx={}", self.batch, self.context),
        }
    }
}

/// The whole report.
#[derive(Clone, Debug)]
pub struct FullWidthReport {
    pub device: String,
    pub layers: usize,
    pub dense_layers: usize,
    pub moe_layers: usize,
    pub vocab_size: usize,
    pub resident_weight_bytes: u64,
    pub kv_cache_bytes: u64,
    pub copy_gb_per_s: f64,
    pub copy_timing: kernels::stats::TimingStats,
    pub copy_bytes: u64,
    pub prefill: Option<PhaseResult>,
    pub decode: Vec<PhaseResult>,
    pub notes: Vec<String>,
}

fn gb(bytes: f64) -> f64 {
    bytes / 1e9
}

fn phase_json(p: &PhaseResult, copy: f64) -> Value {
    let ops: serde_json::Map<String, Value> = p
        .ops
        .iter()
        .map(|o| (o.op.to_string(), json!(o.ms)))
        .collect();
    let mut v = json!({
        "phase": p.phase,
        "batch": p.batch,
        "tokens_per_call": p.tokens_per_call,
        "context": p.context,
        "median_ms": p.timing.median_ms,
        "timing": p.timing,
        "tokens_per_s": p.tokens_per_s(),
        "ops_ms": ops,
        "ops_total_ms": p.ops.iter().map(|o| o.ms).sum::<f64>(),
    });
    if let Some(b) = &p.bytes {
        v["roofline"] = json!({
            "weight_bytes": b.weights,
            "routed_expert_bytes": b.routed_experts,
            "lm_head_bytes": b.lm_head,
            "kv_bytes": b.kv,
            "total_bytes": b.total(),
            "distinct_experts_per_moe_layer": b.distinct_experts,
            "roofline_ms": p.roofline_ms(copy),
            "measured_over_roofline": p.ratio(copy),
        });
    }
    v
}

impl FullWidthReport {
    /// Measured / roofline of the batch-1 decode.
    pub fn batch1_ratio(&self) -> Option<f64> {
        self.decode
            .iter()
            .find(|p| p.batch == 1)
            .and_then(|p| p.ratio(self.copy_gb_per_s))
    }

    pub fn to_json(&self) -> Value {
        let ratio = self.batch1_ratio();
        json!({
            "benchmark": "full-width",
            "device": self.device,
            "layers": self.layers,
            "dense_layers": self.dense_layers,
            "moe_layers": self.moe_layers,
            "vocab_size": self.vocab_size,
            "resident_weight_bytes": self.resident_weight_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "copy_bandwidth": {
                "gb_per_s": self.copy_gb_per_s,
                "bytes_per_rep": self.copy_bytes,
                "timing": self.copy_timing,
                "note": "device-to-device copy; bytes = read + written",
            },
            "prefill": self.prefill.as_ref().map(|p| phase_json(p, self.copy_gb_per_s)),
            "decode": self.decode.iter().map(|p| phase_json(p, self.copy_gb_per_s)).collect::<Vec<_>>(),
            "target": {
                "batch1_measured_over_roofline_max": TARGET_RATIO,
                "batch1_measured_over_roofline": ratio,
                "met": ratio.map(|r| r <= TARGET_RATIO),
            },
            "notes": self.notes,
        })
    }

    /// All op group names in first-seen order.
    fn op_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        for p in self.prefill.iter().chain(&self.decode) {
            for o in &p.ops {
                if !names.contains(&o.op) {
                    names.push(o.op);
                }
            }
        }
        names
    }

    fn phases(&self) -> Vec<&PhaseResult> {
        self.prefill.iter().chain(&self.decode).collect()
    }

    /// The human table printed on stdout.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let copy = self.copy_gb_per_s;
        let _ = writeln!(
            s,
            "full-width synthetic DeepSeek-V3 on {}: {} layers ({} dense + {} MoE), vocab {}, \
             {:.2} GB of weights, {:.2} GB of KV cache",
            self.device,
            self.layers,
            self.dense_layers,
            self.moe_layers,
            self.vocab_size,
            gb(self.resident_weight_bytes as f64),
            gb(self.kv_cache_bytes as f64)
        );
        let _ = writeln!(
            s,
            "copy bandwidth: {copy:.0} GB/s (device-to-device, read + write)"
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<22} {:>10} {:>12} {:>11} {:>12} {:>9}",
            "measurement", "ms/call", "tokens/s", "bytes (GB)", "roofline ms", "ratio"
        );
        for p in self.phases() {
            let [bytes, roof, ratio] = p.roofline_cells(copy);
            let _ = writeln!(
                s,
                "{:<22} {:>10.3} {:>12.1} {:>11} {:>12} {:>9}",
                p.label(),
                p.timing.median_ms,
                p.tokens_per_s(),
                bytes,
                roof,
                ratio
            );
        }
        let _ = writeln!(s);
        let names = self.op_names();
        let phases = self.phases();
        let _ = write!(s, "{:<16}", "op (ms/call)");
        for p in &phases {
            let _ = write!(s, " {:>14}", short_label(p));
        }
        let _ = writeln!(s);
        for name in &names {
            let _ = write!(s, "{name:<16}");
            for p in &phases {
                let ms = p.ops.iter().find(|o| o.op == *name).map_or(0.0, |o| o.ms);
                let total: f64 = p.ops.iter().map(|o| o.ms).sum();
                let _ = write!(s, " {:>7.3} {:>5.1}%", ms, 100.0 * ms / total.max(1e-12));
            }
            let _ = writeln!(s);
        }
        let _ = write!(s, "{:<16}", "sum");
        for p in &phases {
            let _ = write!(s, " {:>14.3}", p.ops.iter().map(|o| o.ms).sum::<f64>());
        }
        let _ = writeln!(s);
        if let Some(r) = self.batch1_ratio() {
            let _ = writeln!(
                s,
                "\nbatch-1 decode: {r:.2}x the roofline (target <= {TARGET_RATIO}x: {})",
                if r <= TARGET_RATIO { "met" } else { "NOT met" }
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }

    /// REPORT.md for `--out DIR`.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let copy = self.copy_gb_per_s;
        let _ = writeln!(s, "# Full-width synthetic benchmark\n");
        let _ = writeln!(
            s,
            "`dsv3 bench --synthetic full-width --layers {}` on **{}**: DeepSeek-V3 at its real \
             dimensions with {} layers ({} dense + {} MoE, 256 experts, top-8), vocabulary {} \
             (embedding and lm_head at full size). {:.2} GB of device weights, {:.2} GB of KV \
             cache.\n",
            self.layers,
            self.device,
            self.layers,
            self.dense_layers,
            self.moe_layers,
            self.vocab_size,
            gb(self.resident_weight_bytes as f64),
            gb(self.kv_cache_bytes as f64)
        );
        let _ = writeln!(
            s,
            "Copy bandwidth (device-to-device, {} MiB, bytes read + written): **{copy:.0} GB/s** \
             (median of {} reps).\n",
            self.copy_bytes >> 20,
            self.copy_timing.reps
        );
        let _ = writeln!(s, "## Throughput and roofline\n");
        let _ = writeln!(
            s,
            "| measurement | ms/call (median) | tokens/s | bytes/step (GB) | roofline ms | measured / roofline |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for p in self.phases() {
            let [bytes, roof, ratio] = p.roofline_cells(copy);
            let _ = writeln!(
                s,
                "| {} | {:.3} | {:.1} | {} | {} | {} |",
                p.label(),
                p.timing.median_ms,
                p.tokens_per_s(),
                bytes,
                roof,
                ratio
            );
        }
        if let Some(r) = self.batch1_ratio() {
            let _ = writeln!(
                s,
                "\nBatch-1 decode is **{r:.2}x** the roofline (target <= {TARGET_RATIO}x: {}).",
                if r <= TARGET_RATIO { "met" } else { "not met" }
            );
        }
        let _ = writeln!(s, "\n### Bytes per decode step\n");
        let _ = writeln!(
            s,
            "| batch | weights (GB) | of which routed experts | of which lm_head | KV (GB) | distinct experts per MoE layer |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---|");
        for p in &self.decode {
            if let Some(b) = &p.bytes {
                let _ = writeln!(
                    s,
                    "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:?} |",
                    b.batch,
                    gb(b.weights),
                    gb(b.routed_experts),
                    gb(b.lm_head),
                    gb(b.kv),
                    b.distinct_experts
                );
            }
        }
        let _ = writeln!(s, "\n## Per-op time (ms per call, one instrumented call)\n");
        let phases = self.phases();
        let _ = write!(s, "| op |");
        for p in &phases {
            let _ = write!(s, " {} |", p.label());
        }
        let _ = writeln!(s);
        let _ = write!(s, "|---|");
        for _ in &phases {
            let _ = write!(s, "---:|");
        }
        let _ = writeln!(s);
        for name in self.op_names() {
            let _ = write!(s, "| {name} |");
            for p in &phases {
                let ms = p.ops.iter().find(|o| o.op == name).map_or(0.0, |o| o.ms);
                let total: f64 = p.ops.iter().map(|o| o.ms).sum();
                let _ = write!(s, " {:.3} ({:.1}%) |", ms, 100.0 * ms / total.max(1e-12));
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "\n## Method\n");
        let _ = writeln!(
            s,
            "- End-to-end times: CUDA events around whole forward calls of the CUDA backend \
             (`CudaModel::forward_hidden` + lm_head on the last row of each sequence), host \
             launch overhead included; decode repeats the same step (the new entry overwrites the \
             same cache slot).\n\
             - Per-op times: one extra call of an instrumented copy of the same forward with a CUDA \
             event between op groups (so the sum can differ slightly from the end-to-end time).\n\
             - Roofline: weights touched + KV read/written per step, divided by the copy \
             bandwidth; routed experts counted from the routed ids of a real step."
        );
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        s
    }
}

fn short_label(p: &PhaseResult) -> String {
    match p.phase {
        "prefill" => "prefill".into(),
        _ => format!("decode b={}", p.batch),
    }
}

/// Writes `results.json` and `REPORT.md` into `dir` (created if needed).
pub fn write_report(dir: &std::path::Path, report: &FullWidthReport) -> Result<()> {
    let io = |what: &str, p: &std::path::Path| {
        let p = p.display().to_string();
        let what = what.to_string();
        move |e: std::io::Error| ModelError::request(format!("{what} {p}: {e}"))
    };
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let json_path = dir.join("results.json");
    let text = serde_json::to_string_pretty(&report.to_json())
        .map_err(|e| ModelError::request(format!("serializing the report: {e}")))?;
    std::fs::write(&json_path, text + "\n").map_err(io("writing", &json_path))?;
    let md_path = dir.join("REPORT.md");
    std::fs::write(&md_path, report.markdown()).map_err(io("writing", &md_path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::stats::TimingStats;

    #[test]
    fn v3_layer_bytes_match_the_spec_shapes() {
        let cfg = full_width_config(4).unwrap();
        assert_eq!(cfg.first_k_dense_replace, 1);
        assert!(!cfg.is_moe_layer(0) && (1..4).all(|l| cfg.is_moe_layer(l)));
        let w = WeightBytes::new(&cfg);
        // Spec §5: fused q_a + kv_a 2112 x 7168 (q_a 1536, kv_a 576), q_b 24576 x 1536,
        // kv_b 32768 x 512 (held as BF16 W_UK + W_UV), o_proj 7168 x 16384.
        let codes = 2112 * 7168 + 24576 * 1536 + 7168 * 16384;
        let scales = (12 * 56 + 5 * 56 + 192 * 12 + 56 * 128) * 4;
        let norms = (1536 + 512) * 2;
        assert_eq!(
            w.attention,
            (codes + scales + norms + 32768 * 512 * 2) as u64
        );
        // Expert gate+up 4096 x 7168, down 7168 x 2048; the shared expert has the same shape.
        let expert = 4096 * 7168 + 7168 * 2048 + (32 * 56 + 56 * 16) * 4;
        assert_eq!(w.expert, expert as u64);
        assert_eq!(w.shared, expert as u64);
        // Dense gate/up 18432 x 7168 (each), down 7168 x 18432.
        let dense = 2 * 18432 * 7168 + 7168 * 18432 + (288 * 56 + 56 * 144) * 4;
        assert_eq!(w.dense_mlp, dense as u64);
        assert_eq!(w.router, (256 * 7168 * 2 + 256 * 4) as u64);
        assert_eq!(w.vocab_matrix, 129_280 * 7168 * 2);
        // ~38 GB for 1 dense + 3 MoE layers.
        let total = w.resident(&cfg) as f64;
        assert!((37e9..40e9).contains(&total), "{total}");
        assert_eq!(kv_entry_bytes(&cfg), 1152);
    }

    #[test]
    fn decode_bytes_and_roofline_arithmetic() {
        let cfg = full_width_config(4).unwrap();
        let w = WeightBytes::new(&cfg);
        let b = decode_step_bytes(&cfg, 1, 4096, &[8, 8, 8]);
        let fixed = 4 * (w.attention + w.layer_norms)
            + w.dense_mlp
            + 3 * (w.router + w.shared)
            + w.vocab_matrix
            + w.final_norm
            + 7168 * 2;
        assert_eq!(b.routed_experts, 24.0 * w.expert as f64);
        assert_eq!(b.weights, fixed as f64 + b.routed_experts);
        assert_eq!(b.kv, 4.0 * 1152.0 * 4098.0);
        assert_eq!(b.distinct_experts, vec![8.0; 3]);
        // Missing counts fall back to the uniform expectation (all 256 at a large batch).
        let e = expected_distinct_experts(256, 8, 1);
        assert!((e - 8.0).abs() < 1e-9);
        assert!(expected_distinct_experts(256, 8, 10_000) > 255.99);
        let big = decode_step_bytes(&cfg, 128, 4096, &[]);
        assert_eq!(big.distinct_experts.len(), 3);
        assert!(big.kv > 2.4e9 && big.kv < 2.5e9, "{}", big.kv);
        // 3 GB at 3000 GB/s is 1 ms.
        assert!((roofline_ms(3e9, 3000.0) - 1.0).abs() < 1e-12);
        let t = |ms: f64| TimingStats::from_samples(&[ms as f32]);
        let p = PhaseResult {
            phase: "decode",
            batch: 1,
            tokens_per_call: 1,
            context: 4096,
            timing: t(1.5),
            ops: vec![OpTime {
                op: "lm_head",
                ms: 1.0,
            }],
            bytes: Some(StepBytes {
                weights: 2e9,
                kv: 1e9,
                ..b
            }),
        };
        assert!((p.ratio(3000.0).unwrap() - 1.5).abs() < 1e-6);
        assert!((p.tokens_per_s() - 1000.0 / 1.5).abs() < 1e-3);
        let report = FullWidthReport {
            device: "test".into(),
            layers: 4,
            dense_layers: 1,
            moe_layers: 3,
            vocab_size: 129_280,
            resident_weight_bytes: w.resident(&cfg),
            kv_cache_bytes: 0,
            copy_gb_per_s: 3000.0,
            copy_timing: t(0.5),
            copy_bytes: 2 << 30,
            prefill: None,
            decode: vec![p],
            notes: vec![KV_NOTE.into()],
        };
        let j = report.to_json();
        assert_eq!(j["target"]["met"], json!(false));
        assert!(report.table().contains("1.50x"));
        assert!(report.markdown().contains("| lm_head |"));
    }

    #[test]
    fn zero_layers_is_an_error() {
        assert!(full_width_config(0).is_err());
        assert!(full_width_mtp_config(0).is_err());
    }

    #[test]
    fn the_mtp_module_is_an_moe_layer_plus_two_vocab_matrices() {
        let cfg = full_width_mtp_config(4).unwrap();
        assert_eq!(cfg.num_nextn_predict_layers, 1);
        assert!(cfg.is_moe_layer(cfg.mtp_layer_id(0)));
        let w = WeightBytes::new(&cfg);
        let moe = w.attention + w.layer_norms + w.router + w.shared + 256 * w.expert;
        let eh_proj = 7168 * 14336 * 2;
        assert_eq!(
            mtp_weight_bytes(&cfg),
            moe + 2 * w.vocab_matrix + eh_proj + 3 * 7168 * 2
        );
        // About 15 GB: one MoE layer (~12 GB) and two 1.85 GB vocabulary matrices.
        let gb = mtp_weight_bytes(&cfg) as f64 / 1e9;
        assert!((14.0..17.0).contains(&gb), "{gb}");
    }
}
