//! Deterministic regression tests for hostile checkpoint files (the cases the fuzz targets in
//! fuzz/ look for, and what they found), plus a small byte-mutation property test. Every input
//! must end in `Ok` or an error that names the problem, never a panic.
//!
//! The checkpoint here is the fuzz targets' micro config (fuzz/micro_config.json: FP8, a dense
//! and a MoE layer, one MTP layer), a few KB, so each case is cheap.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::TempDir;
use model::checkpoint::{write_checkpoint, write_safetensors, TensorData, INDEX_FILE};
use model::tiny::generate_tensors;
use model::{Checkpoint, ModelConfig, ModelError};
use proptest::prelude::*;
use serde_json::{json, Value};

const MICRO_CONFIG: &str = include_str!("../../fuzz/micro_config.json");

fn micro_config() -> ModelConfig {
    ModelConfig::from_json_str(MICRO_CONFIG).unwrap()
}

fn micro_tensors() -> &'static [TensorData] {
    static T: OnceLock<Vec<TensorData>> = OnceLock::new();
    T.get_or_init(|| generate_tensors(&micro_config(), 7))
}

/// `tensors` as the bytes of one safetensors file.
fn safetensors_bytes(tensors: &[TensorData]) -> Vec<u8> {
    let dir = TempDir::new("fuzz-bytes");
    let path = dir.file("model.safetensors");
    write_safetensors(&path, tensors).unwrap();
    std::fs::read(path).unwrap()
}

fn micro_bytes() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| safetensors_bytes(micro_tensors()))
}

const NAME: &str = "fuzz/model.safetensors";

fn open_bytes(bytes: Vec<u8>) -> model::Result<Checkpoint> {
    Checkpoint::from_bytes(NAME, bytes, micro_config())
}

/// The detail of the safetensors-structure error `bytes` must produce (it names the file).
fn structure_error(bytes: Vec<u8>) -> String {
    match open_bytes(bytes) {
        Err(e @ ModelError::Safetensors { .. }) => {
            let text = e.to_string();
            assert!(text.contains(NAME), "{text}");
            text
        }
        Err(e) => panic!("expected a safetensors structure error, got: {e}"),
        Ok(_) => panic!("expected a safetensors structure error, the file opened"),
    }
}

/// (header JSON, data) of safetensors bytes.
fn split(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
        bytes[8 + n..].to_vec(),
    )
}

fn join(header: &Value, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_vec(header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    out
}

/// The micro file with its header edited.
fn edited(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let (mut header, data) = split(micro_bytes());
    f(header.as_object_mut().unwrap());
    join(&header, &data)
}

/// Names of the tensors in data order.
fn by_offset(header: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut names: Vec<(u64, String)> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| (v["data_offsets"][0].as_u64().unwrap(), k.clone()))
        .collect();
    names.sort();
    names.into_iter().map(|(_, k)| k).collect()
}

#[test]
fn micro_checkpoint_opens_from_bytes_and_from_disk() {
    let ckpt = open_bytes(micro_bytes().to_vec()).unwrap();
    assert_eq!(ckpt.num_mtp_layers(), 1);
    ckpt.check_finite().unwrap();
    let dir = TempDir::new("fuzz-disk");
    write_checkpoint(dir.path(), &micro_config(), micro_tensors(), 1).unwrap();
    assert_eq!(Checkpoint::open(dir.path()).unwrap().specs(), ckpt.specs());
}

#[test]
fn header_length_past_the_end_of_the_file() {
    let full = micro_bytes();
    for bad in [full.len() as u64 - 7, full.len() as u64, u64::MAX, 1 << 40] {
        let mut bytes = full.to_vec();
        bytes[..8].copy_from_slice(&bad.to_le_bytes());
        let e = structure_error(bytes);
        assert!(
            e.contains(&format!(
                "header length {bad} runs past the end of the file"
            )),
            "{e}"
        );
    }
    let e = structure_error(full[..5].to_vec());
    assert!(e.contains("fewer than the 8-byte header length"), "{e}");
}

#[test]
fn offsets_that_overlap_or_run_past_the_data() {
    let (header, data) = split(micro_bytes());
    let names = by_offset(header.as_object().unwrap());
    let (first, second, last) = (&names[0], &names[1], names.last().unwrap());

    // The second tensor pointed at the first one's bytes (same dtype and shape, so only the
    // overlap is wrong).
    let bytes = edited(|h| {
        let f = h[first].clone();
        h.insert(second.clone(), f);
    });
    let e = structure_error(bytes);
    assert!(
        e.contains("overlap") && e.contains(first) && e.contains(second),
        "{e}"
    );

    // The last tensor moved past the end of the data.
    let len = data.len() as u64;
    let bytes = edited(|h| {
        let o = &h[last]["data_offsets"];
        let (s, e) = (o[0].as_u64().unwrap(), o[1].as_u64().unwrap());
        h[last]["data_offsets"] = json!([s + 64, e + 64]);
    });
    let e = structure_error(bytes);
    assert!(
        e.contains(last.as_str())
            && e.contains(&format!("run past the end of the data ({len} bytes")),
        "{e}"
    );

    // End before start.
    let bytes = edited(|h| h[last]["data_offsets"] = json!([len, 0]));
    let e = structure_error(bytes);
    assert!(
        e.contains(last.as_str()) && e.contains("end before they start"),
        "{e}"
    );

    // A hole between tensors.
    let bytes = edited(|h| {
        h.remove(second);
    });
    let e = structure_error(bytes);
    assert!(e.contains("belong to no tensor"), "{e}");
}

/// The safetensors crate adds the tensors' total length to the header length unchecked; offsets
/// summing to about u64::MAX overflowed there (a panic with overflow checks, as in tests). The
/// loader now bounds every offset by the data present first.
#[test]
fn offsets_summing_past_u64_max_are_an_error() {
    let step = (1u64 << 61) - 1;
    let mut header = serde_json::Map::new();
    for i in 0..8u64 {
        let (s, e) = (i * step, (i + 1) * step);
        header.insert(
            format!("t{i}"),
            json!({"dtype": "U8", "shape": [step], "data_offsets": [s, e]}),
        );
    }
    // 8 * (2^61 - 1) = 2^64 - 8: with the 8-byte length field the crate's sum wraps to 0.
    let e = structure_error(join(&Value::Object(header), &[]));
    assert!(
        e.contains("`t0`") && e.contains("run past the end of the data"),
        "{e}"
    );
}

#[test]
fn byte_length_disagreeing_with_shape_and_dtype() {
    let (header, _) = split(micro_bytes());
    let name = "model.embed_tokens.weight".to_string();
    assert_eq!(header[&name]["shape"], json!([16, 16]));
    let shape = header[&name]["shape"].clone();
    let bytes = edited(|h| h[&name]["shape"] = json!([1, 1]));
    let e = structure_error(bytes);
    assert!(
        e.contains(&format!("tensor `{name}`"))
            && e.contains("shape [1, 1]")
            && e.contains("takes"),
        "{e}"
    );
    // Same shape, wider dtype.
    let dtype = header[&name]["dtype"].as_str().unwrap().to_string();
    let wider = if dtype == "F32" { "F64" } else { "F32" };
    let bytes = edited(|h| h[&name]["dtype"] = json!(wider));
    let e = structure_error(bytes);
    assert!(
        e.contains(&format!("tensor `{name}`")) && e.contains(wider),
        "{e} ({shape})"
    );
}

#[test]
fn dimensions_whose_product_overflows() {
    let (header, _) = split(micro_bytes());
    let name = by_offset(header.as_object().unwrap())[0].clone();
    for shape in [
        json!([1u64 << 32, 1u64 << 32]),
        json!([u64::MAX, 2]),
        json!([1u64 << 62]),
    ] {
        let bytes = edited(|h| {
            h[&name]["shape"] = shape.clone();
            h[&name]["dtype"] = json!("F32");
        });
        let e = structure_error(bytes);
        assert!(
            e.contains(&format!("tensor `{name}`")) && e.contains("overflows"),
            "{e}"
        );
    }
}

/// A sharded micro checkpoint in a fresh directory: (dir, shard paths).
fn sharded(tag: &str, tensors: &[TensorData]) -> (TempDir, Vec<PathBuf>) {
    let dir = TempDir::new(tag);
    let paths = write_checkpoint(dir.path(), &micro_config(), tensors, 3).unwrap();
    Checkpoint::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    (dir, paths)
}

#[test]
fn truncated_shard_names_the_shard() {
    let (dir, paths) = sharded("fuzz-trunc", micro_tensors());
    let full = std::fs::read(&paths[1]).unwrap();
    for cut in [full.len() - 1, full.len() / 2, 7, 0] {
        std::fs::write(&paths[1], &full[..cut]).unwrap();
        let e = Checkpoint::open(dir.path()).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, ModelError::Safetensors { file, .. } if file == &paths[1]),
            "{text}"
        );
        assert!(text.contains(&paths[1].display().to_string()), "{text}");
    }
}

#[test]
fn shard_named_in_the_index_but_missing() {
    let (dir, paths) = sharded("fuzz-missing", micro_tensors());
    std::fs::remove_file(&paths[2]).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, ModelError::Index { file, .. } if file == &dir.file(INDEX_FILE)),
        "{text}"
    );
    let shard = paths[2].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        text.contains(&shard) && text.contains("does not exist"),
        "{text}"
    );
}

#[test]
fn duplicate_tensor_across_shards() {
    let (dir, paths) = sharded("fuzz-dup", micro_tensors());
    // Shard 3 also gets a copy of a tensor of shard 1.
    let (h1, _) = split(&std::fs::read(&paths[0]).unwrap());
    let dup = by_offset(h1.as_object().unwrap())[0].clone();
    let (h3, _) = split(&std::fs::read(&paths[2]).unwrap());
    let mut third: Vec<TensorData> = micro_tensors()
        .iter()
        .filter(|t| h3.get(&t.name).is_some() || t.name == dup)
        .cloned()
        .collect();
    third.sort_by(|a, b| a.name.cmp(&b.name));
    write_safetensors(&paths[2], &third).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, ModelError::DuplicateTensor { name, first, second }
            if name == &dup && first == &paths[0] && second == &paths[2]),
        "{e}"
    );
    assert!(e.to_string().contains(&dup), "{e}");
}

/// The micro tensors with the first value of `scale` (an F32 weight_scale_inv) set to `value`.
fn with_scale(scale: &str, value: f32) -> Vec<TensorData> {
    let mut t = micro_tensors().to_vec();
    let s = t.iter_mut().find(|t| t.name == scale).unwrap();
    s.data[..4].copy_from_slice(&value.to_le_bytes());
    t
}

#[test]
fn non_finite_zero_or_negative_scales_are_refused_at_load() {
    let scale = "model.layers.0.self_attn.o_proj.weight_scale_inv";
    for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, -1e-3] {
        let e = open_bytes(safetensors_bytes(&with_scale(scale, value))).unwrap_err();
        assert!(
            matches!(&e, ModelError::InvalidScale { name, index: 0, .. } if name == scale),
            "{value}: {e}"
        );
        let text = e.to_string();
        assert!(
            text.contains(scale) && text.contains("finite and > 0"),
            "{text}"
        );
    }
    // The same through a directory.
    let dir = TempDir::new("fuzz-scale");
    let tensors = with_scale(scale, f32::NAN);
    write_checkpoint(dir.path(), &micro_config(), &tensors, 1).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert_eq!(e.tensor_name(), Some(scale), "{e}");
}

#[test]
fn weight_scale_inv_of_the_wrong_shape() {
    let scale = "model.layers.1.mlp.experts.0.down_proj.weight_scale_inv";
    let mut t = micro_tensors().to_vec();
    let s = t.iter_mut().find(|t| t.name == scale).unwrap();
    assert_eq!(s.shape, vec![1, 1]);
    *s = TensorData::f32(scale, vec![1, 2], &[1.0, 1.0]);
    let e = open_bytes(safetensors_bytes(&t)).unwrap_err();
    assert!(
        matches!(&e, ModelError::TensorShape { name, expected, found }
            if name == scale && expected == &[1, 1] && found == &[1, 2]),
        "{e}"
    );
}

#[test]
fn committed_fuzz_seeds_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let seed = std::fs::read(root.join("safetensors_header/micro.safetensors")).unwrap();
    open_bytes(seed).unwrap();
    let cfg = std::fs::read_to_string(root.join("config_json/micro.json")).unwrap();
    assert_eq!(ModelConfig::from_json_str(&cfg).unwrap(), micro_config());
    for seed in ["tiny-byte-level.json", "deepseek-v3-trimmed.json"] {
        let text = std::fs::read_to_string(root.join("tokenizer_json").join(seed)).unwrap();
        let tok = model::tokenizer::Tokenizer::from_json(seed, text, None).unwrap();
        let ids = tok
            .encode_chat(&[model::tokenizer::ChatMessage::user("Hi 42")], true)
            .unwrap();
        assert_eq!(ids[0], tok.bos_id(), "{seed}");
    }
}

/// Regenerates the seed corpus of fuzz/ from the micro config and the fixtures:
/// `cargo test -p model --test loading_fuzz -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand after changing the micro config"]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let full = micro_bytes();
    put("safetensors_header", "micro.safetensors", full);
    // Without the MTP layer (it is optional), and a truncated file.
    let no_mtp: Vec<TensorData> = micro_tensors()
        .iter()
        .filter(|t| !t.name.starts_with("model.layers.2."))
        .cloned()
        .collect();
    put(
        "safetensors_header",
        "micro-no-mtp.safetensors",
        &safetensors_bytes(&no_mtp),
    );
    put(
        "safetensors_header",
        "truncated.safetensors",
        &full[..full.len() / 3],
    );

    let dir = TempDir::new("fuzz-seeds");
    write_checkpoint(dir.path(), &micro_config(), micro_tensors(), 3).unwrap();
    put(
        "index_json",
        "micro-3-shards.json",
        &std::fs::read(dir.file(INDEX_FILE)).unwrap(),
    );
    put(
        "index_json",
        "small.json",
        br#"{"metadata": {"total_size": 12}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}"#,
    );

    put("config_json", "micro.json", MICRO_CONFIG.as_bytes());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (name, file) in [
        ("hf-v3-tiny.json", "hf-v3-tiny/config.json"),
        ("hf-v2-lite-tiny.json", "hf-v2-lite-tiny/config.json"),
    ] {
        put(
            "config_json",
            name,
            &std::fs::read(fixtures.join(file)).unwrap(),
        );
    }
    put(
        "config_json",
        "deepseek-v3.json",
        ModelConfig::deepseek_v3().to_json_string().as_bytes(),
    );
    // Structured mode of the config_json target: 0xff, then (key index, kind, 8 value bytes).
    let op = |key: u8, kind: u8, value: u64| {
        let mut v = vec![key, kind];
        v.extend(value.to_le_bytes());
        v
    };
    let structured = [
        (
            "structured-1",
            [vec![0xff], op(4, 1, 3), op(12, 2, 3)].concat(),
        ),
        (
            "structured-2",
            [vec![0xff], op(30, 3, 40f64.to_bits()), op(7, 5, 0)].concat(),
        ),
    ];
    for (name, bytes) in structured {
        put("config_json", name, &bytes);
    }

    let tiny = serde_json::to_string_pretty(&model::tiny::tokenizer_json()).unwrap();
    put("tokenizer_json", "tiny-byte-level.json", tiny.as_bytes());

    for (name, text) in [
        ("hello", "Hello!"),
        ("system-user", "sYou are helpful.\x1eWhat is 2+2?"),
        (
            "multi-turn",
            "uHi\x1eaHello<think>hmm</think>Hi there\x1eu日本語で 🙂 123 ...",
        ),
        (
            "specials",
            "!<｜User｜>x<｜end▁of▁sentence｜>\x1ea  spaces\t\ttabs\n\nlines",
        ),
    ] {
        put("chat_input", name, text.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Flipping, inserting, deleting bytes or truncating a valid file: an error or `Ok`, never a
    /// panic (a panic fails the test).
    #[test]
    fn mutated_safetensors_never_panic(
        edits in prop::collection::vec((0u8..4, any::<prop::sample::Index>(), any::<u8>()), 1..6)
    ) {
        let mut bytes = micro_bytes().to_vec();
        for (kind, at, byte) in edits {
            mutate(&mut bytes, kind, at, byte);
        }
        if let Err(e) = open_bytes(bytes) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn mutated_config_never_panics(
        edits in prop::collection::vec((0u8..4, any::<prop::sample::Index>(), any::<u8>()), 1..6)
    ) {
        let mut bytes = MICRO_CONFIG.as_bytes().to_vec();
        for (kind, at, byte) in edits {
            mutate(&mut bytes, kind, at, byte);
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(cfg) = ModelConfig::from_json_str(&text) {
            // A config that still parses drives the loader: same file, maybe other tensors.
            let _ = Checkpoint::from_bytes(NAME, micro_bytes().to_vec(), cfg);
        }
    }
}

/// One edit: 0 flips a bit, 1 inserts `byte`, 2 deletes, 3 truncates, at `at`.
fn mutate(bytes: &mut Vec<u8>, kind: u8, at: prop::sample::Index, byte: u8) {
    if bytes.is_empty() {
        bytes.push(byte);
        return;
    }
    let i = at.index(bytes.len());
    match kind {
        0 => bytes[i] ^= 1 << (byte % 8),
        1 => bytes.insert(i, byte),
        2 => {
            bytes.remove(i);
        }
        _ => bytes.truncate(i),
    }
}

/// The tiny byte-level tokenizer.json as text, with `edit` applied to the text.
fn tiny_tokenizer_text(edit: impl FnOnce(String) -> String) -> String {
    edit(serde_json::to_string_pretty(&model::tiny::tokenizer_json()).unwrap())
}

fn tokenizer_error(text: String) -> String {
    let e = model::tokenizer::Tokenizer::from_json("fuzz/tokenizer.json", text, None)
        .expect_err("the tokenizer should be rejected");
    let text = e.to_string();
    assert!(
        matches!(&e, ModelError::Tokenizer { file, .. } if file == Path::new("fuzz/tokenizer.json")),
        "{text}"
    );
    text
}

#[test]
fn tiny_tokenizer_loads_from_text() {
    let tok =
        model::tokenizer::Tokenizer::from_json("t.json", tiny_tokenizer_text(|t| t), None).unwrap();
    assert_eq!(tok.encode("hi", false).unwrap().len(), 2);
}

/// Found by fuzz/fuzz_targets/tokenizer_json.rs: a JSON syntax error inside the `decoder`
/// section (here a raw control character in a key) made `tokenizers` panic (`expect("Helper")`),
/// which surfaced only as "the tokenizers crate panicked". The JSON is now parsed first, so the
/// error says what is wrong and where.
#[test]
fn json_syntax_error_inside_the_decoder_is_named() {
    let text = tiny_tokenizer_text(|t| {
        let at = t.find("\"decoder\"").unwrap();
        let key = t[at..].find("\"add_prefix_space").unwrap() + at + 1;
        format!("{}\u{0}\u{0}{}", &t[..key], &t[key..])
    });
    let e = tokenizer_error(text);
    assert!(
        e.contains("invalid JSON") && e.contains("control character"),
        "{e}"
    );
    assert!(e.contains("line "), "{e}");
}

fn micro_json() -> Value {
    serde_json::from_str(MICRO_CONFIG).unwrap()
}

fn config_error(edit: impl FnOnce(&mut Value)) -> (String, String) {
    let mut v = micro_json();
    edit(&mut v);
    let e = ModelConfig::from_json(&v).expect_err("the config should be rejected");
    (
        e.config_key().expect("a config error").to_string(),
        e.to_string(),
    )
}

/// Sizes far beyond any model: `num_hidden_layers + num_nextn_predict_layers` overflowed `usize`
/// in validation (a panic with overflow checks), and counts that fit still asked
/// `expected_tensors` for billions of entries or overflowed shape products. Now bounded first.
#[test]
fn absurd_sizes_are_refused_before_anything_is_derived() {
    let (key, e) = config_error(|v| v["num_hidden_layers"] = json!(u64::MAX));
    assert_eq!(key, "num_hidden_layers", "{e}");
    assert!(
        e.contains("larger than this implementation supports"),
        "{e}"
    );

    // Fits in usize, but layers x experts would be ~10^12 tensor entries.
    let (key, e) = config_error(|v| {
        v["num_hidden_layers"] = json!(1 << 20);
        v["n_routed_experts"] = json!(1 << 20);
    });
    assert_eq!(key, "n_routed_experts", "{e}");
    assert!(e.contains("tensors"), "{e}");

    // Few tensors, each with ~2^72 elements.
    let (key, e) = config_error(|v| {
        v["vocab_size"] = json!(1 << 24);
        v["hidden_size"] = json!(1 << 24);
        v["num_attention_heads"] = json!(1 << 24);
    });
    assert_eq!(key, "config.json", "{e}");
    assert!(e.contains("parameters"), "{e}");

    // Found by fuzz/fuzz_targets/config_json.rs (structured mode) before the limits: an
    // expert width of ~3.9e16 passed validation and overflowed `param_counts`.
    let (key, e) = config_error(|v| {
        v["moe_intermediate_size"] = json!(0x008b_0000_0000_0000u64);
        v["n_routed_experts"] = json!(8);
    });
    assert_eq!(key, "moe_intermediate_size", "{e}");

    // The released sizes pass.
    ModelConfig::deepseek_v3().validate().unwrap();
}
