//! The built-in tiny model, written once per test binary, and the engine, requests and prompts
//! the CPU engine and MTP tests build on it.

use std::sync::OnceLock;

use kernels::reference::sampling::SamplingParams;
use model::cpu::{CpuModel, Precision};
use model::engine::{CpuBackend, Engine, Request};
use model::tiny::{write_tiny, TINY_SEED};
use model::Checkpoint;

use super::TempDir;

/// The built-in tiny model's checkpoint directory (written on first use).
pub fn tiny_dir() -> &'static TempDir {
    static DIR: OnceLock<TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = TempDir::new("tiny");
        write_tiny(d.path(), TINY_SEED).unwrap();
        d
    })
}

pub fn tiny_model(precision: Precision) -> CpuModel {
    let ckpt = Checkpoint::open(tiny_dir().path()).unwrap();
    CpuModel::load(&ckpt, precision).unwrap()
}

pub fn engine(precision: Precision, kv_blocks: usize) -> Engine<CpuBackend> {
    Engine::new(CpuBackend::new(tiny_model(precision), kv_blocks).unwrap()).unwrap()
}

pub fn greedy(prompt: &[u32], max_new_tokens: usize) -> Request {
    Request {
        prompt: prompt.to_vec(),
        max_new_tokens,
        sampling: SamplingParams::GREEDY,
        seed: 0,
        stop_ids: vec![],
    }
}

/// A deterministic byte-range prompt; `salt` makes different prompts.
pub fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 37 + salt * 11 + 5) % 256)
        .collect()
}
