//! From config to a running graph: builds each port's adapter, and draws the graph as text, dot
//! or mermaid (`assetflow topology`).

use std::sync::Arc;

use assetflow_actors::pipeline::{Ports, Settings};
use assetflow_actors::ports::{ContentStore, ControlStore, HistoryStore, Lookup, Sink, Source};
use assetflow_actors::retry::RetryPolicy;

use crate::adapters::aws::dynamodb::DynamoControl;
use crate::adapters::aws::kinesis::KinesisSource;
use crate::adapters::aws::s3::S3Content;
use crate::adapters::aws::sqs::{SqsSink, SqsSource};
use crate::adapters::aws::{Aws, RequestCounter};
use crate::adapters::checkpoints::Checkpoints;
use crate::adapters::content_dir::ContentDir;
use crate::adapters::file_lookup::{FileLookup, NoLookup};
use crate::adapters::file_sink::{FileSink, StdoutSink};
use crate::adapters::file_source::{FileSource, StdinSource};
use crate::adapters::http_source::HttpSource;
use crate::adapters::kafka::sink::KafkaSink;
use crate::adapters::kafka::source::{KafkaSource, KafkaSourceOptions};
use crate::adapters::postgres_lookup::PgLookup;
use crate::adapters::scylla_history::ScyllaHistory;
use crate::adapters::state::StateStore;
use crate::config::{Config, ContentKind, ControlKind, EnricherKind, HistoryKind, SinkConfig, SinkKind, SourceConfig};

/// A failure to build the topology, naming the config key and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{file}: key `{key}`: {message}")]
pub struct BuildError {
    pub file: String,
    pub key: String,
    pub message: String,
}

fn build_err(config: &Config, key: impl Into<String>, message: impl Into<String>) -> BuildError {
    BuildError { file: config.file.display().to_string(), key: key.into(), message: message.into() }
}

/// The pipeline settings a config asks for.
pub fn settings(config: &Config) -> Settings {
    Settings {
        shards: config.pipeline.shards,
        mailbox: config.pipeline.mailbox,
        max_event_bytes: config.limits.max_event_bytes,
        hash_ignore: config.decisor.hash_ignore.clone(),
        max_drop_fraction: config.decisor.max_drop_fraction,
        completion_timeout: config.decisor.completion_timeout,
        retry: RetryPolicy {
            initial: config.retry.initial,
            max: config.retry.max,
            attempts: config.retry.attempts,
            timeout: config.retry.timeout,
        },
        lookup_pointers: config.enricher.lookup.clone(),
        cache_ttl: config.enricher.cache_ttl,
        drain_timeout: config.shutdown.timeout,
        max_in_flight: config.pipeline.max_in_flight,
        ..Settings::default()
    }
}

/// Opens the embedded store of a config.
pub fn open_state(config: &Config) -> Result<StateStore, BuildError> {
    StateStore::open(&config.state_dir()).map_err(|m| build_err(config, "pipeline.state_dir", m))
}

/// The adapters of a topology, and what the command reports about them afterwards.
pub struct Built {
    pub ports: Ports,
    /// AWS requests made, when the topology uses AWS.
    pub aws_requests: Option<RequestCounter>,
    pub aws: Option<Aws>,
}

fn uses_aws(config: &Config) -> bool {
    config.sources.iter().any(|s| matches!(s, SourceConfig::Kinesis { .. } | SourceConfig::Sqs { .. }))
        || config.control.kind == ControlKind::Dynamodb
        || config.content.kind == ContentKind::S3
        || [&config.sinks.upsert, &config.sinks.drop, &config.sinks.dead_letter, &config.sinks.enriched]
            .iter()
            .any(|s| s.kind == SinkKind::Sqs)
}

fn backend_err(config: &Config, key: &str, e: assetflow_actors::ports::BackendError) -> BuildError {
    build_err(
        config,
        key,
        format!("{e}; check that the backend is reachable and the resource exists (or set create_if_missing)"),
    )
}

/// Builds every adapter the config names (its sources only if `with_sources`).
pub async fn build_ports(config: &Config, state: &StateStore, with_sources: bool) -> Result<Built, BuildError> {
    let aws = if uses_aws(config) { Some(Aws::load(&config.aws).await) } else { None };
    let aws_ref = |key: &str| aws.as_ref().ok_or_else(|| build_err(config, key, "AWS is not configured"));
    let dynamo = match config.control.kind {
        ControlKind::Dynamodb => {
            let table = config.control.table.clone().unwrap_or_default();
            let d = DynamoControl::new(aws_ref("control.kind")?, &table);
            if config.control.create_if_missing {
                d.ensure_table().await.map_err(|e| backend_err(config, "control.table", e))?;
            }
            Some(d)
        }
        ControlKind::Embedded => None,
    };
    let checkpoints: Arc<dyn Checkpoints> = match &dynamo {
        Some(d) => Arc::new(d.clone()),
        None => Arc::new(state.clone()),
    };
    let mut sources: Vec<(String, Box<dyn Source>)> = Vec::new();
    for (i, s) in config.sources.iter().enumerate().filter(|_| with_sources) {
        let key = format!("sources[{i}]");
        let name = s.display_name();
        let source: Box<dyn Source> = match s {
            SourceConfig::File { path, follow, .. } => Box::new(
                FileSource::open(
                    name.clone(),
                    &config.resolve(path),
                    *follow,
                    state.clone(),
                    config.limits.max_event_bytes,
                )
                .map_err(|m| build_err(config, format!("{key}.path"), m))?,
            ),
            SourceConfig::Stdin { .. } => Box::new(StdinSource::new(name.clone())),
            SourceConfig::Http { listen, .. } => Box::new(
                HttpSource::bind(name.clone(), listen)
                    .await
                    .map_err(|m| build_err(config, format!("{key}.listen"), m))?,
            ),
            SourceConfig::Kinesis { stream, follow, .. } => {
                Box::new(KinesisSource::new(aws_ref(&key)?, name.clone(), stream, checkpoints.clone(), *follow))
            }
            SourceConfig::Sqs { queue_url, wait_seconds, follow, .. } => Box::new(SqsSource::new(
                aws_ref(&key)?,
                name.clone(),
                queue_url,
                (*wait_seconds).clamp(0, 20),
                !*follow,
            )),
            SourceConfig::Kafka {
                brokers,
                topic,
                group,
                auto_offset_reset,
                session_timeout_ms,
                follow,
                options,
                ..
            } => {
                let opts = KafkaSourceOptions {
                    auto_offset_reset: auto_offset_reset.clone(),
                    session_timeout_ms: *session_timeout_ms,
                    follow: *follow,
                    extra: options.clone(),
                };
                Box::new(
                    KafkaSource::new(name.clone(), brokers, topic, group, &opts)
                        .map_err(|m| build_err(config, &key, m))?,
                )
            }
        };
        sources.push((name, source));
    }
    let lookup: Arc<dyn Lookup> = match config.enricher.kind {
        EnricherKind::None => Arc::new(NoLookup),
        EnricherKind::File => {
            let path = config.enricher.path.as_deref().map(|p| config.resolve(p)).unwrap_or_default();
            let fields = config.enricher.key_fields.clone().unwrap_or_else(|| {
                config.enricher.lookup.iter().map(|p| p.rsplit('/').next().unwrap_or_default().to_owned()).collect()
            });
            Arc::new(FileLookup::load(&path, &fields).map_err(|m| build_err(config, "enricher.path", m))?)
        }
        EnricherKind::Postgres => Arc::new(
            PgLookup::new(
                config.enricher.url.as_deref().unwrap_or_default(),
                config.enricher.query.as_deref().unwrap_or_default(),
                config.enricher.pool_size,
                config.enricher.timeout,
            )
            .map_err(|m| build_err(config, "enricher.url", m))?,
        ),
    };
    let history = history_store(config, state).await?;
    let control: Arc<dyn ControlStore> = match dynamo {
        Some(d) => Arc::new(d),
        None => Arc::new(state.clone()),
    };
    let content: Arc<dyn ContentStore> = match config.content.kind {
        ContentKind::Dir => {
            let path = config
                .content
                .path
                .as_deref()
                .map(|p| config.resolve(p))
                .unwrap_or_else(|| config.state_dir().join("content"));
            Arc::new(ContentDir::open(&path).map_err(|m| build_err(config, "content.path", m))?)
        }
        ContentKind::S3 => {
            let c = S3Content::new(
                aws_ref("content.kind")?,
                config.content.bucket.as_deref().unwrap_or_default(),
                config.content.prefix.as_deref().unwrap_or_default(),
            );
            if config.content.create_if_missing {
                c.ensure_bucket().await.map_err(|e| backend_err(config, "content.bucket", e))?;
            }
            Arc::new(c)
        }
    };
    // Enrich-only topologies never write upserts or drops: their sinks are not even opened.
    let dead = sink(config, aws.as_ref(), "sinks.dead_letter", &config.sinks.dead_letter)?;
    let ports = Ports {
        sources,
        control,
        content,
        history,
        lookup,
        upsert_sink: if config.decides() {
            sink(config, aws.as_ref(), "sinks.upsert", &config.sinks.upsert)?
        } else {
            dead.clone()
        },
        drop_sink: if config.decides() {
            sink(config, aws.as_ref(), "sinks.drop", &config.sinks.drop)?
        } else {
            dead.clone()
        },
        dead_letter_sink: dead,
        enriched_sink: if config.decides() {
            None
        } else {
            Some(sink(config, aws.as_ref(), "sinks.enriched", &config.sinks.enriched)?)
        },
    };
    Ok(Built { ports, aws_requests: aws.as_ref().map(|a| a.requests.clone()), aws })
}

/// The history store a config names: embedded, or ScyllaDB.
pub async fn history_store(config: &Config, state: &StateStore) -> Result<Arc<dyn HistoryStore>, BuildError> {
    match config.history.kind {
        HistoryKind::Embedded => Ok(Arc::new(state.clone())),
        HistoryKind::Scylla => {
            let keyspace = config.history.keyspace.as_deref().unwrap_or("assetflow");
            let h = ScyllaHistory::connect(&config.history.nodes, keyspace)
                .await
                .map_err(|m| build_err(config, "history.nodes", m))?;
            Ok(Arc::new(h))
        }
    }
}

fn sink(config: &Config, aws: Option<&Aws>, key: &str, s: &SinkConfig) -> Result<Arc<dyn Sink>, BuildError> {
    match s.kind {
        SinkKind::File => {
            let path = s.path.as_deref().map(|p| config.resolve(p)).unwrap_or_default();
            Ok(Arc::new(FileSink::open(&path).map_err(|m| build_err(config, format!("{key}.path"), m))?))
        }
        SinkKind::Stdout => Ok(Arc::new(StdoutSink)),
        SinkKind::Sqs => {
            let aws = aws.ok_or_else(|| build_err(config, key, "AWS is not configured"))?;
            Ok(Arc::new(SqsSink::new(aws, s.queue_url.as_deref().unwrap_or_default())))
        }
        SinkKind::Kafka => Ok(Arc::new(
            KafkaSink::new(
                s.brokers.as_deref().unwrap_or_default(),
                s.topic.as_deref().unwrap_or_default(),
                &s.options,
            )
            .map_err(|m| build_err(config, key, m))?,
        )),
    }
}

/// One node of the drawn graph.
struct Node {
    id: String,
    label: String,
}

fn sink_label(s: &SinkConfig) -> String {
    match s.kind {
        SinkKind::File => format!("file {}", s.path.as_deref().map(|p| p.display().to_string()).unwrap_or_default()),
        SinkKind::Stdout => "stdout".into(),
        SinkKind::Sqs => format!("sqs {}", s.queue_url.clone().unwrap_or_default()),
        SinkKind::Kafka => format!("kafka {}", s.topic.clone().unwrap_or_default()),
    }
}

/// The graph of a config: nodes and edges, in a stable order.
fn graph(config: &Config) -> (Vec<Node>, Vec<(String, String)>) {
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    let mut node = |id: &str, label: String| nodes.push(Node { id: id.into(), label });
    for (i, s) in config.sources.iter().enumerate() {
        node(&format!("source{i}"), format!("source: {}", s.display_name()));
        node(&format!("ingest{i}"), format!("Ingest[{i}]"));
        edges.push((format!("source{i}"), format!("ingest{i}")));
        edges.push((format!("ingest{i}"), "enricher".into()));
        edges.push((format!("ingest{i}"), "history".into()));
    }
    let lookup = match config.enricher.kind {
        EnricherKind::None => "none".to_string(),
        EnricherKind::File => {
            format!("file {}", config.enricher.path.as_deref().map(|p| p.display().to_string()).unwrap_or_default())
        }
        EnricherKind::Postgres => {
            format!("postgres {}", crate::config::redact_url(config.enricher.url.as_deref().unwrap_or("")))
        }
    };
    node("enricher", format!("Enricher (lookup: {lookup})"));
    edges.push(("enricher".into(), "history".into()));
    if config.decides() {
        node("router", "Router".into());
        edges.push(("enricher".into(), "router".into()));
        for i in 0..config.pipeline.shards {
            node(&format!("decisor{i}"), format!("Decisor[{i}]"));
            edges.push(("router".into(), format!("decisor{i}")));
            edges.push((format!("decisor{i}"), "upsert".into()));
            edges.push((format!("decisor{i}"), "drop".into()));
            edges.push((format!("decisor{i}"), "history".into()));
            edges.push((format!("decisor{i}"), "control".into()));
            edges.push((format!("decisor{i}"), "content".into()));
        }
        let control = match config.control.kind {
            ControlKind::Embedded => "embedded".to_string(),
            ControlKind::Dynamodb => format!("dynamodb {}", config.control.table.clone().unwrap_or_default()),
        };
        node("control", format!("control store: {control}"));
        let content = match config.content.kind {
            ContentKind::Dir => "dir".to_string(),
            ContentKind::S3 => format!("s3 {}", config.content.bucket.clone().unwrap_or_default()),
        };
        node("content", format!("content store: {content}"));
        node("upsert", format!("UpsertProducer → {}", sink_label(&config.sinks.upsert)));
        node("drop", format!("DropProducer → {}", sink_label(&config.sinks.drop)));
    } else {
        node("enriched", format!("EnrichedProducer → {}", sink_label(&config.sinks.enriched)));
        edges.push(("enricher".into(), "enriched".into()));
    }
    let history = match config.history.kind {
        HistoryKind::Embedded => "embedded".to_string(),
        HistoryKind::Scylla => format!("scylla {}", config.history.nodes.join(",")),
    };
    node(
        "history",
        format!("HistoryWriter (history: {history}) → dead letters: {}", sink_label(&config.sinks.dead_letter)),
    );
    (nodes, edges)
}

/// Draws the topology in `format`: `text`, `dot` or `mermaid`.
pub fn draw(config: &Config, format: &str) -> String {
    let (nodes, edges) = graph(config);
    let label = |id: &str| nodes.iter().find(|n| n.id == id).map(|n| n.label.clone()).unwrap_or_else(|| id.to_string());
    let mut out = String::new();
    match format {
        "dot" => {
            out.push_str("digraph assetflow {\n  rankdir=LR;\n  node [shape=box];\n");
            for n in &nodes {
                out.push_str(&format!("  {} [label={:?}];\n", n.id, n.label));
            }
            for (a, b) in &edges {
                out.push_str(&format!("  {a} -> {b};\n"));
            }
            out.push_str("}\n");
        }
        "mermaid" => {
            out.push_str("flowchart LR\n");
            for n in &nodes {
                out.push_str(&format!("  {}[\"{}\"]\n", n.id, n.label.replace('"', "'")));
            }
            for (a, b) in &edges {
                out.push_str(&format!("  {a} --> {b}\n"));
            }
        }
        _ => {
            for (a, b) in &edges {
                out.push_str(&format!("{} -> {}\n", label(a), label(b)));
            }
        }
    }
    out
}
