//! The bytes the id file holds and rank 0 sends over TCP.

use super::{IdBytes, NCCL_ID_BYTES};

pub(super) const MAGIC: &[u8; 8] = b"DSV3NCID";

pub(super) fn encode(id: &IdBytes, world_size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(MAGIC.len() + 8 + NCCL_ID_BYTES);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&(world_size as u64).to_le_bytes());
    v.extend_from_slice(id);
    v
}

pub(super) const ENCODED_LEN: usize = 8 + 8 + NCCL_ID_BYTES;

/// Decodes a published id: `Ok(None)` when the bytes are incomplete, `Err(why)` when they are
/// not an id for this world (another program's file, or one left by a run of another size).
pub(super) fn decode(
    bytes: &[u8],
    world_size: usize,
) -> std::result::Result<Option<IdBytes>, String> {
    if bytes.len() < ENCODED_LEN && MAGIC.starts_with(&bytes[..bytes.len().min(8)]) {
        return Ok(None);
    }
    if bytes.len() != ENCODED_LEN || &bytes[..8] != MAGIC {
        return Err("does not hold an NCCL id in this program's format".into());
    }
    let w = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if w != world_size as u64 {
        return Err(format!(
            "holds an id for a world of {w}, this rank has WORLD_SIZE={world_size} (left by \
             another run?)"
        ));
    }
    Ok(Some(bytes[16..].try_into().expect("128 bytes")))
}
