//! Token choice on the device: the engine's [`TokenDraw`]s applied to logits that stay on the GPU,
//! so a decode step downloads `[rows]` ids instead of `[rows, vocab]` f32 logits (vocab 129280:
//! about 0.5 MB per sequence per step).

use kernels::gpu::{DeviceTensor, Gpu};
use kernels::ops;

use crate::engine::TokenDraw;
use crate::error::{ModelError, Result};

use super::weights::{upload, zeros};

/// Chooses row s of `logits` ([rows, vocab] on the device) with `draws[s]`: the rule of
/// `kernels::reference::sampling::sample_row` with the draw's uniform. A batch of greedy rows
/// runs the argmax kernel alone; otherwise the sampling kernel (which takes the argmax path for
/// its greedy rows) with the settings and uniforms uploaded per row. The draws are expected to
/// be checked ([`check_draws`](crate::engine::check_draws)).
pub fn sample_on_device(
    gpu: &Gpu,
    logits: &DeviceTensor<f32>,
    draws: &[TokenDraw],
) -> Result<Vec<u32>> {
    let rows = draws.len();
    let &[logit_rows, vocab] = logits.shape() else {
        return Err(ModelError::request(format!(
            "device logits must be [rows, vocab], got shape {:?}",
            logits.shape()
        )));
    };
    if logit_rows != rows {
        return Err(ModelError::request(format!(
            "{logit_rows} device logits rows for {rows} token draws"
        )));
    }
    if rows == 0 {
        return Ok(Vec::new());
    }
    let mut ids = zeros::<i32>(gpu, &[rows], "sampled token ids")?;
    if draws.iter().all(|d| d.params.temperature == 0.0) {
        ops::argmax(gpu, logits, &mut ids)?;
    } else {
        let per_row = |f: fn(&TokenDraw) -> f32| draws.iter().map(f).collect::<Vec<f32>>();
        let temperature = per_row(|d| d.params.temperature);
        let top_p = per_row(|d| d.params.top_p);
        let uniforms = per_row(|d| d.uniform);
        let temperature = upload(gpu, &temperature, &[rows], "sampling temperatures")?;
        let top_p = upload(gpu, &top_p, &[rows], "sampling top_p values")?;
        let uniforms = upload(gpu, &uniforms, &[rows], "sampling uniforms")?;
        ops::sample_with_uniforms(gpu, logits, &temperature, &top_p, &uniforms, &mut ids)?;
    }
    to_token_ids(&gpu.download(&ids)?, vocab)
}

/// The kernels' i32 ids as token ids, refusing any outside the vocabulary (a kernel bug, not
/// something to feed back into the model).
fn to_token_ids(ids: &[i32], vocab: usize) -> Result<Vec<u32>> {
    ids.iter()
        .enumerate()
        .map(|(s, &id)| match u32::try_from(id) {
            Ok(id) if (id as usize) < vocab => Ok(id),
            _ => Err(ModelError::request(format!(
                "the device sampled token id {id} for sequence {s}, outside the vocabulary \
                 (vocab_size {vocab})"
            ))),
        })
        .collect()
}
