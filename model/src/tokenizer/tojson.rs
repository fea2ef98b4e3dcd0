//! The `tojson` filter as transformers defines it for chat templates: Python's `json.dumps` with
//! `ensure_ascii=False` by default and the keyword arguments `ensure_ascii`, `indent`,
//! `separators` and `sort_keys`.
//!
//! Not minijinja's own `tojson`: that one writes compact JSON (`{"a":1}`) and escapes `<`, `>`,
//! `&` and `'` for HTML, where transformers writes `{"a": 1}` and leaves them alone, so a template
//! that puts tool schemas or arguments into the prompt (`tools | tojson`) would give the model
//! different text than it was trained on.

use std::fmt::Write;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// How to write JSON: `json.dumps`' options.
struct Style {
    ensure_ascii: bool,
    /// `None`: one line. `Some(s)`: a newline and `s` per level before every item.
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// The filter: `value | tojson`, `value | tojson(indent=2)`, ... transformers' signature is
/// `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`; the first two
/// may be given by position here, the last two by keyword only (minijinja passes at most five
/// arguments, and templates write them by keyword).
pub(super) fn tojson(
    value: &Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let pick = |positional: Option<Value>, name: &str| -> Result<Option<Value>, Error> {
        let keyword: Option<Value> = kwargs.get(name)?;
        match (positional, keyword) {
            (Some(_), Some(_)) => Err(invalid(format!(
                "tojson() got multiple values for argument '{name}'"
            ))),
            (p, k) => Ok(p.or(k).filter(|v| !v.is_none() && !v.is_undefined())),
        }
    };
    let ensure_ascii = pick(ensure_ascii, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match pick(indent, "indent")? {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().into()),
        // Python: `' ' * indent`, so a negative indent is an empty one (still one item a line).
        Some(v) => Some(" ".repeat(usize::try_from(i64::try_from(v)?.max(0)).unwrap_or(0))),
    };
    // `json.dumps`: `(', ', ': ')` on one line, `(',', ': ')` with an indent.
    let (item_sep, key_sep) = match pick(None, "separators")? {
        Some(v) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] => match (item.as_str(), key.as_str()) {
                    (Some(i), Some(k)) => (i.to_string(), k.to_string()),
                    _ => return Err(invalid("tojson(): separators must be two strings")),
                },
                _ => return Err(invalid("tojson(): separators must be a pair of strings")),
            }
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let sort_keys = pick(None, "sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let style = Style {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    write_value(&mut out, value, &style, 0)?;
    Ok(out)
}

fn invalid(detail: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, detail.into())
}

/// Nesting deeper than this is refused (`json.dumps` stops at Python's recursion limit); chat
/// inputs are never this deep, and the walk stays far from the stack's end.
const MAX_DEPTH: usize = 256;

fn write_value(out: &mut String, value: &Value, style: &Style, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(invalid("tojson(): nesting too deep"));
    }
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value)?,
        ValueKind::String => write_string(out, value.as_str().unwrap_or_default(), style),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, style, depth, '[', ']', &items, |out, item| {
                write_value(out, item, style, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((key_text(&key)?, item));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, style, depth, '{', '}', &entries, |out, (key, item)| {
                write_string(out, key, style);
                out.push_str(&style.key_sep);
                write_value(out, item, style, depth + 1)
            })?;
        }
        kind => {
            return Err(invalid(format!(
                "tojson(): a value of type {kind} is not JSON serializable"
            )))
        }
    }
    Ok(())
}

/// `[`/`{`, the items separated and (with an indent) one a line, `]`/`}`; empty as `[]`/`{}`.
fn write_container<T>(
    out: &mut String,
    style: &Style,
    depth: usize,
    open: char,
    close: char,
    items: &[T],
    mut write_item: impl FnMut(&mut String, &T) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &style.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&style.item_sep);
        }
        newline(out, depth + 1);
        write_item(out, item)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// A map key as `json.dumps` writes it: strings as they are; numbers, booleans and None as their
/// JSON text.
fn key_text(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(&mut s, key)?;
            Ok(s)
        }
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Ok("null".into()),
        kind => Err(invalid(format!(
            "tojson(): keys must be str, int, float, bool or None, not {kind}"
        ))),
    }
}

fn write_number(out: &mut String, value: &Value) -> Result<(), Error> {
    if value.is_integer() {
        // minijinja displays integers in decimal, as Python does.
        write!(out, "{value}")?;
    } else {
        out.push_str(&python_float_repr(f64::try_from(value.clone())?));
    }
    Ok(())
}

/// Python's `float.__repr__` (which `json.dumps` uses, with `NaN`/`Infinity` for the
/// non-finite values): the shortest digits that read back to the same float, in positional
/// notation with at least one decimal (`1.0`, `0.0001`) when the decimal exponent is in
/// [-4, 16), otherwise scientific with a signed two-digit-or-more exponent (`1e+16`, `1.5e-05`).
pub(super) fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    // Rust's `{:e}` gives the same shortest round-trip digits: "1.5e-5", "1e16", "0e0".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            let zeros = "0".repeat(point.unsigned_abs() as usize);
            format!("{sign}0.{zeros}{digits}")
        } else {
            let point = point as usize;
            if digits.len() <= point {
                let zeros = "0".repeat(point - digits.len());
                format!("{sign}{digits}{zeros}.0")
            } else {
                format!("{sign}{}.{}", &digits[..point], &digits[point..])
            }
        }
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.unsigned_abs())
    }
}

/// A JSON string as `json.dumps` writes it: `"` and `\` escaped, `\n`, `\r`, `\t`, `\b`, `\f` by
/// name, other control characters as `\u00XX` (lowercase hex); with `ensure_ascii` also DEL and
/// everything beyond ASCII as `\uXXXX` (UTF-16 surrogate pairs above U+FFFF).
fn write_string(out: &mut String, s: &str, style: &Style) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (style.ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::python_float_repr;

    #[test]
    fn floats_print_as_python_repr() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.000123, "0.000123"),
            (1.5e-7, "1.5e-07"),
            (123456789.0, "123456789.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e16, "1.2345e+16"),
            (1e100, "1e+100"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x:e}");
        }
    }
}
