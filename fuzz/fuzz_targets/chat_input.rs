//! Arbitrary chat turns through DeepSeek-V3's chat template and its real tokenizer (the committed
//! model/tests/fixtures/tokenizer, whose tokenizer_config.json carries the Jinja template, rendered
//! with minijinja), then decoding: the Jinja rendering must equal the built-in Rust template, the
//! encoded prompt must decode back to that text, and streaming decode must equal whole decode.
//!
//! Input: UTF-8 text; '\x1e' separates turns; a turn starting with 's' / 'a' is a system /
//! assistant turn (that character dropped), anything else a user turn. A first turn starting with
//! '!' (dropped) turns off the generation prompt.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use model::tokenizer::{chat_prompt, ChatMessage, Role, Tokenizer};

static TOKENIZER: LazyLock<Tokenizer> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/tokenizer");
    Tokenizer::from_dir(&dir).expect("the committed DeepSeek-V3 tokenizer loads")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (add_generation_prompt, text) = match text.strip_prefix('!') {
        Some(rest) => (false, rest),
        None => (true, text),
    };
    let messages: Vec<ChatMessage> = text
        .split('\x1e')
        .map(|turn| match turn.chars().next() {
            Some('s') => ChatMessage::new(Role::System, &turn[1..]),
            Some('a') => ChatMessage::new(Role::Assistant, &turn[1..]),
            _ => ChatMessage::new(Role::User, turn),
        })
        .collect();
    let tok = &*TOKENIZER;
    let prompt = tok
        .render_chat(&messages, add_generation_prompt)
        .expect("V3's template renders any plain-text conversation");
    assert_eq!(
        prompt,
        chat_prompt(&messages, add_generation_prompt),
        "the built-in template equals V3's Jinja template"
    );
    let ids = tok
        .encode_chat(&messages, add_generation_prompt)
        .expect("any text encodes");
    assert_eq!(
        ids.first(),
        Some(&tok.bos_id()),
        "a chat prompt starts with BOS"
    );
    let decoded = tok.decode(&ids, false).expect("encoded ids decode");
    assert_eq!(decoded, prompt, "decode(encode(prompt)) == prompt");
    let mut stream = tok.stream_decoder(false);
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&stream.push(id).expect("stream decode"));
    }
    streamed.push_str(&stream.flush().expect("stream flush"));
    assert_eq!(streamed, decoded, "streamed text equals decoded text");
});
