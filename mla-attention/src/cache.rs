//! Block allocation of the paged KV cache (host side, no CUDA).
//!
//! The cache is `num_blocks` blocks of [`BLOCK_SIZE`] = 64 entries (one per token). Each live
//! sequence owns a list of blocks (its block table row); position p of a sequence lives in its
//! block `p / 64`, slot `p % 64`. Allocation is deterministic: a request always takes the
//! lowest-numbered free blocks, in increasing order, so the same sequence of calls gives the same
//! tables.

use crate::reference::paged::{PagedShape, BLOCK_SIZE};
use kernels::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

const OP: &str = "kv_cache";

/// Identifies a sequence in the allocator.
pub type SeqId = u64;

/// Entry of a padded block table row past a sequence's blocks (never read by the kernels).
pub const PAD_BLOCK: i32 = -1;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Sequence {
    blocks: Vec<u32>,
    len: usize,
}

/// Free list and per-sequence block tables of a paged KV cache.
#[derive(Clone, Debug)]
pub struct KvCacheAllocator {
    num_blocks: usize,
    free: BTreeSet<u32>,
    seqs: BTreeMap<SeqId, Sequence>,
}

/// Padded i32 block table and lengths of a batch, as the decode kernel reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockTable {
    pub batch: usize,
    pub max_blocks: usize,
    /// `[batch, max_blocks]`, padded with [`PAD_BLOCK`].
    pub table: Vec<i32>,
    /// `[batch]`: tokens of each sequence.
    pub seqlens: Vec<i32>,
}

impl BlockTable {
    /// The shape a paged call over this table checks against.
    pub fn shape(&self, q_len: usize, num_blocks: usize) -> PagedShape {
        PagedShape {
            batch: self.batch,
            q_len,
            max_blocks: self.max_blocks,
            num_blocks,
        }
    }
}

impl KvCacheAllocator {
    /// An allocator over `num_blocks` free blocks (block indices must fit an i32).
    pub fn new(num_blocks: usize) -> Result<Self> {
        if num_blocks > i32::MAX as usize {
            return Err(Error::invalid(
                OP,
                format!("{num_blocks} blocks: block indices must fit an i32"),
            ));
        }
        Ok(KvCacheAllocator {
            num_blocks,
            free: (0..num_blocks as u32).collect(),
            seqs: BTreeMap::new(),
        })
    }

    /// Blocks needed to hold `tokens` entries.
    pub fn blocks_for(tokens: usize) -> usize {
        tokens.div_ceil(BLOCK_SIZE)
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Live sequences, in increasing id order.
    pub fn sequences(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().copied()
    }

    /// Tokens of `seq`, or None if it is not allocated.
    pub fn seq_len(&self, seq: SeqId) -> Option<usize> {
        self.seqs.get(&seq).map(|s| s.len)
    }

    /// The blocks of `seq` in position order, or None if it is not allocated.
    pub fn blocks(&self, seq: SeqId) -> Option<&[u32]> {
        self.seqs.get(&seq).map(|s| s.blocks.as_slice())
    }

    /// Starts sequence `seq` with room for `tokens` tokens. Errors if it exists or the blocks
    /// run out (then nothing is allocated).
    pub fn allocate(&mut self, seq: SeqId, tokens: usize) -> Result<()> {
        if self.seqs.contains_key(&seq) {
            return Err(Error::invalid(
                OP,
                format!("sequence {seq} is already allocated"),
            ));
        }
        let blocks = self.take(seq, Self::blocks_for(tokens), tokens)?;
        self.seqs.insert(
            seq,
            Sequence {
                blocks,
                len: tokens,
            },
        );
        Ok(())
    }

    /// Grows sequence `seq` by `tokens` tokens, taking new blocks as needed; returns its new
    /// length. Errors if it does not exist or the blocks run out (then nothing changes).
    pub fn extend(&mut self, seq: SeqId, tokens: usize) -> Result<usize> {
        let Some(s) = self.seqs.get(&seq) else {
            return Err(Error::invalid(
                OP,
                format!("sequence {seq} is not allocated"),
            ));
        };
        let new_len = s.len + tokens;
        let needed = Self::blocks_for(new_len) - s.blocks.len();
        let mut blocks = self.take(seq, needed, tokens)?;
        let s = self.seqs.get_mut(&seq).expect("checked above");
        s.blocks.append(&mut blocks);
        s.len = new_len;
        Ok(new_len)
    }

    /// Shrinks sequence `seq` to its first `new_len` tokens (speculative decoding rolls rejected
    /// draft tokens back this way), returning its trailing blocks that no longer hold any of
    /// them to the free list; returns how many blocks were freed. The kept entries are
    /// untouched; entries past `new_len` in a kept block are stale and get overwritten by the
    /// next append. Errors if `seq` is not allocated or `new_len` exceeds its length (then
    /// nothing changes).
    pub fn truncate(&mut self, seq: SeqId, new_len: usize) -> Result<usize> {
        let s = self
            .seqs
            .get_mut(&seq)
            .ok_or_else(|| Error::invalid(OP, format!("sequence {seq} is not allocated")))?;
        if new_len > s.len {
            return Err(Error::invalid(
                OP,
                format!(
                    "cannot truncate sequence {seq} to {new_len} tokens: it has {}",
                    s.len
                ),
            ));
        }
        let keep = Self::blocks_for(new_len);
        let freed: Vec<u32> = s.blocks.drain(keep..).collect();
        s.len = new_len;
        self.free.extend(&freed);
        Ok(freed.len())
    }

    /// Frees sequence `seq`, returning how many blocks went back to the free list.
    pub fn free(&mut self, seq: SeqId) -> Result<usize> {
        let s = self
            .seqs
            .remove(&seq)
            .ok_or_else(|| Error::invalid(OP, format!("sequence {seq} is not allocated")))?;
        self.free.extend(&s.blocks);
        Ok(s.blocks.len())
    }

    /// The block table of a batch, as narrow as the longest sequence allows (at least 1 column).
    pub fn block_table(&self, seqs: &[SeqId]) -> Result<BlockTable> {
        let widest = seqs
            .iter()
            .map(|&s| self.get(s).map(|s| s.blocks.len()))
            .try_fold(1, |w, b| b.map(|b| w.max(b)))?;
        self.block_table_width(seqs, widest)
    }

    /// The block table of a batch with exactly `max_blocks` columns (a fixed width, e.g. for a
    /// captured graph). Errors if a sequence has more blocks.
    pub fn block_table_width(&self, seqs: &[SeqId], max_blocks: usize) -> Result<BlockTable> {
        let mut table = vec![PAD_BLOCK; seqs.len() * max_blocks];
        let mut seqlens = Vec::with_capacity(seqs.len());
        for (i, &id) in seqs.iter().enumerate() {
            let s = self.get(id)?;
            if s.blocks.len() > max_blocks {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "sequence {id} has {} blocks, the table has {max_blocks} columns",
                        s.blocks.len()
                    ),
                ));
            }
            for (t, &b) in table[i * max_blocks..].iter_mut().zip(&s.blocks) {
                *t = b as i32;
            }
            seqlens.push(i32::try_from(s.len).map_err(|_| {
                Error::invalid(OP, format!("sequence {id} has {} tokens, over i32", s.len))
            })?);
        }
        Ok(BlockTable {
            batch: seqs.len(),
            max_blocks,
            table,
            seqlens,
        })
    }

    fn get(&self, seq: SeqId) -> Result<&Sequence> {
        self.seqs
            .get(&seq)
            .ok_or_else(|| Error::invalid(OP, format!("sequence {seq} is not allocated")))
    }

    /// Takes the `needed` lowest free blocks for `seq`, or errors leaving the free list intact.
    fn take(&mut self, seq: SeqId, needed: usize, tokens: usize) -> Result<Vec<u32>> {
        if needed > self.free.len() {
            return Err(Error::invalid(
                OP,
                format!(
                    "KV cache exhausted: sequence {seq} needs {needed} more blocks for {tokens} \
                     more tokens, {} of {} blocks are free",
                    self.free.len(),
                    self.num_blocks
                ),
            ));
        }
        Ok((0..needed)
            .map(|_| self.free.pop_first().expect("counted above"))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_frees_only_blocks_past_the_new_length() {
        let mut a = KvCacheAllocator::new(8).unwrap();
        a.allocate(1, 130).unwrap(); // 3 blocks: 0, 1, 2
        assert_eq!(a.blocks(1).unwrap(), &[0, 1, 2]);
        // 129 tokens still need block 2.
        assert_eq!(a.truncate(1, 129).unwrap(), 0);
        assert_eq!(a.seq_len(1), Some(129));
        assert_eq!(a.free_blocks(), 5);
        // 128 tokens fit in two blocks: block 2 goes back.
        assert_eq!(a.truncate(1, 128).unwrap(), 1);
        assert_eq!(a.blocks(1).unwrap(), &[0, 1]);
        assert_eq!(a.free_blocks(), 6);
        // Down to 1 token, then to none.
        assert_eq!(a.truncate(1, 1).unwrap(), 1);
        assert_eq!(a.blocks(1).unwrap(), &[0]);
        assert_eq!(a.truncate(1, 0).unwrap(), 1);
        assert_eq!(a.blocks(1).unwrap(), &[] as &[u32]);
        assert_eq!(a.free_blocks(), 8);
        // The sequence stays live and grows again from the lowest free blocks.
        assert_eq!(a.extend(1, 65).unwrap(), 65);
        assert_eq!(a.blocks(1).unwrap(), &[0, 1]);
    }

    #[test]
    fn truncate_to_the_same_length_is_a_no_op() {
        let mut a = KvCacheAllocator::new(4).unwrap();
        a.allocate(7, 64).unwrap();
        let before = a.clone();
        assert_eq!(a.truncate(7, 64).unwrap(), 0);
        assert_eq!(a.blocks(7), before.blocks(7));
        assert_eq!(a.free_blocks(), before.free_blocks());
    }

    #[test]
    fn truncate_rejects_growth_and_unknown_sequences() {
        let mut a = KvCacheAllocator::new(4).unwrap();
        a.allocate(0, 10).unwrap();
        let err = a.truncate(0, 11).unwrap_err().to_string();
        assert!(err.contains("has 10"), "{err}");
        assert_eq!(a.seq_len(0), Some(10));
        let err = a.truncate(3, 0).unwrap_err().to_string();
        assert!(err.contains("not allocated"), "{err}");
    }

    #[test]
    fn truncate_then_extend_reuses_the_freed_blocks_of_a_batch() {
        // Two sequences interleave their blocks; rolling one back frees its tail for the other.
        let mut a = KvCacheAllocator::new(6).unwrap();
        a.allocate(0, 64).unwrap(); // [0]
        a.allocate(1, 64).unwrap(); // [1]
        a.extend(0, 70).unwrap(); // [0, 2, 3]
        a.extend(1, 1).unwrap(); // [1, 4]
        assert_eq!(a.truncate(0, 64).unwrap(), 2);
        assert_eq!(a.free_blocks(), 3);
        a.extend(1, 64).unwrap(); // 129 tokens: one more block, the lowest free one
        assert_eq!(a.blocks(1).unwrap(), &[1, 4, 2]);
        a.free(0).unwrap();
        a.free(1).unwrap();
        assert_eq!(a.free_blocks(), 6);
    }
}
