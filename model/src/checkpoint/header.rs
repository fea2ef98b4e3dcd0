//! A first look at a safetensors header, before the safetensors crate parses it: explicit,
//! overflow-checked bounds with errors that name the tensor and the numbers involved.
//!
//! The crate's own validation ([`safetensors::SafeTensors::read_metadata`]) stays the
//! authoritative parse and still runs afterwards; this check exists for two reasons:
//! - Its errors say *which* tensor is wrong and how ("invalid shape, data type, or offset for
//!   tensor" names neither), which is what someone with a corrupt download needs.
//! - Its final coverage check adds the declared data length to the header length unchecked
//!   (`buffer_end + 8 + n`), so offsets summing to near `u64::MAX` overflow: a panic in a build
//!   with overflow checks (tests, fuzzing), a wrapped comparison otherwise. Bounding every
//!   `data_offsets` end by the bytes actually present first makes that sum small.
//!
//! Anything this check does not understand (a header that is not a JSON object, a field of the
//! wrong type, an unknown dtype) is left for the crate to report.

use serde_json::Value;

/// Size of the little-endian u64 header length at the start of a file.
const LEN_BYTES: usize = 8;

/// Bits per element of a safetensors dtype name (as the crate's `Dtype::bitsize`), `None` for a
/// name the crate reports itself.
fn dtype_bits(name: &str) -> Option<usize> {
    Some(match name {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

fn shape_str(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// One tensor entry whose fields all have the expected JSON types.
struct Entry<'a> {
    name: &'a str,
    start: u64,
    end: u64,
}

/// Checks the header length and every tensor's shape, dtype and `data_offsets` against the
/// `bytes` of a whole file. `Err` holds the problem in words; `Ok` means nothing here is
/// definitely wrong (the safetensors crate then validates the file as usual).
pub(super) fn precheck(bytes: &[u8]) -> Result<(), String> {
    let size = bytes.len();
    let Some(len) = bytes.get(..LEN_BYTES) else {
        return Err(format!(
            "the file has {size} bytes, fewer than the {LEN_BYTES}-byte header length"
        ));
    };
    let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    let available = (size - LEN_BYTES) as u64;
    if n > available {
        return Err(format!(
            "the header length {n} runs past the end of the file ({size} bytes, {available} \
             after the length field)"
        ));
    }
    // n <= size - 8, so this fits in usize and the slice is in range.
    let header_end = LEN_BYTES + n as usize;
    let data_len = (size - header_end) as u64;
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&bytes[LEN_BYTES..header_end])
    else {
        return Ok(()); // not UTF-8 / JSON / an object: the crate's error says so
    };

    let mut entries = Vec::with_capacity(header.len());
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info.get("dtype").and_then(Value::as_str);
        let shape: Option<Vec<u64>> = info
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect());
        let offsets: Option<Vec<u64>> = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect());
        let (Some(dtype), Some(shape), Some(&[start, end])) = (dtype, shape, offsets.as_deref())
        else {
            continue; // malformed entry: the crate names it
        };
        if end < start {
            return Err(format!(
                "tensor `{name}`: data_offsets [{start}, {end}] end before they start"
            ));
        }
        if end > data_len {
            return Err(format!(
                "tensor `{name}`: data_offsets [{start}, {end}] run past the end of the data \
                 ({data_len} bytes after the header; truncated file?)"
            ));
        }
        if let Some(bits) = dtype_bits(dtype) {
            let expected = shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .and_then(|numel| numel.checked_mul(bits as u64))
                .map(|total_bits| total_bits.div_ceil(8));
            let Some(expected) = expected else {
                return Err(format!(
                    "tensor `{name}`: shape {} of {dtype} overflows (the element count or byte \
                     size does not fit in 64 bits)",
                    shape_str(&shape)
                ));
            };
            if end - start != expected {
                return Err(format!(
                    "tensor `{name}`: data_offsets [{start}, {end}] hold {} bytes, but shape {} \
                     of {dtype} takes {expected}",
                    end - start,
                    shape_str(&shape)
                ));
            }
        }
        entries.push(Entry {
            name: name.as_str(),
            start,
            end,
        });
    }

    // Sorted by position, the ranges must tile the data exactly.
    entries.sort_by(|a, b| (a.start, a.end, a.name).cmp(&(b.start, b.end, b.name)));
    let mut covered = 0u64;
    let mut prev: Option<&Entry> = None;
    for e in &entries {
        if e.start < covered {
            let p = prev.expect("covered > 0 only after an entry");
            return Err(format!(
                "tensors `{}` (data_offsets [{}, {}]) and `{}` (data_offsets [{}, {}]) overlap",
                p.name, p.start, p.end, e.name, e.start, e.end
            ));
        }
        if e.start > covered && e.end > e.start {
            return Err(format!(
                "data bytes {covered}..{} belong to no tensor (before `{}`)",
                e.start, e.name
            ));
        }
        covered = covered.max(e.end);
        prev = Some(e);
    }
    if entries.len() == header.len() - usize::from(header.contains_key("__metadata__"))
        && covered != data_len
    {
        return Err(format!(
            "the tensors cover {covered} data bytes, but the file has {data_len} after the header \
             (truncated or padded file?)"
        ));
    }
    Ok(())
}
