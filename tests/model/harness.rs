//! Runs the binary over a generated stream and holds what it did against the model, each
//! function one way of running it: `clean` (and `clean_from`, read from a topic, a Kinesis
//! stream, a queue or standard input), `split` into a file per source, `killed` at random
//! moments (and `killed_from` a topic or a Kinesis stream), `redriven` after a clean run (then parked), `posted` to the http source, `enriched`
//! by the enrich-only topology, and `shared` by several processes. Most take `stores`, an edit
//! of the config that puts the control table, history and content where a test wants them
//! (the embedded stores as written, PostgreSQL, DynamoDB and S3...), and all say what differs
//! from the model, if anything.
// Each test file runs the kinds of stream it needs.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{Expected, Model, Stream, decide, generate, validate};
use crate::common::scale::union;
use crate::common::{Outputs, SCENARIO_CONFIG, bin, compare, spawn_run};

/// An edit of the scenario config: where the stores live.
pub type Stores<'a> = &'a dyn Fn(String) -> String;

/// Puts a stream's lines on a transport (a Kafka topic, a Kinesis stream, an SQS queue) and
/// gives the `[[sources]]` section that reads them there.
pub type Input<'a> = &'a dyn Fn(&[String]) -> String;

/// The scenario config's source: the stream's lines in `events.jsonl`.
const FILE_SOURCE: &str = "[[sources]]\nkind = \"file\"\npath = \"events.jsonl\"\nfollow = false\n";

/// The config as written: every store embedded.
pub fn embedded(config: String) -> String {
    config
}

/// The stream's lines read from `events.jsonl`, as the scenario config says.
pub fn file(_: &[String]) -> String {
    FILE_SOURCE.to_owned()
}

/// Outputs as a consumer that de-duplicates by decision id sees them, once each id is shown to
/// name one decision only. A backend call whose reply is lost after the store committed (a
/// busy emulator) is retried, and the batch decided again publishes the same decisions again
/// under the same ids (EVENTS.md §4.5): at least once, not exactly once, even without a crash.
fn at_least_once(got: Outputs) -> Outputs {
    crate::common::scale::distinct(&got.upserts);
    crate::common::scale::distinct(&got.drops);
    got.dedup()
}

/// The scenario config's `decisor.hash_ignore`, and the one of the processes of [`shared`].
const IGNORED: &[&str] = &["stats.row_count"];

/// Stream `seed`'s `decisor.hash_ignore` and `max_drop_fraction`, varied across seeds apart
/// from the shard count (`seed % 3`): nothing ignored, or more than the scenario's (a text
/// field, a whole nested object); the guard tighter, off, or stopping any drop.
fn decisor(seed: u64) -> (&'static [&'static str], f64) {
    const IGNORES: [&[&str]; 4] = [IGNORED, &[], &["stats.row_count", "comment"], &["nested.a", "stats"]];
    const FRACTIONS: [f64; 4] = [0.5, 0.3, 1.0, 0.0];
    (IGNORES[(seed / 3 % 4) as usize], FRACTIONS[(seed / 12 % 4) as usize])
}

/// Asset keys whose history a clean stream reads back: the longest first, where drops,
/// re-creations and stale events meet. Each read is a process start, so not every key.
const HISTORIES_READ: usize = 8;

/// Writes stream `seed` into `dir` with the scenario config (the completion time-out cut to a
/// second, so that runs that never complete end quickly) and the model's `expected.json`.
fn prepare(dir: &Path, seed: u64, stores: Stores) -> Expected {
    prepare_from(dir, seed, true, &file, stores)
}

/// [`prepare`], the stream with or without late events ([`super::generate`]) and read
/// from where `input` puts it.
fn prepare_from(dir: &Path, seed: u64, late_events: bool, input: Input, stores: Stores) -> Expected {
    let stream = write_stream(dir, seed, late_events, input, stores);
    let (ignore, fraction) = decisor(seed);
    let expected = decide(&stream.lines, &stream.business_by_key(), ignore, fraction);
    std::fs::write(dir.join("expected.json"), expected.to_json().to_string()).unwrap();
    expected
}

/// Writes stream `seed`, its business rows and its config into `dir`.
fn write_stream(dir: &Path, seed: u64, late_events: bool, input: Input, stores: Stores) -> Stream {
    let stream = generate(seed, if seed % 2 == 0 { 14 } else { 40 }, late_events);
    let (ignore, fraction) = decisor(seed);
    let decisor = format!(
        "hash_ignore = {}\nmax_drop_fraction = {fraction:?}\ncompletion_timeout = \"1s\"",
        serde_json::to_string(ignore).unwrap()
    );
    let scenario = "hash_ignore = [\"stats.row_count\"]\nmax_drop_fraction = 0.5";
    assert!(SCENARIO_CONFIG.contains(scenario));
    let config = SCENARIO_CONFIG.replace(scenario, &decisor);
    let shards = [1, 4, 7][(seed % 3) as usize];
    let config = config.replace("shards = 4", &format!("shards = {shards}"));
    assert!(config.contains(FILE_SOURCE));
    let config = config.replace(FILE_SOURCE, &input(&stream.lines));
    std::fs::write(dir.join("config.toml"), stores(config)).unwrap();
    std::fs::write(dir.join("events.jsonl"), stream.lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("business.json"), Value::Array(stream.business.clone()).to_string()).unwrap();
    stream
}

/// What `compare` leaves out of a drop: the run that last saw the asset, its business (looked
/// up for the asset it drops, EVENTS.md §5) and the completed run.
fn drop_details(drops: &[Value]) -> Vec<(String, String, Value, String)> {
    let text = |v: &Value, f: &str| v[f].as_str().unwrap_or_default().to_owned();
    let mut all: Vec<_> = drops
        .iter()
        .map(|d| (text(d, "asset_key"), text(d, "last_seen_run"), d["business"]["domain"].clone(), text(d, "run_id")))
        .collect();
    all.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    all
}

/// The drops written against the model's, with their details.
fn compare_drops(got: &[Value], expected: &mut Expected) -> Result<(), String> {
    expected.drop_details.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    if drop_details(got) != expected.drop_details {
        return Err(format!("drops {:?}, expected {:?}", drop_details(got), expected.drop_details));
    }
    Ok(())
}

/// The state a run leaves against the model's: the control table (`assets`: status, last run
/// and time of every asset) and the history of the `histories` assets that went through the
/// most (`history`: every decision, oldest to newest once the newest-first listing is turned
/// round; a run replayed after a crash may write a row twice, so those read none).
fn compare_state(dir: &Path, expected: &Expected, histories: usize) -> Result<(), String> {
    let json_lines = |args: &[&str]| -> Vec<Value> {
        let out = bin().args(args).args(["--format", "json"]).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let text = |v: &Value, f: &str| v[f].as_str().unwrap_or_default().to_owned();
    let millis = |t: &str| chrono::DateTime::parse_from_rfc3339(t).map_or(i64::MIN, |t| t.timestamp_millis());
    let got: Vec<(String, String, String, i64)> = json_lines(&["assets"])
        .iter()
        .map(|r| (text(r, "asset_key"), text(r, "status"), text(r, "last_seen_run"), millis(&text(r, "last_seen_at"))))
        .collect();
    let want: Vec<(String, String, String, i64)> = expected
        .records
        .iter()
        .map(|(k, (status, run, at))| (k.clone(), (*status).to_owned(), run.clone(), at.timestamp_millis()))
        .collect();
    if got != want {
        return Err(format!("assets:\n  got  {got:?}\n  want {want:?}"));
    }
    let mut keys: Vec<(&String, &Vec<_>)> = expected.history.iter().collect();
    keys.sort_by_key(|(k, rows)| (std::cmp::Reverse(rows.len()), (*k).clone()));
    for (key, want) in keys.into_iter().take(histories) {
        let mut got: Vec<(String, String, String)> = json_lines(&["history", key, "--limit", "10000"])
            .iter()
            .map(|r| (text(r, "outcome"), text(r, "event_id"), text(r, "run_id")))
            .collect();
        got.reverse();
        let want: Vec<(String, String, String)> =
            want.iter().map(|(o, e, r)| ((*o).to_owned(), e.clone(), r.clone())).collect();
        if got != want {
            return Err(format!("history of {key}, oldest first:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    Ok(())
}

/// `assetflow run` in `dir` until it ends by itself, the stream on its standard input too (for a
/// `stdin` source; any other leaves it unread).
fn run_to_the_end(dir: &Path) {
    let stdin = std::fs::File::open(dir.join("events.jsonl")).unwrap();
    let out = bin().args(["run"]).current_dir(dir).env("RUST_LOG", "error").stdin(stdin).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs each stream of `seeds` once through `check`, and gathers what went wrong.
pub fn each(seeds: std::ops::Range<u64>, mut check: impl FnMut(u64) -> Result<(), String>) -> Vec<String> {
    seeds.filter_map(|seed| check(seed).err().map(|e| format!("stream {seed}: {e}"))).collect()
}

/// The streams a store's test runs with its `stores`: `streams` clean from `events.jsonl`, as
/// many SIGKILLed (kill moments drawn from `rng_seed`), and `redrives` redriven; what went wrong.
pub fn through_stores(stores: Stores, streams: u64, redrives: u64, rng_seed: u64) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(rng_seed);
    let mut failed = each(0..streams, |seed| clean_from(seed, true, &file, stores));
    failed.extend(each(1000..1000 + streams, |seed| killed(seed, &mut rng, stores)));
    failed.extend(each(2000..2000 + redrives, |seed| redriven(seed, stores)));
    failed
}

/// Stream `seed` run once to its end: every output as the model decides (drops with their
/// details), no decision id twice, and the model's control table and histories.
pub fn clean(seed: u64, stores: Stores) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = prepare(dir.path(), seed, stores);
    run_to_the_end(dir.path());
    let got = Outputs::read(dir.path());
    compare(&dir.path().join("expected.json"), &got)?;
    compare_drops(&got.drops, &mut expected)?;
    if !got.duplicate_ids().is_empty() {
        return Err(format!("decision ids written twice in a clean run: {:?}", got.duplicate_ids()));
    }
    compare_state(dir.path(), &expected, HISTORIES_READ)
}

/// [`clean`] through network backends (a transport, stores on a server): the stream, with or
/// without late events, read from where `input` puts it ([`file`] for `events.jsonl`), and
/// its outputs compared as a de-duplicating consumer sees them ([`at_least_once`]).
pub fn clean_from(seed: u64, late_events: bool, input: Input, stores: Stores) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = prepare_from(dir.path(), seed, late_events, input, stores);
    run_to_the_end(dir.path());
    let got = at_least_once(Outputs::read(dir.path()));
    compare(&dir.path().join("expected.json"), &got)?;
    compare_drops(&got.drops, &mut expected)?;
    compare_state(dir.path(), &expected, HISTORIES_READ)
}

/// Stream `seed` POSTed to the `http` source a line at a time, each line a one-element array
/// (a line that is itself an array stays one invalid event), each request sent once the one
/// before was answered, then SIGTERM: every output and the end state as the model says. A
/// request is answered once its events are durable, so a run's events after its completion
/// cannot come while it waits for them: those streams have none, as on an SQS FIFO queue.
pub fn posted(seed: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_port();
    let http = format!("[[sources]]\nkind = \"http\"\nlisten = \"127.0.0.1:{port}\"\n");
    let mut expected = prepare_from(dir.path(), seed, false, &|_| http.clone(), &embedded);
    let mut child = spawn_run(dir.path());
    let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let post_all = || -> Result<(), String> {
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("the http source never listened on {port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for line in text.lines() {
            let answer = crate::common::http_request(port, "POST", "/events", format!("[{line}]").as_bytes());
            let want = if serde_json::from_str::<Value>(line).is_ok() { 200 } else { 400 };
            if answer.as_ref().map(|(status, _)| *status) != Some(want) {
                return Err(format!("POST of {line}: {answer:?}, expected {want}"));
            }
        }
        Ok(())
    };
    let posted = post_all();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    posted?;
    if !status.success() {
        return Err(format!("SIGTERM did not stop the service cleanly: {status}"));
    }
    let got = Outputs::read(dir.path());
    compare(&dir.path().join("expected.json"), &got)?;
    compare_drops(&got.drops, &mut expected)?;
    compare_state(dir.path(), &expected, HISTORIES_READ)
}

/// Stream `seed` through the enrich-only topology (`stages = ["enrich"]`, EVENTS.md §4.3):
/// each valid event, `running` or `completed`, once on the enriched sink as it came, with the
/// business of its (source, database, schema) or `null` (a completion is not looked up), and
/// each invalid line a dead letter of the model's kind; nothing decided.
pub fn enriched(seed: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let stream = write_stream(dir.path(), seed, true, &file, &embedded);
    let business = stream.business_by_key();
    let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    let sink = "[sinks.enriched]\nkind = \"file\"\npath = \"out/enriched.jsonl\"\n";
    let config = config.replace("stages = [\"enrich\", \"decide\"]", "stages = [\"enrich\"]") + sink;
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let mut want = (Vec::new(), std::collections::BTreeMap::<&str, usize>::new());
    for line in &stream.lines {
        match validate(line) {
            Ok(ev) => {
                let text = |v: &Value, f: &str| v[f].as_str().unwrap_or_default().to_owned();
                let asset = ev.get("asset").cloned().unwrap_or_default();
                let key =
                    [text(&Value::Object(ev.clone()), "source"), text(&asset, "database"), text(&asset, "schema")];
                let domain = match ev["status"].as_str() {
                    Some("running") => business.get(&key).map_or(Value::Null, |row| row["domain"].clone()),
                    _ => Value::Null,
                };
                want.0.push((Value::Object(ev).to_string(), domain));
            }
            Err(kind) => *want.1.entry(kind).or_default() += 1,
        }
    }
    run_to_the_end(dir.path());
    let mut got = (Vec::new(), std::collections::BTreeMap::<&str, usize>::new());
    for mut e in crate::common::read_lines(&dir.path().join("out/enriched.jsonl")) {
        let object = e.as_object_mut().ok_or("an enriched output that is not an object")?;
        if !object.remove("enriched_at").is_some_and(|t| t.is_string()) {
            return Err(format!("an enriched output without `enriched_at`: {e}"));
        }
        let domain = object.remove("business").map_or(Value::Null, |b| b["domain"].clone());
        got.0.push((e.to_string(), domain));
    }
    let outputs = Outputs::read(dir.path());
    for d in &outputs.dead_letters {
        let kind = ["invalid_json", "invalid_event", "too_large"].into_iter().find(|k| d["error"]["kind"] == *k);
        *got.1.entry(kind.unwrap_or("other")).or_default() += 1;
    }
    want.0.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    got.0.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    if got != want {
        return Err(format!("enriched and dead letters:\n  got  {got:?}\n  want {want:?}"));
    }
    if !outputs.upserts.is_empty() || !outputs.drops.is_empty() {
        return Err("the enrich-only topology decided something".into());
    }
    Ok(())
}

/// Stream `seed` with each source's events in a file of its own (bad lines in one more), each
/// file a source of the topology: partitions read side by side, one Router, the order within
/// each source kept.
pub fn split(seed: u64, stores: Stores) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let expected = prepare(dir.path(), seed, stores);
    let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let mut files: Vec<(String, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        let source = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("source").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        match files.iter_mut().find(|(s, _)| *s == source) {
            Some((_, lines)) => lines.push(line),
            None => files.push((source, vec![line])),
        }
    }
    let mut sources = String::new();
    for (i, (_, lines)) in files.iter().enumerate() {
        std::fs::write(dir.path().join(format!("part-{i}.jsonl")), lines.join("\n") + "\n").unwrap();
        sources.push_str(&format!(
            "[[sources]]\nkind = \"file\"\npath = \"part-{i}.jsonl\"\nfollow = false\nname = \"part-{i}\"\n"
        ));
    }
    let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    assert!(config.contains(FILE_SOURCE));
    std::fs::write(dir.path().join("config.toml"), config.replace(FILE_SOURCE, &sources)).unwrap();
    run_to_the_end(dir.path());
    let files = files.len();
    compare(&dir.path().join("expected.json"), &Outputs::read(dir.path()))
        .map_err(|e| format!("{files} files:\n{e}"))?;
    compare_state(dir.path(), &expected, HISTORIES_READ).map_err(|e| format!("{files} files: {e}"))
}

/// Stream `seed` with the process SIGKILLed four times, from its first milliseconds (the store
/// being created) to the middle of the run, then run to its end: what every process wrote,
/// de-duplicated by decision id, is what the model decides, and so is the control table.
pub fn killed(seed: u64, rng: &mut fastrand::Rng, stores: Stores) -> Result<(), String> {
    killed_from(seed, rng, Kills::After(0..100), &file, stores)
}

/// When [`killed_from`] kills each process.
pub enum Kills {
    /// A random moment in this range of milliseconds after the start.
    After(std::ops::Range<u64>),
    /// Once the process has written a random share of the outputs the model expects (a
    /// transport is read in a few milliseconds once a process has joined its group or found
    /// its shards, so a moment drawn from the clock would mostly miss the run), or a random
    /// moment in the range, whichever comes first.
    AtOutputs(std::ops::Range<u64>),
}

/// [`killed`] with the stream read from where `input` puts it, and each kill when `kills`
/// says.
pub fn killed_from(
    seed: u64,
    rng: &mut fastrand::Rng,
    kills: Kills,
    input: Input,
    stores: Stores,
) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let expected = prepare_from(dir.path(), seed, true, input, stores);
    let outputs = expected.upserts.len() + expected.drops.len() + expected.dead_letters.values().sum::<u64>() as usize;
    let mut all = Outputs { upserts: Vec::new(), drops: Vec::new(), dead_letters: Vec::new() };
    // Each kill's outputs are moved aside, so that the union is what every process wrote.
    // Whole lines only after a kill: a process killed mid-write leaves a torn last line, a
    // write never completed nor acknowledged (the next start would cut it off), which a later
    // process writes again whole. The run to the end is read strictly.
    let mut collect = |dir: &Path, killed: bool| {
        let got = if killed { Outputs::so_far(dir) } else { Outputs::read(dir) };
        all.upserts.extend(got.upserts);
        all.drops.extend(got.drops);
        all.dead_letters.extend(got.dead_letters);
        let _ = std::fs::remove_dir_all(dir.join("out"));
    };
    for _ in 0..4 {
        let mut child = spawn_run(dir.path());
        match &kills {
            Kills::After(moments) => std::thread::sleep(Duration::from_millis(rng.u64(moments.clone()))),
            Kills::AtOutputs(moments) => {
                let until = std::time::Instant::now() + Duration::from_millis(rng.u64(moments.clone()));
                let share = rng.usize(1..outputs.max(2));
                while std::time::Instant::now() < until && matches!(child.try_wait(), Ok(None)) {
                    let so_far = Outputs::so_far(dir.path());
                    if so_far.upserts.len() + so_far.drops.len() + so_far.dead_letters.len() >= share {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let _ = child.kill();
        child.wait().unwrap();
        collect(dir.path(), true);
    }
    run_to_the_end(dir.path());
    collect(dir.path(), false);
    compare(&dir.path().join("expected.json"), &all.dedup())?;
    compare_state(dir.path(), &expected, 0)
}

/// Stream `seed` run clean, then `assetflow redrive` of its dead letters, the drop guard lifted
/// for even seeds (as an operator applies a completion the guard stopped) and as it was for the
/// others: the new outputs are what the model decides for those payloads, in the order the
/// dead-letter store holds them, each new dead letter one attempt on; and the state is the
/// model's.
pub fn redriven(seed: u64, stores: Stores) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let stream = write_stream(dir.path(), seed, true, &file, stores);
    let business = stream.business_by_key();
    let (ignore, first) = decisor(seed);
    let mut model = Model::new(&business, ignore, first);
    stream.lines.iter().for_each(|line| model.take(line));
    model.finish();
    run_to_the_end(dir.path());
    let before = Outputs::read(dir.path());
    let payloads: Vec<String> =
        before.dead_letters.iter().map(|d| d["payload"].as_str().unwrap_or_default().to_owned()).collect();
    let fraction = if seed % 2 == 0 { 1.0 } else { first };
    let redrive = |args: &[&str], env: (&str, String)| {
        let out =
            bin().arg("redrive").args(args).current_dir(dir.path()).env("RUST_LOG", "error").env(env.0, env.1).output();
        let out = out.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    redrive(&[], ("ASSETFLOW__DECISOR__MAX_DROP_FRACTION", fraction.to_string()));
    let mut expected = model.redrive(&payloads, fraction);
    std::fs::write(dir.path().join("redriven.json"), expected.to_json().to_string()).unwrap();
    let after = Outputs::read(dir.path());
    // What the redrive added; de-duplicated as after a clean run through network stores.
    let new = at_least_once(Outputs {
        upserts: after.upserts[before.upserts.len()..].to_vec(),
        drops: after.drops[before.drops.len()..].to_vec(),
        dead_letters: after.dead_letters[before.dead_letters.len()..].to_vec(),
    });
    let redriven = payloads.len();
    compare(&dir.path().join("redriven.json"), &new).map_err(|e| format!("{redriven} dead letters redriven:\n{e}"))?;
    compare_drops(&new.drops, &mut expected).map_err(|e| format!("redriven: {e}"))?;
    if let Some(d) = new.dead_letters.iter().find(|d| d["attempts"] != 2) {
        return Err(format!("a dead letter redriven once that is not at attempt 2: {d}"));
    }
    compare_state(dir.path(), &expected, HISTORIES_READ).map_err(|e| format!("redriven: {e}"))?;
    // With redrive.max_attempts = 2 what failed twice is parked, not replayed: listed by
    // `--parked`, payload for payload, and nothing more decided.
    redrive(&[], ("ASSETFLOW__REDRIVE__MAX_ATTEMPTS", "2".into()));
    let parked = redrive(&["--parked"], ("ASSETFLOW__REDRIVE__MAX_ATTEMPTS", "2".into()));
    let payloads = |letters: Vec<Value>| {
        let mut all: Vec<String> =
            letters.iter().map(|d| d["payload"].as_str().unwrap_or_default().to_owned()).collect();
        all.sort();
        all
    };
    let listed = payloads(parked.lines().map(|l| serde_json::from_str(l).unwrap()).collect());
    if listed != payloads(new.dead_letters) {
        return Err(format!("parked {listed:?}, expected what failed twice"));
    }
    let last = Outputs::read(dir.path());
    if (last.upserts.len(), last.drops.len(), last.dead_letters.len())
        != (after.upserts.len(), after.drops.len(), after.dead_letters.len())
    {
        return Err("a redrive that only parks wrote outputs".into());
    }
    Ok(())
}

/// Stream `seed` read by several processes sharing its transport (a Kafka group, Kinesis shard
/// leases) and their stores: `input` puts the lines there and gives the `[[sources]]` body that
/// reads them, `config` makes a process's config from that body (stores shared, outputs in the
/// process's folder, the business rows in `business.json` beside it). A first process is
/// SIGKILLed once a second has joined, at random moments, and a third joins after: what they
/// wrote together, de-duplicated by decision id, is what the model decides.
pub fn shared(seed: u64, rng: &mut fastrand::Rng, input: Input, config: &dyn Fn(&str) -> String) -> Result<(), String> {
    let root = tempfile::tempdir().unwrap();
    let stream = generate(seed, 40, true);
    let expected = decide(&stream.lines, &stream.business_by_key(), IGNORED, 0.5);
    std::fs::write(root.path().join("expected.json"), expected.to_json().to_string()).unwrap();
    let text = config(&input(&stream.lines));
    let start = |name: &str| {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("business.json"), Value::Array(stream.business.clone()).to_string()).unwrap();
        std::fs::write(dir.join("config.toml"), &text).unwrap();
        let child = bin()
            .arg("run")
            .current_dir(&dir)
            // Runs that never complete end in a second, as in the model's other streams.
            .env("ASSETFLOW__DECISOR__COMPLETION_TIMEOUT", "1s")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("run.log")).unwrap())
            .spawn()
            .expect("spawn assetflow");
        (dir, child)
    };
    let (first, mut killed) = start("one");
    std::thread::sleep(Duration::from_millis(rng.u64(200..3000)));
    let (second, two) = start("two");
    std::thread::sleep(Duration::from_millis(rng.u64(200..3000)));
    let _ = killed.kill();
    killed.wait().unwrap();
    let (third, three) = start("three");
    let dirs = [first, second, third];
    let decisions = expected.upserts.len() + expected.drops.len();
    let letters: u64 = expected.dead_letters.values().sum();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(90) {
        let got = union(&dirs).dedup();
        if got.upserts.len() + got.drops.len() >= decisions && got.dead_letters.len() as u64 >= letters {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Whatever a late process still writes must show in the comparison.
    std::thread::sleep(Duration::from_secs(3));
    for mut child in [two, three] {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        if !status.success() {
            return Err(format!("a process did not stop cleanly on SIGTERM: {status}"));
        }
    }
    compare(&root.path().join("expected.json"), &union(&dirs).dedup())
}
