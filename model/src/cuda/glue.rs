//! Launch wrappers of `model/cuda/mla_glue.cu`: the MLA KV append, the query / output
//! absorptions and a row gather/scatter. Each checks shapes on the host (errors name the
//! argument) and launches on the `Gpu`'s stream without synchronizing; bad indices found on the
//! device go to the caller's [`DeviceStatus`].

use half::bf16;
use kernels::gpu::{grid_1d, DeviceStatus, DeviceTensor, Gpu, PushKernelArg};
use kernels::ops::RopeTable;
use kernels::{Error, Result};

use crate::cubins::MLA_GLUE;

const THREADS: u32 = 256;

fn as_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} does not fit in i32")))
}

fn two_dims<T: kernels::gpu::DeviceElement>(
    op: &'static str,
    what: &str,
    t: &DeviceTensor<T>,
) -> Result<(usize, usize)> {
    match *t.shape() {
        [a, b] => Ok((a, b)),
        ref other => Err(Error::shape(
            op,
            format!("{what} must be 2-D, got {other:?}"),
        )),
    }
}

/// Writes `[RMSNorm(kv[t, :d_c]) ; RoPE(kv[t, d_c:], positions[t])]` into cache entry
/// `slots[t]` for every token. kv `[T, d_c + d_rope]`, norm_w `[d_c]`, positions / slots `[T]`,
/// cache `[num_blocks, 64, d_c + d_rope]`.
#[allow(clippy::too_many_arguments)]
pub fn kv_append(
    gpu: &Gpu,
    kv: &DeviceTensor<bf16>,
    norm_w: &DeviceTensor<bf16>,
    rope: &RopeTable,
    positions: &DeviceTensor<i32>,
    slots: &DeviceTensor<i32>,
    eps: f32,
    cache: &mut DeviceTensor<bf16>,
    status: &mut DeviceStatus,
) -> Result<()> {
    const OP: &str = "mla_kv_append";
    let (tokens, width) = two_dims(OP, "kv", kv)?;
    let d_rope = rope.rope_dim;
    if width <= d_rope || d_rope % 2 != 0 {
        return Err(Error::shape(
            OP,
            format!("kv width {width} must be d_c + d_rope with d_rope = {d_rope} even"),
        ));
    }
    let d_c = width - d_rope;
    norm_w.expect_shape(OP, "norm_w", &[d_c])?;
    positions.expect_shape(OP, "positions", &[tokens])?;
    slots.expect_shape(OP, "slots", &[tokens])?;
    let entries = match *cache.shape() {
        [blocks, bs, w] if w == width => blocks * bs,
        ref other => {
            return Err(Error::shape(
                OP,
                format!("cache must be [num_blocks, 64, {width}], got {other:?}"),
            ))
        }
    };
    if tokens == 0 {
        return Ok(());
    }
    let f = gpu.function(&MLA_GLUE, "mla_kv_append_bf16")?;
    let ptrs = [
        kv.device_ptr(gpu),
        norm_w.device_ptr(gpu),
        rope.table.device_ptr(gpu),
        positions.device_ptr(gpu),
        slots.device_ptr(gpu),
        cache.device_ptr(gpu),
    ];
    let d_c_i = as_i32(OP, "d_c", d_c)?;
    let d_rope_i = as_i32(OP, "d_rope", d_rope)?;
    let max_pos = as_i32(OP, "max_positions", rope.max_positions)?;
    let entries_i = as_i32(OP, "cache entries", entries)?;
    let sp = status.word().device_ptr(gpu);
    let mut args = gpu.stream().launch_builder(&f);
    for p in &ptrs {
        args.arg(p);
    }
    args.arg(&d_c_i)
        .arg(&d_rope_i)
        .arg(&max_pos)
        .arg(&entries_i)
        .arg(&eps)
        .arg(&sp);
    let blocks = as_i32(OP, "tokens", tokens)? as u32;
    // SAFETY: 6 pointers, 4 int, a float and the status pointer: the kernel's parameters. kv is
    // [T, width], norm_w [d_c], positions / slots [T]; positions and slots are range-checked on
    // the device against the table and the cache.
    unsafe { gpu.launch("mla_kv_append_bf16", args, grid_1d(blocks, THREADS, 0)) }
}

/// `q_abs[t, h] = [W_UK[h]^T q_nope[t, h] ; q_pe[t, h]]`: q `[T, H * (d_nope + d_rope)]`,
/// w_uk `[H, d_nope, d_c]`, q_abs `[T, H, d_c + d_rope]`.
pub fn absorb_query(
    gpu: &Gpu,
    q: &DeviceTensor<bf16>,
    w_uk: &DeviceTensor<bf16>,
    d_rope: usize,
    q_abs: &mut DeviceTensor<bf16>,
) -> Result<()> {
    const OP: &str = "mla_absorb_q";
    let (heads, d_nope, d_c) = match *w_uk.shape() {
        [h, n, c] => (h, n, c),
        ref other => {
            return Err(Error::shape(
                OP,
                format!("w_uk must be [H, d_nope, d_c], got {other:?}"),
            ))
        }
    };
    let (tokens, qw) = two_dims(OP, "q", q)?;
    if qw != heads * (d_nope + d_rope) {
        return Err(Error::shape(
            OP,
            format!(
                "q rows have {qw} values, expected H * (d_nope + d_rope) = {}",
                heads * (d_nope + d_rope)
            ),
        ));
    }
    q_abs.expect_shape(OP, "q_abs", &[tokens, heads, d_c + d_rope])?;
    if tokens == 0 {
        return Ok(());
    }
    let f = gpu.function(&MLA_GLUE, "mla_absorb_q_bf16")?;
    let (qp, wp, op) = (
        q.device_ptr(gpu),
        w_uk.device_ptr(gpu),
        q_abs.device_ptr(gpu),
    );
    let (h_i, n_i, r_i, c_i) = (
        as_i32(OP, "heads", heads)?,
        as_i32(OP, "d_nope", d_nope)?,
        as_i32(OP, "d_rope", d_rope)?,
        as_i32(OP, "d_c", d_c)?,
    );
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&qp)
        .arg(&wp)
        .arg(&op)
        .arg(&h_i)
        .arg(&n_i)
        .arg(&r_i)
        .arg(&c_i);
    let blocks = u32::try_from(tokens * heads)
        .map_err(|_| Error::invalid(OP, "T * H exceeds the grid limit"))?;
    let smem = u32::try_from(d_nope * 4)
        .ok()
        .filter(|&b| b <= 48 * 1024)
        .ok_or_else(|| Error::invalid(OP, format!("d_nope = {d_nope} is too large")))?;
    // SAFETY: (bf16*, bf16*, bf16*, int x4); shapes checked above; smem holds d_nope floats.
    unsafe { gpu.launch("mla_absorb_q_bf16", args, grid_1d(blocks, THREADS, smem)) }
}

/// `o[t, h * d_v + j] = W_UV[h][j] . o_lat[t, h]`: o_lat `[T * H, d_c]` (any shape with that
/// many elements), w_uv `[H, d_v, d_c]`, o `[T, H * d_v]`.
pub fn absorb_output(
    gpu: &Gpu,
    o_lat: &DeviceTensor<bf16>,
    w_uv: &DeviceTensor<bf16>,
    o: &mut DeviceTensor<bf16>,
) -> Result<()> {
    const OP: &str = "mla_absorb_o";
    let (heads, d_v, d_c) = match *w_uv.shape() {
        [h, v, c] => (h, v, c),
        ref other => {
            return Err(Error::shape(
                OP,
                format!("w_uv must be [H, d_v, d_c], got {other:?}"),
            ))
        }
    };
    let (tokens, ow) = two_dims(OP, "o", o)?;
    if ow != heads * d_v {
        return Err(Error::shape(
            OP,
            format!(
                "o rows have {ow} values, expected H * d_v = {}",
                heads * d_v
            ),
        ));
    }
    if o_lat.len() != tokens * heads * d_c {
        return Err(Error::shape(
            OP,
            format!(
                "o_lat has {} values, expected T * H * d_c = {}",
                o_lat.len(),
                tokens * heads * d_c
            ),
        ));
    }
    if tokens == 0 {
        return Ok(());
    }
    let f = gpu.function(&MLA_GLUE, "mla_absorb_o_bf16")?;
    let (lp, wp, op) = (
        o_lat.device_ptr(gpu),
        w_uv.device_ptr(gpu),
        o.device_ptr(gpu),
    );
    let (h_i, v_i, c_i) = (
        as_i32(OP, "heads", heads)?,
        as_i32(OP, "d_v", d_v)?,
        as_i32(OP, "d_c", d_c)?,
    );
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&lp)
        .arg(&wp)
        .arg(&op)
        .arg(&h_i)
        .arg(&v_i)
        .arg(&c_i);
    let blocks = u32::try_from(tokens * heads)
        .map_err(|_| Error::invalid(OP, "T * H exceeds the grid limit"))?;
    let smem = u32::try_from(d_c * 4)
        .ok()
        .filter(|&b| b <= 48 * 1024)
        .ok_or_else(|| Error::invalid(OP, format!("d_c = {d_c} is too large")))?;
    // SAFETY: (bf16*, bf16*, bf16*, int x3); shapes checked above; smem holds d_c floats.
    unsafe { gpu.launch("mla_absorb_o_bf16", args, grid_1d(blocks, THREADS, smem)) }
}

/// `dst[dst_rows[i]] = src[src_rows[i]]` for `n` rows of `width` values; `None` = identity.
/// `src` and `dst` are viewed as `[len / width, width]`.
pub fn copy_rows(
    gpu: &Gpu,
    src: &DeviceTensor<bf16>,
    src_rows: Option<&DeviceTensor<i32>>,
    dst: &mut DeviceTensor<bf16>,
    dst_rows: Option<&DeviceTensor<i32>>,
    width: usize,
    status: &mut DeviceStatus,
) -> Result<()> {
    const OP: &str = "copy_rows";
    if width == 0 || src.len() % width != 0 || dst.len() % width != 0 {
        return Err(Error::shape(
            OP,
            format!(
                "src ({:?}) and dst ({:?}) must hold whole rows of {width}",
                src.shape(),
                dst.shape()
            ),
        ));
    }
    let n = match (src_rows, dst_rows) {
        (Some(s), Some(d)) if s.len() != d.len() => {
            return Err(Error::shape(
                OP,
                format!("{} source rows, {} destination rows", s.len(), d.len()),
            ))
        }
        (Some(s), _) => s.len(),
        (None, Some(d)) => d.len(),
        (None, None) => src.len() / width,
    };
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&MLA_GLUE, "copy_rows_bf16")?;
    let (sp, srp, dp, drp, stp) = (
        src.device_ptr(gpu),
        src_rows.map_or(0, |t| t.device_ptr(gpu)),
        dst.device_ptr(gpu),
        dst_rows.map_or(0, |t| t.device_ptr(gpu)),
        status.word().device_ptr(gpu),
    );
    let src_len = as_i32(OP, "source rows", src.len() / width)?;
    let dst_len = as_i32(OP, "destination rows", dst.len() / width)?;
    let width_i = as_i32(OP, "width", width)?;
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&sp)
        .arg(&srp)
        .arg(&src_len)
        .arg(&dp)
        .arg(&drp)
        .arg(&dst_len)
        .arg(&width_i)
        .arg(&stp);
    let blocks = as_i32(OP, "rows", n)? as u32;
    // SAFETY: (bf16*, int*, int, bf16*, int*, int, int, int*); the index arrays hold n entries
    // (or are null) and every index is range-checked on the device against the row counts.
    unsafe { gpu.launch("copy_rows_bf16", args, grid_1d(blocks, THREADS, 0)) }
}
