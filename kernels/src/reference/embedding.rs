//! Embedding gather: out[t] = table[ids[t]].

use crate::error::{check_len, Error, Result};

const OP: &str = "embedding";

/// `table` is [vocab, hidden]; every id must be in 0..vocab.
pub fn embedding<T: Copy>(table: &[T], vocab: usize, hidden: usize, ids: &[i32]) -> Result<Vec<T>> {
    let table_len = vocab.checked_mul(hidden).ok_or_else(|| {
        Error::shape(
            OP,
            format!("table shape [{vocab}, {hidden}] overflows the address space"),
        )
    })?;
    check_len(OP, "table", table.len(), table_len)?;
    let mut out = Vec::with_capacity(ids.len() * hidden);
    for (t, &id) in ids.iter().enumerate() {
        if id < 0 || id as usize >= vocab {
            return Err(Error::index(
                OP,
                format!("token {t} has id {id}, vocabulary size is {vocab}"),
            ));
        }
        let row = id as usize * hidden;
        out.extend_from_slice(&table[row..row + hidden]);
    }
    Ok(out)
}
