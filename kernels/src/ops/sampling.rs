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

/// Checks the per-row parameter tensors of a sampling call: (rows, vocab) of `logits`.
fn sampling_shapes(
    op: &'static str,
    logits: &DeviceTensor<f32>,
    temperature: &DeviceTensor<f32>,
    top_p: &DeviceTensor<f32>,
    out: &DeviceTensor<i32>,
) -> Result<(usize, usize)> {
    let (rows, vocab) = rows_vocab(op, logits, out)?;
    temperature.expect_shape(op, "temperature", &[rows])?;
    top_p.expect_shape(op, "top_p", &[rows])?;
    Ok((rows, vocab))
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
    let (rows, vocab) = sampling_shapes(OP, logits, temperature, top_p, out)?;
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

/// [`sample`] with the uniform of each row given: row r uses `uniforms[r]` ([rows], in [0, 1))
/// instead of a draw from one (seed, offset) stream, so rows from different requests can follow
/// their own streams (the engine draws `rng::sampling_uniform(request seed, token index, 0)`).
/// With the same uniforms the result is `reference::sampling::sample_row` of each row. Values
/// are the caller's to validate; a uniform outside [0, 1) picks an end of the nucleus, never an
/// index outside the row.
pub fn sample_with_uniforms(
    gpu: &Gpu,
    logits: &DeviceTensor<f32>,
    temperature: &DeviceTensor<f32>,
    top_p: &DeviceTensor<f32>,
    uniforms: &DeviceTensor<f32>,
    out: &mut DeviceTensor<i32>,
) -> Result<()> {
    const OP: &str = "sample_with_uniforms";
    let (rows, vocab) = sampling_shapes(OP, logits, temperature, top_p, out)?;
    uniforms.expect_shape(OP, "uniforms", &[rows])?;
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&SAMPLING, "sample_uniforms_f32")?;
    let (lp, tp, pp, up, op) = (
        logits.device_ptr(gpu),
        temperature.device_ptr(gpu),
        top_p.device_ptr(gpu),
        uniforms.device_ptr(gpu),
        out.device_ptr(gpu),
    );
    let vocab_i = as_i32(OP, "vocab", vocab)?;
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&lp)
        .arg(&tp)
        .arg(&pp)
        .arg(&up)
        .arg(&op)
        .arg(&vocab_i);
    // SAFETY: logits [rows, vocab], temperature/top_p/uniforms/out [rows], checked above.
    unsafe {
        gpu.launch(
            "sample_uniforms_f32",
            args,
            grid_1d(as_i32(OP, "rows", rows)? as u32, THREADS, 0),
        )
    }
}
