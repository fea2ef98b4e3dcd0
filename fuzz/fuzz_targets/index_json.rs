//! Arbitrary text as `model.safetensors.index.json`, through the index parser and its checks
//! (duplicate tensors, shard names that are not plain file names, an empty map).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The loader reads the index with read_to_string: non-UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("ckpt/model.safetensors.index.json");
    match model::checkpoint::index_shard_names(path, text) {
        Ok(shards) => {
            assert!(!shards.is_empty());
            for s in &shards {
                // Each shard must stay inside the checkpoint directory.
                let joined = Path::new("ckpt").join(s);
                assert_eq!(joined.parent(), Some(Path::new("ckpt")), "{s:?}");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
