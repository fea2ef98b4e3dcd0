//! The checkpoint's own chat template: the Jinja `chat_template` of `tokenizer_config.json` (or
//! `chat_template.jinja`), rendered with minijinja the way transformers' `apply_chat_template`
//! renders it with jinja2.
//!
//! Why not one template written in Rust: every checkpoint family formats conversations its own
//! way (R1 and V3.1 add thinking tokens, Kimi-K2 uses different markers altogether), and a prompt
//! in the wrong format still tokenizes and generates, just worse, with no error anywhere. The
//! template shipped with the weights is the one the model was trained with.
//!
//! What transformers sets up, mirrored here:
//! - jinja2 with `trim_blocks=True, lstrip_blocks=True` and the loop-controls extension
//!   (`{% break %}`, `{% continue %}`); a single trailing newline of the template is dropped.
//! - `raise_exception(message)` (templates call it to refuse a conversation they cannot format),
//!   `strftime_now(format)` (local time), `namespace()`, `dict()`, and its own `tojson` (see
//!   [`tojson`](super::tojson)).
//! - Python's string and dict methods, which jinja2 gets for free from Python objects
//!   (`.strip()`, `.split()`, `.startswith()`, `.get()`, `.items()`), from minijinja-contrib's
//!   `pycompat`; `{{ none }}` and `{{ true }}` print as Python's `None` and `True`.
//! - The variables: `messages` (a list of `{"role", "content"}` maps), `add_generation_prompt`,
//!   `tools = None`, `documents = None` (transformers passes both as None when none are given,
//!   so `tools is defined` is true and `tools` is false), and the special tokens transformers
//!   takes from `tokenizer_config.json` (`bos_token`, `eos_token`, ... as plain strings).
//!
//! Not mirrored: tool calls, tool results and reasoning fields in messages (a [`ChatMessage`] is
//! plain text), template keyword arguments such as `enable_thinking`, jinja2's
//! `{% generation %}` tag (a template that uses it fails to compile, with an error naming the
//! file), and list/dict methods that mutate (`.append()`, `.pop()`), which transformers'
//! sandbox refuses as well.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Object, ObjectRepr, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

use super::tojson::{python_float_repr, tojson};
use super::ChatMessage;
use crate::error::{ModelError, Result};

/// The file transformers (since 4.43) writes a tokenizer's chat template to, next to
/// `tokenizer_config.json`. When present it takes priority over the config's `chat_template`.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// The template variables transformers fills from the tokenizer (`special_tokens_map`): those of
/// these `tokenizer_config.json` sets, each as the token's text.
pub(super) const SPECIAL_TOKEN_VARIABLES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// The name the template is compiled under; minijinja's messages say `(in chat_template:LINE)`.
const TEMPLATE_NAME: &str = "chat_template";

/// Which chat template [`Tokenizer::encode_chat`](super::Tokenizer::encode_chat) uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplateSource {
    /// The `chat_template` of this `tokenizer_config.json`.
    TokenizerConfig(PathBuf),
    /// This `chat_template.jinja`.
    JinjaFile(PathBuf),
    /// The checkpoint has none: DeepSeek-V3's template written in Rust
    /// ([`chat_prompt`](super::chat_prompt)).
    BuiltIn,
}

impl fmt::Display for ChatTemplateSource {
    /// "from tokenizer_config.json", "from chat_template.jinja", or says it is the built-in one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatTemplateSource::TokenizerConfig(path) | ChatTemplateSource::JinjaFile(path) => {
                let name = path.file_name().unwrap_or(path.as_os_str());
                write!(f, "from {}", Path::new(name).display())
            }
            ChatTemplateSource::BuiltIn => {
                f.write_str("built-in DeepSeek-V3 template (the checkpoint has none)")
            }
        }
    }
}

/// A compiled Jinja chat template with the special-token variables it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The file the template came from, named by every error.
    file: PathBuf,
    /// `(name, text)` of the special tokens passed to the template, e.g. `("bos_token", "<s>")`.
    special_tokens: Vec<(String, String)>,
}

impl fmt::Debug for ChatTemplate {
    // Not derived: the environment would print the whole template source.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("file", &self.file)
            .field("special_tokens", &self.special_tokens)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `file` is where it came from (named by errors); `special_tokens` are
    /// the `(variable, token text)` pairs it is rendered with, e.g. `("bos_token", "<s>")`.
    ///
    /// A syntax error is a [`ModelError::Tokenizer`] naming `file` and quoting minijinja's
    /// message (with the line).
    pub fn new(
        source: impl Into<String>,
        file: impl Into<PathBuf>,
        special_tokens: Vec<(String, String)>,
    ) -> Result<ChatTemplate> {
        let file = file.into();
        let env = environment()
            .and_then(|mut env| {
                env.add_template_owned(TEMPLATE_NAME, source.into())?;
                Ok(env)
            })
            .map_err(|e| template_error(&file, &e))?;
        Ok(ChatTemplate {
            env,
            file,
            special_tokens,
        })
    }

    /// The file the template came from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The prompt text for `messages`, as transformers' `apply_chat_template(messages,
    /// add_generation_prompt=..., tokenize=False)` gives it.
    ///
    /// A render failure (an undefined variable used as an object, a type error, the template's
    /// own `raise_exception(...)`) is a [`ModelError::Tokenizer`] naming the file and quoting the
    /// message.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let messages: Value = messages
            .iter()
            .map(|m| {
                Value::from_object(MessageObject {
                    role: m.role.as_str(),
                    content: Value::from(m.content.as_str()),
                })
            })
            .collect();
        let mut context: BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .map(|(name, text)| (name.clone(), Value::from(text.as_str())))
            .collect();
        context.insert("messages".into(), messages);
        context.insert("tools".into(), Value::from(()));
        context.insert("documents".into(), Value::from(()));
        context.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        self.env
            .get_template(TEMPLATE_NAME)
            .and_then(|t| t.render(Value::from(context)))
            .map_err(|e| template_error(&self.file, &e))
    }
}

/// One message as the template sees it: a map with `role` then `content`, in that order (a
/// Python dict keeps insertion order, so `message.items()` and `message | tojson` list them so).
#[derive(Debug)]
struct MessageObject {
    role: &'static str,
    content: Value,
}

impl Object for MessageObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.role)),
            "content" => Some(self.content.clone()),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// minijinja configured as transformers configures jinja2 (see the module docs).
fn environment() -> std::result::Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()?,
    );
    // Prompts are plain text: nothing is HTML-escaped, whatever the template's name.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, state, value| match value.kind() {
        ValueKind::None => Ok(out.write_str("None")?),
        ValueKind::Bool => Ok(out.write_str(if value.is_true() { "True" } else { "False" })?),
        ValueKind::Number if !value.is_integer() => {
            let x = f64::try_from(value.clone())?;
            Ok(out.write_str(&python_float_repr(x))?)
        }
        _ => minijinja::escape_formatter(out, state, value),
    });
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    Ok(env)
}

/// `raise_exception(message)`: the template refuses the conversation (transformers raises
/// jinja2's `TemplateError(message)`).
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the local time formatted with C `strftime` syntax, as Python's
/// `datetime.now().strftime(format)`. An invalid format is an error, not a panic.
fn strftime_now(format: &str) -> std::result::Result<String, Error> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(out)
}

/// A minijinja error as a tokenizer error naming `file`: the message, its line in the template,
/// and the causes minijinja attached.
fn template_error(file: &Path, e: &Error) -> ModelError {
    let mut detail = format!("chat template: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        let _ = write!(detail, ": {c}");
        cause = c.source();
    }
    ModelError::tokenizer(file, detail)
}

/// The template in `tokenizer_config.json`'s `chat_template`: `None` when absent or null,
/// otherwise the source or why it cannot be used.
///
/// As in transformers, the value is a string, or several named templates, written as a list of
/// `{"name": ..., "template": ...}` objects (or an object mapping names to templates), of which
/// the one named `"default"` is used (transformers picks `"tool_use"` only when tools are given,
/// and dsv3 gives none).
pub(super) fn config_template(config: &Json) -> Option<std::result::Result<String, String>> {
    let named = |pairs: Vec<(&str, &Json)>| -> std::result::Result<String, String> {
        let names: Vec<&str> = pairs.iter().map(|(n, _)| *n).collect();
        match pairs.iter().find(|(n, _)| *n == "default") {
            Some((_, Json::String(t))) => Ok(t.clone()),
            Some((_, other)) => Err(format!(
                "`chat_template` \"default\" must be a string, got {other}"
            )),
            None => Err(format!(
                "`chat_template` has several templates ({}) and none named \"default\"",
                names.join(", ")
            )),
        }
    };
    match config.get("chat_template")? {
        Json::Null => None,
        Json::String(s) => Some(Ok(s.clone())),
        Json::Array(list) => {
            let pairs: std::result::Result<Vec<(&str, &Json)>, String> = list
                .iter()
                .map(|entry| match (entry.get("name"), entry.get("template")) {
                    (Some(Json::String(name)), Some(template)) => Ok((name.as_str(), template)),
                    _ => Err(format!(
                        "`chat_template` list entries must be {{\"name\": string, \"template\": \
                         string}} objects, got {entry}"
                    )),
                })
                .collect();
            Some(pairs.and_then(named))
        }
        Json::Object(map) => Some(named(map.iter().map(|(k, v)| (k.as_str(), v)).collect())),
        other => Some(Err(format!(
            "`chat_template` must be a string or a list of named templates, got {other}"
        ))),
    }
}

/// A `chat_template.jinja` as Python reads it (text mode): `\r\n` and lone `\r` become `\n`.
pub(super) fn jinja_file_text(text: String) -> String {
    if text.contains('\r') {
        text.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::ChatMessage;

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String> {
        ChatTemplate::new(source, "t.jinja", vec![("bos_token".into(), "<s>".into())])?
            .render(messages, true)
    }

    #[test]
    fn python_printing_of_none_bools_and_floats() {
        let out = render(
            "{{ none }} {{ true }} {{ false }} {{ 1.0 }} {{ 1e16 }} {{ 2 }} {{ x }}|",
            &[],
        );
        assert_eq!(out.unwrap(), "None True False 1.0 1e+16 2 |");
    }

    #[test]
    fn strftime_now_formats_local_time_and_refuses_bad_formats() {
        let year = chrono::Local::now().format("%Y").to_string();
        let out = render("{{ strftime_now('%Y') }}", &[]).unwrap();
        // Unless the year changed in between.
        assert!(out == year || out.parse::<i32>().is_ok(), "{out}");
        let err = render("{{ strftime_now('%Q') }}", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("strftime_now"), "{err}");
    }

    #[test]
    fn config_template_shapes() {
        let get =
            |v: serde_json::Value| config_template(&serde_json::json!({ "chat_template": v }));
        assert_eq!(get(serde_json::json!("x")), Some(Ok("x".into())));
        assert_eq!(get(serde_json::Value::Null), None);
        assert_eq!(config_template(&serde_json::json!({})), None);
        let list = serde_json::json!([
            {"name": "tool_use", "template": "t"},
            {"name": "default", "template": "d"},
        ]);
        assert_eq!(get(list), Some(Ok("d".into())));
        assert_eq!(
            get(serde_json::json!({"rag": "r", "default": "d"})),
            Some(Ok("d".into()))
        );
        let err = get(serde_json::json!([{"name": "rag", "template": "r"}]));
        assert!(err.unwrap().unwrap_err().contains("rag"));
        assert!(get(serde_json::json!(5)).unwrap().is_err());
        assert!(get(serde_json::json!([5])).unwrap().is_err());
        assert!(get(serde_json::json!({"default": 1})).unwrap().is_err());
    }

    #[test]
    fn jinja_files_read_in_text_mode() {
        assert_eq!(jinja_file_text("a\r\nb\rc\n".into()), "a\nb\nc\n");
    }
}
