//! The canonical form of an asset and its content hash: BLAKE3-256 over canonical JSON.
//!
//! Canonical JSON here means: object keys sorted (by their UTF-8 bytes) at every depth, no
//! whitespace, strings escaped as serde_json escapes them, numbers printed as serde_json parsed
//! them. The paths in `decisor.hash_ignore` are left out while writing, so nothing is cloned.

use serde_json::Value;
use std::io::Write;

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
    fn check(&self, prefix: &[&str], key: &str) -> Membership {
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

/// Writes `value` in canonical form, leaving out the ignored paths.
pub fn write_canonical<W: Write>(out: &mut W, value: &Value, ignore: &HashIgnore) -> std::io::Result<()> {
    let mut prefix = Vec::new();
    write_value(out, value, ignore, &mut prefix, !ignore.paths.is_empty())
}

/// The canonical JSON text of `value`.
pub fn canonical_json(value: &Value, ignore: &HashIgnore) -> String {
    let mut buf = Vec::with_capacity(256);
    // Writing to a Vec cannot fail.
    let _ = write_canonical(&mut buf, value, ignore);
    String::from_utf8(buf).unwrap_or_default()
}

fn write_value<'v, W: Write>(
    out: &mut W,
    value: &'v Value,
    ignore: &HashIgnore,
    prefix: &mut Vec<&'v str>,
    filtering: bool,
) -> std::io::Result<()> {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            // serde_json's default map is sorted already; only a `preserve_order` build needs this.
            if !keys.is_sorted() {
                keys.sort_unstable();
            }
            out.write_all(b"{")?;
            let mut first = true;
            for key in keys {
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
                serde_json::to_writer(&mut *out, key)?;
                out.write_all(b":")?;
                prefix.push(key);
                write_value(out, &map[key.as_str()], ignore, prefix, sub_filter)?;
                prefix.pop();
            }
            out.write_all(b"}")
        }
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                // Paths name object members only; arrays are hashed whole.
                write_value(out, item, ignore, prefix, false)?;
            }
            out.write_all(b"]")
        }
        scalar => serde_json::to_writer(out, scalar).map_err(std::io::Error::other),
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
pub fn content_hash(asset: &Value, ignore: &HashIgnore) -> String {
    let mut hasher = blake3::Hasher::new();
    // Hashing never fails: the writer accepts every byte.
    let _ = write_canonical(&mut std::io::BufWriter::with_capacity(1024, HashWriter(&mut hasher)), asset, ignore);
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,2],"x":"s"}}"#).unwrap();
        let b: Value = serde_json::from_str("{ \"a\" : { \"x\":\"s\", \"y\":[1, 2] },\n \"b\":1 }").unwrap();
        let none = HashIgnore::default();
        assert_eq!(canonical_json(&a, &none), r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
        assert_eq!(content_hash(&a, &none), content_hash(&b, &none));
        assert_ne!(content_hash(&a, &none), content_hash(&json!({"b":2,"a":{"y":[1,2],"x":"s"}}), &none));
        assert_ne!(content_hash(&a, &none), content_hash(&json!({"b":1,"a":{"y":[2,1],"x":"s"}}), &none));
    }

    #[test]
    fn ignored_paths_are_left_out() {
        let ignore = HashIgnore::new(&["stats.row_count", "owner"]);
        let a = json!({"t":"x","owner":"me","stats":{"row_count":10,"size":3}});
        let b = json!({"t":"x","owner":"you","stats":{"row_count":12,"size":3}});
        let c = json!({"t":"x","stats":{"row_count":12,"size":4}});
        assert_eq!(canonical_json(&a, &ignore), r#"{"stats":{"size":3},"t":"x"}"#);
        assert_eq!(content_hash(&a, &ignore), content_hash(&b, &ignore));
        assert_ne!(content_hash(&a, &ignore), content_hash(&c, &ignore));
    }
}
