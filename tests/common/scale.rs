//! Comparing what several processes wrote together with what one process wrote: the union of
//! their outputs de-duplicated by `decision_id`, decision by decision.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Outputs;

/// Every folder's outputs together. Whole lines only: a process killed mid-write leaves a torn
/// last line, a write that never completed (and was never acknowledged), which its shard's next
/// owner publishes again.
pub fn union(dirs: &[PathBuf]) -> Outputs {
    let mut all = Outputs::default();
    for d in dirs {
        let o = Outputs::so_far(d);
        all.upserts.extend(o.upserts);
        all.drops.extend(o.drops);
        all.dead_letters.extend(o.dead_letters);
    }
    all
}

/// Decisions by id, without the time they were made; panics if one id names two decisions.
pub fn distinct(records: &[Value]) -> BTreeMap<String, Value> {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for r in records {
        let mut v = r.clone();
        v.as_object_mut().unwrap().remove("decided_at");
        same_content_same_ref(&mut v);
        let id = v["decision_id"].as_str().unwrap().to_owned();
        if let Some(earlier) = out.get(&id) {
            assert_eq!(earlier, &v, "decision id {id} names two different decisions");
        }
        out.insert(id, v);
    }
    out
}

/// Dead letters as (kind, payload) counts, each failure once: a process that reads a message
/// again dead-letters it again under the same id.
pub fn dead_letter_kinds(records: &[Value]) -> BTreeMap<(String, String), usize> {
    let mut seen = HashSet::new();
    let mut out = BTreeMap::new();
    for d in records {
        if !seen.insert(d["decision_id"].as_str().unwrap_or_default().to_owned()) {
            continue;
        }
        let key = (
            d["error"]["kind"].as_str().unwrap_or_default().to_owned(),
            d["payload"].as_str().unwrap_or_default().to_owned(),
        );
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// The union equals `reference` exactly (upserts, drops, dead letters), and no id names two
/// different decisions.
pub fn assert_same_outputs(union: &Outputs, reference: &Outputs) {
    for (what, got, want) in
        [("upserts", &union.upserts, &reference.upserts), ("drops", &union.drops, &reference.drops)]
    {
        let got = distinct(got);
        let want = distinct(want);
        let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).take(5).collect();
        let extra: Vec<&Value> = got.iter().filter(|(k, _)| !want.contains_key(*k)).map(|(_, v)| v).take(5).collect();
        assert!(missing.is_empty() && extra.is_empty(), "{what}: missing {missing:?}, extra {extra:?}");
        assert_eq!(got, want, "{what}: the same ids name the same decisions");
    }
    assert_eq!(
        dead_letter_kinds(&union.dead_letters),
        dead_letter_kinds(&reference.dead_letters),
        "the same failures dead-lettered (once each)"
    );
}

/// Distinct upserts and drops so far in `dirs`, whose processes may still be writing.
pub fn decided(dirs: &[PathBuf]) -> (usize, usize) {
    let u = union(dirs);
    (distinct(&u.upserts).len(), distinct(&u.drops).len())
}

/// A control record as JSON without `version` (a replay bumps versions, never what a record
/// says), completion marks reduced to how far their sweep got (where the completion was read
/// differs between a file and a stream).
pub fn control_row(r: &assetflow_actors::record::ControlRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap();
    v.as_object_mut().unwrap().remove("version");
    if r.is_completion_mark() {
        let details: Value = serde_json::from_str(r.content_ref.as_deref().unwrap()).unwrap();
        v["content_ref"] = details["state"].clone();
    } else {
        same_content_same_ref(&mut v);
    }
    v
}

/// A pack content ref (`file://…/packs/{pack}.jsonl#{key}@{hash}`) names the pack of the process
/// that wrote it, so two processes deciding the same thing give two refs to the same content:
/// compared by what they address, the key and hash after `#`.
fn same_content_same_ref(v: &mut Value) {
    let locator = v["content_ref"].as_str().and_then(|r| r.strip_prefix("file://")?.split_once('#')).map(|(_, l)| l);
    if let Some(locator) = locator.map(str::to_owned) {
        v["content_ref"] = Value::String(locator);
    }
}

/// A process of a shared-state test: `source` (a `[[sources]]` body), control table and history
/// in PostgreSQL, content in one folder for every process, outputs in the process's `out/`,
/// then `extra` sections.
pub fn shared_config(source: &str, control: &str, history: &str, content: &Path, extra: &str) -> String {
    format!(
        r#"
[pipeline]
shards = 4
state_dir = "state"
[[sources]]
{source}
[decisor]
hash_ignore = ["stats.row_count"]
max_drop_fraction = 0.5
[control]
kind = "postgres"
url = "{url}"
table = "{control}"
create_if_missing = true
[content]
kind = "dir"
path = "{content}"
[history]
kind = "postgres"
url = "{url}"
table = "{history}"
create_if_missing = true
{sinks}{extra}"#,
        url = super::pg_url(),
        content = content.display(),
        sinks = super::FILE_SINKS
    )
}

/// Runs `assetflow gen` with `params` then `to` in `dir`.
pub fn generate(dir: &Path, params: &[&str], to: &[&str]) {
    let mut args = vec!["gen"];
    args.extend_from_slice(params);
    args.extend_from_slice(to);
    let out = super::assetflow(dir, &args);
    assert!(out.status.success(), "gen: {}", String::from_utf8_lossy(&out.stderr));
}

/// One process over the events of `params`, read from a file in `dir`: the reference several
/// processes must equal. `config` gives the config for a `[[sources]]` body. Checks the input
/// has at least `min_events` events, drops and a tripped drop guard; returns the outputs.
pub fn run_reference(dir: &Path, params: &[&str], min_events: usize, config: impl Fn(&str) -> String) -> Outputs {
    std::fs::create_dir_all(dir).unwrap();
    generate(dir, params, &["--out", "events.jsonl"]);
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap().lines().count();
    assert!(events >= min_events, "{events} events");
    std::fs::write(dir.join("config.toml"), config("kind = \"file\"\npath = \"events.jsonl\"\nfollow = false"))
        .unwrap();
    let out = super::assetflow(dir, &["run"]);
    assert!(out.status.success(), "reference run: {}", String::from_utf8_lossy(&out.stderr));
    let outputs = Outputs::read(dir);
    assert!(outputs.duplicate_ids().is_empty());
    let guarded = outputs.dead_letters.iter().any(|d| d["error"]["kind"] == "drop_guard");
    assert!(guarded && !outputs.drops.is_empty(), "the input has drops and trips the guard");
    outputs
}

/// Whether `dirs` hold every decision and every dead letter of `reference` so far: a
/// completion's dead letter (a drop guard's refusal) comes after the last decision of its run,
/// so a run is not over when the decisions are all in.
pub fn holds_everything(dirs: &[PathBuf], reference: &Outputs) -> bool {
    let (u, d) = decided(dirs);
    let failures = |o: &Outputs| dead_letter_kinds(&o.dead_letters).values().sum::<usize>();
    u + d >= reference.upserts.len() + reference.drops.len() && failures(&union(dirs)) >= failures(reference)
}
