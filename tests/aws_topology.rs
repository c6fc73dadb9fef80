//! The AWS topology end to end against the local emulator: events on a Kinesis stream keyed by
//! `source`, control table and history in DynamoDB, content in S3, outputs and dead letters on
//! SQS queues; and the reference model's generated streams (clean, SIGKILLed, redriven) with
//! the control table, history and content in DynamoDB and S3, and read from Kinesis (clean and
//! SIGKILLed) and an SQS FIFO queue.

mod common;
mod model;

use std::path::Path;

use common::aws::*;
use common::{Outputs, bin, compare, scenarios};

struct AwsRun {
    stream: String,
    upsert: String,
    drop: String,
    dead: String,
    table: String,
    history: String,
    bucket: String,
}

impl AwsRun {
    async fn create(conf: &aws_config::SdkConfig) -> AwsRun {
        let stream = unique("events");
        create_stream(conf, &stream, 2).await;
        let dead = unique("dead");
        // Where redrive parks what it will not replay again.
        create_queue(conf, &format!("{dead}-parked")).await;
        AwsRun {
            upsert: create_queue(conf, &unique("upsert")).await,
            drop: create_queue(conf, &unique("drop")).await,
            dead: create_queue(conf, &dead).await,
            table: unique("control"),
            history: unique("history"),
            bucket: unique("content"),
            stream,
        }
    }

    fn config(&self) -> String {
        format!(
            r#"
[pipeline]
shards = 4
state_dir = "state"
[[sources]]
kind = "kinesis"
stream = "{stream}"
follow = false
[enricher]
kind = "file"
path = "business.json"
[decisor]
hash_ignore = ["stats.row_count"]
[control]
kind = "dynamodb"
table = "{table}"
create_if_missing = true
[content]
kind = "s3"
bucket = "{bucket}"
create_if_missing = true
[history]
kind = "dynamodb"
table = "{history}"
create_if_missing = true
[sinks.upsert]
kind = "sqs"
queue_url = "{upsert}"
[sinks.drop]
kind = "sqs"
queue_url = "{drop}"
[sinks.dead_letter]
kind = "sqs"
queue_url = "{dead}"
[retry]
initial = "20ms"
max = "500ms"
[admin]
listen = ""
{aws}"#,
            stream = self.stream,
            table = self.table,
            history = self.history,
            bucket = self.bucket,
            upsert = self.upsert,
            drop = self.drop,
            dead = self.dead,
            aws = aws_section()
        )
    }

    async fn outputs(&self, conf: &aws_config::SdkConfig) -> Outputs {
        Outputs {
            upserts: drain_queue(conf, &self.upsert).await,
            drops: drain_queue(conf, &self.drop).await,
            dead_letters: drain_queue(conf, &self.dead).await,
        }
    }
}

fn run_in(dir: &Path) -> std::process::Output {
    bin().args(["run", "--config", "config.toml"]).current_dir(dir).env("RUST_LOG", "warn").output().expect("run")
}

#[test]
fn every_shared_scenario_through_kinesis_dynamodb_s3_and_sqs() {
    require_emulator();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conf = rt.block_on(sdk_config());
    let mut failures = Vec::new();
    for scenario in scenarios() {
        let name = scenario.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let aws = rt.block_on(AwsRun::create(&conf));
        let all: Vec<String> =
            std::fs::read_to_string(scenario.join("events.jsonl")).unwrap().lines().map(str::to_owned).collect();
        // Kinesis refuses records over 1 MiB at the producer: such a line never reaches
        // assetflow in this topology, so its `too_large` dead letter is not expected here.
        let (lines, refused): (Vec<String>, Vec<String>) = all.into_iter().partition(|l| l.len() <= 1024 * 1024);
        rt.block_on(put_lines(&conf, &aws.stream, &lines));
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(scenario.join("business.json"), dir.path().join("business.json")).unwrap();
        std::fs::write(dir.path().join("config.toml"), aws.config()).unwrap();
        let out = run_in(dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            failures.push(format!("{name}: exit {:?}\n{stderr}", out.status.code()));
            continue;
        }
        let got = rt.block_on(aws.outputs(&conf));
        if !got.duplicate_ids().is_empty() {
            failures.push(format!("{name}: duplicate decision ids in a clean run"));
        }
        let expected = common::expected_without_refused(&scenario, refused.len(), dir.path());
        if let Err(e) = compare(&expected, &got) {
            failures.push(format!("{name}:\n{e}"));
        }
        // Batching keeps AWS requests far below one per event.
        assert!(stderr.contains("aws requests"), "{stderr}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `reference_model.rs`'s streams, a few, read from files as there, with the control table
/// and history in DynamoDB and the content in S3: conditional writes, marks, sweeps by query
/// and the history's sort key under the model's runs, kills and redrives.
#[test]
fn generated_streams_with_control_history_and_content_in_dynamodb_and_s3_decide_as_the_model_says() {
    let stores = |config: String| {
        let edited = config
            .replace(
                "[control]\nkind = \"embedded\"",
                &format!("[control]\nkind = \"dynamodb\"\ntable = \"{}\"\ncreate_if_missing = true", unique("control")),
            )
            .replace(
                "[history]\nkind = \"embedded\"",
                &format!("[history]\nkind = \"dynamodb\"\ntable = \"{}\"\ncreate_if_missing = true", unique("history")),
            )
            .replace(
                "[content]\nkind = \"dir\"\npath = \"state/content\"",
                &format!("[content]\nkind = \"s3\"\nbucket = \"{}\"\ncreate_if_missing = true", unique("content")),
            );
        assert_eq!(edited.matches("kind = \"dynamodb\"").count() + edited.matches("kind = \"s3\"").count(), 3);
        edited + &aws_section()
    };
    let failed = model::harness::through_stores(&stores, 6, 4, 9);
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// A model stream's lines put on a fresh Kinesis stream of two shards (partition key: the
/// source), and the `[[sources]]` section that reads it to its end.
fn on_a_kinesis_stream<'a>(
    rt: &'a tokio::runtime::Runtime,
    conf: &'a aws_config::SdkConfig,
) -> impl Fn(&[String]) -> String + 'a {
    move |lines: &[String]| {
        let stream = unique("events");
        rt.block_on(create_stream(conf, &stream, 2));
        rt.block_on(put_lines(conf, &stream, lines));
        format!("[[sources]]\nkind = \"kinesis\"\nstream = \"{stream}\"\nfollow = false\n{}", aws_section())
    }
}

/// The reference model's streams read from AWS transports instead of a file: a Kinesis stream
/// of two shards (partition key: the source) and an SQS FIFO queue (message group: the source).
/// A FIFO group gives nothing more while one of its messages is in flight, so there a run's
/// events after its completion cannot arrive while the completion waits for them: those
/// streams have none.
#[test]
fn generated_streams_read_from_kinesis_and_an_sqs_fifo_queue_decide_as_the_model_says() {
    require_emulator();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conf = rt.block_on(sdk_config());
    let kinesis = on_a_kinesis_stream(&rt, &conf);
    let sqs = |lines: &[String]| {
        let url = rt.block_on(create_fifo_queue(&conf, &unique("events")));
        rt.block_on(send_lines_fifo(&conf, &url, lines));
        format!(
            "[[sources]]\nkind = \"sqs\"\nqueue_url = \"{url}\"\nwait_seconds = 0\nfollow = false\n{}",
            aws_section()
        )
    };
    let embedded = model::harness::embedded;
    let mut failed = model::harness::each(0..6, |seed| model::harness::clean_from(seed, true, &kinesis, &embedded));
    failed.extend(model::harness::each(100..106, |seed| model::harness::clean_from(seed, false, &sqs, &embedded)));
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// The reference model's streams read from a Kinesis stream by one process, SIGKILLed four
/// times (once it has written a random share of its outputs, or sooner) and started again:
/// each start takes up from the checkpoints its store kept, so what every process wrote,
/// de-duplicated by decision id, is what the model decides, and so is the control table.
#[test]
fn generated_streams_read_from_kinesis_by_a_process_killed_at_random_moments_decide_as_the_model_says() {
    require_emulator();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conf = rt.block_on(sdk_config());
    let kinesis = on_a_kinesis_stream(&rt, &conf);
    let mut rng = fastrand::Rng::with_seed(19);
    let failed = model::harness::each(5000..5008, |seed| {
        let kills = model::harness::Kills::AtOutputs(0..1000);
        model::harness::killed_from(seed, &mut rng, kills, &kinesis, &model::harness::embedded)
    });
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

#[test]
fn assets_lists_the_control_table_in_dynamodb() {
    // `assetflow assets` once read the embedded store whatever the config named, and listed
    // nothing in this topology.
    require_emulator();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conf = rt.block_on(sdk_config());
    let scenario = scenarios().into_iter().next().expect("a scenario");
    let aws = rt.block_on(AwsRun::create(&conf));
    let lines: Vec<String> = std::fs::read_to_string(scenario.join("events.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.len() <= 1024 * 1024)
        .map(str::to_owned)
        .collect();
    rt.block_on(put_lines(&conf, &aws.stream, &lines));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(scenario.join("business.json"), dir.path().join("business.json")).unwrap();
    std::fs::write(dir.path().join("config.toml"), aws.config()).unwrap();
    let out = run_in(dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = rt.block_on(aws.outputs(&conf));
    let keys = |v: &[serde_json::Value]| -> std::collections::BTreeSet<String> {
        v.iter().map(|o| o["asset_key"].as_str().unwrap().to_owned()).collect()
    };
    let (upserted, dropped) = (keys(&got.upserts), keys(&got.drops));
    assert!(!upserted.is_empty(), "the scenario upserts something");

    // (asset key, status) rows of `assetflow assets` run in `dir`.
    let listed = |dir: &Path, args: &[&str]| -> Vec<(String, String)> {
        let out = common::assetflow(dir, &[&["assets", "--config", "config.toml"], args].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows: Vec<(String, String)> = text
            .lines()
            .skip(1)
            .filter(|l| l.contains('/'))
            .map(|l| {
                let mut cols = l.split_whitespace();
                (cols.next().unwrap().to_owned(), cols.next().unwrap().to_owned())
            })
            .collect();
        assert!(text.ends_with(&format!("{} assets\n", rows.len())), "{text}");
        rows
    };
    let all = listed(dir.path(), &[]);
    let keys: std::collections::BTreeSet<String> = all.iter().map(|r| r.0.clone()).collect();
    assert_eq!(keys, upserted, "every asset ever upserted has a record, and nothing else");
    let dropped_now: std::collections::BTreeSet<String> =
        all.iter().filter(|r| r.1 == "dropped").map(|r| r.0.clone()).collect();
    assert!(dropped_now.is_subset(&dropped));
    // The same scenario through the embedded topology leaves the same table.
    let embedded = common::prepare(&scenario);
    let out = common::assetflow(embedded.path(), &["run", "--config", "config.toml"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(all, listed(embedded.path(), &[]));
    for status in ["live", "dropped"] {
        let want: Vec<_> = all.iter().filter(|r| r.1 == status).cloned().collect();
        assert_eq!(listed(dir.path(), &["--status", status]), want, "--status {status}");
    }
    let source = all[0].0.split('/').next().unwrap().to_owned();
    let want: Vec<_> = all.iter().filter(|r| r.0.starts_with(&format!("{source}/"))).cloned().collect();
    assert_eq!(listed(dir.path(), &["--source", &source]), want);
    // `assetflow history` reads the DynamoDB history: the same rows, newest first, as the
    // embedded run's (all but the time they were written).
    let history = |dir: &Path, key: &str| -> Vec<String> {
        let out = common::assetflow(dir, &["history", key, "--config", "config.toml"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .collect()
    };
    for key in upserted.iter().take(5) {
        let rows = history(dir.path(), key);
        assert!(rows.len() > 1, "{key}: {rows:?}");
        assert_eq!(rows, history(embedded.path(), key), "{key}");
    }
}

#[test]
fn killed_and_restarted_mid_stream_loses_nothing() {
    require_emulator();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conf = rt.block_on(sdk_config());
    let gen_dir = tempfile::tempdir().unwrap();
    let status = bin()
        .args([
            "gen",
            "--sources",
            "2",
            "--assets",
            "80",
            "--runs",
            "4",
            "--halfway-every",
            "3",
            "--out",
            "events.jsonl",
        ])
        .current_dir(gen_dir.path())
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());
    let lines: Vec<String> =
        std::fs::read_to_string(gen_dir.path().join("events.jsonl")).unwrap().lines().map(str::to_owned).collect();

    let prepare = |aws: &AwsRun| {
        rt.block_on(put_lines(&conf, &aws.stream, &lines));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("business.json"), "[]").unwrap();
        std::fs::write(dir.path().join("config.toml"), aws.config()).unwrap();
        dir
    };
    let clean_aws = rt.block_on(AwsRun::create(&conf));
    let clean_dir = prepare(&clean_aws);
    let out = run_in(clean_dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let clean = rt.block_on(clean_aws.outputs(&conf));
    assert!(!clean.upserts.is_empty() && !clean.drops.is_empty());

    let aws = rt.block_on(AwsRun::create(&conf));
    let dir = prepare(&aws);
    let mut rng = fastrand::Rng::with_seed(11);
    let mut kills = 0;
    for _ in 0..6 {
        let mut child = bin()
            .args(["run", "--config", "config.toml"])
            .current_dir(dir.path())
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.u64(300..900)));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    let out = run_in(dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(kills >= 2, "only {kills} kills landed");
    let crashed = rt.block_on(aws.outputs(&conf)).dedup();
    let ids = |v: &[serde_json::Value]| -> std::collections::BTreeSet<String> {
        v.iter().map(|r| r["decision_id"].as_str().unwrap_or_default().to_owned()).collect()
    };
    assert_eq!(ids(&crashed.upserts), ids(&clean.upserts), "upserts differ after kills");
    assert_eq!(ids(&crashed.drops), ids(&clean.drops), "drops differ after kills");
    // Dead letters name their origin (stream shard and sequence number), which differ between
    // the two streams: compare what failed, and how.
    let what = |v: &[serde_json::Value]| -> Vec<(String, String)> {
        let mut w: Vec<(String, String)> = v
            .iter()
            .map(|d| {
                (
                    d["error"]["kind"].as_str().unwrap_or_default().to_owned(),
                    d["payload"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        w.sort();
        w
    };
    assert_eq!(what(&crashed.dead_letters), what(&clean.dead_letters));
}

#[test]
fn redrive_reads_the_dead_letter_queue() {
    require_emulator();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conf = rt.block_on(sdk_config());
    let scenario = scenarios().into_iter().find(|p| p.ends_with("basics")).expect("basics");
    let aws = rt.block_on(AwsRun::create(&conf));
    let lines: Vec<String> =
        std::fs::read_to_string(scenario.join("events.jsonl")).unwrap().lines().map(str::to_owned).collect();
    rt.block_on(put_lines(&conf, &aws.stream, &lines));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(scenario.join("business.json"), dir.path().join("business.json")).unwrap();
    std::fs::write(dir.path().join("config.toml"), aws.config()).unwrap();
    assert!(run_in(dir.path()).status.success());
    assert_eq!(rt.block_on(drain_queue(&conf, &aws.drop)).len(), 2);
    // The guarded completion and the bad line sit on the dead-letter queue; with the guard
    // lifted, redrive replays both: the completion now drops, the bad line fails again.
    let out = bin()
        .args(["redrive", "--config", "config.toml"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .env("ASSETFLOW__DECISOR__MAX_DROP_FRACTION", "1.0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("2 replayed"), "{stderr}");
    let drops = rt.block_on(drain_queue(&conf, &aws.drop));
    let mut keys: Vec<&str> = drops.iter().map(|d| d["asset_key"].as_str().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, vec!["pg/hr/public/staff", "pg/sales/public/customers"]);
    let dead = rt.block_on(drain_queue(&conf, &aws.dead));
    assert_eq!(dead.len(), 1, "only the new dead letter is left: the replayed ones were deleted");
    assert_eq!(dead[0]["attempts"], 2);
}

#[test]
fn past_max_attempts_an_sqs_dead_letter_is_parked_on_its_own_queue_and_listed() {
    require_emulator();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conf = rt.block_on(sdk_config());
    let aws = rt.block_on(AwsRun::create(&conf));
    let bad = "{\"source\": not json".to_owned();
    rt.block_on(put_lines(&conf, &aws.stream, std::slice::from_ref(&bad)));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("business.json"), "[]").unwrap();
    std::fs::write(dir.path().join("config.toml"), aws.config()).unwrap();
    assert!(run_in(dir.path()).status.success());
    let redrive = |args: &[&str]| {
        let out = bin()
            .arg("redrive")
            .args(args)
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .env("ASSETFLOW__REDRIVE__MAX_ATTEMPTS", "2")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // attempts 1: replayed, fails again as attempts 2; attempts 2: parked.
    assert!(redrive(&[]).1.contains("1 replayed, 0 parked"));
    assert!(redrive(&[]).1.contains("0 replayed, 1 parked"));
    // Parking deleted it from the dead-letter queue only after it was on the parking queue.
    assert!(rt.block_on(drain_queue(&conf, &aws.dead)).is_empty(), "nothing left to replay");
    let (listed, report) = redrive(&["--parked"]);
    assert!(report.contains("1 parked dead letters"), "{report}");
    let parked: Vec<serde_json::Value> = listed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parked.len(), 1, "{listed}");
    assert_eq!((parked[0]["attempts"].as_u64(), parked[0]["payload"].as_str()), (Some(2), Some(bad.as_str())));
    // Listing takes nothing away: a second listing shows it again, and it is on the queue.
    assert_eq!(redrive(&["--parked"]).0, listed);
    let kept = rt.block_on(drain_queue(&conf, &format!("{}-parked", aws.dead)));
    assert_eq!(kept.len(), 1, "still on the parking queue: {kept:?}");
}

#[test]
fn a_standard_sqs_queue_feeding_the_decide_stage_is_warned_about_and_a_fifo_one_is_not() {
    require_emulator();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let conf = rt.block_on(sdk_config());
    let standard = rt.block_on(create_queue(&conf, &unique("events")));
    let run = |queue_url: &str| -> String {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[[sources]]\nkind = \"sqs\"\nqueue_url = \"{queue_url}\"\nwait_seconds = 0\nfollow = false\n[admin]\nlisten = \"\"\n{}",
            aws_section()
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let out = run_in(dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let stderr = run(&standard);
    assert!(stderr.contains("standard SQS queue") && stderr.contains("MessageGroupId"), "{stderr}");
    let fifo = rt.block_on(create_fifo_queue(&conf, &unique("events")));
    let stderr = run(&fifo);
    assert!(!stderr.contains("standard SQS queue"), "{stderr}");
}

#[test]
fn an_sqs_source_on_a_queue_that_does_not_exist_fails_at_start_naming_the_key() {
    require_emulator();
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("{}/123456789012/{}", endpoint(), unique("never-made"));
    let config = format!(
        "[[sources]]\nkind = \"sqs\"\nqueue_url = \"{missing}\"\nfollow = false\n[admin]\nlisten = \"\"\n{}",
        aws_section()
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let out = run_in(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("sources[0].queue_url") && stderr.contains("NonExistentQueue"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
