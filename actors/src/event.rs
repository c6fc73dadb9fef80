//! The input contract: decoding and validating one raw message into an [`AssetEvent`].

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::hash::{Key, sort_keep_last};

/// Longest accepted `event_id`, `source` or `run_id`, in characters.
pub const MAX_ID_CHARS: usize = 256;

/// The table an event describes: the three names that, with the source, make its asset key.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AssetName {
    pub database: String,
    pub schema: String,
    pub table: String,
}

/// What an event says happened.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// One asset seen in a run; `body` is the whole `asset` object as received (checked to be
    /// an object), free-form beyond its names.
    Running { name: AssetName, body: Box<RawValue> },
    /// The run is over; the crawler may say how many `running` events it emitted.
    Completed { expected_assets: Option<u64> },
}

/// A valid input event.
#[derive(Debug, Clone)]
pub struct AssetEvent {
    pub event_id: String,
    pub source: String,
    pub run_id: String,
    pub emitted_at: DateTime<Utc>,
    pub kind: EventKind,
    /// Top-level fields the contract does not name: kept so lookups can point at them.
    pub extra: Map<String, Value>,
}

impl AssetEvent {
    /// `{source}/{database}/{schema}/{table}` for a running event, `None` for a completion.
    pub fn asset_key(&self) -> Option<String> {
        match &self.kind {
            EventKind::Running { name, .. } => Some(asset_key(&self.source, name)),
            EventKind::Completed { .. } => None,
        }
    }

    /// Resolves a JSON pointer against the event as it was received.
    pub fn pointer(&self, pointer: &str) -> Option<Value> {
        let rest = pointer.strip_prefix('/')?;
        let (head, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let top = match head {
            "event_id" => Value::String(self.event_id.clone()),
            "source" => Value::String(self.source.clone()),
            "run_id" => Value::String(self.run_id.clone()),
            "status" => Value::String(self.status().to_owned()),
            "asset" => match &self.kind {
                EventKind::Running { name, body } => {
                    // The names are at hand; anything else means parsing the asset's text.
                    return match tail {
                        "/database" => Some(Value::String(name.database.clone())),
                        "/schema" => Some(Value::String(name.schema.clone())),
                        "/table" => Some(Value::String(name.table.clone())),
                        _ => {
                            let body: Value = serde_json::from_str(body.get()).ok()?;
                            if tail.is_empty() { Some(body) } else { body.pointer(tail).cloned() }
                        }
                    };
                }
                EventKind::Completed { .. } => return None,
            },
            other => {
                let v = self.extra.get(&unescape(other))?;
                return if tail.is_empty() { Some(v.clone()) } else { v.pointer(tail).cloned() };
            }
        };
        tail.is_empty().then_some(top)
    }

    pub fn status(&self) -> &'static str {
        match self.kind {
            EventKind::Running { .. } => "running",
            EventKind::Completed { .. } => "completed",
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// The asset key of a table in a source.
pub fn asset_key(source: &str, name: &AssetName) -> String {
    let mut key = String::with_capacity(source.len() + name.database.len() + name.schema.len() + name.table.len() + 3);
    for (i, part) in [source, &name.database, &name.schema, &name.table].into_iter().enumerate() {
        if i > 0 {
            key.push('/');
        }
        key.push_str(part);
    }
    key
}

/// Why a message is not a valid event; the `kind` is the dead letter's `error.kind`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Rejection {
    pub kind: RejectKind,
    pub message: String,
    /// The `event_id`, when the message got far enough to have one.
    pub event_id: Option<String>,
}

/// Which input check failed, first match wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    TooLarge,
    InvalidJson,
    InvalidEvent,
}

impl RejectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::TooLarge => "too_large",
            RejectKind::InvalidJson => "invalid_json",
            RejectKind::InvalidEvent => "invalid_event",
        }
    }
}

impl std::fmt::Display for RejectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn reject(kind: RejectKind, message: impl Into<String>, event_id: Option<&str>) -> Rejection {
    Rejection { kind, message: message.into(), event_id: event_id.map(str::to_owned) }
}

/// Decodes and validates one message: size, then JSON, then the field checks of EVENTS.md §1.
///
/// Only the envelope's fields are parsed into values; the `asset` object is checked to be an
/// object with its three names and kept as the text received ([`RawValue`]): it is hashed from
/// that text and written out as it came, so an event in flight holds its bytes, not a tree.
pub fn decode(raw: &[u8], max_bytes: usize) -> Result<AssetEvent, Rejection> {
    if raw.len() > max_bytes {
        return Err(reject(
            RejectKind::TooLarge,
            format!("message is {} bytes, over limits.max_event_bytes = {max_bytes}", raw.len()),
            None,
        ));
    }
    let text =
        std::str::from_utf8(raw).map_err(|e| reject(RejectKind::InvalidJson, format!("not UTF-8: {e}"), None))?;
    // One pass splits an object into its members; only when that fails is the text looked at
    // again, to tell a message that is not JSON from JSON that is not an object.
    let members = sorted_members(text).map_err(|split| match serde_json::from_str::<&RawValue>(text) {
        // Editors on Windows save one; JSON forbids it, and "expected value at line 1 column 1"
        // would not say why a line that looks right was refused.
        Err(_) if text.starts_with('\u{feff}') => reject(
            RejectKind::InvalidJson,
            "not JSON: it starts with a byte order mark (U+FEFF), which JSON does not allow; write UTF-8 without one",
            None,
        ),
        Err(e) => reject(RejectKind::InvalidJson, format!("not JSON: {e}"), None),
        Ok(doc) if !doc.get().starts_with('{') => {
            reject(RejectKind::InvalidEvent, format!("expected a JSON object, got {}", raw_type_name(doc)), None)
        }
        Ok(_) => reject(RejectKind::InvalidJson, format!("not JSON: {split}"), None),
    })?;
    validate(Fields(members))
}

/// The members of an event (or of its asset) from [`sorted_members`]: sorted by key, a repeated
/// key keeping its last value.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// Removes the member `name`, raw.
    fn take_raw(&mut self, name: &str) -> Option<&'a RawValue> {
        let i = self.0.binary_search_by(|(k, _)| k.as_ref().cmp(name)).ok()?;
        Some(self.0.remove(i).1)
    }

    /// Removes the member `name`, parsed.
    fn take(&mut self, name: &str) -> Option<Value> {
        // The text was parsed once already, so this cannot fail; Null stands in if it did.
        self.take_raw(name).map(|raw| serde_json::from_str(raw.get()).unwrap_or(Value::Null))
    }

    /// What is left, parsed: the fields the contract does not name.
    fn into_extra(self) -> Map<String, Value> {
        self.0
            .into_iter()
            .map(|(k, raw)| (k.into_owned(), serde_json::from_str(raw.get()).unwrap_or(Value::Null)))
            .collect()
    }
}

/// The field checks of EVENTS.md §1, in order.
fn validate(mut map: Fields<'_>) -> Result<AssetEvent, Rejection> {
    let event_id = take_id(&mut map, "event_id", None)?;
    let eid = Some(event_id.as_str());
    let source = take_id(&mut map, "source", eid)?;
    let run_id = take_id(&mut map, "run_id", eid)?;
    let status = match map.take("status") {
        Some(Value::String(s)) if s == "running" || s == "completed" => s,
        Some(other) => {
            return Err(reject(
                RejectKind::InvalidEvent,
                format!("field `status` must be \"running\" or \"completed\", got {}", short(&other)),
                eid,
            ));
        }
        None => {
            return Err(reject(RejectKind::InvalidEvent, "missing required field `status`", eid));
        }
    };
    let emitted_at = match map.take("emitted_at") {
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(&s)
            .map_err(|e| {
                reject(RejectKind::InvalidEvent, format!("field `emitted_at` is not an RFC 3339 timestamp: {e}"), eid)
            })?
            .with_timezone(&Utc),
        Some(other) => {
            return Err(reject(
                RejectKind::InvalidEvent,
                format!("field `emitted_at` must be a string, got {}", type_name(&other)),
                eid,
            ));
        }
        None => {
            return Err(reject(RejectKind::InvalidEvent, "missing required field `emitted_at`", eid));
        }
    };
    let kind = if status == "running" {
        let body = match map.take_raw("asset") {
            Some(body) if body.get().starts_with('{') => body,
            Some(other) => {
                return Err(reject(
                    RejectKind::InvalidEvent,
                    format!("field `asset` must be an object, got {}", raw_type_name(other)),
                    eid,
                ));
            }
            None => {
                return Err(reject(RejectKind::InvalidEvent, "a running event needs the field `asset`", eid));
            }
        };
        // One pass over the asset: compact text, and its three names at the top level.
        let tidied = tidy(body);
        if let Some(e) = tidied.key_error {
            return Err(reject(RejectKind::InvalidJson, format!("not JSON: {e}"), eid));
        }
        let name = AssetName {
            database: asset_name(&tidied, 0, eid)?,
            schema: asset_name(&tidied, 1, eid)?,
            table: asset_name(&tidied, 2, eid)?,
        };
        let body = tidied.body.map_err(|e| reject(RejectKind::InvalidJson, format!("not JSON: {e}"), eid))?;
        EventKind::Running { name, body }
    } else {
        let expected_assets = match map.take("expected_assets") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(other) => {
                return Err(reject(
                    RejectKind::InvalidEvent,
                    format!("field `expected_assets` must be a non-negative integer, got {}", short(&other)),
                    eid,
                ));
            }
        };
        EventKind::Completed { expected_assets }
    };
    Ok(AssetEvent { event_id, source, run_id, emitted_at, kind, extra: map.into_extra() })
}

fn take_id(map: &mut Fields<'_>, field: &str, eid: Option<&str>) -> Result<String, Rejection> {
    match map.take(field) {
        Some(Value::String(s)) => {
            let chars = s.chars().count();
            if chars == 0 || chars > MAX_ID_CHARS {
                Err(reject(
                    RejectKind::InvalidEvent,
                    format!("field `{field}` must be 1 to {MAX_ID_CHARS} characters, got {chars}"),
                    eid,
                ))
            } else {
                Ok(s)
            }
        }
        Some(other) => Err(reject(
            RejectKind::InvalidEvent,
            format!("field `{field}` must be a string, got {}", type_name(&other)),
            eid,
        )),
        None => Err(reject(RejectKind::InvalidEvent, format!("missing required field `{field}`"), eid)),
    }
}

fn asset_name(tidied: &Tidied<'_>, n: usize, eid: Option<&str>) -> Result<String, Rejection> {
    let field = ASSET_NAMES[n];
    match tidied.names[n] {
        Some(Named::Str(token)) => {
            let value = if token.contains('\\') {
                // The same pass checked this string's escapes; a failure is reported as it.
                serde_json::from_str::<String>(token)
                    .map_err(|e| reject(RejectKind::InvalidJson, format!("not JSON: in `asset`, {token}: {e}"), eid))?
            } else {
                token[1..token.len() - 1].to_owned()
            };
            if value.is_empty() {
                return Err(reject(RejectKind::InvalidEvent, format!("field `asset.{field}` must not be empty"), eid));
            }
            Ok(value)
        }
        Some(Named::Other(first)) => Err(reject(
            RejectKind::InvalidEvent,
            format!("field `asset.{field}` must be a string, got {}", first_byte_type_name(first)),
            eid,
        )),
        None => Err(reject(RejectKind::InvalidEvent, format!("missing required field `asset.{field}`"), eid)),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The names an asset must have at its top level, in the order they are checked.
const ASSET_NAMES: [&str; 3] = ["database", "schema", "table"];

/// The value of one of [`ASSET_NAMES`], as the text holds it.
#[derive(Clone, Copy)]
enum Named<'a> {
    /// A string: its token, quotes included.
    Str(&'a str),
    /// Anything else: its first byte, which says what it is.
    Other(u8),
}

/// What one pass over an asset's text finds ([`tidy`]).
struct Tidied<'a> {
    /// The text made compact, or why it is not JSON a parser takes.
    body: Result<Box<RawValue>, String>,
    /// The last value of each of [`ASSET_NAMES`] at the top level (a repeated key keeps its
    /// last value, as a parse into a map keeps it).
    names: [Option<Named<'a>>; 3],
    /// A top-level key whose escapes do not decode: which member it is cannot be known.
    key_error: Option<String>,
}

/// The asset's text, checked and made compact, and its names found, in one pass.
///
/// The text was parsed once already (as the raw value of the event's `asset`), so its
/// structure is JSON and this pass does not check it again: it walks the tokens, tracking how
/// deep it is, and takes the top-level members it needs without a second parse.
///
/// Checked: a `RawValue` only scans what a parse into values would check, so two things must
/// be looked at here for the asset to be JSON the hash (and any consumer) can parse: string
/// escapes (a lone surrogate `\uD800`) and numbers out of range (`1e400`). Both are rare, so
/// only strings with a backslash and numbers with an exponent or many digits are parsed.
///
/// Compact: whitespace between tokens is removed. Outputs embed the asset as it is, and a
/// pretty-printed event (from a queue or a topic) would otherwise put line breaks inside one
/// JSON Lines record.
fn tidy(raw: &RawValue) -> Tidied<'_> {
    let text = raw.get();
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut error: Option<String> = None;
    let mut names: [Option<Named<'_>>; 3] = [None; 3];
    let mut key_error = None;
    let mut i = 0;
    let mut kept = 0; // text[kept..i] is still to be copied to `out`
    let mut depth = 0usize;
    // At the top level: whether the next string is a key, and which name, if any, the value
    // that comes next belongs to (taken by that value).
    let mut at_key = false;
    let mut value_of: Option<usize> = None;
    fn value<'a>(value_of: &mut Option<usize>, v: Named<'a>, names: &mut [Option<Named<'a>>; 3]) {
        if let Some(n) = value_of.take() {
            names[n] = Some(v);
        }
    }
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                let mut escaped = false;
                i += 1;
                // To the closing quote: the next quote or backslash, past each escape's pair.
                while let Some(rest) = bytes.get(i..) {
                    match memchr::memchr2(b'"', b'\\', rest) {
                        Some(at) if rest[at] == b'\\' => {
                            escaped = true;
                            i += at + 2;
                        }
                        Some(at) => {
                            i += at;
                            break;
                        }
                        None => {
                            i = bytes.len();
                            break;
                        }
                    }
                }
                i += 1;
                let token = &text[start..i.min(text.len())];
                let is_key = depth == 1 && at_key;
                let mut decoded = None;
                if escaped {
                    match serde_json::from_str::<Cow<str>>(token) {
                        Ok(s) => decoded = Some(s),
                        Err(e) => {
                            let why = format!("in `asset`, {token}: {e}");
                            if is_key {
                                key_error.get_or_insert_with(|| why.clone());
                            }
                            error.get_or_insert(why);
                        }
                    }
                }
                if is_key {
                    at_key = false;
                    let key = match &decoded {
                        Some(k) => k.as_ref(),
                        None => token.get(1..token.len().saturating_sub(1)).unwrap_or_default(),
                    };
                    value_of = ASSET_NAMES.iter().position(|n| *n == key);
                } else if depth == 1 {
                    value(&mut value_of, Named::Str(token), &mut names);
                }
            }
            b'-' | b'0'..=b'9' => {
                if depth == 1 {
                    value(&mut value_of, Named::Other(bytes[i]), &mut names);
                }
                let start = i;
                while i < bytes.len() && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                let token = &text[start..i];
                if (token.len() > 300 || token.contains(['e', 'E']))
                    && let Err(e) = serde_json::from_str::<serde_json::Number>(token)
                {
                    error.get_or_insert_with(|| format!("in `asset`, {token}: {e}"));
                }
            }
            b if b.is_ascii_whitespace() => {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                o.push_str(&text[kept..i]);
                i += 1;
                kept = i;
            }
            b @ (b'{' | b'[') => {
                if depth == 1 {
                    value(&mut value_of, Named::Other(b), &mut names);
                }
                depth += 1;
                at_key = depth == 1 && b == b'{';
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' => {
                at_key = depth == 1;
                i += 1;
            }
            b => {
                // `:`, or a byte of `true`, `false` or `null`: the first one is the value.
                if depth == 1 && b != b':' {
                    value(&mut value_of, Named::Other(b), &mut names);
                }
                i += 1;
            }
        }
    }
    let body = match (error, out) {
        (Some(e), _) => Err(e),
        (None, None) => Ok(raw.to_owned()),
        (None, Some(mut o)) => {
            o.push_str(&text[kept..]);
            RawValue::from_string(o).map_err(|e| format!("in `asset`: {e}"))
        }
    };
    Tidied { body, names, key_error }
}

/// What a JSON value whose text starts with `first` is, for messages.
fn first_byte_type_name(first: u8) -> &'static str {
    match first {
        b'{' => "an object",
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    }
}

fn raw_type_name(raw: &RawValue) -> &'static str {
    first_byte_type_name(raw.get().as_bytes().first().copied().unwrap_or(b'0'))
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s }
}

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
    sort_keep_last(&mut members);
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> AssetEvent {
        decode(s.as_bytes(), 1 << 20).expect("valid")
    }
    fn kind_of(s: &str) -> RejectKind {
        decode(s.as_bytes(), 1 << 20).expect_err("invalid").kind
    }
    fn kind(s: &[u8]) -> RejectKind {
        decode(s, 200).expect_err("invalid").kind
    }

    #[test]
    fn running_event_gets_its_key() {
        let e = ok(
            r#"{"event_id":"e","source":"pg","run_id":"r","status":"running","emitted_at":"2026-11-01T10:00:00Z","asset":{"database":"d","schema":"s","table":"t"},"x":1}"#,
        );
        assert_eq!(e.asset_key().as_deref(), Some("pg/d/s/t"));
        assert_eq!(e.pointer("/asset/schema"), Some(Value::String("s".into())));
        assert_eq!(e.pointer("/x"), Some(Value::from(1)));
        assert_eq!(e.pointer("/source"), Some(Value::String("pg".into())));
    }

    #[test]
    fn checks_in_order() {
        assert_eq!(kind(&[b'x'; 201]), RejectKind::TooLarge);
        assert_eq!(kind(b"\xff\xfe"), RejectKind::InvalidJson);
        assert_eq!(kind(b"{\"a\":"), RejectKind::InvalidJson);
        assert_eq!(kind(b"[1]"), RejectKind::InvalidEvent);
        assert_eq!(
            kind(
                br#"{"event_id":"e","source":"s","run_id":"r","status":"running","emitted_at":"2026-11-01T10:00:00Z"}"#
            ),
            RejectKind::InvalidEvent
        );
        assert_eq!(
            kind(br#"{"event_id":"e","source":"s","run_id":"r","status":"done","emitted_at":"2026-11-01T10:00:00Z"}"#),
            RejectKind::InvalidEvent
        );
        assert_eq!(kind(br#"{"event_id":"","source":"s","run_id":"r","status":"completed","emitted_at":"2026-11-01T10:00:00Z"}"#), RejectKind::InvalidEvent);
        assert_eq!(
            kind(br#"{"event_id":"e","source":"s","run_id":"r","status":"completed","emitted_at":"yesterday"}"#),
            RejectKind::InvalidEvent
        );
        assert_eq!(kind(br#"{"event_id":"e","source":"s","run_id":"r","status":"completed","emitted_at":"2026-11-01T10:00:00Z","expected_assets":-1}"#), RejectKind::InvalidEvent);
        assert_eq!(kind(br#"{"event_id":"e","source":"s","run_id":"r","status":"running","emitted_at":"2026-11-01T10:00:00Z","asset":{"database":"d","schema":"","table":"t"}}"#), RejectKind::InvalidEvent);
    }

    #[test]
    fn a_byte_order_mark_is_refused_saying_so() {
        let event =
            r#"{"event_id":"e","source":"s","run_id":"r","status":"completed","emitted_at":"2026-11-01T10:00:00Z"}"#;
        let refused = decode(format!("\u{feff}{event}").as_bytes(), 1 << 20).expect_err("JSON has no BOM");
        assert_eq!(refused.kind, RejectKind::InvalidJson);
        assert!(refused.message.contains("byte order mark"), "{}", refused.message);
        assert!(decode(event.as_bytes(), 1 << 20).is_ok());
    }

    #[test]
    fn a_pretty_printed_asset_is_kept_on_one_line() {
        let e = ok(
            "{\"event_id\":\"e\",\"source\":\"pg\",\"run_id\":\"r\",\"status\":\"running\",\n \"emitted_at\":\"2026-11-01T10:00:00Z\",\n \"asset\": {\n  \"database\": \"d\",\n  \"schema\": \"s\",\n  \"table\": \"t\",\n  \"note\": \"two  words \\\" and\\n\"\n }\n}",
        );
        let EventKind::Running { body, .. } = &e.kind else { panic!("a running event") };
        assert_eq!(body.get(), r#"{"database":"d","schema":"s","table":"t","note":"two  words \" and\n"}"#);
    }

    #[test]
    fn what_a_value_parse_rejects_is_rejected_inside_the_asset() {
        let with = |v: &str| {
            format!(
                r#"{{"event_id":"e","source":"pg","run_id":"r","status":"running","emitted_at":"2026-11-01T10:00:00Z","asset":{{"database":"d","schema":"s","table":"t","n":{v}}}}}"#
            )
        };
        for bad in ["1e400", "-1E+999", r#""\uD800x""#, &format!("1{}", "0".repeat(400))] {
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad} is not JSON a parser takes");
            assert_eq!(kind_of(&with(bad)), RejectKind::InvalidJson, "{bad}");
        }
        for good in ["1e300", "-0.5E-3", r#""\ud83d\ude00 \" \\""#, "12345678901234567890123"] {
            let e = ok(&with(good));
            let EventKind::Running { body, .. } = &e.kind else { panic!("a running event") };
            assert!(serde_json::from_str::<Value>(body.get()).is_ok(), "{good}");
        }
    }

    #[test]
    fn completed_with_expected_assets() {
        let e = ok(
            r#"{"event_id":"e","source":"s","run_id":"r","status":"completed","emitted_at":"2026-11-01T10:00:00+01:00","expected_assets":3}"#,
        );
        assert!(matches!(e.kind, EventKind::Completed { expected_assets: Some(3) }));
        assert_eq!(e.emitted_at.to_rfc3339(), "2026-11-01T09:00:00+00:00");
    }
}
