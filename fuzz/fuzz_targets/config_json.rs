//! Arbitrary text as `config.json`: parsing and validation, then what `Checkpoint::open` and the
//! engine derive from a config that validated (the tensor list, parameter and KV-cache sizes),
//! and the documented round trip `from_json(to_json(c)) == c`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::checkpoint::{expected_tensors, Fp8Policy};
use model::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = match ModelConfig::from_json_str(text) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let specs = expected_tensors(&cfg, Fp8Policy::for_config(&cfg));
    for s in &specs {
        let _ = s.size_bytes();
    }
    let _ = cfg.param_counts();
    let _ = cfg.kv_bytes_per_token();
    let _ = cfg.kv_bytes_per_token_per_layer_fp8();
    let _ = cfg.rope_params();
    let _ = cfg.softmax_scale();
    let again = ModelConfig::from_json(&cfg.to_json()).expect("a valid config's JSON parses");
    assert_eq!(again, cfg, "to_json / from_json round trip");
});
