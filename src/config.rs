//! `config.toml`: the topology as data (CONFIG.md). Loading expands `${VAR}`, applies
//! `ASSETFLOW__SECTION__KEY` overrides, deserializes with the failing key named, resolves
//! relative paths against the file's folder, and validates what serde cannot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a config could not be used; every message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{file}: cannot read the config file: {reason}. Pass --config FILE, or run from a folder that has config.toml"
    )]
    Read { file: String, reason: std::io::Error },
    #[error("{file}: not valid TOML: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: key `{key}`: {message}")]
    Key { file: String, key: String, message: String },
}

fn key_err(file: &Path, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key { file: file.display().to_string(), key: key.into(), message: message.into() }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub pipeline: PipelineConfig,
    pub limits: LimitsConfig,
    pub sources: Vec<SourceConfig>,
    pub enricher: EnricherConfig,
    pub decisor: DecisorConfig,
    pub control: ControlConfig,
    pub content: ContentConfig,
    pub history: HistoryConfig,
    pub sinks: SinksConfig,
    pub redrive: RedriveConfig,
    pub retry: RetryConfig,
    pub admin: AdminConfig,
    pub aws: AwsConfig,
    pub shutdown: ShutdownConfig,
    /// The folder relative paths resolve against (the config file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
    #[serde(skip)]
    pub file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pipeline: PipelineConfig::default(),
            limits: LimitsConfig::default(),
            sources: Vec::new(),
            enricher: EnricherConfig::default(),
            decisor: DecisorConfig::default(),
            control: ControlConfig::default(),
            content: ContentConfig::default(),
            history: HistoryConfig::default(),
            sinks: SinksConfig::default(),
            redrive: RedriveConfig::default(),
            retry: RetryConfig::default(),
            admin: AdminConfig::default(),
            aws: AwsConfig::default(),
            shutdown: ShutdownConfig::default(),
            base_dir: PathBuf::from("."),
            file: PathBuf::from("config.toml"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageName {
    Enrich,
    Decide,
}

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
        PipelineConfig {
            stages: vec![StageName::Enrich, StageName::Decide],
            shards: 4,
            mailbox: 1024,
            state_dir: PathBuf::from("data"),
            max_in_flight: 4096,
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
        LimitsConfig { max_event_bytes: 1 << 20 }
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
    Kafka {
        brokers: String,
        topic: String,
        #[serde(default = "default_group")]
        group: String,
        /// Where a new group starts: `earliest` or `latest`.
        #[serde(default = "default_reset")]
        auto_offset_reset: String,
        #[serde(default = "default_session_timeout")]
        session_timeout_ms: u32,
        /// false: stop once every assigned partition is read to its end.
        #[serde(default = "yes")]
        follow: bool,
        /// Further librdkafka consumer settings.
        #[serde(default)]
        options: BTreeMap<String, String>,
        #[serde(default)]
        name: Option<String>,
    },
    Kinesis {
        stream: String,
        /// false: stop once every shard is read to its tip (batch runs, tests).
        #[serde(default = "yes")]
        follow: bool,
        #[serde(default)]
        name: Option<String>,
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

fn yes() -> bool {
    true
}

fn default_wait() -> i32 {
    20
}

fn default_reset() -> String {
    "earliest".into()
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
            SourceConfig::Kafka { .. } => "kafka",
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
            | SourceConfig::Kafka { name: Some(n), .. }
            | SourceConfig::Kinesis { name: Some(n), .. }
            | SourceConfig::Sqs { name: Some(n), .. } => n.clone(),
            SourceConfig::File { path, .. } => format!("file:{}", path.display()),
            SourceConfig::Stdin { .. } => "stdin".into(),
            SourceConfig::Http { listen, .. } => format!("http:{listen}"),
            SourceConfig::Kafka { topic, .. } => format!("kafka:{topic}"),
            SourceConfig::Kinesis { stream, .. } => format!("kinesis:{stream}"),
            SourceConfig::Sqs { queue_url, .. } => format!("sqs:{queue_url}"),
        }
    }

    /// Does this source end by itself?
    pub fn is_finite(&self) -> bool {
        matches!(
            self,
            SourceConfig::File { follow: false, .. }
                | SourceConfig::Stdin { .. }
                | SourceConfig::Kinesis { follow: false, .. }
                | SourceConfig::Sqs { follow: false, .. }
                | SourceConfig::Kafka { follow: false, .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnricherKind {
    None,
    File,
    Postgres,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EnricherConfig {
    pub kind: EnricherKind,
    pub path: Option<PathBuf>,
    pub url: Option<String>,
    pub query: Option<String>,
    pub lookup: Vec<String>,
    /// Row fields the `lookup` values are matched against (file enricher); default: the last
    /// segment of each pointer (`/asset/database` → `database`).
    pub key_fields: Option<Vec<String>>,
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub cache_ttl: Duration,
    /// `postgres`: connections in the pool.
    pub pool_size: usize,
    /// `postgres`: how long to wait for a connection or a query.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub timeout: Duration,
}

impl Default for EnricherConfig {
    fn default() -> Self {
        EnricherConfig {
            kind: EnricherKind::None,
            path: None,
            url: None,
            query: None,
            lookup: vec!["/source".into(), "/asset/database".into(), "/asset/schema".into()],
            key_fields: None,
            cache_ttl: Duration::from_secs(60),
            pool_size: 8,
            timeout: Duration::from_secs(5),
        }
    }
}

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
        DecisorConfig { hash_ignore: Vec::new(), max_drop_fraction: 0.5, completion_timeout: Duration::from_secs(300) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlKind {
    Embedded,
    Dynamodb,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ControlConfig {
    pub kind: ControlKind,
    pub table: Option<String>,
    pub create_if_missing: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { kind: ControlKind::Embedded, table: None, create_if_missing: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentKind {
    Dir,
    S3,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ContentConfig {
    pub kind: ContentKind,
    /// `s3`: create the bucket if it does not exist (local setups).
    pub create_if_missing: bool,
    /// `dir`: the folder; default `{state_dir}/content`.
    pub path: Option<PathBuf>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig { kind: ContentKind::Dir, create_if_missing: false, path: None, bucket: None, prefix: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryKind {
    Embedded,
    Scylla,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryConfig {
    pub kind: HistoryKind,
    pub nodes: Vec<String>,
    pub keyspace: Option<String>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { kind: HistoryKind::Embedded, nodes: Vec::new(), keyspace: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    File,
    Stdout,
    Sqs,
    Kafka,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkConfig {
    pub kind: SinkKind,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub queue_url: Option<String>,
    #[serde(default)]
    pub brokers: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    /// `kafka`: further librdkafka producer settings.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl SinkConfig {
    fn file(path: &str) -> Self {
        SinkConfig {
            kind: SinkKind::File,
            path: Some(PathBuf::from(path)),
            queue_url: None,
            brokers: None,
            topic: None,
            options: BTreeMap::new(),
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
    pub max_attempts: u32,
}

impl Default for RedriveConfig {
    fn default() -> Self {
        RedriveConfig { max_attempts: 5 }
    }
}

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
        RetryConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            attempts: 8,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: "127.0.0.1:9464".into() }
    }
}

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
        ShutdownConfig { timeout: Duration::from_secs(30) }
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

impl Config {
    /// Loads `path` with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (text, env) = read(path)?;
        Self::parse(&text, path, &env)
    }

    /// Only the `[aws]` section of a config file (with its `${VAR}`s and overrides applied): what
    /// `assetflow gen --kinesis-stream` needs, from a file that may hold nothing else.
    pub fn load_aws(path: &Path) -> Result<AwsConfig, ConfigError> {
        let (text, env) = read(path)?;
        let doc = prepared(&text, path, &env)?;
        let Some(aws) = doc.get("aws").cloned() else { return Ok(AwsConfig::default()) };
        serde_path_to_error::deserialize(aws).map_err(|e| field_error(path, e, "aws."))
    }

    /// Parses config text as if read from `path`, with `env` as the environment.
    pub fn parse(text: &str, path: &Path, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let doc = prepared(text, path, env)?;
        let mut unknown = Vec::new();
        let mut note_unknown = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
        let de = serde_ignored::Deserializer::new(doc, &mut note_unknown);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| field_error(path, e, ""))?;
        for key in unknown {
            tracing::warn!("{file}: unknown key `{key}` is ignored (check its spelling against CONFIG.md)");
        }
        config.file = path.to_path_buf();
        config.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        config.validate()?;
        Ok(config)
    }

    /// A path from the config, resolved against the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.pipeline.state_dir)
    }

    pub fn decides(&self) -> bool {
        self.pipeline.stages.contains(&StageName::Decide)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let f = &self.file;
        let p = &self.pipeline;
        if p.stages.is_empty() || !p.stages.contains(&StageName::Enrich) {
            return Err(key_err(f, "pipeline.stages", "expected [\"enrich\", \"decide\"] or [\"enrich\"]"));
        }
        if p.shards == 0 || p.shards > 256 {
            return Err(key_err(f, "pipeline.shards", format!("expected 1 to 256 shards, got {}", p.shards)));
        }
        if p.max_in_flight == 0 {
            return Err(key_err(f, "pipeline.max_in_flight", "expected at least 1 message in flight"));
        }
        if p.mailbox == 0 {
            return Err(key_err(f, "pipeline.mailbox", "expected a capacity of at least 1"));
        }
        if self.limits.max_event_bytes == 0 {
            return Err(key_err(f, "limits.max_event_bytes", "expected at least 1 byte"));
        }
        if self.sources.is_empty() {
            return Err(key_err(
                f,
                "sources",
                "expected at least one [[sources]] entry, e.g. kind = \"file\", path = \"events.jsonl\"",
            ));
        }
        let d = &self.decisor;
        if !(0.0..=1.0).contains(&d.max_drop_fraction) {
            return Err(key_err(
                f,
                "decisor.max_drop_fraction",
                format!("expected a fraction from 0.0 to 1.0, got {}", d.max_drop_fraction),
            ));
        }
        for (i, path) in d.hash_ignore.iter().enumerate() {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(key_err(
                    f,
                    format!("decisor.hash_ignore[{i}]"),
                    format!("expected a dotted path like \"stats.row_count\", got {path:?}"),
                ));
            }
        }
        let e = &self.enricher;
        for (i, ptr) in e.lookup.iter().enumerate() {
            if !ptr.starts_with('/') {
                return Err(key_err(
                    f,
                    format!("enricher.lookup[{i}]"),
                    format!("expected a JSON pointer like \"/asset/database\", got {ptr:?}"),
                ));
            }
        }
        match e.kind {
            EnricherKind::File if e.path.is_none() => {
                return Err(key_err(f, "enricher.path", "the file enricher needs path = \"business.json\""));
            }
            EnricherKind::Postgres if e.url.is_none() => {
                return Err(key_err(f, "enricher.url", "the postgres enricher needs url = \"postgres://…\""));
            }
            EnricherKind::Postgres if e.query.is_none() => {
                return Err(key_err(
                    f,
                    "enricher.query",
                    "the postgres enricher needs a query with $1, $2… for the lookup values",
                ));
            }
            _ => {}
        }
        if self.history.kind == HistoryKind::Scylla {
            if self.history.nodes.is_empty() {
                return Err(key_err(f, "history.nodes", "the scylla history store needs nodes = [\"127.0.0.1:9042\"]"));
            }
            let ks = self.history.keyspace.as_deref().unwrap_or("assetflow");
            if !crate::adapters::scylla_history::valid_keyspace(ks) {
                return Err(key_err(
                    f,
                    "history.keyspace",
                    format!("expected a plain identifier (letters, digits, _), got {ks:?}"),
                ));
            }
        }
        if self.control.kind == ControlKind::Dynamodb && self.control.table.is_none() {
            return Err(key_err(f, "control.table", "the dynamodb control store needs table = \"…\""));
        }
        if self.content.kind == ContentKind::S3 && self.content.bucket.is_none() {
            return Err(key_err(f, "content.bucket", "the s3 content store needs bucket = \"…\""));
        }
        let sinks: [(&str, &SinkConfig, bool); 4] = [
            ("sinks.upsert", &self.sinks.upsert, self.decides()),
            ("sinks.drop", &self.sinks.drop, self.decides()),
            ("sinks.enriched", &self.sinks.enriched, !self.decides()),
            ("sinks.dead_letter", &self.sinks.dead_letter, true),
        ];
        for (key, sink, used) in sinks {
            if !used {
                continue;
            }
            let missing = match sink.kind {
                SinkKind::File if sink.path.is_none() => Some("path"),
                SinkKind::Sqs if sink.queue_url.is_none() => Some("queue_url"),
                SinkKind::Kafka if sink.brokers.is_none() => Some("brokers"),
                SinkKind::Kafka if sink.topic.is_none() => Some("topic"),
                _ => None,
            };
            if let Some(field) = missing {
                return Err(key_err(
                    f,
                    format!("{key}.{field}"),
                    format!("a {:?} sink needs `{field}`", sink.kind).to_lowercase(),
                ));
            }
        }
        if self.retry.attempts == 0 {
            return Err(key_err(f, "retry.attempts", "expected at least 1 attempt"));
        }
        Ok(())
    }
}

fn one_line(e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg,
    }
}

/// A config file's text, and the environment its `${VAR}`s and overrides come from.
fn read(path: &Path) -> Result<(String, BTreeMap<String, String>), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|reason| ConfigError::Read { file: path.display().to_string(), reason })?;
    Ok((text, std::env::vars().collect()))
}

/// The TOML document of a config file, `${VAR}`s expanded and `ASSETFLOW_…` overrides applied.
fn prepared(text: &str, path: &Path, env: &BTreeMap<String, String>) -> Result<toml::Value, ConfigError> {
    let mut doc: toml::Value = toml::from_str(text)
        .map_err(|e| ConfigError::Syntax { file: path.display().to_string(), message: one_line(&e) })?;
    expand_env(&mut doc, "", path, env)?;
    apply_overrides(&mut doc, path, env)?;
    Ok(doc)
}

/// A value that does not fit its key, as one line naming the key.
fn field_error<E: std::fmt::Display>(file: &Path, e: serde_path_to_error::Error<E>, under: &str) -> ConfigError {
    let key = format!("{under}{}", e.path());
    // toml appends "in `key`" on a second line; the key is already named.
    let message = e.inner().to_string().lines().next().unwrap_or_default().to_owned();
    key_err(file, if key == "." { "(top level)".to_string() } else { key }, message)
}

/// Replaces every `${VAR}` in string values; an unset variable is an error naming the key.
fn expand_env(v: &mut toml::Value, key: &str, file: &Path, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    match v {
        toml::Value::String(s) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else {
                    return Err(key_err(file, key, "unclosed `${` in the value"));
                };
                let name = &after[..end];
                match env.get(name) {
                    Some(val) => out.push_str(val),
                    None => {
                        return Err(key_err(
                            file,
                            key,
                            format!("environment variable `{name}` is not set; set it or write the value in the file"),
                        ));
                    }
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, &format!("{key}[{i}]"), file, env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                let sub = if key.is_empty() { k.clone() } else { format!("{key}.{k}") };
                expand_env(item, &sub, file, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `ASSETFLOW__SECTION__KEY=value` sets `section.key` (numbers index arrays: `SOURCES__0__PATH`).
fn apply_overrides(doc: &mut toml::Value, file: &Path, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("ASSETFLOW__") else {
            continue;
        };
        let segments: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        if segments.iter().any(String::is_empty) {
            continue;
        }
        let key = segments.join(".");
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let mut cur = &mut *doc;
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            cur = match cur {
                toml::Value::Table(t) => {
                    if last {
                        t.insert(seg.clone(), value.clone());
                        break;
                    }
                    t.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()))
                }
                toml::Value::Array(a) => {
                    let idx: usize = seg.parse().map_err(|_| {
                        key_err(file, &key, format!("override {name}: `{seg}` should be an array index"))
                    })?;
                    let Some(item) = a.get_mut(idx) else {
                        return Err(key_err(file, &key, format!("override {name}: there is no entry {idx}")));
                    };
                    if last {
                        *item = value.clone();
                        break;
                    }
                    item
                }
                _ => {
                    return Err(key_err(file, &key, format!("override {name}: `{seg}` is not inside a table")));
                }
            };
        }
    }
    Ok(())
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for anything printed.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                return format!("{}{user}:***@{}", &url[..scheme_end + 3], &rest[at + 1..]);
            }
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::parse(text, Path::new("/cfg/config.toml"), &env)
    }

    const MIN: &str = "[[sources]]\nkind = \"file\"\npath = \"events.jsonl\"\n";

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse(MIN, &[]).unwrap();
        assert_eq!(c.pipeline.shards, 4);
        assert_eq!(c.state_dir(), PathBuf::from("/cfg/data"));
        assert_eq!(c.decisor.completion_timeout, Duration::from_secs(300));
    }

    #[test]
    fn env_expansion_and_overrides() {
        let text = format!("{MIN}[pipeline]\nstate_dir = \"${{DIR}}/x\"\n");
        let c = parse(
            &text,
            &[("DIR", "/tmp"), ("ASSETFLOW__PIPELINE__SHARDS", "8"), ("ASSETFLOW__SOURCES__0__FOLLOW", "true")],
        )
        .unwrap();
        assert_eq!(c.pipeline.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.pipeline.shards, 8);
        assert!(matches!(c.sources[0], SourceConfig::File { follow: true, .. }));
        let err = parse(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("pipeline.state_dir") && err.contains("DIR"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let err = parse(&format!("{MIN}[pipeline]\nshards = \"four\"\n"), &[]).unwrap_err().to_string();
        assert!(err.contains("pipeline.shards"), "{err}");
        let err = parse("[[sources]]\nkind = \"carrier-pigeon\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("sources[0]") && err.contains("carrier-pigeon"), "{err}");
        let err = parse(&format!("{MIN}[decisor]\nmax_drop_fraction = 2.0\n"), &[]).unwrap_err().to_string();
        assert!(err.contains("decisor.max_drop_fraction"), "{err}");
        let err = parse(&format!("{MIN}[decisor]\ncompletion_timeout = \"soon\"\n"), &[]).unwrap_err().to_string();
        assert!(err.contains("decisor.completion_timeout"), "{err}");
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(redact_url("postgres://app:hunter2@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }
}
