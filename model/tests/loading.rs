//! Loading the tiny checkpoint, and every way a checkpoint directory can be broken: each one must
//! give an error that names the file, tensor or key.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use half::bf16;
use kernels::DType;
use model::checkpoint::{
    expected_tensors, write_checkpoint, write_safetensors, Fp8Policy, LinearWeight, TensorData,
    INDEX_FILE, SINGLE_FILE,
};
use model::config::{ScoringFunc, TopkMethod};
use model::tiny::{
    generate_tensors, tiny_config, write_tiny, write_tiny_sharded, TINY_SEED, TINY_SPECIAL_TOKENS,
};
use model::{Checkpoint, ModelConfig, ModelError};
use serde_json::{json, Value};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "dsv3-model-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tiny model's tensors, generated once.
fn tiny_tensors() -> &'static [TensorData] {
    static T: OnceLock<Vec<TensorData>> = OnceLock::new();
    T.get_or_init(|| generate_tensors(&tiny_config(), TINY_SEED))
}

/// Writes the tiny config and `tensors` (one file) to a fresh directory.
fn write_dir(tag: &str, tensors: &[TensorData]) -> TempDir {
    let dir = TempDir::new(tag);
    write_checkpoint(dir.path(), &tiny_config(), tensors, 1).unwrap();
    dir
}

/// The tiny tensors with `f` applied.
fn mutated(f: impl FnOnce(&mut Vec<TensorData>)) -> Vec<TensorData> {
    let mut t = tiny_tensors().to_vec();
    f(&mut t);
    t
}

fn find<'a>(t: &'a mut [TensorData], name: &str) -> &'a mut TensorData {
    t.iter_mut()
        .find(|x| x.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

fn open_err(dir: &TempDir) -> ModelError {
    Checkpoint::open(dir.path()).expect_err("the checkpoint should be rejected")
}

/// Asserts `e` is a safetensors-structure error about `file`, and returns its detail.
fn assert_safetensors_error(e: &ModelError, file: &Path) -> String {
    match e {
        ModelError::Safetensors { file: f, detail } => {
            assert_eq!(f, file);
            assert!(e.to_string().contains(&file.display().to_string()), "{e}");
            detail.clone()
        }
        other => panic!(
            "expected a safetensors error about {}, got {other}",
            file.display()
        ),
    }
}

/// Splits a safetensors file into (header JSON, data bytes).
fn read_parts(path: &Path) -> (Value, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

/// Rewrites a safetensors file's header (the data stays as it is).
fn rewrite_header(path: &Path, f: impl FnOnce(&mut Value)) {
    let (mut header, data) = read_parts(path);
    f(&mut header);
    let mut text = serde_json::to_vec(&header).unwrap();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

fn offsets(header: &Value, name: &str) -> (u64, u64) {
    let o = &header[name]["data_offsets"];
    (o[0].as_u64().unwrap(), o[1].as_u64().unwrap())
}

/// The name of the tensor stored last in a file's data section.
fn last_tensor(header: &Value) -> String {
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .max_by_key(|(_, v)| v["data_offsets"][1].as_u64().unwrap())
        .map(|(k, _)| k.clone())
        .unwrap()
}

fn rewrite_config(dir: &TempDir, f: impl FnOnce(&mut Value)) {
    let path = dir.file("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn tiny_checkpoint_opens_and_every_tensor_is_readable() {
    let dir = TempDir::new("tiny");
    let cfg = write_tiny(dir.path(), TINY_SEED).unwrap();
    assert_eq!(cfg, tiny_config());
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.config(), &tiny_config());
    assert_eq!(ckpt.files(), vec![dir.file(SINGLE_FILE).as_path()]);
    assert_eq!(ckpt.num_mtp_layers(), 1);
    let specs = expected_tensors(&cfg, Fp8Policy::Released);
    assert_eq!(ckpt.specs(), specs.as_slice());
    ckpt.check_finite().unwrap();

    // Every tensor is there with the generated bytes, and readable through its typed view.
    let generated = tiny_tensors();
    assert_eq!(generated.len(), specs.len());
    for t in generated {
        assert_eq!(
            ckpt.bytes(&t.name).unwrap(),
            t.data.as_slice(),
            "{}",
            t.name
        );
        let info = ckpt.info(&t.name).unwrap();
        assert_eq!((info.dtype, info.shape), (t.dtype, t.shape.as_slice()));
        match t.dtype {
            DType::Bf16 => assert_eq!(ckpt.bf16(&t.name).unwrap().len(), t.numel()),
            DType::F32 => assert_eq!(ckpt.f32(&t.name).unwrap().len(), t.numel()),
            DType::E4m3 => {
                let w = ckpt.fp8_weight(&t.name).unwrap();
                assert_eq!((w.n, w.k), (t.shape[0], t.shape[1]));
                assert_eq!(w.q.len(), t.numel());
                assert_eq!(
                    w.scales.len(),
                    t.shape[0].div_ceil(128) * t.shape[1].div_ceil(128)
                );
                assert!(w.scales.iter().all(|s| s.is_finite() && *s > 0.0));
            }
            other => panic!("unexpected dtype {other}"),
        }
    }

    // The features the tiny model exists to exercise.
    let kv_a = ckpt
        .fp8_weight("model.layers.1.self_attn.kv_a_proj_with_mqa.weight")
        .unwrap();
    assert_eq!((kv_a.n, kv_a.k, kv_a.scales.len()), (576, 256, 5 * 2));
    let w = kv_a.dequantize();
    let rms = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
    assert!((rms - 1.0 / 16.0).abs() < 0.01, "rms {rms}");
    match ckpt.linear("model.layers.4.eh_proj.weight").unwrap() {
        LinearWeight::Bf16 { n, k, .. } => assert_eq!((n, k), (256, 512)),
        other => panic!("eh_proj should be BF16, got {:?}", other.dims()),
    }
    assert!(matches!(
        ckpt.linear("model.layers.3.mlp.experts.15.down_proj.weight")
            .unwrap(),
        LinearWeight::Fp8(_)
    ));
    let bias = ckpt
        .f32("model.layers.2.mlp.gate.e_score_correction_bias")
        .unwrap();
    assert_eq!(bias.len(), 16);
    assert!(bias.iter().any(|&b| b != 0.0));
    let norm = ckpt
        .to_f32("model.layers.0.input_layernorm.weight")
        .unwrap();
    let mean = norm.iter().sum::<f32>() / norm.len() as f32;
    assert!((mean - 1.0).abs() < 0.05, "norm mean {mean}");
    // MTP copies of the embedding and the head.
    assert_eq!(
        ckpt.bytes("model.layers.4.embed_tokens.weight").unwrap(),
        ckpt.bytes("model.embed_tokens.weight").unwrap()
    );
    assert_eq!(
        ckpt.bytes("model.layers.4.shared_head.head.weight")
            .unwrap(),
        ckpt.bytes("lm_head.weight").unwrap()
    );

    // Typed views check the dtype; unknown names are missing tensors.
    match ckpt.bf16("model.layers.2.mlp.gate.e_score_correction_bias") {
        Err(ModelError::TensorDtype {
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, "model.layers.2.mlp.gate.e_score_correction_bias");
            assert_eq!((expected.as_str(), found.as_str()), ("BF16", "F32"));
        }
        other => panic!("expected a dtype error, got {other:?}"),
    }
    assert!(matches!(
        ckpt.f32("nope"),
        Err(ModelError::MissingTensor { name }) if name == "nope"
    ));

    // The tokenizer: 256 byte tokens plus the specials.
    let tok: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.file("tokenizer.json")).unwrap())
            .unwrap();
    assert_eq!(tok["model"]["type"], "BPE");
    assert_eq!(tok["model"]["vocab"].as_object().unwrap().len(), 256);
    assert_eq!(tok["model"]["vocab"]["Ġ"], 32);
    let added = tok["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), TINY_SPECIAL_TOKENS.len());
    assert_eq!(added[0]["id"], json!(cfg.bos_token_id.unwrap()));
    assert!(added
        .iter()
        .all(|a| (a["id"].as_u64().unwrap() as usize) < cfg.vocab_size));
}

#[test]
fn write_tiny_is_deterministic() {
    let (a, b, c) = (
        TempDir::new("det-a"),
        TempDir::new("det-b"),
        TempDir::new("det-c"),
    );
    write_tiny(a.path(), 42).unwrap();
    write_tiny(b.path(), 42).unwrap();
    write_tiny(c.path(), 43).unwrap();
    let read = |d: &TempDir, f: &str| std::fs::read(d.file(f)).unwrap();
    for f in [SINGLE_FILE, "config.json", "tokenizer.json"] {
        assert_eq!(read(&a, f), read(&b, f), "{f}");
    }
    assert_ne!(read(&a, SINGLE_FILE), read(&c, SINGLE_FILE));
    assert_eq!(read(&a, "config.json"), read(&c, "config.json"));
}

#[test]
fn missing_tensor_is_named() {
    for name in [
        "model.layers.2.self_attn.kv_b_proj.weight",
        "model.layers.1.mlp.experts.7.up_proj.weight_scale_inv",
        "lm_head.weight",
        "model.layers.3.mlp.gate.e_score_correction_bias",
    ] {
        let dir = write_dir("missing", &mutated(|t| t.retain(|x| x.name != name)));
        match open_err(&dir) {
            ModelError::MissingTensor { name: n } => assert_eq!(n, name),
            other => panic!("dropping {name}: expected MissingTensor, got {other}"),
        }
    }
}

#[test]
fn extra_tensor_is_named_with_its_file() {
    let name = "model.layers.0.mlp.experts.0.gate_proj.weight"; // layer 0 is dense
    let dir = write_dir(
        "extra",
        &mutated(|t| {
            t.push(TensorData::bf16(name, vec![2, 2], &[bf16::ONE; 4]));
        }),
    );
    let e = open_err(&dir);
    match &e {
        ModelError::UnexpectedTensor { name: n, file } => {
            assert_eq!(n, name);
            assert_eq!(file, &dir.file(SINGLE_FILE));
        }
        other => panic!("expected UnexpectedTensor, got {other}"),
    }
    assert!(e.to_string().contains(name) && e.to_string().contains(SINGLE_FILE));
}

#[test]
fn wrong_dtype_is_named() {
    let gate = "model.layers.1.mlp.gate.weight";
    let dir = write_dir(
        "dtype",
        &mutated(|t| {
            let g = find(t, gate);
            let n = g.numel();
            *g = TensorData::f32(gate, g.shape.clone(), &vec![0.5; n]);
        }),
    );
    match open_err(&dir) {
        ModelError::TensorDtype {
            name,
            expected,
            found,
        } => assert_eq!(
            (name.as_str(), expected.as_str(), found.as_str()),
            (gate, "BF16", "F32")
        ),
        other => panic!("expected TensorDtype, got {other}"),
    }

    // An FP8 weight stored as BF16 (no re-quantization) is caught too.
    let w = "model.layers.0.self_attn.o_proj.weight";
    let dir = write_dir(
        "dtype-fp8",
        &mutated(|t| {
            let x = find(t, w);
            let n = x.numel();
            *x = TensorData::bf16(w, x.shape.clone(), &vec![bf16::ZERO; n]);
        }),
    );
    match open_err(&dir) {
        ModelError::TensorDtype {
            name,
            expected,
            found,
        } => assert_eq!(
            (name.as_str(), expected.as_str(), found.as_str()),
            (w, "F8_E4M3", "BF16")
        ),
        other => panic!("expected TensorDtype, got {other}"),
    }
}

#[test]
fn wrong_shape_is_named() {
    // Same bytes, transposed shape.
    let name = "model.layers.1.self_attn.kv_a_proj_with_mqa.weight";
    let dir = write_dir("shape", &mutated(|t| find(t, name).shape = vec![256, 576]));
    match open_err(&dir) {
        ModelError::TensorShape {
            name: n,
            expected,
            found,
        } => {
            assert_eq!(n, name);
            assert_eq!((expected, found), (vec![576, 256], vec![256, 576]));
        }
        other => panic!("expected TensorShape, got {other}"),
    }

    let scale = "model.layers.1.self_attn.kv_a_proj_with_mqa.weight_scale_inv";
    let dir = write_dir(
        "shape-scale",
        &mutated(|t| *find(t, scale) = TensorData::f32(scale, vec![1, 2], &[1.0, 1.0])),
    );
    match open_err(&dir) {
        ModelError::TensorShape { name, expected, .. } => {
            assert_eq!((name.as_str(), expected), (scale, vec![5, 2]));
        }
        other => panic!("expected TensorShape, got {other}"),
    }
}

#[test]
fn truncated_or_padded_file_names_the_file() {
    let dir = write_dir("trunc", tiny_tensors());
    let path = dir.file(SINGLE_FILE);
    let full = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    // Cut in the data, in the header, in the length prefix, to nothing; and extra bytes.
    let mut longer = full.clone();
    longer.extend([0u8; 16]);
    for bytes in [
        &full[..full.len() - 100],
        &full[..8 + n / 2],
        &full[..4],
        &full[..0],
        longer.as_slice(),
    ] {
        std::fs::write(&path, bytes).unwrap();
        assert_safetensors_error(&open_err(&dir), &path);
    }
}

#[test]
fn corrupt_header_length_names_the_file() {
    let dir = write_dir("hdrlen", tiny_tensors());
    let path = dir.file(SINGLE_FILE);
    let full = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(full[..8].try_into().unwrap());
    for bad in [u64::MAX, full.len() as u64, n + 8, n - 1, 0] {
        let mut bytes = full.clone();
        bytes[..8].copy_from_slice(&bad.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        assert_safetensors_error(&open_err(&dir), &path);
    }
    // Header bytes that are not JSON.
    let mut bytes = full.clone();
    bytes[8..16].copy_from_slice(b"\xff\xfe{{{{{{");
    std::fs::write(&path, bytes).unwrap();
    assert_safetensors_error(&open_err(&dir), &path);
}

#[test]
fn offsets_beyond_the_file_or_overlapping_are_rejected() {
    let dir = write_dir("offsets", tiny_tensors());
    let path = dir.file(SINGLE_FILE);
    let pristine = std::fs::read(&path).unwrap();
    let (header, _) = read_parts(&path);
    let last = last_tensor(&header);
    let (s, e) = offsets(&header, &last);

    // The last tensor's range moved past the end of the file.
    rewrite_header(&path, |h| {
        h[&last]["data_offsets"] = json!([s + 4096, e + 4096])
    });
    let detail = assert_safetensors_error(&open_err(&dir), &path);
    assert!(detail.contains(&last), "{detail}");

    // The last tensor's end beyond the file.
    std::fs::write(&path, &pristine).unwrap();
    rewrite_header(&path, |h| h[&last]["data_offsets"] = json!([s, e + 4096]));
    assert_safetensors_error(&open_err(&dir), &path);

    // Offsets that overflow.
    std::fs::write(&path, &pristine).unwrap();
    rewrite_header(&path, |h| h[&last]["data_offsets"] = json!([s, u64::MAX]));
    assert_safetensors_error(&open_err(&dir), &path);

    // Two tensors sharing bytes: the last one pointed at the range of the one before it.
    std::fs::write(&path, &pristine).unwrap();
    let prev = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .find(|(_, v)| v["data_offsets"][1].as_u64() == Some(s))
        .map(|(k, _)| k.clone())
        .unwrap();
    let (ps, pe) = offsets(&header, &prev);
    let shape = header[&prev]["shape"].clone();
    let dtype = header[&prev]["dtype"].clone();
    rewrite_header(&path, |h| {
        h[&last] = json!({"dtype": dtype, "shape": shape, "data_offsets": [ps, pe]});
    });
    let detail = assert_safetensors_error(&open_err(&dir), &path);
    assert!(detail.contains("offset"), "{detail}");

    // A shape that does not fit its byte range.
    std::fs::write(&path, &pristine).unwrap();
    rewrite_header(&path, |h| h[&last]["shape"] = json!([1, 1]));
    assert_safetensors_error(&open_err(&dir), &path);

    // An unknown dtype in the header.
    std::fs::write(&path, &pristine).unwrap();
    rewrite_header(&path, |h| h[&last]["dtype"] = json!("Q4_K"));
    assert_safetensors_error(&open_err(&dir), &path);

    // The untouched file still opens.
    std::fs::write(&path, &pristine).unwrap();
    Checkpoint::open(dir.path()).unwrap();
}

/// An edit of config.json.
type ConfigEdit = Box<dyn Fn(&mut Value)>;
/// Writes a non-finite value at a flat index of a tensor.
type Poison = Box<dyn Fn(&mut TensorData, usize)>;

#[test]
fn bad_config_keys_are_named() {
    let dir = write_dir("config", tiny_tensors());
    let cases: Vec<(&str, ConfigEdit)> = vec![
        ("n_group", Box::new(|v| v["n_group"] = json!(3))),
        (
            "quantization_config.quant_method",
            Box::new(|v| v["quantization_config"]["quant_method"] = json!("gptq")),
        ),
        (
            "rope_scaling.type",
            Box::new(|v| v["rope_scaling"]["type"] = json!("longrope")),
        ),
        ("model_type", Box::new(|v| v["model_type"] = json!("qwen2"))),
        (
            "num_experts_per_tok",
            Box::new(|v| v["num_experts_per_tok"] = json!(12)),
        ),
        ("hidden_size", Box::new(|v| v["hidden_size"] = json!(256.5))),
    ];
    for (key, edit) in cases {
        let pristine = std::fs::read(dir.file("config.json")).unwrap();
        rewrite_config(&dir, edit);
        let e = open_err(&dir);
        assert_eq!(e.config_key(), Some(key), "{e}");
        assert!(e.to_string().contains(key));
        std::fs::write(dir.file("config.json"), pristine).unwrap();
    }
    // config.json missing or not JSON.
    std::fs::write(dir.file("config.json"), "{").unwrap();
    assert_eq!(open_err(&dir).config_key(), Some("config.json"));
    std::fs::remove_file(dir.file("config.json")).unwrap();
    match open_err(&dir) {
        ModelError::Io { path, .. } => assert_eq!(path, dir.file("config.json")),
        other => panic!("expected Io, got {other}"),
    }
}

#[test]
fn both_rope_spellings_load_the_same_model() {
    let dir = write_dir("rope", tiny_tensors());
    rewrite_config(&dir, |v| {
        let mut params = v["rope_scaling"].take();
        let obj = params.as_object_mut().unwrap();
        obj.remove("type");
        obj.insert("rope_type".into(), json!("yarn"));
        obj.insert("rope_theta".into(), v["rope_theta"].take());
        let top = v.as_object_mut().unwrap();
        top.remove("rope_scaling");
        top.remove("rope_theta");
        top.insert("rope_parameters".into(), params);
    });
    let text = std::fs::read_to_string(dir.file("config.json")).unwrap();
    assert!(text.contains("rope_parameters") && !text.contains("rope_scaling"));
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.config(), &tiny_config());

    // Both at once with a contradiction: the key is named.
    rewrite_config(&dir, |v| {
        v["rope_scaling"] = json!({"type": "yarn", "factor": 8.0,
            "original_max_position_embeddings": 128});
    });
    assert_eq!(open_err(&dir).config_key(), Some("rope_parameters.factor"));
}

#[test]
fn fp8_weights_without_quantization_config_are_rejected() {
    let dir = write_dir("noquant", tiny_tensors());
    rewrite_config(&dir, |v| {
        v.as_object_mut().unwrap().remove("quantization_config");
    });
    match open_err(&dir) {
        ModelError::TensorDtype {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, "model.layers.0.self_attn.q_a_proj.weight");
            assert_eq!((expected.as_str(), found.as_str()), ("BF16", "F8_E4M3"));
        }
        other => panic!("expected TensorDtype, got {other}"),
    }
}

#[test]
fn non_finite_values_are_found_on_request() {
    let cases: [(&str, usize, Poison); 4] = [
        (
            "model.layers.1.input_layernorm.weight",
            7,
            Box::new(|t, i| {
                t.data[2 * i..2 * i + 2].copy_from_slice(&bf16::NAN.to_bits().to_le_bytes())
            }),
        ),
        (
            "lm_head.weight",
            1000,
            Box::new(|t, i| {
                t.data[2 * i..2 * i + 2]
                    .copy_from_slice(&bf16::NEG_INFINITY.to_bits().to_le_bytes())
            }),
        ),
        // e4m3 NaN codes: 0xff and 0x7f.
        (
            "model.layers.2.mlp.experts.3.down_proj.weight",
            3,
            Box::new(|t, i| t.data[i] = 0xff),
        ),
        (
            "model.layers.2.mlp.gate.e_score_correction_bias",
            5,
            Box::new(|t, i| t.data[4 * i..4 * i + 4].copy_from_slice(&f32::INFINITY.to_le_bytes())),
        ),
    ];
    for (name, index, poison) in cases {
        let dir = write_dir("nan", &mutated(|t| poison(find(t, name), index)));
        let ckpt = Checkpoint::open(dir.path()).expect("structure is fine; values are not checked");
        match ckpt.check_finite() {
            Err(ModelError::NonFinite { name: n, index: i }) => {
                assert_eq!((n.as_str(), i), (name, index))
            }
            other => panic!("{name}: expected NonFinite, got {other:?}"),
        }
        assert!(ckpt.check_finite_tensor(name).is_err());
        ckpt.check_finite_tensor("model.norm.weight").unwrap();
    }
    let dir = write_dir(
        "nan-7f",
        &mutated(|t| find(t, "model.layers.0.mlp.up_proj.weight").data[9] = 0x7f),
    );
    let e = Checkpoint::open(dir.path())
        .unwrap()
        .check_finite()
        .unwrap_err();
    assert_eq!(e.tensor_name(), Some("model.layers.0.mlp.up_proj.weight"));
    assert!(e.to_string().contains("element 9"), "{e}");
}

#[test]
fn missing_mtp_layer_is_allowed_but_a_partial_one_is_not() {
    let dir = write_dir(
        "no-mtp",
        &mutated(|t| t.retain(|x| !x.name.starts_with("model.layers.4."))),
    );
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.num_mtp_layers(), 0);
    assert_eq!(ckpt.config().num_nextn_predict_layers, 1);
    assert!(ckpt.specs().iter().all(|s| s.layer != Some(4)));
    ckpt.check_finite().unwrap();

    let dir = write_dir(
        "half-mtp",
        &mutated(|t| t.retain(|x| x.name != "model.layers.4.hnorm.weight")),
    );
    match open_err(&dir) {
        ModelError::MissingTensor { name } => assert_eq!(name, "model.layers.4.hnorm.weight"),
        other => panic!("expected MissingTensor, got {other}"),
    }

    // A second MTP layer's tensors when the config announces one: unexpected.
    let dir = write_dir(
        "mtp-extra",
        &mutated(|t| {
            t.push(TensorData::bf16(
                "model.layers.5.enorm.weight",
                vec![256],
                &[bf16::ONE; 256],
            ))
        }),
    );
    assert_eq!(
        open_err(&dir).tensor_name(),
        Some("model.layers.5.enorm.weight")
    );
}

#[test]
fn sharded_checkpoint_loads_like_the_single_file() {
    let dir = TempDir::new("shards");
    write_tiny_sharded(dir.path(), TINY_SEED, 3).unwrap();
    assert!(!dir.file(SINGLE_FILE).exists());
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.files().len(), 3);
    assert_eq!(ckpt.num_mtp_layers(), 1);
    for t in tiny_tensors() {
        assert_eq!(
            ckpt.bytes(&t.name).unwrap(),
            t.data.as_slice(),
            "{}",
            t.name
        );
    }
    ckpt.check_finite().unwrap();
}

/// A sharded tiny checkpoint and its index JSON.
fn sharded_dir(tag: &str) -> (TempDir, Value) {
    let dir = TempDir::new(tag);
    write_checkpoint(dir.path(), &tiny_config(), tiny_tensors(), 3).unwrap();
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.file(INDEX_FILE)).unwrap()).unwrap();
    (dir, index)
}

fn assert_index_error(e: &ModelError, dir: &TempDir, mentions: &str) {
    match e {
        ModelError::Index { file, detail } => {
            assert_eq!(file, &dir.file(INDEX_FILE));
            assert!(
                detail.contains(mentions),
                "{detail} should mention {mentions}"
            );
        }
        other => panic!("expected an index error, got {other}"),
    }
}

#[test]
fn index_naming_a_missing_shard_is_an_error() {
    let (dir, _) = sharded_dir("shard-missing");
    let shard = "model-00002-of-00003.safetensors";
    std::fs::remove_file(dir.file(shard)).unwrap();
    assert_index_error(&open_err(&dir), &dir, shard);
}

#[test]
fn index_and_shards_must_agree() {
    // A tensor stored in two shards.
    let (dir, index) = sharded_dir("shard-dup");
    let name = "lm_head.weight";
    let home = index["weight_map"][name].as_str().unwrap().to_string();
    let other = if home == "model-00003-of-00003.safetensors" {
        "model-00001-of-00003.safetensors"
    } else {
        "model-00003-of-00003.safetensors"
    };
    let mut in_other: Vec<TensorData> = tiny_tensors()
        .iter()
        .filter(|t| index["weight_map"][&t.name] == other)
        .cloned()
        .collect();
    in_other.push(
        tiny_tensors()
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .clone(),
    );
    write_safetensors(&dir.file(other), &in_other).unwrap();
    match open_err(&dir) {
        ModelError::DuplicateTensor {
            name: n,
            first,
            second,
        } => {
            assert_eq!(n, name);
            let mut files = [first, second];
            files.sort();
            let mut want = [dir.file(&home), dir.file(other)];
            want.sort();
            assert_eq!(files, want);
        }
        e => panic!("expected DuplicateTensor, got {e}"),
    }

    // The index maps a tensor to the wrong shard.
    let (dir, mut index) = sharded_dir("shard-wrong");
    let home = index["weight_map"][name].as_str().unwrap().to_string();
    let wrong = if home.contains("00001") {
        "model-00002-of-00003.safetensors"
    } else {
        "model-00001-of-00003.safetensors"
    };
    index["weight_map"][name] = json!(wrong);
    std::fs::write(dir.file(INDEX_FILE), index.to_string()).unwrap();
    assert_index_error(&open_err(&dir), &dir, name);

    // The index omits a tensor a shard holds.
    let (dir, mut index) = sharded_dir("shard-unlisted");
    index["weight_map"].as_object_mut().unwrap().remove(name);
    std::fs::write(dir.file(INDEX_FILE), index.to_string()).unwrap();
    assert_index_error(&open_err(&dir), &dir, name);

    // The index lists a tensor no shard holds.
    let (dir, mut index) = sharded_dir("shard-phantom");
    index["weight_map"]["model.layers.9.phantom.weight"] =
        json!("model-00001-of-00003.safetensors");
    std::fs::write(dir.file(INDEX_FILE), index.to_string()).unwrap();
    assert_index_error(&open_err(&dir), &dir, "model.layers.9.phantom.weight");

    // A tensor listed twice in the index JSON.
    let (dir, _) = sharded_dir("shard-twice");
    let text = std::fs::read_to_string(dir.file(INDEX_FILE)).unwrap();
    let text = text.replacen(
        "\"weight_map\": {",
        "\"weight_map\": {\n    \"lm_head.weight\": \"model-00001-of-00003.safetensors\",",
        1,
    );
    std::fs::write(dir.file(INDEX_FILE), text).unwrap();
    assert_index_error(&open_err(&dir), &dir, "lm_head.weight");

    // A shard path that leaves the directory.
    let (dir, mut index) = sharded_dir("shard-escape");
    index["weight_map"][name] = json!("../model-00001-of-00003.safetensors");
    std::fs::write(dir.file(INDEX_FILE), index.to_string()).unwrap();
    assert_index_error(&open_err(&dir), &dir, "../");

    // Not JSON at all.
    let (dir, _) = sharded_dir("shard-json");
    std::fs::write(dir.file(INDEX_FILE), "[1, 2").unwrap();
    assert_index_error(&open_err(&dir), &dir, "JSON");

    // A corrupt shard is named.
    let (dir, _) = sharded_dir("shard-corrupt");
    let shard = dir.file("model-00003-of-00003.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 1]).unwrap();
    assert_safetensors_error(&open_err(&dir), &shard);
}

#[test]
fn ambiguous_or_absent_weight_files() {
    let (dir, _) = sharded_dir("both");
    write_safetensors(&dir.file(SINGLE_FILE), tiny_tensors()).unwrap();
    assert_index_error(&open_err(&dir), &dir, SINGLE_FILE);

    let dir = TempDir::new("none");
    std::fs::write(dir.file("config.json"), tiny_config().to_json_string()).unwrap();
    match open_err(&dir) {
        ModelError::Io { path, source } => {
            assert_eq!(path, dir.file(SINGLE_FILE));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other}"),
    }
}

#[test]
fn deepseek_v2_style_bf16_checkpoint_loads() {
    // No query compression, softmax + greedy routing (no score bias), no FP8, no MTP.
    let mut cfg = tiny_config();
    cfg.model_type = model::config::ModelType::DeepseekV2;
    cfg.q_lora_rank = None;
    cfg.scoring_func = ScoringFunc::Softmax;
    cfg.topk_method = TopkMethod::Greedy;
    cfg.n_group = 1;
    cfg.topk_group = 1;
    cfg.norm_topk_prob = false;
    cfg.routed_scaling_factor = 1.0;
    cfg.quantization = None;
    cfg.num_nextn_predict_layers = 0;
    cfg.rope_scaling = None;
    cfg.validate().unwrap();
    let dir = TempDir::new("v2");
    write_checkpoint(dir.path(), &cfg, &generate_tensors(&cfg, 5), 1).unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.config(), &cfg);
    assert_eq!(ModelConfig::from_dir(dir.path()).unwrap(), cfg);
    assert!(ckpt.contains("model.layers.0.self_attn.q_proj.weight"));
    assert!(!ckpt.contains("model.layers.1.mlp.gate.e_score_correction_bias"));
    assert!(ckpt.specs().iter().all(|s| s.dtype != DType::E4m3));
    match ckpt
        .linear("model.layers.1.self_attn.q_proj.weight")
        .unwrap()
    {
        LinearWeight::Bf16 { n, k, w } => {
            assert_eq!((n, k, w.len()), (8 * 96, 256, 8 * 96 * 256));
        }
        other => panic!("expected BF16, got {:?}", other.dims()),
    }
    ckpt.check_finite().unwrap();
}
