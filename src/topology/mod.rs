//! From config to a running topology: the [`Graph`] of what runs, and the adapter behind each
//! port it names (Vector's `topology::builder`, in small).
//!
//! - `graph.rs`: the graph built once from the config, drawn by `assetflow topology` and served
//!   to the status page.

mod graph;

use std::sync::Arc;

use assetflow_actors::pipeline::{DecisionPorts, Downstream, Ports, Settings};
use assetflow_actors::ports::{ContentStore, ControlStore, HistoryStore, Lookup, Sink, Source};

use crate::adapters::aws::dynamodb::DynamoControl;
use crate::adapters::aws::history::DynamoHistory;
use crate::adapters::aws::kinesis::{KinesisSource, Leasing};
use crate::adapters::aws::leases::table::LeaseTable;
use crate::adapters::aws::s3::S3Content;
use crate::adapters::aws::sqs::{SqsSink, SqsSource, check_queue};
use crate::adapters::aws::{Aws, RequestCounter};
use crate::adapters::checkpoints::Checkpoints;
use crate::adapters::content_dir::ContentDir;
use crate::adapters::content_pack::ContentPacks;
use crate::adapters::file_lookup::{FileLookup, NoLookup};
use crate::adapters::file_sink::{FileSink, StdoutSink};
use crate::adapters::file_source::{FileSource, StdinSource};
use crate::adapters::http_source::HttpSource;
use crate::adapters::kafka::sink::KafkaSink;
use crate::adapters::kafka::source::{KafkaSource, KafkaSourceOptions};
use crate::adapters::postgres::control::PgControl;
use crate::adapters::postgres::history::PgHistory;
use crate::adapters::postgres::lookup::PgLookup;
use crate::adapters::scylla_history::ScyllaHistory;
use crate::adapters::state::StateStore;
use crate::config::{
    Config, ContentConfig, ContentLayout, ControlConfig, EnricherConfig, HistoryConfig, KafkaSourceConfig, SinkConfig,
    SourceConfig,
};

pub use graph::{Edge, Graph, Node, NodeKind};

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
    let lookup = config.enricher.lookup();
    Settings {
        shards: config.pipeline.shards,
        mailbox: config.pipeline.mailbox,
        max_event_bytes: config.limits.max_event_bytes,
        hash_ignore: config.decisor.hash_ignore.clone(),
        max_drop_fraction: config.decisor.max_drop_fraction,
        completion_timeout: config.decisor.completion_timeout,
        retry: config.retry.policy(),
        lookup_pointers: lookup.lookup,
        cache_ttl: lookup.cache_ttl,
        enricher: config.enriches(),
        drain_timeout: config.shutdown.timeout,
        max_in_flight: config.pipeline.max_in_flight,
        supervision: config.supervision.policy(),
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
    /// What runs, as drawn and as the status page shows it.
    pub graph: Graph,
    /// AWS requests made, when the topology uses AWS.
    pub aws_requests: Option<RequestCounter>,
    pub aws: Option<Aws>,
}

fn uses_aws(config: &Config) -> bool {
    config.sources.iter().any(|s| matches!(s, SourceConfig::Kinesis { .. } | SourceConfig::Sqs { .. }))
        || matches!(config.control, ControlConfig::Dynamodb(_))
        || matches!(config.history, HistoryConfig::Dynamodb(_))
        || matches!(config.content, ContentConfig::S3 { .. })
        || [&config.sinks.upsert, &config.sinks.drop, &config.sinks.dead_letter, &config.sinks.enriched]
            .iter()
            .any(|s| matches!(s, SinkConfig::Sqs { .. }))
}

fn backend_err(config: &Config, key: &str, e: assetflow_actors::ports::BackendError) -> BuildError {
    build_err(
        config,
        key,
        format!("{e}; check that the backend is reachable and the resource exists (or set create_if_missing)"),
    )
}

/// The AWS clients, when some part of the topology is on AWS.
async fn aws(config: &Config) -> Option<Aws> {
    if uses_aws(config) { Some(Aws::load(&config.aws).await) } else { None }
}

/// A `leaseOwner` unique to this process: host name, process id, random suffix.
fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    format!("{}-{}-{:08x}", if host.is_empty() { "assetflow" } else { &host }, std::process::id(), fastrand::u32(..))
}

fn aws_or_err<'a>(config: &Config, aws: Option<&'a Aws>, key: &str) -> Result<&'a Aws, BuildError> {
    aws.ok_or_else(|| build_err(config, key, "AWS is not configured"))
}

/// The control store a config names.
async fn control_store(
    config: &Config,
    state: &StateStore,
    aws: Option<&Aws>,
) -> Result<(Arc<dyn ControlStore>, Arc<dyn Checkpoints>), BuildError> {
    match &config.control {
        ControlConfig::Embedded => Ok((Arc::new(state.clone()), Arc::new(state.clone()))),
        ControlConfig::Dynamodb(t) => {
            let d = DynamoControl::new(aws_or_err(config, aws, "control.kind")?, &t.table);
            if t.create_if_missing {
                d.ensure_table().await.map_err(|e| backend_err(config, "control.table", e))?;
            }
            Ok((Arc::new(d.clone()), Arc::new(d)))
        }
        ControlConfig::Postgres(t) => {
            let c = PgControl::new(&t.url, &t.table, t.pool_size, t.timeout)
                .map_err(|m| build_err(config, "control.url", m))?;
            let ready = if t.create_if_missing { c.ensure_table().await } else { c.check_table().await };
            ready.map_err(|e| backend_err(config, "control.table", e))?;
            // Checkpoints of Kinesis sources stay in the embedded store: Kafka keeps its offsets
            // in the broker.
            Ok((Arc::new(c), Arc::new(state.clone())))
        }
    }
}

/// The control store a config names, on its own: what `assetflow assets` reads.
pub async fn open_control(config: &Config, state: &StateStore) -> Result<Arc<dyn ControlStore>, BuildError> {
    let aws = aws(config).await;
    Ok(control_store(config, state, aws.as_ref()).await?.0)
}

fn source(
    config: &Config,
    i: usize,
    s: &SourceConfig,
    state: &StateStore,
    aws: Option<&Aws>,
    checkpoints: &Arc<dyn Checkpoints>,
) -> impl std::future::Future<Output = Result<Box<dyn Source>, BuildError>> {
    let key = format!("sources[{i}]");
    let name = s.display_name();
    async move {
        Ok(match s {
            SourceConfig::File { path, follow, .. } => Box::new(
                FileSource::open(name, &config.resolve(path), *follow, state.clone(), config.limits.max_event_bytes)
                    .map_err(|m| build_err(config, format!("{key}.path"), m))?,
            ) as Box<dyn Source>,
            SourceConfig::Stdin { .. } => Box::new(StdinSource::new(name)),
            SourceConfig::Http { listen, .. } => Box::new(
                HttpSource::bind(name, listen).await.map_err(|m| build_err(config, format!("{key}.listen"), m))?,
            ),
            SourceConfig::Kinesis { stream, follow, lease_table, create_if_missing, failover, worker_id, .. } => {
                let aws = aws_or_err(config, aws, &key)?;
                let source = KinesisSource::new(aws, name, stream, checkpoints.clone(), *follow);
                match lease_table {
                    None => Box::new(source),
                    Some(table) => {
                        let table = LeaseTable::new(aws, table);
                        let ready =
                            if *create_if_missing { table.ensure_table().await } else { table.check_table().await };
                        ready.map_err(|e| backend_err(config, &format!("{key}.lease_table"), e))?;
                        let me = worker_id.clone().unwrap_or_else(default_worker_id);
                        tracing::info!(stream = %stream, lease_table = %table.name(), worker = %me, "reading the shards this worker leases");
                        let one_process = matches!(config.control, ControlConfig::Embedded)
                            || matches!(config.history, HistoryConfig::Embedded);
                        let leasing = Leasing::new(table, me, *failover).serving_one_process(one_process);
                        Box::new(source.with_leases(leasing))
                    }
                }
            }
            SourceConfig::Sqs { queue_url, wait_seconds, follow, .. } => Box::new({
                let aws = aws_or_err(config, aws, &key)?;
                check_queue(aws, queue_url).await.map_err(|e| backend_err(config, &format!("{key}.queue_url"), e))?;
                if config.decides() && !queue_url.ends_with(".fifo") {
                    // A standard queue delivers out of order and to any consumer: two events of
                    // one asset may be decided in the wrong order, or a completion before its run.
                    tracing::warn!(
                        key = %key,
                        queue_url = %queue_url,
                        "a standard SQS queue feeds the decide stage: per-asset order and the completion barrier \
                         need a FIFO queue (name ending in .fifo) whose producers set MessageGroupId = source"
                    );
                }
                SqsSource::new(aws, name, queue_url, (*wait_seconds).clamp(0, 20), !*follow)
            }),
            SourceConfig::Kafka(KafkaSourceConfig {
                brokers,
                topic,
                group,
                auto_offset_reset,
                session_timeout_ms,
                follow,
                group_instance_id,
                revoke_timeout,
                options,
                ..
            }) => {
                let opts = KafkaSourceOptions {
                    auto_offset_reset: auto_offset_reset.clone(),
                    session_timeout_ms: *session_timeout_ms,
                    follow: *follow,
                    one_process: matches!(config.control, ControlConfig::Embedded)
                        || matches!(config.history, HistoryConfig::Embedded),
                    group_instance_id: group_instance_id.clone(),
                    revoke_timeout: *revoke_timeout,
                    extra: options.clone(),
                };
                Box::new(KafkaSource::new(name, brokers, topic, group, &opts).map_err(|m| build_err(config, &key, m))?)
            }
        })
    }
}

fn lookup(config: &Config) -> Result<Arc<dyn Lookup>, BuildError> {
    Ok(match &config.enricher {
        EnricherConfig::None => Arc::new(NoLookup),
        EnricherConfig::File(f) => {
            let fields = f.key_fields.clone().unwrap_or_else(|| {
                f.lookup.iter().map(|p| p.rsplit('/').next().unwrap_or_default().to_owned()).collect()
            });
            Arc::new(
                FileLookup::load(&config.resolve(&f.path), &fields)
                    .map_err(|m| build_err(config, "enricher.path", m))?,
            )
        }
        EnricherConfig::Postgres(p) => Arc::new(
            PgLookup::new(&p.url, &p.query, p.pool_size, p.timeout)
                .map_err(|m| build_err(config, "enricher.url", m))?,
        ),
    })
}

async fn content_store(config: &Config, aws: Option<&Aws>) -> Result<Arc<dyn ContentStore>, BuildError> {
    Ok(match &config.content {
        ContentConfig::Dir { path, layout } => {
            let path = path.as_deref().map(|p| config.resolve(p)).unwrap_or_else(|| config.state_dir().join("content"));
            let open_err = |m| build_err(config, "content.path", m);
            match layout {
                ContentLayout::Packs => Arc::new(ContentPacks::open(&path).map_err(open_err)?),
                ContentLayout::Files => Arc::new(ContentDir::open(&path).map_err(open_err)?),
            }
        }
        ContentConfig::S3 { bucket, prefix, create_if_missing } => {
            let c = S3Content::new(aws_or_err(config, aws, "content.kind")?, bucket, prefix);
            if *create_if_missing {
                c.ensure_bucket().await.map_err(|e| backend_err(config, "content.bucket", e))?;
            }
            Arc::new(c)
        }
    })
}

/// Builds the graph of the config's topology (its sources only if `with_sources`), and the
/// backend of each node in it: the builder walks the graph, so what runs is what is drawn.
pub async fn build_ports(config: &Config, state: &StateStore, with_sources: bool) -> Result<Built, BuildError> {
    let names: Vec<String> =
        if with_sources { config.sources.iter().map(SourceConfig::display_name).collect() } else { Vec::new() };
    let graph = Graph::build(config, &names);
    let aws = aws(config).await;
    // Every topology keeps its source checkpoints with the control table, deciding or not.
    let (control, checkpoints) = control_store(config, state, aws.as_ref()).await?;
    let aws_ref = aws.as_ref();
    let mut sources: Vec<(String, Box<dyn Source>)> = Vec::new();
    let (mut lookup_port, mut content, mut history, mut dead) = (None, None, None, None);
    let (mut upsert_sink, mut drop_sink, mut enriched_sink) = (None, None, None);
    let mut decides = false;
    for node in &graph.nodes {
        match node.kind {
            NodeKind::Source(i) => {
                let s = &config.sources[i];
                sources.push((node.detail.clone(), source(config, i, s, state, aws_ref, &checkpoints).await?));
            }
            NodeKind::Enricher => lookup_port = Some(lookup(config)?),
            NodeKind::ControlStore => decides = true,
            NodeKind::ContentStore => content = Some(content_store(config, aws_ref).await?),
            NodeKind::UpsertProducer => {
                upsert_sink = Some(sink(config, aws_ref, "sinks.upsert", &config.sinks.upsert)?)
            }
            NodeKind::DropProducer => drop_sink = Some(sink(config, aws_ref, "sinks.drop", &config.sinks.drop)?),
            NodeKind::EnrichedProducer => {
                enriched_sink = Some(sink(config, aws_ref, "sinks.enriched", &config.sinks.enriched)?);
            }
            NodeKind::HistoryWriter => {
                history = Some(history_store(config, state, aws_ref).await?);
                dead = Some(sink(config, aws_ref, "sinks.dead_letter", &config.sinks.dead_letter)?);
            }
            // Actors: the pipeline starts them.
            NodeKind::Ingest(_) | NodeKind::Router | NodeKind::Decisor => {}
        }
    }
    let missing = |what: &str| build_err(config, "pipeline.stages", format!("the topology has no {what}"));
    let downstream = match (decides, enriched_sink) {
        (true, _) => Downstream::Decide(DecisionPorts {
            control,
            content: content.ok_or_else(|| missing("content store"))?,
            upsert_sink: upsert_sink.ok_or_else(|| missing("UpsertProducer"))?,
            drop_sink: drop_sink.ok_or_else(|| missing("DropProducer"))?,
        }),
        (false, Some(sink)) => Downstream::PublishEnriched(sink),
        (false, None) => return Err(missing("stage after the Enricher")),
    };
    let ports = Ports {
        sources,
        redrive: None,
        // Drops are looked up as their assets' last events were; with no Enricher drawn
        // (`enricher.kind = "none"`, deciding) that is the lookup that finds nothing.
        lookup: match lookup_port {
            Some(port) => port,
            None => lookup(config)?,
        },
        history: history.ok_or_else(|| missing("HistoryWriter"))?,
        dead_letter_sink: dead.ok_or_else(|| missing("HistoryWriter"))?,
        downstream,
    };
    Ok(Built { ports, graph, aws_requests: aws.as_ref().map(|a| a.requests.clone()), aws })
}

/// The history store a config names, on its own: what `assetflow history` reads.
pub async fn open_history(config: &Config, state: &StateStore) -> Result<Arc<dyn HistoryStore>, BuildError> {
    let aws = aws(config).await;
    history_store(config, state, aws.as_ref()).await
}

/// The history store a config names: embedded, ScyllaDB, PostgreSQL or DynamoDB.
async fn history_store(
    config: &Config,
    state: &StateStore,
    aws: Option<&Aws>,
) -> Result<Arc<dyn HistoryStore>, BuildError> {
    match &config.history {
        HistoryConfig::Embedded => Ok(Arc::new(state.clone())),
        HistoryConfig::Scylla { nodes, keyspace } => {
            let h = ScyllaHistory::connect(nodes, keyspace).await.map_err(|m| build_err(config, "history.nodes", m))?;
            Ok(Arc::new(h))
        }
        HistoryConfig::Postgres(t) => {
            let h = PgHistory::new(&t.url, &t.table, t.pool_size, t.timeout)
                .map_err(|m| build_err(config, "history.url", m))?;
            let ready = if t.create_if_missing { h.ensure_table().await } else { h.check_table().await };
            ready.map_err(|e| backend_err(config, "history.table", e))?;
            Ok(Arc::new(h))
        }
        HistoryConfig::Dynamodb(t) => {
            let h = DynamoHistory::new(aws_or_err(config, aws, "history.kind")?, &t.table);
            let ready = if t.create_if_missing { h.ensure_table().await } else { h.check_table().await };
            ready.map_err(|e| backend_err(config, "history.table", e))?;
            Ok(Arc::new(h))
        }
    }
}

fn sink(config: &Config, aws: Option<&Aws>, key: &str, s: &SinkConfig) -> Result<Arc<dyn Sink>, BuildError> {
    match s {
        SinkConfig::File { path } => Ok(Arc::new(
            FileSink::open(&config.resolve(path)).map_err(|m| build_err(config, format!("{key}.path"), m))?,
        )),
        SinkConfig::Stdout => Ok(Arc::new(StdoutSink)),
        SinkConfig::Sqs { queue_url } => Ok(Arc::new(SqsSink::new(aws_or_err(config, aws, key)?, queue_url))),
        SinkConfig::Kafka { brokers, topic, options } => {
            Ok(Arc::new(KafkaSink::new(brokers, topic, options).map_err(|m| build_err(config, key, m))?))
        }
    }
}

/// The graph of a config as configured (its own sources), for `assetflow topology`.
pub fn graph(config: &Config) -> Graph {
    let names: Vec<String> = config.sources.iter().map(SourceConfig::display_name).collect();
    Graph::build(config, &names)
}
