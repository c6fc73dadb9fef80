//! The text print of an asset: a cheap fingerprint of its received text, the values at
//! `decisor.hash_ignore` paths left out, that stands in for the content hash where it can.
//!
//! The content hash ([`crate::hash`]) parses the asset, writes it canonically and runs BLAKE3
//! over that: about half of a steady crawl's CPU, spent on assets that nearly all come back
//! byte for byte as they were (a crawler writes the same table the same way each run), only
//! the ignored values (`stats.row_count`) moved. The print is XXH3-128 over the text as it
//! came, with each ignored value cut out, found in one pass over the bytes without parsing
//! them: about a tenth of the cost.
//!
//! One way only: equal prints mean equal content hashes, so a store that keeps the print of
//! the text its record's hash came from can vouch for an unchanged asset without hashing it.
//! Different prints say nothing (key order, whitespace, escapes): the asset is hashed as
//! before. For that, a print never leaves out anything the content hash keeps: only a member
//! whose key is written without escapes, at exactly an ignored path through objects, is cut
//! (an escaped key, or a path through an array, is kept in the print, which is then merely
//! finer than the hash). Text the pass cannot follow is printed whole, which is finer still.
//!
//! Prints are seeded by the ignored paths, so a store's prints stop matching when
//! `hash_ignore` changes. XXH3 is not a cryptographic hash: a crawler that could craft two
//! texts with one print could hide a change from assetflow, as it could by not sending it.

use std::ops::Range;

use serde_json::value::RawValue;
use xxhash_rust::xxh3::Xxh3;

use crate::hash::{HashIgnore, Membership};

/// A text print: 16 bytes of XXH3-128.
pub type TextPrint = [u8; 16];

/// Bumped if what a print covers changes, so that prints kept by an older version never match.
const PRINT_VERSION: u64 = 1;

/// The print of `asset`'s text, the values at `ignore`'s paths left out.
pub fn text_print(asset: &RawValue, ignore: &HashIgnore) -> TextPrint {
    let text = asset.get().as_bytes();
    let mut hasher = Xxh3::with_seed(ignore.print_seed());
    let mut cuts = Vec::new();
    if ignore.is_empty() || ignored_values(text, ignore, &mut cuts).is_none() {
        cuts.clear();
    }
    let mut kept = 0;
    for cut in cuts {
        hasher.update(&text[kept..cut.start]);
        // Marks the cut, so that where a value was left out is part of the print.
        hasher.update(&[0xff]);
        kept = cut.end;
    }
    hasher.update(&text[kept..]);
    hasher.digest128().to_le_bytes()
}

/// The seed of prints under the ignored `paths`: the paths, in order, and [`PRINT_VERSION`].
/// [`HashIgnore`] takes it once.
pub(crate) fn seed(paths: &[Vec<String>]) -> u64 {
    let mut hasher = Xxh3::with_seed(PRINT_VERSION);
    for path in paths {
        for part in path {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.update(&u64::MAX.to_le_bytes());
    }
    hasher.digest()
}

/// Pushes to `cuts` the byte range of each value at an ignored path, in order; `None` for text
/// it cannot follow (the caller then prints the text whole).
fn ignored_values(text: &[u8], ignore: &HashIgnore, cuts: &mut Vec<Range<usize>>) -> Option<()> {
    let at = skip_ws(text, 0);
    if text.get(at) != Some(&b'{') {
        // Paths name object members: nothing to cut from an array or a scalar.
        return Some(());
    }
    let mut prefix = Vec::new();
    object(text, at, ignore, &mut prefix, cuts).map(|_| ())
}

/// Walks the object at `at`, whose members lie at `prefix`, cutting ignored values and going
/// into the members an ignored path goes below. Returns where the object ends.
fn object<'t>(
    text: &'t [u8],
    at: usize,
    ignore: &HashIgnore,
    prefix: &mut Vec<&'t [u8]>,
    cuts: &mut Vec<Range<usize>>,
) -> Option<usize> {
    let mut at = skip_ws(text, at + 1);
    if text.get(at) == Some(&b'}') {
        return Some(at + 1);
    }
    loop {
        if text.get(at) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(text, at)?;
        let key = &text[at + 1..key_end - 1];
        at = skip_ws(text, key_end);
        if text.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(text, at + 1);
        // A key with an escape may name a path once decoded: kept whole, which is finer.
        let plain = !key.contains(&b'\\');
        match if plain { ignore.membership(prefix, key) } else { Membership::Kept } {
            Membership::Ignored => {
                let end = value_end(text, at)?;
                cuts.push(at..end);
                at = end;
            }
            Membership::Partly if text.get(at) == Some(&b'{') => {
                prefix.push(key);
                at = object(text, at, ignore, prefix, cuts)?;
                prefix.pop();
            }
            Membership::Partly | Membership::Kept => at = value_end(text, at)?,
        }
        at = skip_ws(text, at);
        match text.get(at) {
            Some(b',') => at = skip_ws(text, at + 1),
            Some(b'}') => return Some(at + 1),
            _ => return None,
        }
    }
}

/// Where the value at `at` ends. Brackets are counted as one kind: in valid JSON the closing
/// bracket of a value is where the count of both kinds comes back to zero.
fn value_end(text: &[u8], at: usize) -> Option<usize> {
    match *text.get(at)? {
        b'"' => string_end(text, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            while let Some(&b) = text.get(i) {
                match b {
                    b'"' => {
                        i = string_end(text, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        // A number, `true`, `false` or `null`: up to the next delimiter.
        _ => Some(
            text[at..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .map_or(text.len(), |n| at + n),
        ),
    }
}

/// Where the string whose opening quote is at `at` ends (past its closing quote).
fn string_end(text: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        match *text.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

fn skip_ws(text: &[u8], mut at: usize) -> usize {
    while matches!(text.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::content_hash;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn raw(v: &str) -> Box<RawValue> {
        RawValue::from_string(v.to_owned()).unwrap()
    }
    fn print(text: &str, ignore: &HashIgnore) -> TextPrint {
        text_print(&raw(text), ignore)
    }

    #[test]
    fn ignored_values_are_left_out_and_nothing_else() {
        let ignore = HashIgnore::new(&["stats.row_count", "owner"]);
        let a = r#"{"t":"x","owner":"me","stats":{"row_count":10,"size":3},"cols":[{"row_count":1}]}"#;
        let moved = r#"{"t":"x","owner":{"n":["you"]},"stats":{"row_count":12.5,"size":3},"cols":[{"row_count":1}]}"#;
        assert_eq!(print(a, &ignore), print(moved, &ignore));
        for changed in [
            r#"{"t":"y","owner":"me","stats":{"row_count":10,"size":3},"cols":[{"row_count":1}]}"#,
            r#"{"t":"x","owner":"me","stats":{"row_count":10,"size":4},"cols":[{"row_count":1}]}"#,
            // Inside an array, a path's name is not a path: kept.
            r#"{"t":"x","owner":"me","stats":{"row_count":10,"size":3},"cols":[{"row_count":2}]}"#,
            // Key order and whitespace change the text, so the print (the hash does not move).
            r#"{"owner":"me","t":"x","stats":{"row_count":10,"size":3},"cols":[{"row_count":1}]}"#,
            r#"{"t": "x","owner":"me","stats":{"row_count":10,"size":3},"cols":[{"row_count":1}]}"#,
            // An escaped key might be the path once decoded: its value is kept.
            r#"{"t":"x","owne\u0072":"me","stats":{"row_count":10,"size":3},"cols":[{"row_count":1}]}"#,
        ] {
            assert_ne!(print(a, &ignore), print(changed, &ignore), "{changed}");
        }
    }

    #[test]
    fn prints_of_other_ignored_paths_differ() {
        let text = r#"{"a":1}"#;
        let one = HashIgnore::new(&["b"]);
        assert_eq!(print(text, &one), print(text, &HashIgnore::new(&["b"])));
        assert_ne!(print(text, &one), print(text, &HashIgnore::new(&["c"])));
        assert_ne!(print(text, &one), print(text, &HashIgnore::default()));
    }

    #[test]
    fn the_cut_is_part_of_the_print() {
        // The same bytes left, but a value left out in one place and not the other.
        let ignore = HashIgnore::new(&["a"]);
        assert_ne!(print(r#"{"a":1,"b":2}"#, &ignore), print(r#"{"a":2,"b":1}"#, &ignore));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0i64..3).prop_map(Value::from),
            "[ab\"\\\\]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[ab]", inner, 0..3).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        // The one promise: equal prints, equal content hashes. Small alphabets make equal
        // prints (and texts differing only where paths are ignored) common.
        #[test]
        fn equal_prints_mean_equal_content_hashes(
            v in json_value(), w in json_value(), x in json_value(), styles in (0..3usize, 0..3usize),
        ) {
            let ignore = HashIgnore::new(&["a.b", "b"]);
            let (one, two) = (json!({"a": v, "b": w, "c": x}), json!({"a": w, "b": x, "c": x}));
            // Compact, pretty, or with every key `b` escaped (which the hash decodes, and so
            // ignores where a path names it, and the print keeps).
            let text = |v: &Value, style: usize| match style {
                0 => v.to_string(),
                1 => serde_json::to_string_pretty(v).unwrap(),
                _ => v.to_string().replace("\"b\":", "\"\\u0062\":"),
            };
            for (p, q) in [(&one, &two), (&one, &one), (&v, &w)] {
                let (p, q) = (raw(&text(p, styles.0)), raw(&text(q, styles.1)));
                if text_print(&p, &ignore) == text_print(&q, &ignore) {
                    prop_assert_eq!(content_hash(&p, &ignore), content_hash(&q, &ignore));
                }
            }
        }

        // Texts that differ only in the values at ignored paths print alike.
        #[test]
        fn moving_only_ignored_values_keeps_the_print(v in json_value(), w in json_value(), x in json_value()) {
            let ignore = HashIgnore::new(&["a.b", "c"]);
            let one = json!({"a": {"b": v, "k": x}, "c": v, "d": [x]});
            let two = json!({"a": {"b": w, "k": x}, "c": w, "d": [x]});
            prop_assert_eq!(print(&one.to_string(), &ignore), print(&two.to_string(), &ignore));
        }
    }
}
