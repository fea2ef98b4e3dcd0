//! The transformers golden fixtures (`model/tests/fixtures/hf-*`, made by
//! `model/scripts/make_hf_goldens.py`; its README has the format), read for the CPU and CUDA
//! golden tests.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// One prompt's goldens.
pub struct PromptGolden {
    pub ids: Vec<u32>,
    /// [len, vocab]
    pub logits: Vec<f32>,
    /// [len - 1, vocab], V3 only (transformers has no MTP; computed from its modules).
    pub mtp_logits: Option<Vec<f32>>,
}

/// The goldens of one fixture.
pub struct Goldens {
    pub prompts: Vec<PromptGolden>,
    pub greedy_prompt: Vec<u32>,
    pub greedy_generated: Vec<u32>,
}

fn ids_of(st: &SafeTensors, name: &str) -> Vec<u32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    t.data()
        .chunks_exact(8)
        .map(|b| {
            let v = i64::from_le_bytes(b.try_into().unwrap());
            u32::try_from(v).unwrap()
        })
        .collect()
}

fn f32_of(st: &SafeTensors, name: &str) -> Option<Vec<f32>> {
    let t = st.tensor(name).ok()?;
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    Some(
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    )
}

pub fn load_goldens(dir: &Path) -> Goldens {
    let path = dir.join("goldens.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut prompts = Vec::new();
    for i in 0.. {
        let name = format!("prompt.{i}.ids");
        if st.tensor(&name).is_err() {
            break;
        }
        prompts.push(PromptGolden {
            ids: ids_of(&st, &name),
            logits: f32_of(&st, &format!("prompt.{i}.logits")).unwrap(),
            mtp_logits: f32_of(&st, &format!("prompt.{i}.mtp_logits")),
        });
    }
    assert!(prompts.len() >= 3, "{}: too few prompts", path.display());
    Goldens {
        prompts,
        greedy_prompt: ids_of(&st, "greedy.prompt"),
        greedy_generated: ids_of(&st, "greedy.generated"),
    }
}
