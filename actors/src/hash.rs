//! The canonical form of an asset and its content hash: BLAKE3-256 over canonical JSON.
//!
//! Canonical JSON here means: object keys sorted (by their UTF-8 bytes) at every depth, a
//! repeated key counted once (its last value, as JSON parsers keep it), no whitespace, strings
//! escaped as serde_json escapes them, numbers printed as serde_json parses them. The paths in
//! `decisor.hash_ignore` are left out while writing.
//!
//! The asset is hashed from its received text ([`RawValue`]) in one streaming pass, without
//! building a value tree: scalars are written as they are parsed, and each object's members,
//! written one after another, are then put in key order by copying their bytes (when they did
//! not already come in order). A value tree's per-node allocations dominated an earlier
//! profile; splitting each object into raw members and re-parsing every level (the next
//! version) parsed nested text once per depth.

use std::borrow::Cow;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Dotted paths (`stats.row_count`) to leave out of the hash.
#[derive(Debug, Clone)]
pub struct HashIgnore {
    paths: Vec<Vec<String>>,
    /// The seed of text prints under these paths ([`crate::print`]), taken once.
    print_seed: u64,
}

impl Default for HashIgnore {
    fn default() -> Self {
        Self::new::<&str>(&[])
    }
}

impl HashIgnore {
    pub fn new<S: AsRef<str>>(dotted: &[S]) -> Self {
        let paths: Vec<Vec<String>> = dotted
            .iter()
            .map(|p| p.as_ref().split('.').map(str::to_owned).collect::<Vec<_>>())
            .filter(|p: &Vec<String>| !p.iter().any(String::is_empty))
            .collect();
        let print_seed = crate::print::seed(&paths);
        Self { paths, print_seed }
    }

    pub(crate) fn print_seed(&self) -> u64 {
        self.print_seed
    }

    /// Whether no path is ignored.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Is the member `key` of the object at `prefix` ignored, or does an ignored path go below
    /// it? Keys as their decoded bytes (the canonical form's) or as written without escapes
    /// (the text print's, [`crate::print`]).
    pub(crate) fn membership<P: AsRef<[u8]>>(&self, prefix: &[P], key: &[u8]) -> Membership {
        let mut below = false;
        for p in &self.paths {
            if p.len() > prefix.len()
                && p[..prefix.len()].iter().zip(prefix).all(|(a, b)| a.as_bytes() == b.as_ref())
                && p[prefix.len()].as_bytes() == key
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

/// Where a member's key stands against the ignored paths.
pub(crate) enum Membership {
    /// On no path.
    Kept,
    /// An ignored path goes below it.
    Partly,
    /// Ignored.
    Ignored,
}

/// An object key, borrowed from the text unless it had escapes to undo.
#[derive(serde::Deserialize)]
pub(crate) struct Key<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// Sorts an object's members by key (by its UTF-8 bytes) and keeps only the last value of a
/// repeated key, as a parse into a map keeps it. Serves decode and the canonical form alike.
pub(crate) fn sort_keep_last<K: Ord, V>(members: &mut Vec<(K, V)>) {
    // Stable: of repeated keys the last stays last.
    members.sort_by(|a, b| a.0.cmp(&b.0));
    // `dedup_by` keeps the earlier of two equal neighbours; move the later value into it.
    members.dedup_by(|later, kept| {
        let repeated = later.0 == kept.0;
        if repeated {
            std::mem::swap(later, kept);
        }
        repeated
    });
}

/// The canonical JSON text of `raw`.
pub fn canonical_json(raw: &RawValue, ignore: &HashIgnore) -> String {
    // `raw` is valid JSON, and what the writer emits is UTF-8.
    canonical_bytes(raw, ignore).ok().and_then(|b| String::from_utf8(b).ok()).unwrap_or_default()
}

/// The canonical form of `raw`, written in one pass over its text.
fn canonical_bytes(raw: &RawValue, ignore: &HashIgnore) -> serde_json::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(raw.get().len());
    let mut prefix = Vec::new();
    let mut members = Vec::new();
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let filtering = !ignore.paths.is_empty();
    Canonical { buf: &mut buf, ignore, prefix: &mut prefix, members: &mut members, filtering }.deserialize(&mut de)?;
    de.end()?;
    Ok(buf)
}

/// Appends the canonical form of the next value to `buf`. Scalars are written as parsed;
/// an object's members are written one after another as they come and, unless they came in
/// key order, then put in key order (the last of a repeated key kept) by copying the written
/// bytes, so every level of the text is parsed once.
struct Canonical<'b, 'de> {
    buf: &'b mut Vec<u8>,
    ignore: &'b HashIgnore,
    /// The object keys above this value, while an ignored path may still lie below it.
    prefix: &'b mut Vec<String>,
    /// The members of the objects being written, innermost last: each object's key and the
    /// range of its `"key":value` text in `buf`. One stack for every level, so an object costs
    /// no allocation of its own (an asset has dozens of small objects).
    members: &'b mut Vec<(Cow<'de, str>, std::ops::Range<usize>)>,
    filtering: bool,
}

impl<'de> DeserializeSeed<'de> for Canonical<'_, 'de> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Canonical<'_, '_> {
    fn scalar<T: serde::Serialize + ?Sized, E: serde::de::Error>(self, v: &T) -> Result<(), E> {
        // Writing to a Vec fails only for values JSON cannot hold, which a parse never yields.
        serde_json::to_writer(&mut *self.buf, v).map_err(E::custom)
    }
}

impl<'de> Visitor<'de> for Canonical<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.buf.extend_from_slice(b"null");
        Ok(())
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.buf.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(&v)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(&v)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(&v)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(v)
    }
    /// A string borrowed from the text had no escapes there, so it holds nothing JSON escapes
    /// (no quote, backslash or control character: the parser rejects those unescaped), and its
    /// bytes between quotes are what serde_json would write. Most strings take this path.
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<(), E> {
        write_plain_str(self.buf, v);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.buf.push(b'[');
        let mut first = true;
        loop {
            let at = self.buf.len();
            if !first {
                self.buf.push(b',');
            }
            // Paths name object members only; arrays are hashed whole.
            let item = Canonical {
                buf: &mut *self.buf,
                ignore: self.ignore,
                prefix: &mut *self.prefix,
                members: &mut *self.members,
                filtering: false,
            };
            if seq.next_element_seed(item)?.is_none() {
                self.buf.truncate(at);
                break;
            }
            first = false;
        }
        self.buf.push(b']');
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let start = self.buf.len();
        self.buf.push(b'{');
        // This object's members are those above `base` on the stack.
        let base = self.members.len();
        let mut in_order = true;
        while let Some(Key(key)) = map.next_key()? {
            let sub_filter = if self.filtering {
                match self.ignore.membership(self.prefix, key.as_bytes()) {
                    Membership::Ignored => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    }
                    Membership::Partly => true,
                    Membership::Kept => false,
                }
            } else {
                false
            };
            if self.members.len() > base {
                in_order &= self.members[self.members.len() - 1].0 < key;
                self.buf.push(b',');
            }
            let at = self.buf.len();
            match &key {
                Cow::Borrowed(plain) => write_plain_str(self.buf, plain),
                Cow::Owned(unescaped) => {
                    serde_json::to_writer(&mut *self.buf, unescaped).map_err(serde::de::Error::custom)?
                }
            }
            self.buf.push(b':');
            if sub_filter {
                self.prefix.push(key.to_string());
            }
            map.next_value_seed(Canonical {
                buf: &mut *self.buf,
                ignore: self.ignore,
                prefix: &mut *self.prefix,
                members: &mut *self.members,
                filtering: sub_filter,
            })?;
            if sub_filter {
                self.prefix.pop();
            }
            self.members.push((key, at..self.buf.len()));
        }
        // Members that came in strictly increasing key order (most objects, from most writers)
        // are canonical as written; otherwise they are put in key order by copying their text.
        if in_order {
            self.members.truncate(base);
        } else {
            let mut members = self.members.split_off(base);
            sort_keep_last(&mut members);
            let mut object = Vec::with_capacity(self.buf.len() - start);
            object.push(b'{');
            for (i, (_, range)) in members.iter().enumerate() {
                if i > 0 {
                    object.push(b',');
                }
                object.extend_from_slice(&self.buf[range.clone()]);
            }
            self.buf.truncate(start);
            self.buf.extend_from_slice(&object);
        }
        self.buf.push(b'}');
        Ok(())
    }
}

/// Writes a string that needs no escapes (see `visit_borrowed_str`) as JSON.
fn write_plain_str(buf: &mut Vec<u8>, s: &str) {
    buf.reserve(s.len() + 2);
    buf.push(b'"');
    buf.extend_from_slice(s.as_bytes());
    buf.push(b'"');
}

/// The content hash of an asset: lowercase hex of BLAKE3-256 over its canonical JSON.
pub fn content_hash(asset: &RawValue, ignore: &HashIgnore) -> String {
    let mut hasher = blake3::Hasher::new();
    match canonical_bytes(asset, ignore) {
        Ok(canonical) => hasher.update(&canonical),
        // Decode checks what could make the canonical form fail (escapes, numbers), so this is
        // not expected; if it ever happens, hash the text as received rather than a part of it.
        Err(_) => hasher.update(b"raw:").update(asset.get().as_bytes()),
    };
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

        // Ignored paths leave out exactly their members, at any depth they name, and nothing
        // inside arrays (paths name object members only).
        #[test]
        fn ignored_paths_match_the_definition(v in json_value(), w in json_value()) {
            let ignore = HashIgnore::new(&["a.b", "c"]);
            let doc = json!({"a": {"b": v, "k": w}, "c": w, "d": [{"b": v, "c": w}], "e": {"b": v}});
            for text in [doc.to_string(), reversed(&doc)] {
                let mut expected: Value = serde_json::from_str(&text).unwrap();
                expected["a"].as_object_mut().unwrap().remove("b");
                expected.as_object_mut().unwrap().remove("c");
                prop_assert_eq!(canonical_json(&raw(&text), &ignore), reference(&expected));
            }
        }
    }
}
