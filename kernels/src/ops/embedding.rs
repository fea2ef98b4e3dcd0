use half::bf16;

use super::{as_i32, vec8_ok};
use crate::cubins::EMBEDDING;
use crate::error::{Error, Result};
use crate::gpu::{grid_1d, DeviceStatus, DeviceTensor, Gpu, PushKernelArg};

const OP: &str = "embedding";

/// out[t] = table[ids[t]] for table [vocab, hidden], ids [tokens]. An out-of-range id writes a
/// zero row and is recorded in `status` (check it with `status.check`).
pub fn embedding(
    gpu: &Gpu,
    table: &DeviceTensor<bf16>,
    ids: &DeviceTensor<i32>,
    out: &mut DeviceTensor<bf16>,
    status: &mut DeviceStatus,
) -> Result<()> {
    let &[vocab, hidden] = table.shape() else {
        return Err(Error::shape(
            OP,
            format!("table must be [vocab, hidden], got {:?}", table.shape()),
        ));
    };
    let &[tokens] = ids.shape() else {
        return Err(Error::shape(
            OP,
            format!("ids must be [tokens], got {:?}", ids.shape()),
        ));
    };
    out.expect_shape(OP, "out", &[tokens, hidden])?;
    if tokens == 0 {
        return Ok(());
    }
    let f = gpu.function(&EMBEDDING, "embedding_bf16")?;
    let (ip, tp, op, sp) = (
        ids.device_ptr(gpu),
        table.device_ptr(gpu),
        out.device_ptr(gpu),
        status.word().device_ptr(gpu),
    );
    let vec = i32::from(vec8_ok(hidden, &[tp, op]));
    let (vocab_i, hidden_i) = (as_i32(OP, "vocab", vocab)?, as_i32(OP, "hidden", hidden)?);
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&ip)
        .arg(&tp)
        .arg(&op)
        .arg(&vocab_i)
        .arg(&hidden_i)
        .arg(&vec)
        .arg(&sp);
    let blocks = as_i32(OP, "tokens", tokens)? as u32;
    // SAFETY: shapes checked above; ids are range-checked in the kernel.
    unsafe { gpu.launch("embedding_bf16", args, grid_1d(blocks, 128, 0)) }
}
