//! Chat templates: dsv3's minijinja rendering against transformers' `apply_chat_template`
//! (`tests/fixtures/chat_templates.json`, made by `model/scripts/make_chat_template_goldens.py`:
//! DeepSeek-V3's template, llama.cpp's copies of V3.1's, R1-Distill's and Kimi-K2's, and crafted
//! templates using the Jinja features Hugging Face templates rely on), the built-in fallback
//! against V3's own template, where a checkpoint's template is found, and errors naming the file.

mod common;

use common::TempDir;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use model::tiny::{tokenizer_config_json, tokenizer_json};
use model::tokenizer::{
    chat_prompt, ChatMessage, ChatTemplate, ChatTemplateSource, Role, Tokenizer, CHAT_TEMPLATE_FILE,
};
use model::ModelError;
use proptest::prelude::*;
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The goldens file, parsed once.
fn goldens() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        let file = fixtures().join("chat_templates.json");
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        serde_json::from_str(&text).unwrap()
    })
}

/// The DeepSeek-V3 tokenizer fixture (its `tokenizer_config.json` has V3's chat template).
fn deepseek() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_dir(&fixtures().join("tokenizer")).unwrap())
}

/// A golden conversation: name, messages, add_generation_prompt.
struct Conversation {
    name: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
}

fn conversations() -> Vec<Conversation> {
    goldens()["conversations"]
        .as_array()
        .expect("`conversations`")
        .iter()
        .map(|c| Conversation {
            name: c["name"].as_str().unwrap().to_string(),
            messages: c["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let role = match m["role"].as_str().unwrap() {
                        "system" => Role::System,
                        "user" => Role::User,
                        "assistant" => Role::Assistant,
                        other => panic!("unexpected role {other}"),
                    };
                    ChatMessage::new(role, m["content"].as_str().unwrap())
                })
                .collect(),
            add_generation_prompt: c["add_generation_prompt"].as_bool().unwrap(),
        })
        .collect()
}

/// The special-token variables transformers passed (`special_tokens_map` of the fixture).
fn special_tokens() -> Vec<(String, String)> {
    goldens()["special_tokens"]
        .as_object()
        .expect("`special_tokens`")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

fn template_golden(name: &str) -> &'static Value {
    goldens()["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no template {name} in the goldens"))
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("an id")).unwrap())
        .collect()
}

/// `err` is a tokenizer error naming `file`; returns its message.
fn assert_names_file(err: &ModelError, file: &Path) -> String {
    match err {
        ModelError::Tokenizer { file: f, .. } => assert_eq!(f, file, "{err}"),
        other => panic!("expected ModelError::Tokenizer, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&file.display().to_string()),
        "does not name {}: {msg}",
        file.display()
    );
    msg
}

// ---------------------------------------------------------------------------------------------
// Against transformers.

#[test]
fn every_template_renders_as_transformers_does() {
    let templates = goldens()["templates"].as_array().unwrap();
    let names: Vec<&str> = templates
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for expected in [
        "deepseek-v3",
        "deepseek-v3.1",
        "deepseek-r1-distill-llama-8b",
        "kimi-k2",
        "kimi-k2-instruct",
        "crafted-raise",
        "crafted-syntax-error",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    let mut failures = Vec::new();
    let mut rendered = 0;
    for t in templates {
        let name = t["name"].as_str().unwrap();
        let file = PathBuf::from(format!("{name}/{}", CHAT_TEMPLATE_FILE));
        let compiled = ChatTemplate::new(t["template"].as_str().unwrap(), &file, special_tokens());
        for conv in conversations() {
            let golden = &t["cases"][&conv.name];
            let ours = compiled
                .as_ref()
                .map_err(|e| assert_names_file(e, &file))
                .and_then(|c| {
                    c.render(&conv.messages, conv.add_generation_prompt)
                        .map_err(|e| assert_names_file(&e, &file))
                });
            match (golden.get("rendered"), golden.get("error"), ours) {
                (Some(want), None, Ok(got)) => {
                    rendered += 1;
                    if want.as_str() != Some(got.as_str()) {
                        failures.push(format!(
                            "{name} / {}:\n  want {want}\n  got  {got:?}",
                            conv.name
                        ));
                    }
                }
                (None, Some(want), Err(got)) => {
                    // A `raise_exception(message)` comes through with its message.
                    let want = want.as_str().unwrap();
                    if let Some(message) = want.strip_prefix("TemplateError: ") {
                        if !got.contains(message) {
                            failures
                                .push(format!("{name} / {}: {got:?} lacks {message:?}", conv.name));
                        }
                    }
                }
                (_, _, ours) => failures.push(format!(
                    "{name} / {}: transformers gave {golden}, dsv3 gave {ours:?}",
                    conv.name
                )),
            }
        }
    }
    assert!(rendered > 100, "only {rendered} renderings compared");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The rendered texts encode (without special tokens) to transformers'
/// `apply_chat_template(..., tokenize=True)` ids.
#[test]
fn golden_ids_match_transformers() {
    let tok = deepseek();
    for t in goldens()["templates"].as_array().unwrap() {
        for (case, golden) in t["cases"].as_object().unwrap() {
            if let Some(text) = golden["rendered"].as_str() {
                assert_eq!(
                    tok.encode(text, false).unwrap(),
                    ids_of(&golden["ids"]),
                    "{} / {case}",
                    t["name"]
                );
            }
        }
    }
}

/// Through `Tokenizer::from_dir`: the fixture's own template is found and `encode_chat` gives
/// transformers' ids.
#[test]
fn deepseek_checkpoint_template_is_used_and_gives_transformers_ids() {
    let tok = deepseek();
    let config = fixtures().join("tokenizer/tokenizer_config.json");
    assert_eq!(
        tok.chat_template().unwrap(),
        ChatTemplateSource::TokenizerConfig(config)
    );
    assert_eq!(
        tok.chat_template().unwrap().to_string(),
        "from tokenizer_config.json"
    );
    let golden = template_golden("deepseek-v3");
    for conv in conversations() {
        let case = &golden["cases"][&conv.name];
        assert_eq!(
            tok.render_chat(&conv.messages, conv.add_generation_prompt)
                .unwrap(),
            case["rendered"].as_str().unwrap(),
            "{}",
            conv.name
        );
        assert_eq!(
            tok.encode_chat(&conv.messages, conv.add_generation_prompt)
                .unwrap(),
            ids_of(&case["ids"]),
            "{}",
            conv.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The built-in fallback.

/// The hand-written template renders every golden conversation exactly as V3's Jinja template.
#[test]
fn builtin_fallback_matches_deepseek_v3_template() {
    let golden = template_golden("deepseek-v3");
    for conv in conversations() {
        assert_eq!(
            chat_prompt(&conv.messages, conv.add_generation_prompt),
            golden["cases"][&conv.name]["rendered"].as_str().unwrap(),
            "{}",
            conv.name
        );
    }
}

/// A checkpoint without a template (the tiny model's config has none) gets the built-in one.
#[test]
fn checkpoint_without_template_uses_the_builtin_one() {
    let dir = tiny_tokenizer_dir("no-template", tokenizer_config_json());
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.chat_template().unwrap(), ChatTemplateSource::BuiltIn);
    assert_eq!(
        tok.chat_template().unwrap().to_string(),
        "built-in DeepSeek-V3 template (the checkpoint has none)"
    );
    let messages = [ChatMessage::system("s"), ChatMessage::user("Hi")];
    assert_eq!(
        tok.render_chat(&messages, true).unwrap(),
        chat_prompt(&messages, true)
    );
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::System), Just(Role::User), Just(Role::Assistant)]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any plain-text conversation: the fallback equals V3's Jinja template rendered by minijinja
    /// (contents drawn with `</think>`, Jinja syntax and special-token text mixed in).
    #[test]
    fn builtin_fallback_equals_v3_jinja_on_any_conversation(
        turns in prop::collection::vec(
            (role(), prop::collection::vec(
                prop_oneof![
                    any::<String>(),
                    Just("</think>".to_string()),
                    Just("{{ x }}{% if %}".to_string()),
                    Just("<｜end▁of▁sentence｜>".to_string()),
                    Just("\n\n".to_string()),
                ],
                0..4,
            )),
            0..6,
        ),
        add_generation_prompt in any::<bool>(),
    ) {
        let messages: Vec<ChatMessage> = turns
            .into_iter()
            .map(|(role, parts)| ChatMessage::new(role, parts.concat()))
            .collect();
        prop_assert_eq!(
            deepseek().render_chat(&messages, add_generation_prompt).unwrap(),
            chat_prompt(&messages, add_generation_prompt)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Where the template comes from, and errors.

/// The tiny tokenizer files in a fresh directory, with `config` as `tokenizer_config.json`.
fn tiny_tokenizer_dir(tag: &str, config: Value) -> TempDir {
    let dir = TempDir::new(tag);
    dir.write("tokenizer.json", tokenizer_json().to_string());
    dir.write("tokenizer_config.json", config.to_string());
    dir
}

fn config_with_template(template: Value) -> Value {
    let mut config = tokenizer_config_json();
    config["chat_template"] = template;
    config
}

#[test]
fn chat_template_jinja_takes_priority_over_the_config() {
    let dir = tiny_tokenizer_dir("jinja-file", config_with_template(json!("config")));
    // Read as Python reads text: CRLF becomes LF; then the one trailing newline is dropped.
    dir.write(
        CHAT_TEMPLATE_FILE,
        "file {{ bos_token }}\r\n{% for m in messages %}{{ m.content }}{% endfor %}\r\n",
    );
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(
        tok.chat_template().unwrap(),
        ChatTemplateSource::JinjaFile(dir.file(CHAT_TEMPLATE_FILE))
    );
    assert_eq!(
        tok.chat_template().unwrap().to_string(),
        "from chat_template.jinja"
    );
    let text = tok.render_chat(&[ChatMessage::user("Hi")], true).unwrap();
    assert_eq!(text, format!("file {}\nHi", tok.bos_token()));
    // Encoded without special tokens added: the template's BOS text is the one BOS.
    let ids = tok.encode_chat(&[ChatMessage::user("Hi")], true).unwrap();
    assert_eq!(ids, tok.encode(&text, false).unwrap());
    assert_eq!(ids.iter().filter(|&&i| i == tok.bos_id()).count(), 1);
}

#[test]
fn named_templates_use_default() {
    let list = json!([
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": "default {{ messages | length }}"},
    ]);
    let dir = tiny_tokenizer_dir("named", config_with_template(list));
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(
        tok.render_chat(&[ChatMessage::user("Hi")], true).unwrap(),
        "default 1"
    );
}

/// A template that cannot be used does not fail loading (raw prompts still work), but chatting
/// fails with a tokenizer error naming the file and saying why.
#[test]
fn unusable_templates_are_errors_naming_the_file() {
    let cases: [(&str, Value, &str); 5] = [
        (
            "syntax",
            json!("{% for m in messages %}{{ m.content }"),
            "syntax error",
        ),
        (
            "raise",
            json!("{{ raise_exception('roles must alternate') }}"),
            "roles must alternate",
        ),
        ("undefined", json!("{{ nothing.attribute }}"), "undefined"),
        ("shape", json!(5), "must be a string"),
        (
            "no-default",
            json!([{"name": "rag", "template": "r"}]),
            "none named \"default\"",
        ),
    ];
    for (tag, template, why) in cases {
        let dir = tiny_tokenizer_dir(tag, config_with_template(template));
        let file = dir.file("tokenizer_config.json");
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        assert!(tok.encode("raw prompt", true).is_ok());
        let messages = [ChatMessage::user("Hi")];
        for err in [
            tok.encode_chat(&messages, true).unwrap_err(),
            tok.render_chat(&messages, true).unwrap_err(),
        ] {
            let msg = assert_names_file(&err, &file);
            assert!(msg.contains(why), "{tag}: {msg}");
        }
        // `syntax`, `shape` and `no-default` are known before rendering.
        if !matches!(tag, "raise" | "undefined") {
            let msg = assert_names_file(&tok.chat_template().unwrap_err(), &file);
            assert!(msg.contains(why), "{tag}: {msg}");
        }
    }
}

#[test]
fn unreadable_chat_template_jinja_is_an_error_naming_it() {
    let dir = tiny_tokenizer_dir("bad-jinja", tokenizer_config_json());
    dir.write(CHAT_TEMPLATE_FILE, [0xff, 0xfe, b'{', 0x80]);
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_names_file(
        &tok.chat_template().unwrap_err(),
        &dir.file(CHAT_TEMPLATE_FILE),
    );
}
