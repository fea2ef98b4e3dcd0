//! Arbitrary text as `tokenizer.json` (no tokenizer_config.json, so BOS/EOS must be DeepSeek-V3's
//! spellings), through `Tokenizer::from_json`, the path `Tokenizer::from_dir` takes; a tokenizer
//! that loads then encodes, decodes and stream-decodes a fixed chat.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::tokenizer::{ChatMessage, Tokenizer};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let tok = match Tokenizer::from_json("fuzz/tokenizer.json", text.to_string(), None) {
        Ok(t) => t,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let chat = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hello, 世界! 1234 <tag>"),
    ];
    if let Ok(ids) = tok.encode_chat(&chat, true) {
        let _ = tok.decode(&ids, false);
        let _ = tok.decode(&ids, true);
        let mut stream = tok.stream_decoder(false);
        for &id in &ids {
            let _ = stream.push(id);
        }
        let _ = stream.flush();
    }
    let _ = tok.decode(&[0, 1, 2, u32::MAX], false);
    let _ = tok.vocab_size();
});
