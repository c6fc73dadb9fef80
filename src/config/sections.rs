//! The sections of `config.toml` as types: every `kind` is an enum variant carrying exactly the
//! fields that kind reads. Defaults live here, once; the knobs the actors consume take theirs
//! from `assetflow_actors` (`Settings`, `RetryPolicy`), so no value is written twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use assetflow_actors::pipeline::Settings;
use assetflow_actors::retry::RetryPolicy;
use assetflow_actors::supervise::SupervisionPolicy;
use serde::{Deserialize, Deserializer, Serialize};

/// The `kind` a section gets when the file leaves it out. Applied to the document before it is
/// read, so a section like `[content] path = "x"` means the default kind with that path.
pub const DEFAULT_KINDS: [(&str, &str); 8] = [
    ("enricher", "none"),
    ("control", "embedded"),
    ("content", "dir"),
    ("history", "embedded"),
    ("sinks.upsert", "file"),
    ("sinks.drop", "file"),
    ("sinks.enriched", "file"),
    ("sinks.dead_letter", "file"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageName {
    Enrich,
    Decide,
}

/// `[pipeline]`: which stages run, how many shards, how much may wait in mailboxes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PipelineConfig {
    pub stages: Vec<StageName>,
    pub shards: usize,
    pub mailbox: usize,
    pub state_dir: PathBuf,
    /// Per source: unacknowledged messages past which reading pauses (bounds memory).
    pub max_in_flight: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let s = Settings::default();
        PipelineConfig {
            stages: vec![StageName::Enrich, StageName::Decide],
            shards: s.shards,
            mailbox: s.mailbox,
            state_dir: PathBuf::from("data"),
            max_in_flight: s.max_in_flight,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    pub max_event_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_event_bytes: Settings::default().max_event_bytes }
    }
}

/// One `[[sources]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    File {
        path: PathBuf,
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        name: Option<String>,
    },
    Stdin {
        #[serde(default)]
        name: Option<String>,
    },
    Http {
        listen: String,
        #[serde(default)]
        name: Option<String>,
    },
    Kafka(KafkaSourceConfig),
    Kinesis {
        stream: String,
        /// false: stop once every shard is read to its tip (batch runs, tests).
        #[serde(default = "yes")]
        follow: bool,
        #[serde(default)]
        name: Option<String>,
        /// Shard leases in this DynamoDB table (the Kinesis Client Library's layout): several
        /// processes share the stream, each reading the shards it holds. None: this process
        /// reads every shard, checkpoints in the control store.
        #[serde(default)]
        lease_table: Option<String>,
        /// Create the lease table if it does not exist.
        #[serde(default)]
        create_if_missing: bool,
        /// A lease not renewed this long is free for another worker; renewals every third of it.
        #[serde(default = "default_failover", deserialize_with = "de_duration", serialize_with = "ser_duration")]
        failover: Duration,
        /// This process's `leaseOwner`; default: host name, process id and a random suffix.
        #[serde(default)]
        worker_id: Option<String>,
    },
    Sqs {
        queue_url: String,
        /// Long-polling wait of each ReceiveMessage, 0 to 20 seconds.
        #[serde(default = "default_wait")]
        wait_seconds: i32,
        /// false: stop once a receive comes back empty.
        #[serde(default = "yes")]
        follow: bool,
        #[serde(default)]
        name: Option<String>,
    },
}

/// `kind = "kafka"`: a consumer group on one topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KafkaSourceConfig {
    pub brokers: String,
    pub topic: String,
    #[serde(default = "default_group")]
    pub group: String,
    /// Where a new group starts: `earliest` or `latest`.
    #[serde(default = "default_reset")]
    pub auto_offset_reset: String,
    #[serde(default = "default_session_timeout")]
    pub session_timeout_ms: u32,
    /// false: stop once every assigned partition is read to its end.
    #[serde(default = "yes")]
    pub follow: bool,
    /// Static membership (`group.instance.id`): a process restarted within the session timeout
    /// gets its partitions back without a rebalance. One distinct id per process.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// How long the messages in flight of a partition a rebalance takes away may take to finish
    /// (and be committed) before the partition moves anyway.
    #[serde(default = "default_revoke_timeout", deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub revoke_timeout: Duration,
    /// Further librdkafka consumer settings.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub name: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_wait() -> i32 {
    20
}

fn default_reset() -> String {
    "earliest".into()
}

fn default_failover() -> Duration {
    Duration::from_secs(10)
}

fn default_revoke_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_session_timeout() -> u32 {
    10_000
}

fn default_group() -> String {
    "assetflow".into()
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::File { .. } => "file",
            SourceConfig::Stdin { .. } => "stdin",
            SourceConfig::Http { .. } => "http",
            SourceConfig::Kafka(_) => "kafka",
            SourceConfig::Kinesis { .. } => "kinesis",
            SourceConfig::Sqs { .. } => "sqs",
        }
    }

    /// A name for logs and metrics: the configured `name`, else `kind:where`.
    pub fn display_name(&self) -> String {
        match self {
            SourceConfig::File { name: Some(n), .. }
            | SourceConfig::Stdin { name: Some(n) }
            | SourceConfig::Http { name: Some(n), .. }
            | SourceConfig::Kafka(KafkaSourceConfig { name: Some(n), .. })
            | SourceConfig::Kinesis { name: Some(n), .. }
            | SourceConfig::Sqs { name: Some(n), .. } => n.clone(),
            SourceConfig::File { path, .. } => format!("file:{}", path.display()),
            SourceConfig::Stdin { .. } => "stdin".into(),
            SourceConfig::Http { listen, .. } => format!("http:{listen}"),
            SourceConfig::Kafka(k) => format!("kafka:{}", k.topic),
            SourceConfig::Kinesis { stream, .. } => format!("kinesis:{stream}"),
            SourceConfig::Sqs { queue_url, .. } => format!("sqs:{queue_url}"),
        }
    }

    /// Does this source end by itself?
    pub fn is_finite(&self) -> bool {
        match self {
            SourceConfig::File { follow, .. }
            | SourceConfig::Kinesis { follow, .. }
            | SourceConfig::Sqs { follow, .. }
            | SourceConfig::Kafka(KafkaSourceConfig { follow, .. }) => !follow,
            SourceConfig::Stdin { .. } => true,
            SourceConfig::Http { .. } => false,
        }
    }
}

/// `[enricher]`: where business data comes from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EnricherConfig {
    /// No business data: every event gets `business: null`.
    #[default]
    None,
    File(FileEnricher),
    Postgres(PostgresEnricher),
}

/// What every enricher with a backend shares: the lookup values and their cache.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupConfig {
    /// JSON pointers into the event, bound as `$1, $2…` (postgres) or matched against
    /// `key_fields` (file).
    pub lookup: Vec<String>,
    pub cache_ttl: Duration,
}

impl Default for LookupConfig {
    fn default() -> Self {
        let s = Settings::default();
        LookupConfig { lookup: s.lookup_pointers, cache_ttl: s.cache_ttl }
    }
}

fn default_lookup() -> Vec<String> {
    LookupConfig::default().lookup
}

fn default_cache_ttl() -> Duration {
    LookupConfig::default().cache_ttl
}

/// `kind = "file"`: a JSON array of rows, loaded at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEnricher {
    pub path: PathBuf,
    #[serde(default = "default_lookup")]
    pub lookup: Vec<String>,
    /// Row fields the `lookup` values are matched against; default: the last segment of each
    /// pointer (`/asset/database` → `database`).
    #[serde(default)]
    pub key_fields: Option<Vec<String>>,
    #[serde(default = "default_cache_ttl", deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub cache_ttl: Duration,
}

/// `kind = "postgres"`: one parameterised query per lookup key, through a connection pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostgresEnricher {
    pub url: String,
    pub query: String,
    #[serde(default = "default_lookup")]
    pub lookup: Vec<String>,
    #[serde(default = "default_cache_ttl", deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub cache_ttl: Duration,
    /// Connections in the pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long to wait for a connection or a query.
    #[serde(default = "default_pg_timeout", deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub timeout: Duration,
}

fn default_pool_size() -> usize {
    8
}

fn default_pg_timeout() -> Duration {
    Duration::from_secs(5)
}

impl EnricherConfig {
    /// The lookup values and cache of this enricher (the defaults for `none`, which looks
    /// nothing up).
    pub fn lookup(&self) -> LookupConfig {
        match self {
            EnricherConfig::None => LookupConfig::default(),
            EnricherConfig::File(f) => LookupConfig { lookup: f.lookup.clone(), cache_ttl: f.cache_ttl },
            EnricherConfig::Postgres(p) => LookupConfig { lookup: p.lookup.clone(), cache_ttl: p.cache_ttl },
        }
    }
}

/// `[decisor]`: the decision rules' knobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DecisorConfig {
    pub hash_ignore: Vec<String>,
    pub max_drop_fraction: f64,
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub completion_timeout: Duration,
}

impl Default for DecisorConfig {
    fn default() -> Self {
        let s = Settings::default();
        DecisorConfig {
            hash_ignore: s.hash_ignore,
            max_drop_fraction: s.max_drop_fraction,
            completion_timeout: s.completion_timeout,
        }
    }
}

/// `[control]`: the asset control table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ControlConfig {
    /// In `{state_dir}/state`, for one process.
    #[default]
    Embedded,
    Dynamodb(DynamoTable),
    /// Shared by every process of the topology; writes conditional on the version read.
    Postgres(PostgresTable),
}

/// A PostgreSQL table shared by every process of a topology: the `postgres` control table or
/// history. The table name is spliced into SQL, so it must be a plain identifier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostgresTable {
    pub url: String,
    pub table: String,
    /// Create the table (and its index) if it does not exist.
    #[serde(default)]
    pub create_if_missing: bool,
    /// Connections in the pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long to wait for a connection or a statement.
    #[serde(default = "default_pg_timeout", deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub timeout: Duration,
}

/// A DynamoDB table, created when asked (local setups).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DynamoTable {
    pub table: String,
    #[serde(default)]
    pub create_if_missing: bool,
}

/// `[content]`: where each asset's content is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ContentConfig {
    Dir {
        /// Default `{state_dir}/content`.
        #[serde(default)]
        path: Option<PathBuf>,
        #[serde(default, deserialize_with = "de_layout")]
        layout: ContentLayout,
    },
    S3 {
        bucket: String,
        #[serde(default)]
        prefix: String,
        /// Create the bucket if it does not exist (local setups).
        #[serde(default)]
        create_if_missing: bool,
    },
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig::Dir { path: None, layout: ContentLayout::default() }
    }
}

/// How a `dir` content store lays its content out on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentLayout {
    /// Each batch's new content appended to a pack file (`{path}/packs/`): one sync per batch.
    #[default]
    Packs,
    /// One file per asset key and hash: easy to browse, but a name and a sync per new asset.
    Files,
}

/// `[history]`: where history rows go.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HistoryConfig {
    /// In `{state_dir}/state`, for one process.
    #[default]
    Embedded,
    Scylla {
        nodes: Vec<String>,
        #[serde(default = "default_keyspace")]
        keyspace: String,
    },
    /// Shared by every process of the topology.
    Postgres(PostgresTable),
    /// Shared by every process of the topology: an AWS table, partition key `asset_key`.
    Dynamodb(DynamoTable),
}

fn default_keyspace() -> String {
    "assetflow".into()
}

/// One of `[sinks.*]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkConfig {
    /// JSON Lines appended to a file, synced per batch.
    File {
        path: PathBuf,
    },
    Stdout,
    Sqs {
        queue_url: String,
    },
    Kafka {
        brokers: String,
        topic: String,
        /// Further librdkafka producer settings.
        #[serde(default)]
        options: BTreeMap<String, String>,
    },
}

impl SinkConfig {
    fn file(path: &str) -> Self {
        SinkConfig::File { path: PathBuf::from(path) }
    }

    /// How the sink is drawn: its kind and where it writes.
    pub fn label(&self) -> String {
        match self {
            SinkConfig::File { path } => format!("file {}", path.display()),
            SinkConfig::Stdout => "stdout".into(),
            SinkConfig::Sqs { queue_url } => format!("sqs {queue_url}"),
            SinkConfig::Kafka { topic, .. } => format!("kafka {topic}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SinksConfig {
    pub upsert: SinkConfig,
    pub drop: SinkConfig,
    pub enriched: SinkConfig,
    pub dead_letter: SinkConfig,
}

impl Default for SinksConfig {
    fn default() -> Self {
        SinksConfig {
            upsert: SinkConfig::file("out/upsert.jsonl"),
            drop: SinkConfig::file("out/drop.jsonl"),
            enriched: SinkConfig::file("out/enriched.jsonl"),
            dead_letter: SinkConfig::file("out/dead-letter.jsonl"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedriveConfig {
    /// A dead letter tried this many times is parked instead of replayed.
    pub max_attempts: u32,
    /// Also redrive from inside the running service, this often (off when absent).
    #[serde(
        default,
        deserialize_with = "de_opt_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// Where an `sqs` dead-letter queue's parked letters go; default: its URL with `-parked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_queue_url: Option<String>,
    /// The consumer group that reads a `kafka` failure topic back.
    pub group: String,
    /// Where a `kafka` failure topic's parked letters go; default: its name with `.parked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_topic: Option<String>,
}

impl Default for RedriveConfig {
    fn default() -> Self {
        RedriveConfig {
            max_attempts: 5,
            interval: None,
            parked_queue_url: None,
            group: "assetflow-redrive".into(),
            parked_topic: None,
        }
    }
}

/// `[retry]`: the back-off of every backend call ([`RetryPolicy`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryConfig {
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub initial: Duration,
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub max: Duration,
    pub attempts: u32,
    /// How long one backend call may take before it counts as failed.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub timeout: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let p = RetryPolicy::default();
        RetryConfig { initial: p.initial, max: p.max, attempts: p.attempts, timeout: p.timeout }
    }
}

impl RetryConfig {
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy { initial: self.initial, max: self.max, attempts: self.attempts, timeout: self.timeout }
    }
}

/// `[supervision]`: how much panicking the actors may do before the process stops
/// ([`SupervisionPolicy`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SupervisionConfig {
    /// Restarts of one actor within `window` past which the process stops (non-zero exit).
    pub max_restarts: u32,
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub window: Duration,
    /// Pause before a message whose handling panicked is tried again; doubles per restart.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub backoff: Duration,
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub backoff_max: Duration,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        let p = SupervisionPolicy::default();
        SupervisionConfig {
            max_restarts: p.max_restarts,
            window: p.window,
            backoff: p.backoff,
            backoff_max: p.backoff_max,
        }
    }
}

impl SupervisionConfig {
    pub fn policy(&self) -> SupervisionPolicy {
        SupervisionPolicy {
            max_restarts: self.max_restarts,
            window: self.window,
            backoff: self.backoff,
            backoff_max: self.backoff_max,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// `/healthz`, `/readyz`, `/metrics` and the status page; "" turns the server off.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: "127.0.0.1:9464".into() }
    }
}

/// `[aws]`: shared by kinesis, sqs, dynamodb and s3.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AwsConfig {
    pub region: String,
    pub endpoint_url: String,
    /// Static credentials for local emulators; absent: the default credential chain.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            region: "us-east-1".into(),
            endpoint_url: String::new(),
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ShutdownConfig {
    /// How long a stop waits for in-flight messages before exiting anyway.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { timeout: Settings::default().drain_timeout }
    }
}

/// A content layout, with a message naming the key: inside a `kind`-tagged section serde's own
/// "unknown variant" would read as a bad `kind`.
fn de_layout<'de, D: Deserializer<'de>>(d: D) -> Result<ContentLayout, D::Error> {
    match String::deserialize(d)?.as_str() {
        "packs" => Ok(ContentLayout::Packs),
        "files" => Ok(ContentLayout::Files),
        other => Err(serde::de::Error::custom(format!("`layout` must be \"packs\" or \"files\", got {other:?}"))),
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Secs(u64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(s) => humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("expected a duration like \"100ms\", \"60s\" or \"5m\", got {s:?} ({e})"))
        }),
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}
