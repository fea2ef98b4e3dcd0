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
