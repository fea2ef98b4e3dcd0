//! The tokenizer: DeepSeek-V3's `tokenizer.json` (a byte-level BPE in the Hugging Face
//! `tokenizers` format) read with Hugging Face's own Rust crate, so that ids match the reference
//! Python tokenizer exactly rather than a re-implementation of its pre-tokenizer regexes.
//!
//! On top of the crate this module adds what generation needs and `tokenizers` leaves to
//! `transformers`:
//! - [`Tokenizer::from_dir`]: `tokenizer.json` plus the BOS/EOS spellings and `add_bos_token` of
//!   `tokenizer_config.json`, with every failure a [`ModelError::Tokenizer`] naming the file.
//! - [`Tokenizer::encode`] with explicit BOS control: the wrapper, not the file's post-processor,
//!   decides whether a BOS is prepended (see there for why).
//! - [`StreamDecoder`]: incremental detokenization for streamed output, where one byte-level token
//!   can be a fraction of a UTF-8 character.
//! - [`Tokenizer::encode_chat`]: a conversation as prompt ids, through the checkpoint's own Jinja
//!   chat template ([`ChatTemplate`]: `chat_template.jinja`, or the `chat_template` of
//!   `tokenizer_config.json`) rendered as transformers renders it; [`chat_prompt`], DeepSeek-V3's
//!   template written in Rust, only when the checkpoint has none.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::error::{ModelError, Result};

mod template;
mod tojson;

use template::{config_template, jinja_file_text, SPECIAL_TOKEN_VARIABLES};
pub use template::{ChatTemplate, ChatTemplateSource, CHAT_TEMPLATE_FILE};

/// The tokenizer file of a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The optional file with the BOS/EOS spellings and `add_bos_token`.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// DeepSeek-V3's begin-of-sentence token (U+FF5C fullwidth bars, U+2581 "▁" for spaces).
pub const BOS_TOKEN: &str = "<｜begin▁of▁sentence｜>";
/// DeepSeek-V3's end-of-sentence token; the assistant ends each turn with it.
pub const EOS_TOKEN: &str = "<｜end▁of▁sentence｜>";
/// Opens a user turn in the chat template.
pub const USER_TOKEN: &str = "<｜User｜>";
/// Opens an assistant turn in the chat template.
pub const ASSISTANT_TOKEN: &str = "<｜Assistant｜>";

/// The character lossy UTF-8 decoding puts where bytes do not (yet) form a character.
const REPLACEMENT: char = '\u{FFFD}';

/// A loaded tokenizer. Cloning is cheap (the vocabulary is shared), so a [`StreamDecoder`] or
/// another thread can own a handle.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// `tokenizer.json`, named by errors that arise while encoding or decoding.
    file: PathBuf,
    bos_token: String,
    eos_token: String,
    bos_id: u32,
    eos_id: u32,
    add_bos_token: bool,
    /// The chat template `encode_chat` uses (shared: it holds a compiled template).
    chat: Arc<Chat>,
}

/// The chat template of a tokenizer.
#[derive(Debug)]
enum Chat {
    /// The checkpoint has none: [`chat_prompt`].
    BuiltIn,
    /// The checkpoint's own, compiled.
    Jinja {
        // Boxed: the compiled environment is large next to the other variants.
        template: Box<ChatTemplate>,
        source: ChatTemplateSource,
    },
    /// The checkpoint has one that cannot be used (unreadable, malformed, not compiling). Kept
    /// as the error chatting gives rather than failing the load, as in transformers: a
    /// checkpoint whose template dsv3 cannot compile still serves raw prompts and ids.
    Broken { file: PathBuf, detail: String },
}

impl Chat {
    /// The checkpoint's template `source` (or why it cannot be used) from `file`.
    fn new(
        source: std::result::Result<String, String>,
        file: &Path,
        kind: fn(PathBuf) -> ChatTemplateSource,
        special_tokens: &[(String, String)],
    ) -> Chat {
        let compiled = source
            .map_err(|detail| ModelError::tokenizer(file, detail))
            .and_then(|text| ChatTemplate::new(text, file, special_tokens.to_vec()));
        match compiled {
            Ok(template) => Chat::Jinja {
                template: Box::new(template),
                source: kind(file.to_path_buf()),
            },
            Err(ModelError::Tokenizer { file, detail }) => Chat::Broken { file, detail },
            Err(other) => Chat::Broken {
                file: file.to_path_buf(),
                detail: other.to_string(),
            },
        }
    }
}

impl fmt::Debug for Tokenizer {
    // Not derived: the inner tokenizer would print its whole vocabulary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("file", &self.file)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &(&self.bos_token, self.bos_id))
            .field("eos", &(&self.eos_token, self.eos_id))
            .field("add_bos_token", &self.add_bos_token)
            .field("chat", &self.chat_template())
            .finish()
    }
}

/// What `tokenizer_config.json` contributes.
#[derive(Debug)]
struct TokenizerConfig {
    add_bos_token: bool,
    bos_token: String,
    eos_token: String,
    /// `chat_template`: the source, or why it cannot be used; `None` when there is none.
    chat_template: Option<std::result::Result<String, String>>,
    /// The special tokens the file sets, as chat template variables (`("bos_token", text)`).
    template_tokens: Vec<(String, String)>,
}

impl Default for TokenizerConfig {
    /// Without a `tokenizer_config.json`: DeepSeek-V3's spellings, and a BOS at the start of
    /// every sequence (what the model was trained with; also `transformers`' Llama default).
    fn default() -> Self {
        TokenizerConfig {
            add_bos_token: true,
            bos_token: BOS_TOKEN.to_string(),
            eos_token: EOS_TOKEN.to_string(),
            chat_template: None,
            template_tokens: Vec::new(),
        }
    }
}

/// A special token entry of `tokenizer_config.json`: `"bos_token": "<s>"` or, as DeepSeek writes
/// it, `"bos_token": {"__type": "AddedToken", "content": "<s>", ...}`. `None` when absent or null.
fn special_token_field(config: &Value, key: &str, file: &Path) -> Result<Option<String>> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(obj)) => match obj.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(ModelError::tokenizer(
                file,
                format!("`{key}` is an object without a string `content`"),
            )),
        },
        Some(other) => Err(ModelError::tokenizer(
            file,
            format!("`{key}` must be a string or an object with `content`, got {other}"),
        )),
    }
}

impl TokenizerConfig {
    fn parse(text: &str, file: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::tokenizer(file, format!("invalid JSON: {e}")))?;
        if !value.is_object() {
            return Err(ModelError::tokenizer(file, "expected a JSON object"));
        }
        let mut cfg = TokenizerConfig::default();
        match value.get("add_bos_token") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => cfg.add_bos_token = *b,
            Some(other) => {
                return Err(ModelError::tokenizer(
                    file,
                    format!("`add_bos_token` must be a boolean, got {other}"),
                ))
            }
        }
        if let Some(bos) = special_token_field(&value, "bos_token", file)? {
            cfg.bos_token = bos;
        }
        if let Some(eos) = special_token_field(&value, "eos_token", file)? {
            cfg.eos_token = eos;
        }
        cfg.chat_template = config_template(&value);
        // Only the tokens the file sets, as transformers passes them; one of the others that is
        // malformed is left out (it matters to no tokenizer path, and at most to a template).
        for name in SPECIAL_TOKEN_VARIABLES {
            if let Ok(Some(text)) = special_token_field(&value, name, file) {
                cfg.template_tokens.push((name.to_string(), text));
            }
        }
        Ok(cfg)
    }
}

fn read_text(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).map_err(|e| ModelError::tokenizer(file, e.to_string()))
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json` (required), `dir/tokenizer_config.json` (optional; without
    /// it BOS/EOS are DeepSeek-V3's spellings and `add_bos_token` is true) and the chat template:
    /// `dir/chat_template.jinja` if present, else the config's `chat_template`, else the built-in
    /// one (the order transformers loads them in).
    ///
    /// A missing, unreadable, truncated or otherwise malformed file, or a BOS/EOS token the
    /// vocabulary lacks, is a [`ModelError::Tokenizer`] naming the file; this never panics, even
    /// on JSON that `tokenizers` itself would panic on. A chat template that cannot be used does
    /// not fail the load: chatting does, with the error naming its file.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let file = dir.join(TOKENIZER_FILE);
        let text = read_text(&file)?;
        let config_file = dir.join(TOKENIZER_CONFIG_FILE);
        let config = if config_file.exists() {
            Some((read_text(&config_file)?, config_file))
        } else {
            None
        };
        let mut tokenizer = Self::from_json(
            file,
            text,
            config.as_ref().map(|(t, p)| (t.as_str(), p.as_path())),
        )?;
        let jinja = dir.join(CHAT_TEMPLATE_FILE);
        if jinja.exists() {
            let text = std::fs::read_to_string(&jinja)
                .map(jinja_file_text)
                .map_err(|e| e.to_string());
            let tokens = match &config {
                Some((text, path)) => TokenizerConfig::parse(text, path)?.template_tokens,
                None => Vec::new(),
            };
            tokenizer.chat = Arc::new(Chat::new(
                text,
                &jinja,
                ChatTemplateSource::JinjaFile,
                &tokens,
            ));
        }
        Ok(tokenizer)
    }

    /// Like [`from_dir`](Self::from_dir) with the files' contents given: `text` of `tokenizer.json`
    /// (`file` names it in errors) and optionally (text, path) of `tokenizer_config.json`. For
    /// tools and the fuzz targets.
    pub fn from_json(
        file: impl Into<PathBuf>,
        text: String,
        config: Option<(&str, &Path)>,
    ) -> Result<Tokenizer> {
        let file = file.into();
        // Validate first: the JSON syntax (and serde_json's nesting limit) is checked here, and
        // `tokenizers` then deserializes from the parsed value. Given the text, `tokenizers`
        // panics on a syntax error inside some sections: its `decoder` (and `normalizer`)
        // deserializers call `.expect("Helper")` on the result of parsing the section (found by
        // fuzz/fuzz_targets/tokenizer_json.rs: a control character in a decoder string).
        // From a `serde_json::Value` that parse cannot fail.
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::tokenizer(&file, format!("invalid JSON: {e}")))?;
        drop(text);
        // `tokenizers` builds regexes, tries and merge tables from the file and has more
        // `expect`s on paths a check here cannot foresee; a malformed file must be an error, not
        // a crash, whatever path inside the crate it takes, so panics are still caught.
        let parsed = catch_unwind(AssertUnwindSafe(|| {
            serde_json::from_value::<tokenizers::Tokenizer>(value)
        }));
        let inner = match parsed {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(ModelError::tokenizer(&file, format!("invalid: {e}"))),
            Err(_) => {
                return Err(ModelError::tokenizer(
                    &file,
                    "invalid: the tokenizers crate panicked while parsing it",
                ))
            }
        };

        let (cfg, cfg_source) = match config {
            Some((text, path)) => (TokenizerConfig::parse(text, path)?, path.to_path_buf()),
            None => (TokenizerConfig::default(), file.clone()),
        };
        let lookup = |token: &str, what: &str| {
            inner.token_to_id(token).ok_or_else(|| {
                ModelError::tokenizer(
                    &cfg_source,
                    format!("{what} token `{token}` is not in the vocabulary of {TOKENIZER_FILE}"),
                )
            })
        };
        let bos_id = lookup(&cfg.bos_token, "BOS")?;
        let eos_id = lookup(&cfg.eos_token, "EOS")?;
        let chat = match cfg.chat_template {
            Some(source) => Chat::new(
                source,
                &cfg_source,
                ChatTemplateSource::TokenizerConfig,
                &cfg.template_tokens,
            ),
            None => Chat::BuiltIn,
        };
        Ok(Tokenizer {
            inner: Arc::new(inner),
            file,
            bos_token: cfg.bos_token,
            eos_token: cfg.eos_token,
            bos_id,
            eos_id,
            add_bos_token: cfg.add_bos_token,
            chat: Arc::new(chat),
        })
    }

    fn error(&self, detail: impl fmt::Display) -> ModelError {
        ModelError::tokenizer(&self.file, detail.to_string())
    }

    /// Token ids of `text`, with exactly one BOS in front when `add_bos` and none otherwise.
    ///
    /// The file's post-processor is bypassed (ids are encoded with `add_special_tokens = false`)
    /// and the BOS prepended here, because whether the file adds one varies: DeepSeek-V3's
    /// `tokenizer.json` has only a `ByteLevel` post-processor, which adds nothing (and its
    /// `tokenizer_config.json` says `add_bos_token: false`), `transformers` rewrites the
    /// post-processor of a `LlamaTokenizerFast` from `add_bos_token` at load time, and the tiny
    /// model's file adds a BOS through `TemplateProcessing`. Trusting the file would give zero or
    /// two BOS depending on where it came from.
    ///
    /// Special-token text inside `text` (the BOS and `<｜User｜>` of a chat prompt) is still
    /// recognised and becomes its single id: that is the added-vocabulary pass, which the
    /// post-processor does not affect.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| self.error(format!("encoding failed: {e}")))?;
        let ids = encoding.get_ids();
        let mut out = Vec::with_capacity(ids.len() + usize::from(add_bos));
        if add_bos {
            out.push(self.bos_id);
        }
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// The text of `ids`; special tokens (those the file marks `"special": true`) are left out
    /// when `skip_special`.
    ///
    /// Ids without a token (the model's embedding is padded beyond the tokenizer's vocabulary, so
    /// a sampler can produce them) decode to nothing, as in Hugging Face's decode; byte sequences
    /// that are not UTF-8 decode to U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| self.error(format!("decoding failed: {e}")))
    }

    /// A streaming decoder for generated ids; see [`StreamDecoder`].
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder::new(self.clone(), skip_special)
    }

    /// The begin-of-sentence id (`bos_token` of `tokenizer_config.json`).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The end-of-sentence id (`eos_token` of `tokenizer_config.json`); generation stops on it.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The BOS token's text.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The EOS token's text.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// `add_bos_token` of `tokenizer_config.json` (true without one): whether a raw prompt
    /// should get a BOS by default. Chat prompts carry their BOS as text instead.
    pub fn add_bos_token(&self) -> bool {
        self.add_bos_token
    }

    /// The number of ids the tokenizer knows, added tokens included (128815 for DeepSeek-V3).
    /// The model's `vocab_size` (129280) can be larger: its extra embedding rows have no token.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token given as it appears in the vocabulary (byte-level spelling, e.g. `Ġthe`
    /// for " the"), or of an added token such as [`EOS_TOKEN`].
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary spelling of `id`, if it has one.
    pub fn id_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Which chat template [`encode_chat`](Self::encode_chat) uses; an error (naming the file)
    /// when the checkpoint's cannot be used.
    pub fn chat_template(&self) -> Result<ChatTemplateSource> {
        match &*self.chat {
            Chat::BuiltIn => Ok(ChatTemplateSource::BuiltIn),
            Chat::Jinja { source, .. } => Ok(source.clone()),
            Chat::Broken { file, detail } => Err(ModelError::tokenizer(file, detail.clone())),
        }
    }

    /// The prompt text of a conversation: the checkpoint's chat template rendered as
    /// transformers' `apply_chat_template(messages, add_generation_prompt=...,
    /// tokenize=False)`, or [`chat_prompt`] when the checkpoint has none.
    ///
    /// A template that cannot be used or fails to render (including its own
    /// `raise_exception(...)`) is a [`ModelError::Tokenizer`] naming the template's file.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        match &*self.chat {
            Chat::BuiltIn => Ok(chat_prompt(messages, add_generation_prompt)),
            Chat::Jinja { template, .. } => template.render(messages, add_generation_prompt),
            Chat::Broken { file, detail } => Err(ModelError::tokenizer(file, detail.clone())),
        }
    }

    /// [`render_chat`](Self::render_chat) encoded as `apply_chat_template(..., tokenize=True)`
    /// encodes it: with `add_special_tokens=False`, since a template writes the BOS itself (as
    /// text, which the tokenizer recognises as the BOS id), so no second BOS is added.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        self.encode(&self.render_chat(messages, add_generation_prompt)?, false)
    }
}

/// Incremental detokenization of a generated sequence: [`push`](Self::push) one id at a time and
/// get back the text it completes; [`flush`](Self::flush) at the end returns whatever is still
/// held. Concatenating everything returned equals [`Tokenizer::decode`] of all the ids.
///
/// Decoding one token at a time does not work for byte-level BPE: a token can hold part of a
/// UTF-8 character (a CJK character or an emoji is often two or three tokens), which decodes to
/// U+FFFD on its own. So this keeps a window of ids, decodes the window, and emits only the text
/// past the part already emitted once it no longer ends in U+FFFD, i.e. once the last character is
/// complete (the prefix-offset technique of TGI, also Hugging Face's `DecodeStream`). The window
/// keeps the ids of the last emitted piece as context, so it stays a few tokens long.
///
/// A sequence can genuinely end in bytes that are not UTF-8 (or in the character U+FFFD); that
/// text is held back until a later token completes it or [`flush`](Self::flush) is called.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    skip_special: bool,
    /// The window: the ids of the last emitted piece, then those not emitted yet.
    ids: Vec<u32>,
    /// How many ids at the front of `ids` were already emitted.
    prefix_len: usize,
    /// `decode(ids[..prefix_len])`: the text to cut off the window's decoding.
    prefix: String,
}

impl StreamDecoder {
    /// A decoder for a new sequence; see also [`Tokenizer::stream_decoder`].
    pub fn new(tokenizer: Tokenizer, skip_special: bool) -> StreamDecoder {
        StreamDecoder {
            tokenizer,
            skip_special,
            ids: Vec::new(),
            prefix_len: 0,
            prefix: String::new(),
        }
    }

    /// Adds one generated id; returns the text it completes, empty while the text so far ends in
    /// an incomplete character (or the id decodes to nothing, like a skipped special token).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        if text.len() <= self.prefix.len() || text.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        self.emit(text)
    }

    /// Ends the sequence: returns all text not returned yet, including trailing bytes that do not
    /// form a character (as U+FFFD, exactly as [`Tokenizer::decode`] renders them), and resets
    /// the decoder for a new sequence.
    pub fn flush(&mut self) -> Result<String> {
        let mut piece = String::new();
        if self.ids.len() > self.prefix_len {
            let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
            if text.len() > self.prefix.len() {
                piece = self.emit(text)?;
            }
        }
        self.ids.clear();
        self.prefix_len = 0;
        self.prefix.clear();
        Ok(piece)
    }

    /// Emits `text` (the window's decoding) past the prefix, and makes the just-emitted ids the
    /// new prefix.
    fn emit(&mut self, text: String) -> Result<String> {
        let Some(piece) = text.strip_prefix(self.prefix.as_str()) else {
            // Cannot happen for a byte-level decoder (decoding is concatenative at character
            // boundaries); a decoder that rewrites earlier text would break streaming.
            return Err(self.tokenizer.error(format!(
                "stream decoding: {:?} does not extend the emitted {:?}",
                text, self.prefix
            )));
        };
        let piece = piece.to_string();
        self.ids.drain(..self.prefix_len);
        self.prefix = self.tokenizer.decode(&self.ids, self.skip_special)?;
        self.prefix_len = self.ids.len();
        Ok(piece)
    }
}

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role as chat templates see it (`message['role']`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One plain-text chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new(Role::Assistant, content)
    }
}

/// DeepSeek-V3's chat template (the `chat_template` of its `tokenizer_config.json`) for
/// plain-text messages, written in Rust: the fallback [`Tokenizer::encode_chat`] uses when a
/// checkpoint has no template of its own (renders exactly as V3's Jinja template does):
///
/// ```text
/// <｜begin▁of▁sentence｜>{system prompt}<｜User｜>{user}<｜Assistant｜>{assistant}<｜end▁of▁sentence｜><｜User｜>{user}<｜Assistant｜>
/// ```
///
/// As in the Jinja original: all system messages, wherever they are, are joined with a blank line
/// (`"\n\n"`) into one system prompt right after BOS; there are no separators between turns; an
/// assistant message keeps only the text after its last `</think>` (earlier reasoning is not fed
/// back); `add_generation_prompt` appends `<｜Assistant｜>` for the model to answer. Tool calls
/// and tool outputs are not supported.
///
/// The result starts with BOS as text, so encode it with `add_bos = false` (or use
/// [`Tokenizer::encode_chat`]).
pub fn chat_prompt(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let system: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let mut out = String::from(BOS_TOKEN);
    out.push_str(&system.join("\n\n"));
    for m in messages {
        match m.role {
            Role::System => {}
            Role::User => {
                out.push_str(USER_TOKEN);
                out.push_str(&m.content);
            }
            Role::Assistant => {
                // Python's `content.split('</think>')[-1]`.
                let content = m.content.rsplit("</think>").next().unwrap_or_default();
                out.push_str(ASSISTANT_TOKEN);
                out.push_str(content);
                out.push_str(EOS_TOKEN);
            }
        }
    }
    if add_generation_prompt {
        out.push_str(ASSISTANT_TOKEN);
    }
    out
}
