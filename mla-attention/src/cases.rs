//! The benchmark cases of MLA decode attention, one list for `harness bench` and the criterion
//! bench (`cargo bench -p mla-attention`), and the random paged inputs the checks share.
//!
//! From the issue: B in {1, 32, 128} x seqlen 4096 x S_q 1, H = 128 (the quick list), plus
//! S_q = 2 and seqlens 1024 / 16384 in the full list. Every BF16-cache case is also run by the
//! naive cuBLAS peer ([`crate::peer`], with the `cuda` feature): `harness bench` reports ours next
//! to it. The FP8-cache cases (memory-bound shapes) have our BF16-cache kernel on the same shape
//! as their peer, so the report's speedup column is the FP8 cache's gain.

use half::bf16;
use kernels::rng::Rng;

use crate::reference::{
    encode_cache, paged_decode, paged_decode_fp8, PagedShape, BLOCK_SIZE, FP8_ENTRY_BYTES, KV_DIM,
    KV_LORA_RANK, ROPE_DIM,
};

/// The implementation name of the naive cuBLAS peer in bench reports (`crate::peer`, built with
/// the `cuda` feature; without it the harness lists the peer as not measured).
pub const PEER: &str = "cublas_naive";
/// The implementation name of our BF16-cache kernel when it is the FP8-cache case's peer.
pub const BF16_CACHE_PEER: &str = "ours_bf16_cache";

/// DeepSeek-V3's softmax scale without YaRN's mscale: (128 + 64)^-0.5.
pub const V3_SOFTMAX_SCALE: f32 = 0.072_168_78;

/// Random inputs of one paged decode call.
#[derive(Clone, Debug)]
pub struct DecodeInputs {
    pub shape: PagedShape,
    pub heads: usize,
    /// `[batch, S_q, H, 576]`.
    pub q: Vec<bf16>,
    /// `[num_blocks, 64, 576]`.
    pub cache: Vec<bf16>,
    /// `[batch, max_blocks]`, padded with -1.
    pub block_table: Vec<i32>,
    pub cache_seqlens: Vec<i32>,
    pub softmax_scale: f32,
}

impl DecodeInputs {
    /// Sequences of the given lengths with `s_q` query tokens and `heads` heads. Each sequence gets
    /// its blocks from a shuffled pool (non-contiguous tables); with `shared_prefix` every
    /// sequence's first block is the same cache block (a common prompt prefix; only when every
    /// sequence has at least 64 tokens, so that block is full for all of them). `spare_columns`
    /// extra -1 columns pad the table. Values are N(0, 1) in BF16 so the scaled scores have a
    /// standard deviation of about 1.7.
    pub fn random(
        rng: &mut Rng,
        seqlens: &[usize],
        s_q: usize,
        heads: usize,
        shared_prefix: bool,
        spare_columns: usize,
    ) -> DecodeInputs {
        let batch = seqlens.len();
        let share = shared_prefix && seqlens.iter().all(|&l| l >= BLOCK_SIZE);
        let needed: Vec<usize> = seqlens.iter().map(|l| l.div_ceil(BLOCK_SIZE)).collect();
        let max_blocks = needed.iter().copied().max().unwrap_or(1).max(1) + spare_columns;
        let own: usize = needed.iter().map(|&n| if share { n - 1 } else { n }).sum();
        // A few unused blocks so ids are not a dense range.
        let num_blocks = own + usize::from(share) + 3;
        let mut pool: Vec<i32> = (0..num_blocks as i32).collect();
        for i in (1..pool.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            pool.swap(i, j);
        }
        let shared_block = pool.pop().unwrap_or(0);
        let mut block_table = vec![-1i32; batch * max_blocks];
        for (b, &n) in needed.iter().enumerate() {
            for j in 0..n {
                block_table[b * max_blocks + j] = if share && j == 0 {
                    shared_block
                } else {
                    pool.pop().expect("pool holds every needed block")
                };
            }
        }
        let shape = PagedShape {
            batch,
            q_len: s_q,
            max_blocks,
            num_blocks,
        };
        DecodeInputs {
            shape,
            heads,
            q: rng.normal_vec(batch * s_q * heads * KV_DIM, 1.0),
            cache: rng.normal_vec(shape.cache_len(KV_DIM), 1.0),
            block_table,
            cache_seqlens: seqlens.iter().map(|&l| l as i32).collect(),
            softmax_scale: V3_SOFTMAX_SCALE,
        }
    }

    /// Bytes the kernel must move at least: every visible cache entry once, q, o_lat and lse.
    pub fn bytes(&self) -> f64 {
        let kv: usize = self.cache_seqlens.iter().map(|&l| l as usize).sum();
        let rows = self.shape.batch * self.shape.q_len * self.heads;
        (kv * KV_DIM * 2 + rows * (KV_DIM * 2 + KV_LORA_RANK * 2 + 4)) as f64
    }

    /// Flops of the scores (576-wide dots) and the value sums (512 wide) over visible entries.
    pub fn flops(&self) -> f64 {
        decode_flops(
            self.cache_seqlens.iter().map(|&l| l as usize),
            self.shape.q_len,
            self.heads,
        )
    }
}

fn decode_flops(lens: impl Iterator<Item = usize>, s_q: usize, heads: usize) -> f64 {
    let visible: usize = lens
        .map(|l| (0..s_q).map(|i| l - s_q + i + 1).sum::<usize>())
        .sum();
    2.0 * (visible * heads * (KV_DIM + KV_LORA_RANK)) as f64
}

/// One benchmark case: `batch` sequences of `seqlen` tokens each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeCase {
    pub batch: usize,
    pub seqlen: usize,
    pub s_q: usize,
    pub heads: usize,
    /// The cache holds 656-byte FP8 entries (`mla_decode_fp8`) instead of BF16 ones.
    pub fp8_cache: bool,
}

impl DecodeCase {
    pub fn kernel(&self) -> &'static str {
        if self.fp8_cache {
            "mla_decode_fp8"
        } else {
            "mla_decode_bf16"
        }
    }

    /// The same shape over the other cache layout.
    pub fn with_fp8_cache(self, fp8_cache: bool) -> DecodeCase {
        DecodeCase { fp8_cache, ..self }
    }

    /// Bytes of one cache entry.
    fn entry_bytes(&self) -> usize {
        if self.fp8_cache {
            FP8_ENTRY_BYTES
        } else {
            KV_DIM * 2
        }
    }

    pub fn shape(&self) -> String {
        format!(
            "b{}_s{}_q{}_h{}",
            self.batch, self.seqlen, self.s_q, self.heads
        )
    }

    pub fn name(&self) -> String {
        format!("{}/{}", self.kernel(), self.shape())
    }

    /// KV entries read once (1152 bytes each, 656 for FP8), q read, o_lat (BF16) and lse
    /// written.
    pub fn bytes(&self) -> f64 {
        let rows = self.batch * self.s_q * self.heads;
        let kv = self.batch * self.seqlen * self.entry_bytes();
        (kv + rows * (KV_DIM * 2 + KV_LORA_RANK * 2 + 4)) as f64
    }

    pub fn flops(&self) -> f64 {
        decode_flops(
            std::iter::repeat_n(self.seqlen, self.batch),
            self.s_q,
            self.heads,
        )
    }

    pub fn inputs(&self, rng: &mut Rng) -> DecodeInputs {
        DecodeInputs::random(
            rng,
            &vec![self.seqlen; self.batch],
            self.s_q,
            self.heads,
            false,
            0,
        )
    }
}

/// B 1 / 32 / 128 at 4096 tokens, S_q 1, H 128, and the FP8 cache at B 128; the full list adds
/// S_q 2, 1024 / 16384 tokens and the FP8 cache at 16384 tokens.
pub fn decode_cases(quick: bool) -> Vec<DecodeCase> {
    let case = |batch, seqlen, s_q| DecodeCase {
        batch,
        seqlen,
        s_q,
        heads: 128,
        fp8_cache: false,
    };
    let mut cases: Vec<DecodeCase> = [1, 32, 128].iter().map(|&b| case(b, 4096, 1)).collect();
    cases.push(case(128, 4096, 1).with_fp8_cache(true));
    if !quick {
        cases.push(case(128, 4096, 2));
        cases.push(case(16, 1024, 1));
        cases.push(case(16, 16384, 1));
        cases.push(case(64, 16384, 2));
        cases.push(case(16, 16384, 1).with_fp8_cache(true));
    }
    cases
}

/// A closure that runs the case's Rust reference ([`paged_decode`], or [`paged_decode_fp8`] on
/// the encoded cache) once.
pub fn cpu_runner(case: &DecodeCase, rng: &mut Rng) -> Box<dyn FnMut()> {
    let inp = case.inputs(rng);
    let fp8 = case.fp8_cache.then(|| encode_cache(&inp.cache));
    Box::new(move || {
        let (s, q, t, l, scale) = (
            &inp.shape,
            &inp.q,
            &inp.block_table,
            &inp.cache_seqlens,
            inp.softmax_scale,
        );
        let out = match &fp8 {
            Some(Ok(bytes)) => paged_decode_fp8(s, inp.heads, q, bytes, t, l, scale),
            Some(Err(e)) => Err(kernels::Error::invalid("mla_decode bench", e.to_string())),
            None => paged_decode(s, inp.heads, q, &inp.cache, t, l, scale),
        };
        drop(std::hint::black_box(out))
    })
}

const _: () = assert!(KV_DIM == KV_LORA_RANK + ROPE_DIM);

#[cfg(feature = "cuda")]
pub use gpu_cases::{gpu_runner, peer_gpu_runner, peer_run, PeerRun};

#[cfg(feature = "cuda")]
mod gpu_cases {
    use super::*;
    use crate::gpu::{paged_decode_any, DecodeWorkspace, DeviceCache};
    use crate::peer::{self, PeerCall};
    use kernels::gpu::{DeviceStatus, DeviceTensor, Gpu};
    use kernels::{Error, Result};

    /// Uploads the case's inputs and returns a closure that runs one decode step (plan, decode,
    /// combine; no synchronization: time it with events).
    pub fn gpu_runner<'a>(
        gpu: &'a Gpu,
        case: &DecodeCase,
        rng: &mut Rng,
    ) -> Result<Box<dyn FnMut() -> Result<()> + 'a>> {
        let inp = case.inputs(rng);
        let s = inp.shape;
        let q = gpu.upload(&inp.q, &[s.batch, s.q_len, inp.heads, KV_DIM])?;
        let fp8_bytes = case
            .fp8_cache
            .then(|| encode_cache(&inp.cache))
            .transpose()?;
        let cache = DeviceCache::upload(gpu, s.num_blocks, &inp.cache, fp8_bytes.as_deref())?;
        let table = gpu.upload(&inp.block_table, &[s.batch, s.max_blocks])?;
        let lens = gpu.upload(&inp.cache_seqlens, &[s.batch])?;
        let mut ws = DecodeWorkspace::new(gpu, s.batch, s.q_len, inp.heads)?;
        let mut o: DeviceTensor<bf16> = gpu.zeros(&[s.batch, s.q_len, inp.heads, KV_LORA_RANK])?;
        let mut lse: DeviceTensor<f32> = gpu.zeros(&[s.batch, s.q_len, inp.heads])?;
        let mut status = DeviceStatus::new(gpu)?;
        let scale = inp.softmax_scale;
        Ok(Box::new(move || {
            let tables = (&table, &lens, scale);
            let kv = cache.view();
            paged_decode_any(gpu, &mut ws, &q, kv, tables, &mut o, &mut lse, &mut status)
        }))
    }

    /// The naive cuBLAS peer ([`crate::peer`]) prepared on the case's inputs, with the result of
    /// holding its output to our kernel's thresholds.
    pub struct PeerRun<'a> {
        /// One peer call per call (gather, two batched GEMMs, softmax; no synchronization).
        pub launch: Box<dyn FnMut() -> Result<()> + 'a>,
        /// The comparison with the reference on the same inputs, and what is timed.
        pub check: String,
    }

    impl std::fmt::Debug for PeerRun<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PeerRun")
                .field("check", &self.check)
                .finish_non_exhaustive()
        }
    }

    /// Uploads the case's inputs, runs the peer once into poisoned outputs and compares it with
    /// the reference (sampled sequences and heads on large cases). `Ok(Err(why))` when libcublas
    /// cannot be loaded.
    pub fn peer_run<'a>(
        gpu: &'a Gpu,
        case: &DecodeCase,
        rng: &mut Rng,
    ) -> Result<std::result::Result<PeerRun<'a>, String>> {
        let inp = case.inputs(rng);
        let mut call = match PeerCall::new(gpu, &inp)? {
            Ok(call) => call,
            Err(why) => return Ok(Err(why)),
        };
        let (o, lse) = call.run_poisoned()?;
        let cmp = crate::checks::compare_with_reference(&inp, &o, &lse, rng)?;
        let check = format!(
            "{}; {}; workspace {} MiB",
            cmp.summary(),
            peer::TIMED,
            call.peer().workspace_bytes() >> 20
        );
        Ok(Ok(PeerRun {
            launch: Box::new(move || call.run()),
            check,
        }))
    }

    /// [`peer_run`] without the reference comparison, for the criterion bench; a missing
    /// libcublas is an error.
    pub fn peer_gpu_runner<'a>(
        gpu: &'a Gpu,
        case: &DecodeCase,
        rng: &mut Rng,
    ) -> Result<Box<dyn FnMut() -> Result<()> + 'a>> {
        let inp = case.inputs(rng);
        let mut call = PeerCall::new(gpu, &inp)?.map_err(Error::Cublas)?;
        Ok(Box::new(move || call.run()))
    }
}
