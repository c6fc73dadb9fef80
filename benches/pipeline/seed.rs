//! The seed's own Kafka design as a comparator: one message at a time, consumed, validated,
//! looked up in PostgreSQL with one parameterised query, produced (delivery awaited) and its
//! offset committed. Against it, on the same broker, database and stream: assetflow's Kafka
//! topology, full (enriched from the same table, decided, stored durably) and enrich-only.
//! Both are timed from the first message consumed, so the broker's group join is left out.

use std::path::Path;
use std::time::{Duration, Instant};

use assetflow_actors::event::{EventKind, decode};

use super::{BIN, Measured, SOURCES, assign_from_start, group_join_seconds, run_measured};

/// The enricher's query, the same for the seed loop and for assetflow.
const QUERY: &str = "SELECT domain, owner, criticality, tags, retention_days, updated_at FROM business_catalog \
                     WHERE source = $1 AND database = $2 AND schema_name = $3";

/// assetflow's rate on one run, from its first message (its group join taken off).
pub struct Timed {
    pub run: Measured,
    pub joined: f64,
}

impl Timed {
    pub fn rate(&self) -> f64 {
        self.run.events as f64 / (self.run.seconds - self.joined).max(1e-9)
    }
}

pub struct SeedReport {
    pub events: usize,
    pub seed: Measured,
    pub full: Timed,
    pub enrich_only: Timed,
}

/// Puts an `n`-event first crawl on a topic and runs the three consumers over it.
pub fn compare(work: &Path, brokers: &str, pg_url: &str, n: usize) -> SeedReport {
    let tag = format!("seed{}", std::process::id());
    let dir = work.join("seed");
    std::fs::create_dir_all(&dir).expect("seed dir");
    let topic = format!("{tag}-in");
    let assets = (n / SOURCES).max(1).to_string();
    let status = std::process::Command::new(BIN.as_str())
        .args(["gen", "--sources", &SOURCES.to_string(), "--assets", &assets, "--runs", "1"])
        .args(["--churn", "0.02", "--missing", "0.01", "--payload", "1200", "--bad", "0", "--redeliver", "0"])
        .args(["--topic", &topic, "--kafka-brokers", brokers])
        .env("RUST_LOG", "warn")
        .status()
        .expect("gen to kafka");
    assert!(status.success(), "gen to Kafka failed");

    let seed = seed_loop(brokers, &topic, &format!("{tag}-seed-out"), pg_url);
    eprintln!("bench: seed loop {:.0} events/s over {} events", seed.rate(), seed.events);
    let full = assetflow(&dir.join("full"), brokers, &topic, &tag, pg_url, true);
    eprintln!("bench: kafka full topology {:.0} events/s after its group join", full.rate());
    let enrich_only = assetflow(&dir.join("enrich-only"), brokers, &topic, &tag, pg_url, false);
    eprintln!("bench: kafka enrich-only {:.0} events/s after its group join", enrich_only.rate());
    SeedReport { events: n, seed, full, enrich_only }
}

/// assetflow over `topic` with the PostgreSQL enricher: deciding (`decide`) or enrich-only.
fn assetflow(dir: &Path, brokers: &str, topic: &str, tag: &str, pg_url: &str, decide: bool) -> Timed {
    std::fs::create_dir_all(dir).expect("run dir");
    let name = if decide { "full" } else { "enrich" };
    let sink = |sink: &str| {
        format!("[sinks.{sink}]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{tag}-{name}-{sink}\"\n")
    };
    let (stages, sinks) = if decide {
        ("", format!("{}{}{}", sink("upsert"), sink("drop"), sink("dead_letter")))
    } else {
        ("stages = [\"enrich\"]\n", format!("{}{}", sink("enriched"), sink("dead_letter")))
    };
    let config = format!(
        "[pipeline]\nstate_dir = \"state\"\n{stages}[[sources]]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\ngroup = \"{tag}-{name}\"\nauto_offset_reset = \"earliest\"\nfollow = false\n[enricher]\nkind = \"postgres\"\nurl = \"{pg_url}\"\nquery = \"{QUERY}\"\n[decisor]\nhash_ignore = [\"stats.row_count\"]\n[content]\nkind = \"dir\"\npath = \"state/content\"\n{sinks}[admin]\nlisten = \"\"\n"
    );
    std::fs::write(dir.join("config.toml"), config).expect("config");
    let began = chrono::Utc::now();
    let run = run_measured(dir, &["run", "--config", "config.toml", "--summary-json", "summary.json"]);
    let joined = group_join_seconds(&dir.join("run.log"), began);
    Timed { run, joined }
}

/// The seed's loop: per message, consume, validate, look up, produce and wait for the broker's
/// acknowledgement, commit. Partitions are assigned (no group join) and the clock starts at the
/// first message.
fn seed_loop(brokers: &str, topic: &str, out: &str, pg_url: &str) -> Measured {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(pg_url, tokio_postgres::NoTls).await.expect("PostgreSQL");
        tokio::spawn(connection);
        let lookup = client.prepare(QUERY).await.expect("prepare the lookup");
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("{out}-group"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // One message at a time: sent at once, not held for a batch that never comes.
            .set("linger.ms", "0")
            .create()
            .expect("producer");
        assign_from_start(&consumer, topic);
        let mut started = None;
        let mut last = Instant::now();
        let mut n = 0u64;
        // The stream ends when nothing more comes for a while (gen wrote all of it before).
        while let Ok(m) = tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await {
            let m = m.expect("consume");
            started.get_or_insert_with(Instant::now);
            n += 1;
            let payload = m.payload().unwrap_or_default();
            let business = match decode(payload, 1 << 20) {
                Ok(event) => match &event.kind {
                    EventKind::Running { name, .. } => {
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                            [&event.source, &name.database, &name.schema];
                        let row = client.query_opt(&lookup, &params).await.expect("lookup");
                        row.map(|r| {
                            serde_json::json!({
                                "domain": r.get::<_, Option<String>>(0),
                                "owner": r.get::<_, Option<String>>(1),
                                "criticality": r.get::<_, Option<String>>(2),
                                "tags": r.get::<_, Option<Vec<String>>>(3),
                                "retention_days": r.get::<_, Option<i32>>(4),
                            })
                        })
                    }
                    EventKind::Completed { .. } => None,
                },
                // The seed sent these to its failure topic; here they are passed on as they are.
                Err(_) => None,
            };
            let body = format!(
                "{{\"event\":{},\"business\":{}}}",
                String::from_utf8_lossy(payload),
                business.unwrap_or(serde_json::Value::Null)
            );
            let mut record = FutureRecord::to(out).payload(&body);
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("produce");
            consumer.commit_message(&m, CommitMode::Async).expect("commit");
            last = Instant::now();
        }
        let seconds = started.map_or(0.0, |s| (last - s).as_secs_f64());
        Measured::throughput(n, seconds.max(1e-9))
    })
}
