//! The tokenizer: the tiny model's byte-level tokenizer (BOS handling, UTF-8 round trips,
//! streaming detokenization, the chat template, malformed files), and the real DeepSeek-V3
//! tokenizer against goldens from Hugging Face's Python `tokenizers`
//! (`tests/fixtures/tokenizer/`).

mod common;

use common::TempDir;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use model::tiny::{
    tokenizer_config_json, tokenizer_json, write_tiny, TINY_ASSISTANT, TINY_BOS, TINY_EOS,
    TINY_SEED, TINY_SPECIAL_TOKENS, TINY_USER,
};
use model::tokenizer::{chat_prompt, ChatMessage, StreamDecoder, Tokenizer, BOS_TOKEN};
use model::ModelError;
use proptest::prelude::*;
use serde_json::{json, Value};

/// The tiny model's tokenizer, loaded once from a directory written by `write_tiny` (the
/// directory is gone afterwards: a loaded tokenizer does not need its files).
fn tiny() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let dir = TempDir::new("tiny");
        write_tiny(dir.path(), TINY_SEED).unwrap();
        Tokenizer::from_dir(dir.path()).unwrap()
    })
}

/// Writes only the tiny tokenizer files (no weights) to a fresh directory.
fn tiny_tokenizer_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    dir.write("tokenizer.json", tokenizer_json().to_string());
    dir.write("tokenizer_config.json", tokenizer_config_json().to_string());
    dir
}

/// Loading `dir` fails with a tokenizer error naming `file`; returns the message.
fn expect_tokenizer_error(dir: &Path, file: &Path) -> String {
    let err = Tokenizer::from_dir(dir).expect_err("loading should fail");
    match &err {
        ModelError::Tokenizer { file: f, .. } => assert_eq!(f, file, "{err}"),
        other => panic!("expected ModelError::Tokenizer, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&file.display().to_string()),
        "message does not name {}: {msg}",
        file.display()
    );
    msg
}

/// Streams `ids` through a fresh decoder; returns the pieces (the last from `flush`).
fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut dec: StreamDecoder = tok.stream_decoder(skip_special);
    let mut pieces: Vec<String> = ids.iter().map(|&id| dec.push(id).unwrap()).collect();
    pieces.push(dec.flush().unwrap());
    pieces
}

// ---------------------------------------------------------------------------------------------
// The tiny tokenizer.

#[test]
fn tiny_tokenizer_loads_with_its_specials() {
    let tok = tiny();
    assert_eq!(tok.bos_id(), TINY_BOS);
    assert_eq!(tok.eos_id(), TINY_EOS);
    assert_eq!(tok.bos_token(), BOS_TOKEN);
    assert!(tok.add_bos_token());
    assert_eq!(tok.vocab_size(), 256 + TINY_SPECIAL_TOKENS.len());
    for (id, text) in TINY_SPECIAL_TOKENS {
        assert_eq!(tok.token_id(text), Some(id), "{text}");
    }
    // Byte-level spellings: bytes are spelled as GPT-2's printable alphabet.
    assert_eq!(tok.token_id("a"), Some(u32::from(b'a')));
    assert_eq!(tok.token_id("Ġ"), Some(u32::from(b' ')));
    assert_eq!(tok.token_id("no such token"), None);
    assert_eq!(
        tok.id_token(TINY_EOS).as_deref(),
        Some(TINY_SPECIAL_TOKENS[1].1)
    );
}

#[test]
fn bos_is_added_exactly_once_or_never() {
    // The tiny tokenizer.json's post-processor adds a BOS itself; the wrapper bypasses it.
    let tok = tiny();
    assert_eq!(tok.encode("hi", true).unwrap(), vec![TINY_BOS, 104, 105]);
    assert_eq!(tok.encode("hi", false).unwrap(), vec![104, 105]);
    assert_eq!(tok.encode("", true).unwrap(), vec![TINY_BOS]);
    assert_eq!(tok.encode("", false).unwrap(), Vec::<u32>::new());
    // One character, two byte tokens.
    assert_eq!(tok.encode("é", false).unwrap(), vec![0xc3, 0xa9]);
}

#[test]
fn special_token_text_is_one_id() {
    let tok = tiny();
    let text = format!("{BOS_TOKEN}x<｜User｜>");
    assert_eq!(
        tok.encode(&text, false).unwrap(),
        vec![TINY_BOS, u32::from(b'x'), TINY_USER]
    );
}

#[test]
fn decode_keeps_or_skips_specials() {
    let tok = tiny();
    let ids = [TINY_BOS, 104, 105, TINY_EOS];
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        format!("{BOS_TOKEN}hi<｜end▁of▁sentence｜>")
    );
    assert_eq!(tok.decode(&ids, true).unwrap(), "hi");
    // Ids beyond the tokenizer's vocabulary (the tiny model's embedding has 512 rows, the
    // tokenizer 261 ids) decode to nothing, as in Hugging Face's decode.
    assert_eq!(tok.decode(&[104, 300, 511, 105], false).unwrap(), "hi");
    // Bytes that are not UTF-8 decode lossily.
    assert_eq!(tok.decode(&[0xff, 104], false).unwrap(), "\u{FFFD}h");
}

#[test]
fn stream_decoder_holds_back_partial_characters() {
    let tok = tiny();
    let mut dec = tok.stream_decoder(false);
    // "中" is e4 b8 ad: nothing until its last byte.
    assert_eq!(dec.push(0xe4).unwrap(), "");
    assert_eq!(dec.push(0xb8).unwrap(), "");
    assert_eq!(dec.push(0xad).unwrap(), "中");
    assert_eq!(dec.push(u32::from(b'!')).unwrap(), "!");
    // A sequence ending in an incomplete character: flush gives it up as U+FFFD.
    assert_eq!(dec.push(0xf0).unwrap(), "");
    assert_eq!(dec.push(0x9f).unwrap(), "");
    assert_eq!(dec.flush().unwrap(), "\u{FFFD}");
    // After a flush the decoder starts a new sequence.
    assert_eq!(dec.push(u32::from(b'a')).unwrap(), "a");
    assert_eq!(dec.flush().unwrap(), "");
    // Skipped specials produce nothing.
    let mut dec = tok.stream_decoder(true);
    assert_eq!(dec.push(TINY_BOS).unwrap(), "");
    assert_eq!(dec.push(u32::from(b'a')).unwrap(), "a");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any UTF-8 string survives encode/decode, with and without BOS; without BOS its ids are
    /// its bytes.
    #[test]
    fn tiny_round_trips_utf8(s in any::<String>()) {
        let tok = tiny();
        let ids = tok.encode(&s, false).unwrap();
        prop_assert_eq!(&ids, &s.bytes().map(u32::from).collect::<Vec<_>>());
        prop_assert_eq!(tok.decode(&ids, false).unwrap(), s.clone());
        let with_bos = tok.encode(&s, true).unwrap();
        prop_assert_eq!(with_bos[0], TINY_BOS);
        prop_assert_eq!(&with_bos[1..], &ids[..]);
        prop_assert_eq!(tok.decode(&with_bos, true).unwrap(), s);
    }

    /// Streaming a string's byte tokens (multi-byte characters split across tokens) gives the
    /// string, each piece whole characters: no piece has a U+FFFD the text does not have.
    #[test]
    fn stream_of_valid_text_concatenates_to_it(s in "\\PC{0,40}") {
        let tok = tiny();
        let ids = tok.encode(&s, false).unwrap();
        let pieces = stream(tok, &ids, false);
        prop_assert_eq!(pieces.concat(), s.clone());
        if !s.contains('\u{FFFD}') {
            for p in &pieces {
                prop_assert!(!p.contains('\u{FFFD}'), "{:?}", pieces);
            }
        }
        // Text is emitted as soon as a character is complete, so flush has nothing left, unless
        // the text ends in U+FFFD itself (held back as if it were an incomplete character).
        if !s.ends_with('\u{FFFD}') {
            prop_assert_eq!(pieces.last().map(String::as_str), Some(""));
        }
    }

    /// Any id sequence (bytes that are not UTF-8, specials, ids beyond the vocabulary): the
    /// pieces concatenate to decode of all ids, with or without specials.
    #[test]
    fn stream_of_any_ids_concatenates_to_decode(
        ids in prop::collection::vec(
            prop_oneof![
                4 => 0u32..256,
                1 => 0x80u32..0xc0,
                1 => TINY_BOS..=TINY_ASSISTANT,
                1 => 261u32..512,
            ],
            0..48,
        ),
        skip in any::<bool>(),
    ) {
        let tok = tiny();
        let pieces = stream(tok, &ids, skip);
        prop_assert_eq!(pieces.concat(), tok.decode(&ids, skip).unwrap());
    }

    /// A tokenizer.json cut anywhere is an error naming it, never a panic.
    #[test]
    fn truncated_tokenizer_json_is_an_error(frac in 0.0f64..1.0) {
        let text = tokenizer_json().to_string();
        let cut = ((text.len() as f64) * frac) as usize;
        let cut = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap();
        let dir = TempDir::new("trunc");
        dir.write("tokenizer.json", &text[..cut]);
        expect_tokenizer_error(dir.path(), &dir.file("tokenizer.json"));
    }
}

// ---------------------------------------------------------------------------------------------
// The chat template. Expected strings are from rendering DeepSeek-V3's `chat_template` (its
// tokenizer_config.json) with jinja2.

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are helpful."),
        ChatMessage::user("Hi"),
        ChatMessage::assistant("Hello! How can I help?"),
        ChatMessage::user("2+2?"),
    ]
}

#[test]
fn chat_prompt_matches_the_deepseek_template() {
    assert_eq!(
        chat_prompt(&[ChatMessage::user("Hi")], true),
        "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>"
    );
    assert_eq!(
        chat_prompt(&conversation(), true),
        "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi<｜Assistant｜>Hello! How can I \
         help?<｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜>"
    );
    // System messages anywhere join with a blank line; assistant reasoning before the last
    // `</think>` is dropped; no generation prompt.
    let messages = [
        ChatMessage::system("A"),
        ChatMessage::user("q"),
        ChatMessage::system("B"),
        ChatMessage::assistant("<think>hmm</think>x</think>final"),
    ];
    assert_eq!(
        chat_prompt(&messages, false),
        "<｜begin▁of▁sentence｜>A\n\nB<｜User｜>q<｜Assistant｜>final<｜end▁of▁sentence｜>"
    );
    assert_eq!(
        chat_prompt(&[], true),
        "<｜begin▁of▁sentence｜><｜Assistant｜>"
    );
}

#[test]
fn tiny_chat_prompt_ids() {
    let tok = tiny();
    let ids = tok.encode_chat(&[ChatMessage::user("Hi")], true).unwrap();
    assert_eq!(ids, vec![TINY_BOS, TINY_USER, 72, 105, TINY_ASSISTANT]);
    // The template's BOS text is the one BOS: encode_chat is encode(prompt, add_bos = false).
    let prompt = chat_prompt(&conversation(), true);
    let ids = tok.encode_chat(&conversation(), true).unwrap();
    assert_eq!(ids, tok.encode(&prompt, false).unwrap());
    assert_eq!(ids.iter().filter(|&&i| i == TINY_BOS).count(), 1);
    assert_eq!(ids[0], TINY_BOS);
    assert_eq!(ids.iter().filter(|&&i| i == TINY_EOS).count(), 1);
    assert_eq!(ids.last(), Some(&TINY_ASSISTANT));
    assert_eq!(tok.decode(&ids, false).unwrap(), prompt);
}

// ---------------------------------------------------------------------------------------------
// Malformed directories.

#[test]
fn missing_tokenizer_json_names_it() {
    let dir = TempDir::new("missing");
    expect_tokenizer_error(dir.path(), &dir.file("tokenizer.json"));
}

#[test]
fn invalid_tokenizer_json_names_it() {
    for contents in [
        "not json at all",
        "",
        "{}",
        "[]",
        r#"{"version": "1.0", "model": {"type": "BPE", "vocab": 5}}"#,
    ] {
        let dir = TempDir::new("invalid");
        dir.write("tokenizer.json", contents);
        expect_tokenizer_error(dir.path(), &dir.file("tokenizer.json"));
    }
    // Invalid UTF-8.
    let dir = TempDir::new("binary");
    dir.write("tokenizer.json", [0xffu8, 0xfe, 0x00, 0x7b]);
    expect_tokenizer_error(dir.path(), &dir.file("tokenizer.json"));
}

#[test]
fn bad_tokenizer_config_names_it() {
    let bad_configs = [
        "{ truncated".to_string(),
        "[1, 2]".to_string(),
        json!({"add_bos_token": "yes"}).to_string(),
        json!({"bos_token": 5}).to_string(),
        json!({"eos_token": {"__type": "AddedToken"}}).to_string(),
        // A BOS the vocabulary lacks.
        json!({"bos_token": "<s>"}).to_string(),
    ];
    for config in bad_configs {
        let dir = tiny_tokenizer_dir("badcfg");
        dir.write("tokenizer_config.json", &config);
        let msg = expect_tokenizer_error(dir.path(), &dir.file("tokenizer_config.json"));
        assert!(!msg.is_empty(), "{config}");
    }
}

#[test]
fn tokenizer_config_is_optional_and_accepts_both_token_spellings() {
    // Without tokenizer_config.json: DeepSeek-V3's spellings, add_bos_token true.
    let dir = tiny_tokenizer_dir("nocfg");
    std::fs::remove_file(dir.file("tokenizer_config.json")).unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (TINY_BOS, TINY_EOS));
    assert!(tok.add_bos_token());

    // The AddedToken-object spelling of DeepSeek's tokenizer_config.json.
    let dir = tiny_tokenizer_dir("objcfg");
    let config = json!({
        "add_bos_token": false,
        "bos_token": {"__type": "AddedToken", "content": "<｜User｜>", "normalized": true},
        "eos_token": "<｜Assistant｜>",
    });
    dir.write("tokenizer_config.json", config.to_string());
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (TINY_USER, TINY_ASSISTANT));
    assert!(!tok.add_bos_token());
    assert_eq!(tok.encode("a", true).unwrap(), vec![TINY_USER, 97]);
}

#[test]
fn error_display_names_the_file() {
    let e = ModelError::tokenizer("/m/tokenizer.json", "invalid: EOF");
    assert_eq!(e.to_string(), "/m/tokenizer.json: tokenizer: invalid: EOF");
}

// ---------------------------------------------------------------------------------------------
// The real DeepSeek-V3 tokenizer against Hugging Face goldens.

/// `tests/fixtures/tokenizer`, or the directory in `DSV3_TOKENIZER_FIXTURE`.
fn fixture_dir() -> PathBuf {
    std::env::var_os("DSV3_TOKENIZER_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer"))
}

/// The real tokenizer and its goldens, loaded once.
fn deepseek() -> &'static (Tokenizer, Value) {
    static T: OnceLock<(Tokenizer, Value)> = OnceLock::new();
    T.get_or_init(|| {
        let dir = fixture_dir();
        assert!(
            dir.join("tokenizer.json").is_file() && dir.join("goldens.json").is_file(),
            "the DeepSeek-V3 tokenizer fixture is missing: expected tokenizer.json and \
             goldens.json in {}",
            dir.display()
        );
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let goldens: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("goldens.json")).unwrap())
                .unwrap();
        (tok, goldens)
    })
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("an id")).unwrap())
        .collect()
}

#[test]
fn deepseek_tokenizer_loads() {
    let (tok, _) = deepseek();
    assert_eq!(tok.token_id(BOS_TOKEN), Some(tok.bos_id()));
    assert_eq!(tok.bos_id(), 0);
    assert_eq!(tok.eos_id(), 1);
    assert_eq!(tok.token_id("<｜User｜>"), Some(128803));
    assert_eq!(tok.token_id("<｜Assistant｜>"), Some(128804));
    assert_eq!(tok.vocab_size(), 128815);
}

#[test]
fn deepseek_goldens() {
    let (tok, goldens) = deepseek();
    let cases = goldens["cases"]
        .as_array()
        .expect("goldens.json has `cases`");
    assert!(!cases.is_empty());
    let bos = tok.bos_id();
    for case in cases {
        let text = case["text"].as_str().expect("a case has `text`");
        let ids = ids_of(&case["ids"]);
        let ids_no_special = ids_of(&case["ids_no_special"]);
        let decoded = case["decoded"].as_str().expect("a case has `decoded`");

        assert_eq!(tok.encode(text, false).unwrap(), ids_no_special, "{text:?}");
        // `ids` is whatever the file's post-processor adds with add_special_tokens=True: a BOS
        // in some DeepSeek releases, nothing in others. encode(.., true) adds exactly one BOS
        // either way.
        let with_bos: Vec<u32> = std::iter::once(bos)
            .chain(ids_no_special.iter().copied())
            .collect();
        assert!(
            ids == with_bos || ids == ids_no_special,
            "{text:?}: the post-processor adds something other than one BOS: {ids:?}"
        );
        assert_eq!(tok.encode(text, true).unwrap(), with_bos, "{text:?}");

        assert_eq!(tok.decode(&ids, false).unwrap(), decoded, "{text:?}");
        assert_eq!(stream(tok, &ids, false).concat(), decoded, "{text:?}");
        let skipped = tok.decode(&ids, true).unwrap();
        assert_eq!(stream(tok, &ids, true).concat(), skipped, "{text:?}");
        // Every golden text is valid UTF-8 produced by encoding: streaming it never emits a
        // partial character.
        if !text.contains('\u{FFFD}') {
            for piece in stream(tok, &ids, false) {
                assert!(!piece.contains('\u{FFFD}'), "{text:?}: {piece:?}");
            }
        }
    }
}

#[test]
fn deepseek_chat_prompt_ids() {
    let (tok, _) = deepseek();
    // From tokenizers (Python) on the jinja2 rendering of the chat template.
    assert_eq!(
        tok.encode_chat(&[ChatMessage::user("Hi")], true).unwrap(),
        vec![0, 128803, 23166, 128804]
    );
    assert_eq!(
        tok.encode_chat(&conversation(), true).unwrap(),
        vec![
            0, 3476, 477, 11502, 16, 128803, 23166, 128804, 19923, 3, 1730, 588, 342, 1694, 33, 1,
            128803, 20, 13, 20, 33, 128804
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Byte-level BPE with no normalizer is lossless: any UTF-8 string decodes back to itself.
    #[test]
    fn deepseek_round_trips_utf8(s in any::<String>()) {
        let (tok, _) = deepseek();
        let ids = tok.encode(&s, true).unwrap();
        prop_assert_eq!(tok.decode(&ids, true).unwrap(), s);
    }

    /// Arbitrary ids of the real vocabulary (many tokens are fragments of UTF-8 characters, and
    /// some are specials): the streamed pieces concatenate to decode of all ids.
    #[test]
    fn deepseek_stream_of_any_ids_concatenates_to_decode(
        ids in prop::collection::vec(0u32..129_280, 0..32),
        skip in any::<bool>(),
    ) {
        let (tok, _) = deepseek();
        prop_assert_eq!(stream(tok, &ids, skip).concat(), tok.decode(&ids, skip).unwrap());
    }
}
