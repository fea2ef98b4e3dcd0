//! Arbitrary bytes as the `model.safetensors` of a single-file checkpoint, opened through the
//! loader's own checks (`Checkpoint::from_bytes`, the path `Checkpoint::open` takes after mapping
//! the file) against a fixed micro config (fuzz/micro_config.json: FP8, one dense and one MoE
//! layer, an optional MTP layer). Whatever opens is then read back through every accessor.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use model::checkpoint::TensorRole;
use model::{Checkpoint, ModelConfig};

static CONFIG: LazyLock<ModelConfig> = LazyLock::new(|| {
    ModelConfig::from_json_str(include_str!("../micro_config.json")).expect("micro config")
});

fuzz_target!(|data: &[u8]| {
    let ckpt = match Checkpoint::from_bytes("fuzz/model.safetensors", data.to_vec(), CONFIG.clone())
    {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    for spec in ckpt.specs() {
        let name = spec.name.as_str();
        let bytes = ckpt.bytes(name).expect("an opened tensor has bytes");
        assert_eq!(bytes.len(), spec.size_bytes(), "{name}");
        ckpt.info(name).expect("an opened tensor has info");
        let _ = ckpt.check_finite_tensor(name);
        let values = ckpt.to_f32(name).expect("an opened tensor converts to f32");
        assert_eq!(values.len(), spec.numel(), "{name}");
        if spec.role == TensorRole::Linear {
            let w = ckpt.linear(name).expect("an opened linear weight loads");
            assert_eq!(w.to_f32().len(), spec.numel(), "{name}");
        }
    }
});
