//! Which rank holds which routed expert.

use std::ops::Range;

use kernels::error::{Error, Result};

/// Routed experts partitioned contiguously over the ranks: rank `r` holds experts
/// `r * E / W .. (r + 1) * E / W` (`E % W == 0` is required). Nodes are groups of
/// `ranks_per_node` consecutive ranks, so node `n` holds experts
/// `n * experts_per_node .. (n + 1) * experts_per_node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertPlacement {
    num_experts: usize,
    world_size: usize,
}

impl ExpertPlacement {
    pub fn new(num_experts: usize, world_size: usize) -> Result<Self> {
        const OP: &str = "ExpertPlacement";
        if world_size == 0 {
            return Err(Error::invalid(OP, "world size is 0"));
        }
        if num_experts == 0 {
            return Err(Error::invalid(OP, "num_experts is 0"));
        }
        if num_experts > i32::MAX as usize {
            return Err(Error::invalid(
                OP,
                format!("num_experts {num_experts} does not fit in i32"),
            ));
        }
        if num_experts % world_size != 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "{num_experts} experts cannot be split evenly over {world_size} ranks \
                     (expert parallelism needs num_experts % world_size == 0)"
                ),
            ));
        }
        Ok(Self {
            num_experts,
            world_size,
        })
    }

    pub fn num_experts(&self) -> usize {
        self.num_experts
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// `E / W`.
    pub fn experts_per_rank(&self) -> usize {
        self.num_experts / self.world_size
    }

    /// The experts of `rank`.
    pub fn local_experts(&self, rank: usize) -> Range<usize> {
        let n = self.experts_per_rank();
        rank * n..(rank + 1) * n
    }

    /// The rank holding `expert` (`expert < num_experts`).
    pub fn owner(&self, expert: usize) -> usize {
        expert / self.experts_per_rank()
    }

    /// Experts per node when nodes are groups of `ranks_per_node` consecutive ranks (which must
    /// divide the world size): the `experts_per_node` of [`super::NodeLimit`].
    pub fn experts_per_node(&self, ranks_per_node: usize) -> Result<usize> {
        if ranks_per_node == 0 || self.world_size % ranks_per_node != 0 {
            return Err(Error::invalid(
                "ExpertPlacement::experts_per_node",
                format!(
                    "ranks_per_node {ranks_per_node} does not divide the world size {}",
                    self.world_size
                ),
            ));
        }
        Ok(self.experts_per_rank() * ranks_per_node)
    }
}
