//! Node-limited routing (DeepSeek-V3 report, "Node-Limited Routing"): each token's experts are
//! restricted to at most `M` nodes (`M = 4` in DeepSeek-V3), so its dispatch crosses at most `M`
//! inter-node links. The nodes are chosen per token by the sum of the highest `K / M` affinity
//! scores of the experts on each node.
//!
//! These are pure functions of the per-expert selection scores `c` (sigmoid + correction bias,
//! spec §3.3: the scores used only to *choose* experts), so they compose with the reference
//! routing: restrict the candidates with [`node_limited_mask`] (or pick the experts directly
//! with [`node_limited_topk`]), then compute the weights from the unbiased `s` of the chosen
//! experts as usual. With nodes = expert groups (`experts_per_node = E / n_group`,
//! `M = topk_group`, `K / M = 2` in DeepSeek-V3) this is the group-limited selection of the spec.
//!
//! Order and ties: experts of a node are ranked by decreasing score, ties to the lower expert id;
//! a node's score is the f32 sum of its top `K / M` scores added from the largest down, starting
//! from 0.0; nodes are ranked by decreasing node score, ties to the lower node index. NaN scores
//! are an error (they have no order); `-0.0` and `0.0` tie.

use std::cmp::Ordering;

use kernels::error::{check_len, Error, Result};

/// The node limit: `experts_per_node` consecutive experts per node (node `n` holds experts
/// `n * experts_per_node .. (n + 1) * experts_per_node`, see
/// [`super::ExpertPlacement::experts_per_node`]) and at most `max_nodes` (M) nodes per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeLimit {
    pub experts_per_node: usize,
    pub max_nodes: usize,
}

impl NodeLimit {
    /// DeepSeek-V3's M.
    pub const DEEPSEEK_V3_MAX_NODES: usize = 4;

    /// Validates the limit for `num_experts` experts and `top_k` choices; returns
    /// `(nodes, per_node)`, `per_node = K / M` (K when the limit does not bind).
    fn check(&self, op: &'static str, num_experts: usize, top_k: usize) -> Result<(usize, usize)> {
        let (epn, m) = (self.experts_per_node, self.max_nodes);
        if epn == 0 || num_experts == 0 || num_experts % epn != 0 {
            return Err(Error::invalid(
                op,
                format!("experts_per_node {epn} does not divide num_experts {num_experts}"),
            ));
        }
        if m == 0 {
            return Err(Error::invalid(op, "max_nodes is 0"));
        }
        if top_k == 0 || top_k > num_experts {
            return Err(Error::invalid(
                op,
                format!("top_k {top_k} is not in 1..={num_experts}"),
            ));
        }
        let nodes = num_experts / epn;
        if m >= nodes {
            return Ok((nodes, top_k.min(epn)));
        }
        if top_k % m != 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "top_k {top_k} is not a multiple of max_nodes {m} (node scores sum the top \
                     K / M experts of each node)"
                ),
            ));
        }
        let per_node = top_k / m;
        if per_node > epn {
            return Err(Error::invalid(
                op,
                format!(
                    "top_k / max_nodes = {per_node} exceeds experts_per_node {epn}: {m} nodes \
                     cannot hold {top_k} experts"
                ),
            ));
        }
        Ok((nodes, per_node))
    }
}

/// Descending by score, ties to the lower index (scores are NaN-free here).
fn by_score_desc(scores: &[f32]) -> impl Fn(&usize, &usize) -> Ordering + '_ {
    move |&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or(Ordering::Equal)
            .then(a.cmp(&b))
    }
}

fn check_scores(op: &'static str, scores: &[f32], num_experts: usize) -> Result<usize> {
    if num_experts == 0 || scores.len() % num_experts != 0 {
        return Err(Error::shape(
            op,
            format!(
                "scores has {} elements, not a multiple of num_experts {num_experts}",
                scores.len()
            ),
        ));
    }
    if let Some(i) = scores.iter().position(|v| v.is_nan()) {
        return Err(Error::invalid(
            op,
            format!(
                "score of token {} expert {} is NaN",
                i / num_experts,
                i % num_experts
            ),
        ));
    }
    Ok(scores.len() / num_experts)
}

/// The nodes each token may use: for `scores` `[T, E]`, `[T]` lists of `min(M, nodes)` node
/// indices, best first.
pub fn select_nodes(
    scores: &[f32],
    num_experts: usize,
    top_k: usize,
    limit: &NodeLimit,
) -> Result<Vec<Vec<usize>>> {
    const OP: &str = "select_nodes";
    let (nodes, per_node) = limit.check(OP, num_experts, top_k)?;
    let tokens = check_scores(OP, scores, num_experts)?;
    let epn = limit.experts_per_node;
    let keep = limit.max_nodes.min(nodes);
    Ok((0..tokens)
        .map(|t| {
            let c = &scores[t * num_experts..(t + 1) * num_experts];
            let node_score: Vec<f32> = (0..nodes)
                .map(|n| {
                    let mut ids: Vec<usize> = (n * epn..(n + 1) * epn).collect();
                    ids.sort_by(by_score_desc(c));
                    ids[..per_node].iter().fold(0.0f32, |acc, &e| acc + c[e])
                })
                .collect();
            let mut order: Vec<usize> = (0..nodes).collect();
            // NaN-free input can still sum to NaN (inf + -inf): treat it as the lowest score.
            order.sort_by(|&a, &b| {
                let (sa, sb) = (node_score[a], node_score[b]);
                match (sa.is_nan(), sb.is_nan()) {
                    (false, false) => sb.partial_cmp(&sa).unwrap_or(Ordering::Equal),
                    (true, false) => Ordering::Greater,
                    (false, true) => Ordering::Less,
                    (true, true) => Ordering::Equal,
                }
                .then(a.cmp(&b))
            });
            order.truncate(keep);
            order
        })
        .collect())
}

/// `[T, E]`: whether expert `e` is on one of token `t`'s selected nodes.
pub fn node_limited_mask(
    scores: &[f32],
    num_experts: usize,
    top_k: usize,
    limit: &NodeLimit,
) -> Result<Vec<bool>> {
    let nodes = select_nodes(scores, num_experts, top_k, limit)?;
    let epn = limit.experts_per_node;
    let mut mask = vec![false; scores.len()];
    for (t, sel) in nodes.iter().enumerate() {
        for &n in sel {
            mask[t * num_experts + n * epn..t * num_experts + (n + 1) * epn].fill(true);
        }
    }
    Ok(mask)
}

/// `[T, K]` expert ids: the `K` best-scoring experts of each token's selected nodes, best first
/// (ties to the lower id).
pub fn node_limited_topk(
    scores: &[f32],
    num_experts: usize,
    top_k: usize,
    limit: &NodeLimit,
) -> Result<Vec<i32>> {
    const OP: &str = "node_limited_topk";
    let mask = node_limited_mask(scores, num_experts, top_k, limit)?;
    check_len(OP, "mask", mask.len(), scores.len())?;
    let mut out = Vec::with_capacity(scores.len() / num_experts * top_k);
    for (c, m) in scores
        .chunks_exact(num_experts)
        .zip(mask.chunks_exact(num_experts))
    {
        let mut ids: Vec<usize> = (0..num_experts).filter(|&e| m[e]).collect();
        ids.sort_by(by_score_desc(c));
        out.extend(ids[..top_k].iter().map(|&e| e as i32));
    }
    Ok(out)
}
