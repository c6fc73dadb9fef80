//! The input contract: decoding and validating one raw message into an [`AssetEvent`].

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Longest accepted `event_id`, `source` or `run_id`, in characters.
pub const MAX_ID_CHARS: usize = 256;

/// The table an event describes: the three names that, with the source, make its asset key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AssetName {
    pub database: String,
    pub schema: String,
    pub table: String,
}

/// What an event says happened.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// One asset seen in a run; `body` is the whole `asset` object, free-form beyond its names.
    Running { name: AssetName, body: Value },
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
                EventKind::Running { body, .. } => {
                    return if tail.is_empty() { Some(body.clone()) } else { body.pointer(tail).cloned() };
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
    let value: Value =
        serde_json::from_str(text).map_err(|e| reject(RejectKind::InvalidJson, format!("not JSON: {e}"), None))?;
    validate(value)
}

/// The field checks of EVENTS.md §1 on an already parsed value.
pub fn validate(value: Value) -> Result<AssetEvent, Rejection> {
    let Value::Object(mut map) = value else {
        return Err(reject(
            RejectKind::InvalidEvent,
            format!("expected a JSON object, got {}", type_name(&value)),
            None,
        ));
    };
    let event_id = take_id(&mut map, "event_id", None)?;
    let eid = Some(event_id.as_str());
    let source = take_id(&mut map, "source", eid)?;
    let run_id = take_id(&mut map, "run_id", eid)?;
    let status = match map.remove("status") {
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
    let emitted_at = match map.remove("emitted_at") {
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
        let body = match map.remove("asset") {
            Some(body @ Value::Object(_)) => body,
            Some(other) => {
                return Err(reject(
                    RejectKind::InvalidEvent,
                    format!("field `asset` must be an object, got {}", type_name(&other)),
                    eid,
                ));
            }
            None => {
                return Err(reject(RejectKind::InvalidEvent, "a running event needs the field `asset`", eid));
            }
        };
        let name = AssetName {
            database: asset_name(&body, "database", eid)?,
            schema: asset_name(&body, "schema", eid)?,
            table: asset_name(&body, "table", eid)?,
        };
        EventKind::Running { name, body }
    } else {
        let expected_assets = match map.remove("expected_assets") {
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
    Ok(AssetEvent { event_id, source, run_id, emitted_at, kind, extra: map })
}

fn take_id(map: &mut Map<String, Value>, field: &str, eid: Option<&str>) -> Result<String, Rejection> {
    match map.remove(field) {
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

fn asset_name(body: &Value, field: &str, eid: Option<&str>) -> Result<String, Rejection> {
    match body.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => {
            Err(reject(RejectKind::InvalidEvent, format!("field `asset.{field}` must not be empty"), eid))
        }
        Some(other) => Err(reject(
            RejectKind::InvalidEvent,
            format!("field `asset.{field}` must be a string, got {}", type_name(other)),
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

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> AssetEvent {
        decode(s.as_bytes(), 1 << 20).expect("valid")
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
    fn completed_with_expected_assets() {
        let e = ok(
            r#"{"event_id":"e","source":"s","run_id":"r","status":"completed","emitted_at":"2026-11-01T10:00:00+01:00","expected_assets":3}"#,
        );
        assert!(matches!(e.kind, EventKind::Completed { expected_assets: Some(3) }));
        assert_eq!(e.emitted_at.to_rfc3339(), "2026-11-01T09:00:00+00:00");
    }
}
