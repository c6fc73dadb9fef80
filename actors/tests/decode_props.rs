//! Decode and validate never panic: arbitrary bytes and arbitrary JSON end as a valid event or
//! a rejection with a reason. The case budget is fixed so CI time is too.

use assetflow_actors::event::{EventKind, RejectKind, decode, sorted_members};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const MAX: usize = 4096;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("running"),
            Just("completed"),
            Just("2026-11-01T10:00:00Z"),
            Just(""),
            Just("database"),
            Just("table")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("event_id".to_string()),
                    Just("source".to_string()),
                    Just("run_id".to_string()),
                    Just("status".to_string()),
                    Just("emitted_at".to_string()),
                    Just("asset".to_string()),
                    Just("database".to_string()),
                    Just("schema".to_string()),
                    Just("table".to_string()),
                    Just("expected_assets".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// What a valid event must satisfy; anything decoded must satisfy it.
fn check_valid(raw: &[u8]) -> Result<(), TestCaseError> {
    match decode(raw, MAX) {
        Ok(ev) => {
            prop_assert!(raw.len() <= MAX);
            for id in [&ev.event_id, &ev.source, &ev.run_id] {
                prop_assert!(!id.is_empty() && id.chars().count() <= 256);
            }
            if let EventKind::Running { name, body } = &ev.kind {
                prop_assert!(!name.database.is_empty() && !name.schema.is_empty() && !name.table.is_empty());
                let parsed: Value = serde_json::from_str(body.get()).expect("the kept asset text is JSON");
                prop_assert!(parsed.is_object());
            }
        }
        Err(r) => {
            prop_assert!(!r.message.is_empty());
            if raw.len() > MAX {
                prop_assert_eq!(r.kind, RejectKind::TooLarge);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..600)) {
        check_valid(&raw)?;
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        check_valid(v.to_string().as_bytes())?;
    }

    #[test]
    fn near_valid_events_are_judged_field_by_field(
        drop_field in 0usize..8,
        status in prop_oneof![Just(json!("running")), Just(json!("completed")), Just(json!(7))],
        table in prop_oneof![Just(json!("t")), Just(json!("")), Just(json!(null)), Just(json!(["t"]))],
        expected in prop_oneof![Just(json!(3)), Just(json!(-3)), Just(json!("3")), Just(json!(null))],
    ) {
        let mut ev = json!({
            "event_id": "e", "source": "s", "run_id": "r", "status": status,
            "emitted_at": "2026-11-01T10:00:00Z", "expected_assets": expected,
            "asset": {"database": "d", "schema": "p", "table": table}
        });
        let fields = ["event_id", "source", "run_id", "status", "emitted_at", "asset", "expected_assets", "none"];
        if let Some(o) = ev.as_object_mut() { o.remove(fields[drop_field]); }
        check_valid(ev.to_string().as_bytes())?;
    }

    /// Decode finds the asset's names in the same pass that makes its text compact, without
    /// parsing it again; what it finds must be what a parse of the asset into members finds,
    /// names nested deeper, repeated or of the wrong type included, compact or pretty.
    #[test]
    fn the_asset_names_are_those_a_parse_finds(
        body in prop::collection::btree_map(
            prop_oneof![Just("database".to_string()), Just("schema".to_string()), Just("table".to_string()), "[a-z]{1,6}"],
            prop_oneof![
                3 => "[a-z\\\\\" é]{0,6}".prop_map(Value::String),
                1 => arb_json(),
            ],
            0..8,
        ),
        repeat in prop::option::of((0usize..3, "[a-z]{1,4}")),
        pretty in any::<bool>(),
    ) {
        let body = Value::Object(body.into_iter().collect());
        let mut text = if pretty { serde_json::to_string_pretty(&body).unwrap() } else { body.to_string() };
        if let Some((n, v)) = repeat {
            // A repeated key: the last one counts.
            let sep = if body.as_object().is_some_and(|o| o.is_empty()) { "" } else { "," };
            text.insert_str(1, &format!("\"{}\": \"{v}\"{sep}", ["database", "schema", "table"][n]));
        }
        let raw = format!(
            r#"{{"event_id":"e","source":"s","run_id":"r","status":"running","emitted_at":"2026-11-01T10:00:00Z","asset":{text}}}"#
        );
        let members = sorted_members(&text).expect("the asset is JSON");
        let by_parse: Result<Vec<String>, ()> = ["database", "schema", "table"]
            .iter()
            .map(|n| match members.iter().rev().find(|(k, _)| k.as_ref() == *n).map(|(_, v)| serde_json::from_str(v.get())) {
                Some(Ok(Value::String(s))) if !s.is_empty() => Ok(s),
                _ => Err(()),
            })
            .collect();
        match (decode(raw.as_bytes(), 1 << 20), by_parse) {
            (Ok(ev), Ok(names)) => {
                let EventKind::Running { name, .. } = &ev.kind else { panic!("a running event") };
                prop_assert_eq!(vec![name.database.clone(), name.schema.clone(), name.table.clone()], names);
            }
            (Err(r), Err(())) => prop_assert_eq!(r.kind, RejectKind::InvalidEvent, "{}", r.message),
            (got, want) => prop_assert!(false, "decode gave {:?}, a parse {:?}", got.map(|e| e.asset_key()), want),
        }
    }
}
