//! A reference model of EVENTS.md, written apart from the service, and a generator of the
//! streams that stress it: the differential test (`tests/reference_model.rs`) runs the binary
//! over a generated stream and compares what it wrote with what the model says it must.
//!
//! The model is EVENTS.md read plainly, plus the choices docs/EVENTS.md adds to it: a
//! completion older than the last one applied to its source drops nothing, nor does the same
//! completion again (one the guard stopped gives its dead letter again); a record touched by an
//! event newer than the completion is neither dropped nor weighed by the guard; and
//! `expected_assets` counts the run's distinct event ids. The generator emits only what both
//! read alike: no timestamp the two could parse differently, no number whose form matters.

pub mod harness;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, FixedOffset, TimeZone, Utc};
use serde_json::{Map, Value, json};

/// What a stream must produce, in the shape of a scenario's `expected.json`.
#[derive(Default)]
pub struct Expected {
    pub upserts: Vec<(String, &'static str, Value)>,
    pub drops: Vec<String>,
    /// Each drop as (asset key, its `last_seen_run`, `business.domain`, the completed run).
    pub drop_details: Vec<(String, String, Value, String)>,
    pub dead_letters: BTreeMap<&'static str, u64>,
    /// Each asset's history rows, oldest first: (outcome, event id, run) (EVENTS.md §6), all
    /// of them, not only those of the lines taken since the last `finish`.
    pub history: BTreeMap<String, Vec<(&'static str, String, String)>>,
    /// The control table at the end: asset key to (status, `last_seen_run`, `last_seen_at`).
    pub records: BTreeMap<String, (&'static str, String, DateTime<Utc>)>,
}

impl Expected {
    pub fn to_json(&self) -> Value {
        json!({
            "upserts": self.upserts.iter().map(|(k, c, d)| json!([k, c, d])).collect::<Vec<_>>(),
            "drops": self.drops,
            "dead_letters": self.dead_letters,
        })
    }
}

struct Record {
    source: String,
    domain: Value,
    hash: String,
    run: String,
    at: DateTime<Utc>,
    live: bool,
}

/// The last completion swept per source: (time, run, stopped by the guard).
type Mark = (DateTime<Utc>, String, bool);

/// Decides `lines` as EVENTS.md says, with `business` rows by (source, database, schema).
pub fn decide(lines: &[String], business: &HashMap<[String; 3], Value>, ignore: &[&str], fraction: f64) -> Expected {
    let mut m = Model::new(business, ignore, fraction);
    for line in lines {
        m.take(line);
    }
    m.finish()
}

/// The service's state as the model keeps it: fed a stream, then (`redrive`) its dead letters.
pub struct Model<'a> {
    business: &'a HashMap<[String; 3], Value>,
    ignore: &'a [&'a str],
    fraction: f64,
    /// Whether the lines now taken are dead letters replayed by `assetflow redrive`.
    redriven: bool,
    history: BTreeMap<String, Vec<(&'static str, String, String)>>,
    records: BTreeMap<String, Record>,
    /// Distinct event ids of each (source, run) applied.
    applied: HashMap<(String, String), BTreeSet<String>>,
    /// Completions waiting for their expected assets.
    pending: Vec<Completion>,
    marks: HashMap<String, Mark>,
    out: Expected,
}

/// A completion as the sweep needs it: its source, run, event id, `expected_assets` and time.
struct Completion {
    source: String,
    run: String,
    event_id: String,
    expected: usize,
    at: DateTime<Utc>,
}

impl<'a> Model<'a> {
    pub fn new(business: &'a HashMap<[String; 3], Value>, ignore: &'a [&'a str], fraction: f64) -> Self {
        Model {
            business,
            ignore,
            fraction,
            redriven: false,
            history: BTreeMap::new(),
            records: BTreeMap::new(),
            applied: HashMap::new(),
            pending: Vec::new(),
            marks: HashMap::new(),
            out: Expected::default(),
        }
    }

    /// What the lines taken since the last `finish` produced, and the state they left: a
    /// completion still waiting for its assets times out into `incomplete_run`.
    pub fn finish(&mut self) -> Expected {
        let never = std::mem::take(&mut self.pending).len() as u64;
        if never > 0 {
            *self.out.dead_letters.entry("incomplete_run").or_default() += never;
        }
        for (key, r) in &self.records {
            let status = if r.live { "live" } else { "dropped" };
            self.out.records.insert(key.clone(), (status, r.run.clone(), r.at));
        }
        self.out.history = self.history.clone();
        std::mem::take(&mut self.out)
    }

    /// Replays dead letters' payloads, as `assetflow redrive` does, with the drop guard at
    /// `fraction` (an operator lifts it to apply a completion it stopped): a completion the
    /// guard stopped is weighed again, not turned away by its mark.
    pub fn redrive(&mut self, payloads: &[String], fraction: f64) -> Expected {
        (self.redriven, self.fraction) = (true, fraction);
        for line in payloads {
            self.take(line);
        }
        self.finish()
    }

    fn dead(&mut self, kind: &'static str) {
        *self.out.dead_letters.entry(kind).or_default() += 1;
    }

    pub fn take(&mut self, line: &str) {
        let ev = match validate(line) {
            Ok(ev) => ev,
            Err(kind) => return self.dead(kind),
        };
        let text = |f: &str| ev[f].as_str().unwrap_or_default().to_owned();
        let (source, run, at) = (text("source"), text("run_id"), timestamp(&ev["emitted_at"]).unwrap_or_default());
        if ev["status"] == "running" {
            let asset = &ev["asset"];
            let part = |f: &str| asset[f].as_str().unwrap_or_default().to_owned();
            let key = format!("{source}/{}/{}/{}", part("database"), part("schema"), part("table"));
            let hash = canonical(&without(asset, self.ignore));
            self.applied.entry((source.clone(), run.clone())).or_default().insert(text("event_id"));
            let change = match self.records.get(&key) {
                Some(r) if r.at > at => None,
                None => Some(Some("created")),
                Some(r) if !r.live => Some(Some("created")),
                Some(r) if r.hash != hash => Some(Some("updated")),
                Some(_) => Some(None),
            };
            let outcome = change.map_or("stale", |c| c.unwrap_or("unchanged"));
            self.history.entry(key.clone()).or_default().push((outcome, text("event_id"), run.clone()));
            if let Some(change) = change {
                let domain = self.domain(&source, &part("database"), &part("schema"));
                if let Some(change) = change {
                    self.out.upserts.push((key.clone(), change, domain.clone()));
                }
                self.records.insert(key, Record { source, domain, hash, run, at, live: true });
            }
            self.sweep_ready();
        } else {
            let expected = ev.get("expected_assets").and_then(Value::as_u64).map_or(0, |n| n as usize);
            let completion = Completion { source, run, event_id: text("event_id"), expected, at };
            if self.seen(&completion.source, &completion.run) < expected {
                self.pending.push(completion);
            } else {
                self.sweep(&completion);
            }
        }
    }

    fn domain(&self, source: &str, database: &str, schema: &str) -> Value {
        let key = [source.to_owned(), database.to_owned(), schema.to_owned()];
        self.business.get(&key).map_or(Value::Null, |row| row["domain"].clone())
    }

    fn seen(&self, source: &str, run: &str) -> usize {
        self.applied.get(&(source.to_owned(), run.to_owned())).map_or(0, BTreeSet::len)
    }

    fn sweep_ready(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for c in pending {
            if self.seen(&c.source, &c.run) >= c.expected {
                self.sweep(&c);
            } else {
                self.pending.push(c);
            }
        }
    }

    fn sweep(&mut self, c: &Completion) {
        let (source, run, at) = (c.source.as_str(), c.run.as_str(), c.at);
        if let Some((marked_at, marked_run, guarded)) = self.marks.get(source) {
            if *marked_at > at {
                return;
            }
            if *marked_at == at && marked_run == run && !(*guarded && self.redriven) {
                if *guarded {
                    self.dead("drop_guard");
                }
                return;
            }
        }
        let live: Vec<&String> =
            self.records.iter().filter(|(_, r)| r.source == source && r.live).map(|(k, _)| k).collect();
        let gone: Vec<String> = live
            .iter()
            .filter(|k| self.records[**k].run != run && self.records[**k].at <= at)
            .map(|k| (*k).clone())
            .collect();
        let guarded = gone.len() as f64 > self.fraction * live.len() as f64;
        self.marks.insert(source.to_owned(), (at, run.to_owned(), guarded));
        if guarded {
            return self.dead("drop_guard");
        }
        for key in gone {
            if let Some(r) = self.records.get_mut(&key) {
                r.live = false;
                self.out.drop_details.push((key.clone(), r.run.clone(), r.domain.clone(), run.to_owned()));
                let row = ("dropped", c.event_id.clone(), run.to_owned());
                self.history.entry(key.clone()).or_default().push(row);
            }
            self.out.drops.push(key);
        }
    }
}

/// The event, or the dead letter kind that turns it away (EVENTS.md §1, first match wins).
pub fn validate(line: &str) -> Result<Map<String, Value>, &'static str> {
    if line.len() > 1 << 20 {
        return Err("too_large");
    }
    let Ok(value) = serde_json::from_str::<Value>(line) else { return Err("invalid_json") };
    let Value::Object(ev) = value else { return Err("invalid_event") };
    let id = |f: &str| ev.get(f).and_then(Value::as_str).is_some_and(|s| (1..=256).contains(&s.chars().count()));
    if !(id("event_id") && id("source") && id("run_id")) {
        return Err("invalid_event");
    }
    let running = match ev.get("status").and_then(Value::as_str) {
        Some("running") => true,
        Some("completed") => false,
        _ => return Err("invalid_event"),
    };
    if timestamp(ev.get("emitted_at").unwrap_or(&Value::Null)).is_none() {
        return Err("invalid_event");
    }
    if running {
        let asset = ev.get("asset").and_then(Value::as_object).ok_or("invalid_event")?;
        let named = |f: &str| asset.get(f).and_then(Value::as_str).is_some_and(|s| !s.is_empty());
        if !(named("database") && named("schema") && named("table")) {
            return Err("invalid_event");
        }
    } else if let Some(n) = ev.get("expected_assets").filter(|n| !n.is_null()) {
        if n.as_u64().is_none() {
            return Err("invalid_event");
        }
    }
    Ok(ev)
}

fn timestamp(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.with_timezone(&Utc))
}

/// The asset without the ignored dotted paths.
fn without(asset: &Value, ignore: &[&str]) -> Value {
    let mut a = asset.clone();
    for path in ignore {
        let parts: Vec<&str> = path.split('.').collect();
        let (last, parents) = parts.split_last().unwrap_or((&"", &[]));
        let mut at = Some(&mut a);
        for p in parents {
            at = at.and_then(|v| v.get_mut(*p));
        }
        if let Some(Value::Object(o)) = at {
            o.remove(*last);
        }
    }
    a
}

/// Keys sorted at every depth (a `Map` without `preserve_order` is sorted), no whitespace.
fn canonical(v: &Value) -> String {
    v.to_string()
}

/// A generated stream: its lines and its business rows.
pub struct Stream {
    pub lines: Vec<String>,
    pub business: Vec<Value>,
}

impl Stream {
    /// The business rows by (source, database, schema), as the model looks them up.
    pub fn business_by_key(&self) -> HashMap<[String; 3], Value> {
        self.business
            .iter()
            .map(|row| {
                let f = |k: &str| row[k].as_str().unwrap_or_default().to_owned();
                ([f("source"), f("database"), f("schema")], row.clone())
            })
            .collect()
    }
}

/// A stream of several sources' interleaved runs: churn, key order and formatting changed,
/// timestamps in several offsets and precisions, exact and late re-deliveries, bad lines,
/// runs that stop half-way, completions counting their assets (some late, some never
/// complete), completions read after the next run began, and completions delivered twice.
///
/// Without `late_events` no run has events after its completion (which counts them in
/// `expected_assets`): a transport that holds a source's later messages back until the one
/// before is acknowledged (an SQS FIFO message group) cannot deliver them while the completion
/// waits, so there the completion times out. Either way the rest of the stream is the same.
pub fn generate(seed: u64, max_tables: usize, late_events: bool) -> Stream {
    let mut g = Gen { rng: fastrand::Rng::with_seed(seed), clock: 0, next_id: 0, lines: Vec::new() };
    let rng = &mut g.rng;
    let sources: Vec<String> = (0..rng.usize(1..=4))
        .map(|i| format!("{}-{i}{}", ["pg", "my", "sn", "ora"][rng.usize(..4)], ["", "é", "日"][rng.usize(..3)]))
        .collect();
    let mut pools: HashMap<String, Vec<[String; 3]>> = HashMap::new();
    let mut business = Vec::new();
    for s in &sources {
        let dbs: Vec<String> = (0..rng.usize(1..=3)).map(|j| format!("db{j}")).collect();
        let pool = (0..rng.usize(2..=max_tables))
            .map(|t| {
                [dbs[rng.usize(..dbs.len())].clone(), ["public", "stage"][rng.usize(..2)].into(), format!("t{t:02}")]
            })
            .collect();
        pools.insert(s.clone(), pool);
        for d in &dbs {
            for sc in ["public", "stage"] {
                if rng.f64() < 0.6 {
                    business.push(json!({"source": s, "database": d, "schema": sc, "domain": format!("dom-{s}-{d}-{sc}"), "owner": "x"}));
                }
            }
        }
    }
    let mut plan: Vec<String> = sources.iter().flat_map(|s| std::iter::repeat_n(s.clone(), rng.usize(1..=5))).collect();
    rng.shuffle(&mut plan);
    let mut last_run: HashMap<String, usize> = HashMap::new();
    for s in &plan {
        *last_run.entry(s.clone()).or_default() += 1;
    }
    let mut runs: HashMap<String, usize> = HashMap::new();
    let mut versions: HashMap<String, u32> = HashMap::new();
    let mut earlier: Vec<String> = Vec::new();
    let mut deferred: Vec<(String, String)> = Vec::new();
    for s in plan {
        let n = {
            let n = runs.entry(s.clone()).or_default();
            *n += 1;
            *n
        };
        let run = format!("{s}-r{n}");
        let is_last = n == last_run[&s];
        let share = if n == 1 { 1.0 } else { [1.0, 1.0, 0.9, 0.6, 0.5, 0.3, 0.0][g.rng.usize(..7)] };
        let mut seen: Vec<[String; 3]> = pools[&s].iter().filter(|_| g.rng.f64() < share).cloned().collect();
        g.rng.shuffle(&mut seen);
        let late = if is_last && !seen.is_empty() && g.rng.f64() < 0.3 && late_events {
            let cut = g.rng.usize(..=seen.len());
            seen.split_off(cut)
        } else {
            Vec::new()
        };
        let mut ids = BTreeSet::new();
        for (i, name) in seen.iter().enumerate() {
            let line = g.running(&s, &run, name, &mut versions);
            ids.insert(line.1);
            earlier.push(line.0);
            if i == 1.min(seen.len() - 1) {
                // A completion held back from the last run arrives now, after this run began.
                let (now, later): (Vec<_>, Vec<_>) = deferred.drain(..).partition(|(src, _)| *src == s);
                deferred = later;
                g.lines.extend(now.into_iter().map(|(_, c)| c));
            }
            let roll = g.rng.f64();
            if roll < 0.04 {
                let old = earlier[g.rng.usize(..earlier.len())].clone();
                g.lines.push(old);
            } else if roll < 0.08 {
                let bad = g.bad(&s, &run);
                g.lines.push(bad);
            }
        }
        g.clock += 1;
        let mut completion =
            json!({"event_id": g.id(), "source": s, "run_id": run, "status": "completed", "emitted_at": g.time()});
        let x = g.rng.f64();
        if !late.is_empty() {
            completion["expected_assets"] = json!(ids.len() + late.len());
        } else if x < 0.2 {
            completion["expected_assets"] = json!(ids.len());
        } else if x < 0.25 {
            completion["expected_assets"] = json!(ids.len().saturating_sub(1));
        } else if x < 0.28 && is_last {
            completion["expected_assets"] = json!(ids.len() + 5);
        }
        let text = g.write(&completion);
        // Held back only where it counts what came before it: not with late events of its
        // own, nor where it waits for more than came.
        let counted = completion.get("expected_assets").is_none_or(|n| n.as_u64() <= Some(ids.len() as u64));
        if late.is_empty() && !is_last && counted && g.rng.f64() < 0.15 {
            deferred.push((s.clone(), text.clone()));
        } else {
            g.lines.push(text.clone());
        }
        for name in &late {
            let (line, _) = g.running(&s, &run, name, &mut versions);
            earlier.push(line);
        }
        if g.rng.f64() < 0.05 {
            g.lines.push(text);
        }
    }
    g.lines.extend(deferred.into_iter().map(|(_, c)| c));
    Stream { lines: g.lines, business }
}

struct Gen {
    rng: fastrand::Rng,
    /// Seconds after 2026-11-01T00:00:00Z.
    clock: i64,
    next_id: u64,
    lines: Vec<String>,
}

impl Gen {
    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("e{}", self.next_id)
    }

    /// The clock's instant, written in one of the forms RFC 3339 allows.
    fn time(&mut self) -> String {
        let t = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap() + Duration::seconds(self.clock);
        match self.rng.usize(..6) {
            0 | 1 => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            2 => {
                let hours = [-5, 2, 9][self.rng.usize(..3)];
                let offset = FixedOffset::east_opt(hours * 3600).expect("an offset within a day");
                t.with_timezone(&offset).format("%Y-%m-%dT%H:%M:%S%:z").to_string()
            }
            3 => t.format(&format!("%Y-%m-%dT%H:%M:%S.{}Z", ["0", "000", "000000"][self.rng.usize(..3)])).to_string(),
            4 => t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string(),
            _ => t.format("%Y-%m-%dT%H:%M:%S.000+00:00").to_string(),
        }
    }

    /// One asset seen in `run`: its line (pushed, sometimes twice) and its event id.
    fn running(
        &mut self,
        source: &str,
        run: &str,
        name: &[String; 3],
        versions: &mut HashMap<String, u32>,
    ) -> (String, String) {
        let v = versions.entry(format!("{source}/{}", name.join("/"))).or_default();
        if self.rng.f64() < 0.15 {
            *v += 1;
        }
        let v = *v;
        self.clock += self.rng.i64(0..=3);
        let columns: Vec<Value> = (0..=v % 4).map(|i| json!({"name": format!("c{i}"), "type": "int"})).collect();
        let mut asset = json!({"database": name[0], "schema": name[1], "table": name[2], "columns": columns,
            "comment": format!("v{v} ✓"), "stats": {"row_count": self.rng.u32(..1_000_000)}});
        if self.rng.f64() < 0.1 {
            asset["nested"] = json!({"a": {"b": [1, 2.5, {"z": null, "y": true}]}});
        }
        if self.rng.f64() < 0.05 {
            asset["stats"]["row_count"] = json!("many");
        }
        let id = self.id();
        let mut ev = json!({"event_id": id, "source": source, "run_id": run, "status": "running", "emitted_at": self.time(), "asset": asset});
        if self.rng.f64() < 0.05 {
            ev["extra"] = json!({"unknown": 1});
        }
        let line = self.write(&ev);
        self.lines.push(line.clone());
        if self.rng.f64() < 0.1 {
            self.lines.push(line.clone());
        }
        (line, id)
    }

    /// A line the service must turn away.
    fn bad(&mut self, source: &str, run: &str) -> String {
        let asset = json!({"database": "d", "schema": "s", "table": "t"});
        let (id, at) = (self.id(), self.time());
        let ev = |f: &dyn Fn(&mut Value)| {
            let mut e = json!({"event_id": id, "source": source, "run_id": run, "status": "running", "emitted_at": at, "asset": asset});
            f(&mut e);
            e.to_string()
        };
        match self.rng.usize(..14) {
            0 => "not json at all".into(),
            1 => r#"{"event_id":"#.into(),
            2 => "[1,2,3]".into(),
            3 => "{}".into(),
            4 => ev(&|e| e["event_id"] = json!("")),
            5 => ev(&|e| e["status"] = json!("done")),
            6 => ev(&|e| e["emitted_at"] = json!("yesterday")),
            7 => ev(&|e| e["asset"]["schema"] = json!("")),
            8 => ev(&|e| {
                e["asset"].as_object_mut().map(|a| a.remove("table"));
            }),
            9 => ev(&|e| e["asset"] = json!([1])),
            10 => ev(&|e| e["asset"]["database"] = json!(1)),
            11 => ev(&|e| {
                e["status"] = json!("completed");
                e["expected_assets"] = json!(-1);
            }),
            12 => ev(&|e| e["run_id"] = json!("x".repeat(257))),
            _ => ev(&|e| e["emitted_at"] = json!("2026-13-01T00:00:00Z")),
        }
    }

    /// `v` as JSON text: object keys in a random order, sometimes spaced, non-ASCII sometimes
    /// escaped (`\u00e9`), which must not change the content hash.
    fn write(&mut self, v: &Value) -> String {
        let (spaced, ascii) = (self.rng.f64() < 0.2, self.rng.bool());
        let mut out = String::new();
        self.write_into(v, spaced, ascii, &mut out);
        out
    }

    fn write_into(&mut self, v: &Value, spaced: bool, ascii: bool, out: &mut String) {
        let sep = if spaced { ", " } else { "," };
        match v {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                self.rng.shuffle(&mut keys);
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(sep);
                    }
                    out.push_str(&string(k, ascii));
                    out.push_str(if spaced { ": " } else { ":" });
                    self.write_into(&o[k], spaced, ascii, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(sep);
                    }
                    self.write_into(x, spaced, ascii, out);
                }
                out.push(']');
            }
            Value::String(s) => out.push_str(&string(s, ascii)),
            other => out.push_str(&other.to_string()),
        }
    }
}

/// A JSON string literal, non-ASCII characters as `\u` escapes when `ascii`.
fn string(s: &str, ascii: bool) -> String {
    let quoted = Value::String(s.to_owned()).to_string();
    if !ascii {
        return quoted;
    }
    let mut out = String::with_capacity(quoted.len());
    for c in quoted.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}
