use super::as_i32;
use crate::cubins::SAMPLING;
use crate::error::{Error, Result};
use crate::gpu::{grid_1d, DeviceTensor, Gpu, PushKernelArg};

const THREADS: u32 = 1024;

fn rows_vocab(
    op: &'static str,
    logits: &DeviceTensor<f32>,
    out: &DeviceTensor<i32>,
) -> Result<(usize, usize)> {
    let &[rows, vocab] = logits.shape() else {
        return Err(Error::shape(
            op,
            format!("logits must be [rows, vocab], got {:?}", logits.shape()),
        ));
    };
    if vocab == 0 {
        return Err(Error::invalid(op, "vocabulary size is 0"));
    }
    out.expect_shape(op, "out", &[rows])?;
    Ok((rows, vocab))
}

/// out[r] = argmax of logits[r] (lowest index on ties, NaN as -inf).
pub fn argmax(gpu: &Gpu, logits: &DeviceTensor<f32>, out: &mut DeviceTensor<i32>) -> Result<()> {
    const OP: &str = "argmax";
    let (rows, vocab) = rows_vocab(OP, logits, out)?;
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&SAMPLING, "argmax_f32")?;
    let (lp, op) = (logits.device_ptr(gpu), out.device_ptr(gpu));
    let vocab_i = as_i32(OP, "vocab", vocab)?;
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&lp).arg(&op).arg(&vocab_i);
    // SAFETY: logits [rows, vocab], out [rows], checked above.
    unsafe {
        gpu.launch(
            "argmax_f32",
            args,
            grid_1d(as_i32(OP, "rows", rows)? as u32, THREADS, 0),
        )
    }
}

/// Seeded temperature / top-p sampling, the rule of `reference::sampling`. `temperature` and
/// `top_p` are per row ([rows]); row r draws `rng::sampling_uniform(seed, offset, r)`.
/// Parameter values are validated by the caller (`SamplingParams::validate`) before upload.
pub fn sample(
    gpu: &Gpu,
    logits: &DeviceTensor<f32>,
    temperature: &DeviceTensor<f32>,
    top_p: &DeviceTensor<f32>,
    seed: u64,
    offset: u64,
    out: &mut DeviceTensor<i32>,
) -> Result<()> {
    const OP: &str = "sample";
    let (rows, vocab) = rows_vocab(OP, logits, out)?;
    temperature.expect_shape(OP, "temperature", &[rows])?;
    top_p.expect_shape(OP, "top_p", &[rows])?;
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&SAMPLING, "sample_f32")?;
    let (lp, tp, pp, op) = (
        logits.device_ptr(gpu),
        temperature.device_ptr(gpu),
        top_p.device_ptr(gpu),
        out.device_ptr(gpu),
    );
    let vocab_i = as_i32(OP, "vocab", vocab)?;
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&lp)
        .arg(&tp)
        .arg(&pp)
        .arg(&op)
        .arg(&vocab_i)
        .arg(&seed)
        .arg(&offset);
    // SAFETY: logits [rows, vocab], temperature/top_p/out [rows], checked above.
    unsafe {
        gpu.launch(
            "sample_f32",
            args,
            grid_1d(as_i32(OP, "rows", rows)? as u32, THREADS, 0),
        )
    }
}
