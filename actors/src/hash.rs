//! The canonical form of an asset and its content hash: BLAKE3-256 over canonical JSON.
//!
//! Canonical JSON here means: object keys sorted (by their UTF-8 bytes) at every depth, a
//! repeated key counted once (its last value, as JSON parsers keep it), no whitespace, strings
//! escaped as serde_json escapes them, numbers printed as serde_json parses them. The paths in
//! `decisor.hash_ignore` are left out while writing.
//!
//! The asset is hashed from its received text ([`RawValue`]) without building a value tree:
//! each object is split into borrowed `(key, raw member)` pairs, sorted and written member by
//! member, and text that is already canonical (plain strings, literals) is copied as is. That
//! keeps hashing free of per-node allocations, which a profile showed to dominate.

use std::borrow::Cow;
use std::io::Write;

use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Dotted paths (`stats.row_count`) to leave out of the hash.
#[derive(Debug, Clone, Default)]
pub struct HashIgnore {
    paths: Vec<Vec<String>>,
}

impl HashIgnore {
    pub fn new<S: AsRef<str>>(dotted: &[S]) -> Self {
        let paths = dotted
            .iter()
            .map(|p| p.as_ref().split('.').map(str::to_owned).collect::<Vec<_>>())
            .filter(|p: &Vec<String>| !p.iter().any(String::is_empty))
            .collect();
        Self { paths }
    }

    /// Is the member `key` of the object at `prefix` ignored, or does an ignored path go below it?
    fn check(&self, prefix: &[String], key: &str) -> Membership {
        let mut below = false;
        for p in &self.paths {
            if p.len() > prefix.len()
                && p[..prefix.len()].iter().zip(prefix).all(|(a, b)| a == b)
                && p[prefix.len()] == key
            {
                if p.len() == prefix.len() + 1 {
                    return Membership::Ignored;
                }
                below = true;
            }
        }
        if below { Membership::Partly } else { Membership::Kept }
    }
}

enum Membership {
    Kept,
    Partly,
    Ignored,
}

/// An object key, borrowed from the text unless it had escapes to undo.
#[derive(serde::Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

/// The members of a JSON object's text, values left as raw text, sorted by key (by its UTF-8
/// bytes), a repeated key keeping only its last value (as a parse into a map keeps it).
pub fn sorted_members(text: &str) -> serde_json::Result<Vec<(Cow<'_, str>, &RawValue)>> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(Cow<'de, str>, &'de RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
            while let Some(Key(k)) = map.next_key()? {
                out.push((k, map.next_value()?));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let mut members = (&mut de).deserialize_map(Members)?;
    de.end()?;
    // Stable: of repeated keys the last stays last; keep only it.
    members.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept: Vec<(Cow<'_, str>, &RawValue)> = Vec::with_capacity(members.len());
    for m in members {
        match kept.last_mut() {
            Some(last) if last.0 == m.0 => *last = m,
            _ => kept.push(m),
        }
    }
    Ok(kept)
}

/// Writes the JSON text `raw` in canonical form, leaving out the ignored paths.
pub fn write_canonical<W: Write>(out: &mut W, raw: &RawValue, ignore: &HashIgnore) -> std::io::Result<()> {
    let mut prefix = Vec::new();
    write_raw(out, raw.get(), ignore, &mut prefix, !ignore.paths.is_empty())
}

/// The canonical JSON text of `raw`.
pub fn canonical_json(raw: &RawValue, ignore: &HashIgnore) -> String {
    let mut buf = Vec::with_capacity(raw.get().len());
    // Writing to a Vec cannot fail, and `raw` is valid JSON.
    let _ = write_canonical(&mut buf, raw, ignore);
    String::from_utf8(buf).unwrap_or_default()
}

fn write_raw<W: Write>(
    out: &mut W,
    text: &str,
    ignore: &HashIgnore,
    prefix: &mut Vec<String>,
    filtering: bool,
) -> std::io::Result<()> {
    let text = text.trim_ascii();
    match text.as_bytes().first() {
        Some(b'{') => {
            let members = sorted_members(text).map_err(std::io::Error::other)?;
            out.write_all(b"{")?;
            let mut first = true;
            for (key, value) in &members {
                let sub_filter = if filtering {
                    match ignore.check(prefix, key) {
                        Membership::Ignored => continue,
                        Membership::Partly => true,
                        Membership::Kept => false,
                    }
                } else {
                    false
                };
                if !first {
                    out.write_all(b",")?;
                }
                first = false;
                serde_json::to_writer(&mut *out, key.as_ref())?;
                out.write_all(b":")?;
                if sub_filter {
                    prefix.push(key.to_string());
                    write_raw(out, value.get(), ignore, prefix, true)?;
                    prefix.pop();
                } else {
                    write_raw(out, value.get(), ignore, prefix, false)?;
                }
            }
            out.write_all(b"}")
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(std::io::Error::other)?;
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                // Paths name object members only; arrays are hashed whole.
                write_raw(out, item.get(), ignore, prefix, false)?;
            }
            out.write_all(b"]")
        }
        // A string without escapes is already as serde_json would write it: JSON text cannot
        // hold a raw quote or control character inside a string.
        Some(b'"') if !text.contains('\\') => out.write_all(text.as_bytes()),
        Some(b'"') => {
            let s: Cow<str> = serde_json::from_str(text).map_err(std::io::Error::other)?;
            serde_json::to_writer(out, &s).map_err(std::io::Error::other)
        }
        Some(b't' | b'f' | b'n') => out.write_all(text.as_bytes()),
        _ => {
            let n: serde_json::Number = serde_json::from_str(text).map_err(std::io::Error::other)?;
            serde_json::to_writer(out, &n).map_err(std::io::Error::other)
        }
    }
}

struct HashWriter<'a>(&'a mut blake3::Hasher);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The content hash of an asset: lowercase hex of BLAKE3-256 over its canonical JSON.
pub fn content_hash(asset: &RawValue, ignore: &HashIgnore) -> String {
    let mut hasher = blake3::Hasher::new();
    let written = {
        let mut out = std::io::BufWriter::with_capacity(1024, HashWriter(&mut hasher));
        write_canonical(&mut out, asset, ignore).and_then(|()| out.flush()).is_ok()
    };
    if !written {
        // Decode checks what could make the canonical form fail (escapes, numbers), so this is
        // not expected; if it ever happens, hash the text as received rather than a part of it.
        hasher.reset();
        hasher.update(b"raw:");
        hasher.update(asset.get().as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn raw(v: &str) -> Box<RawValue> {
        RawValue::from_string(v.to_owned()).unwrap()
    }
    fn hash(v: &Value, ignore: &HashIgnore) -> String {
        content_hash(&raw(&v.to_string()), ignore)
    }

    /// The canonical form by its definition, over a parsed tree: what the raw writer must equal.
    fn reference(v: &Value) -> String {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let body: Vec<String> =
                    keys.iter().map(|k| format!("{}:{}", Value::from(k.as_str()), reference(&m[k.as_str()]))).collect();
                format!("{{{}}}", body.join(","))
            }
            Value::Array(items) => format!("[{}]", items.iter().map(reference).collect::<Vec<_>>().join(",")),
            scalar => scalar.to_string(),
        }
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = raw(r#"{"b":1,"a":{"y":[1,2],"x":"s"}}"#);
        let b = raw("{ \"a\" : { \"x\":\"s\", \"y\":[1, 2] },\n \"b\":1 }");
        let none = HashIgnore::default();
        assert_eq!(canonical_json(&a, &none), r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
        assert_eq!(content_hash(&a, &none), content_hash(&b, &none));
        assert_ne!(content_hash(&a, &none), hash(&json!({"b":2,"a":{"y":[1,2],"x":"s"}}), &none));
        assert_ne!(content_hash(&a, &none), hash(&json!({"b":1,"a":{"y":[2,1],"x":"s"}}), &none));
    }

    #[test]
    fn escapes_numbers_and_repeated_keys_take_their_parsed_form() {
        let none = HashIgnore::default();
        let a = raw(r#"{"k\u0065y":"\u00e9\n","n":1E2,"m":-0,"d":1,"d":2}"#);
        assert_eq!(canonical_json(&a, &none), "{\"d\":2,\"key\":\"é\\n\",\"m\":-0.0,\"n\":100.0}");
    }

    #[test]
    fn ignored_paths_are_left_out() {
        let ignore = HashIgnore::new(&["stats.row_count", "owner"]);
        let a = json!({"t":"x","owner":"me","stats":{"row_count":10,"size":3}});
        let b = json!({"t":"x","owner":"you","stats":{"row_count":12,"size":3}});
        let c = json!({"t":"x","stats":{"row_count":12,"size":4}});
        assert_eq!(canonical_json(&raw(&a.to_string()), &ignore), r#"{"stats":{"size":3},"t":"x"}"#);
        assert_eq!(hash(&a, &ignore), hash(&b, &ignore));
        assert_ne!(hash(&a, &ignore), hash(&c, &ignore));
    }

    /// JSON text with every object's keys in reverse order and spaces around the punctuation.
    fn reversed(v: &Value) -> String {
        match v {
            Value::Object(m) => {
                let body: Vec<String> =
                    m.iter().rev().map(|(k, v)| format!(" {} : {} ", Value::from(k.as_str()), reversed(v))).collect();
                format!("{{{}}}", body.join(","))
            }
            Value::Array(items) => format!("[ {} ]", items.iter().map(reversed).collect::<Vec<_>>().join(" , ")),
            scalar => scalar.to_string(),
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "[a-zé\"\\\\\\n\\u{1}/]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map("[a-c\"é]{0,3}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        // The raw writer must agree with the definition on any JSON, written compactly or
        // pretty-printed (whitespace and escapes differ from canonical text).
        #[test]
        fn raw_canonical_form_matches_the_definition(v in json_value()) {
            let none = HashIgnore::default();
            for text in [v.to_string(), serde_json::to_string_pretty(&v).unwrap(), reversed(&v)] {
                // The tree parsed from the same text: float parsing is not exact, so the
                // generated value itself may print differently.
                let parsed: Value = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(canonical_json(&raw(&text), &none), reference(&parsed));
            }
        }
    }
}
