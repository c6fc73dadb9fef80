//! The Kafka topology end to end against a real Kafka-protocol broker: events on a topic keyed
//! by `source`, outputs and dead letters (the failure topic) read back from their topics, and,
//! as in examples/kafka.toml, the control table and history in PostgreSQL; and the reference
//! model's generated streams read from a topic, by one process run clean or SIGKILLed and
//! started again.

mod common;
mod model;

use std::path::Path;

use common::aws::unique;
use common::kafka::*;
use common::{Outputs, bin, compare, scenarios};

struct Topics {
    input: String,
    upsert: String,
    drop: String,
    dead: String,
    enriched: String,
}

async fn topics(partitions: i32) -> Topics {
    let t = Topics {
        input: unique("events"),
        upsert: unique("upserts"),
        drop: unique("drops"),
        dead: unique("failures"),
        enriched: unique("enriched"),
    };
    create_topic(&t.input, partitions).await;
    for name in [&t.upsert, &t.drop, &t.dead, &t.enriched] {
        create_topic(name, 1).await;
    }
    t
}

fn config(t: &Topics, stages: &str) -> String {
    format!(
        r#"
[pipeline]
stages = {stages}
shards = 4
state_dir = "state"
[[sources]]
kind = "kafka"
brokers = "{b}"
topic = "{input}"
group = "{group}"
follow = false
session_timeout_ms = 6000
[enricher]
kind = "file"
path = "business.json"
[decisor]
hash_ignore = ["stats.row_count"]
[control]
kind = "postgres"
url = "{pg}"
table = "{control}"
create_if_missing = true
[history]
kind = "postgres"
url = "{pg}"
table = "{history}"
create_if_missing = true
[sinks.upsert]
kind = "kafka"
brokers = "{b}"
topic = "{upsert}"
[sinks.drop]
kind = "kafka"
brokers = "{b}"
topic = "{drop}"
[sinks.enriched]
kind = "kafka"
brokers = "{b}"
topic = "{enriched}"
[sinks.dead_letter]
kind = "kafka"
brokers = "{b}"
topic = "{dead}"
[admin]
listen = ""
"#,
        b = brokers(),
        pg = common::pg_url(),
        control = unique("control").replace('-', "_"),
        history = unique("history").replace('-', "_"),
        input = t.input,
        group = unique("assetflow"),
        upsert = t.upsert,
        drop = t.drop,
        enriched = t.enriched,
        dead = t.dead,
    )
}

fn run_in(dir: &Path) -> std::process::Output {
    bin()
        .args(["run", "--config", "config.toml"])
        .current_dir(dir)
        .env("RUST_LOG", std::env::var("KDEBUG").unwrap_or_else(|_| "warn".into()))
        .output()
        .expect("run")
}

fn values(reads: &[Read]) -> Vec<serde_json::Value> {
    reads.iter().map(|r| r.value.clone()).collect()
}

#[test]
fn every_shared_scenario_through_kafka() {
    require_broker();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut failures = Vec::new();
    for scenario in scenarios() {
        let name = scenario.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let t = rt.block_on(topics(3));
        let all: Vec<String> =
            std::fs::read_to_string(scenario.join("events.jsonl")).unwrap().lines().map(str::to_owned).collect();
        // A broker refuses messages over its size limit (1 MiB by default): such a line never
        // reaches assetflow here, so its `too_large` dead letter is not expected.
        let (lines, refused): (Vec<String>, Vec<String>) = all.into_iter().partition(|l| l.len() <= 1_000_000);
        rt.block_on(produce_lines(&t.input, &lines));
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(scenario.join("business.json"), dir.path().join("business.json")).unwrap();
        std::fs::write(dir.path().join("config.toml"), config(&t, r#"["enrich", "decide"]"#)).unwrap();
        let out = run_in(dir.path());
        if !out.status.success() {
            failures.push(format!("{name}: exit {:?}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        if std::env::var("KDEBUG").is_ok() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        let upserts = read_topic(&t.upsert);
        // Message key = asset key; the decision id and event id ride as headers.
        for u in &upserts {
            assert_eq!(u.key, u.value["asset_key"].as_str().unwrap());
            assert!(u.headers.iter().any(|(k, v)| k == "decision_id" && v == u.value["decision_id"].as_str().unwrap()));
            assert!(u.headers.iter().any(|(k, v)| k == "event_id" && v == u.value["event_id"].as_str().unwrap()));
        }
        let got = Outputs {
            upserts: values(&upserts),
            drops: values(&read_topic(&t.drop)),
            dead_letters: values(&read_topic(&t.dead)),
        };
        if !got.duplicate_ids().is_empty() {
            failures.push(format!("{name}: duplicate decision ids in a clean run"));
        }
        let expected = common::expected_without_refused(&scenario, refused.len(), dir.path());
        if let Err(e) = compare(&expected, &got) {
            failures.push(format!("{name}:\n{e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A model stream's lines produced to a fresh topic of three partitions (key: the source), and
/// the `[[sources]]` section that reads it with a fresh group to its end.
fn on_a_topic(rt: &tokio::runtime::Runtime) -> impl Fn(&[String]) -> String + '_ {
    move |lines: &[String]| {
        let topic = unique("events");
        rt.block_on(create_topic(&topic, 3));
        rt.block_on(produce_lines(&topic, lines));
        format!(
            "[[sources]]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\ngroup = \"{}\"\nfollow = false\nsession_timeout_ms = 6000\n",
            brokers(),
            unique("assetflow")
        )
    }
}

/// The reference model's streams read from a topic of three partitions (key: the source), one
/// process of a fresh group: several sources share a partition, each source's order kept.
#[test]
fn generated_streams_read_from_a_topic_decide_as_the_model_says() {
    require_broker();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let topic = on_a_topic(&rt);
    let failed =
        model::harness::each(0..3, |seed| model::harness::clean_from(seed, true, &topic, &model::harness::embedded));
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// The reference model's streams read from a topic by one process of a group, SIGKILLed four
/// times (once it has written a random share of its outputs, or sooner) and started again at
/// once: each start waits out the members its predecessors left in the group, then takes up
/// from the offsets the group committed, so what every process wrote, de-duplicated by
/// decision id, is what the model decides, and so is the control table. Each start waits up to
/// twice the session timeout for the group, hence two streams only; `kafka_group.rs` has the
/// crash loop on its own.
#[test]
fn generated_streams_read_from_a_topic_by_a_process_killed_at_random_moments_decide_as_the_model_says() {
    require_broker();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let topic = on_a_topic(&rt);
    let mut rng = fastrand::Rng::with_seed(17);
    let failed = model::harness::each(5000..5002, |seed| {
        let kills = model::harness::Kills::AtOutputs(0..15_000);
        model::harness::killed_from(seed, &mut rng, kills, &topic, &model::harness::embedded)
    });
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

#[test]
fn the_enrich_only_topology_publishes_enriched_events() {
    require_broker();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let scenario = scenarios().into_iter().find(|p| p.ends_with("basics")).expect("basics");
    let t = rt.block_on(topics(2));
    let lines: Vec<String> =
        std::fs::read_to_string(scenario.join("events.jsonl")).unwrap().lines().map(str::to_owned).collect();
    rt.block_on(produce_lines(&t.input, &lines));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(scenario.join("business.json"), dir.path().join("business.json")).unwrap();
    std::fs::write(dir.path().join("config.toml"), config(&t, r#"["enrich"]"#)).unwrap();
    let out = run_in(dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let enriched = read_topic(&t.enriched);
    // Every valid event, running or completed, once; the bad line is on the failure topic.
    assert_eq!(enriched.len(), lines.len() - 1);
    let orders = enriched.iter().find(|r| r.value["event_id"] == "b1").expect("b1 enriched");
    assert_eq!(orders.value["business"]["domain"], "commerce");
    assert_eq!(orders.value["asset"]["table"], "orders");
    assert!(orders.value["enriched_at"].is_string());
    let staff = enriched.iter().find(|r| r.value["event_id"] == "b3").unwrap();
    assert!(staff.value["business"].is_null());
    let dead = read_topic(&t.dead);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value["error"]["kind"], "invalid_json");
    assert!(read_topic(&t.upsert).is_empty(), "nothing is decided in the enrich-only topology");
    // History is written for enriched events too.
    let h = bin().args(["history", "pg/sales/public/orders"]).current_dir(dir.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&h.stdout).contains("enriched"));
}

#[test]
fn redrive_reads_the_failure_topic_with_its_own_group_and_parks_on_a_topic() {
    require_broker();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let scenario = scenarios().into_iter().find(|p| p.ends_with("basics")).expect("basics");
    let t = rt.block_on(topics(2));
    let lines: Vec<String> =
        std::fs::read_to_string(scenario.join("events.jsonl")).unwrap().lines().map(str::to_owned).collect();
    rt.block_on(produce_lines(&t.input, &lines));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(scenario.join("business.json"), dir.path().join("business.json")).unwrap();
    let group = unique("redrive");
    let config = config(&t, r#"["enrich", "decide"]"#) + &format!("[redrive]\nmax_attempts = 2\ngroup = \"{group}\"\n");
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let out = run_in(dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read_topic(&t.dead).len(), 2, "the guarded completion and the bad line");
    let redrive = |args: &[&str]| {
        let out = bin()
            .arg("redrive")
            .args(args)
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .env("ASSETFLOW__DECISOR__MAX_DROP_FRACTION", "1.0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    // Both replayed: the completion drops with the guard lifted, the bad line fails again.
    let (_, first) = redrive(&[]);
    assert!(first.contains("2 replayed, 0 parked"), "{first}");
    // Two drops from the run, two more from the redriven completion.
    assert_eq!(read_topic(&t.drop).len(), 4);
    // The group committed what it replayed: only the new dead letter is read, and parked.
    let (_, second) = redrive(&[]);
    assert!(second.contains("0 replayed, 1 parked"), "{second}");
    let (_, third) = redrive(&[]);
    assert!(third.contains("0 replayed, 0 parked"), "{third}");
    let (listed, _) = redrive(&["--parked"]);
    let parked: Vec<serde_json::Value> = listed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parked.len(), 1, "{listed}");
    assert_eq!((parked[0]["attempts"].as_u64(), parked[0]["error"]["kind"].as_str()), (Some(2), Some("invalid_json")));
    assert_eq!(read_topic(&format!("{}.parked", t.dead)).len(), 1, "kept on the parking topic");
}
