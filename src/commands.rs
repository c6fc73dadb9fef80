//! The commands of the command line, each a function from a loaded config to an outcome.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use assetflow_actors::metrics::Metrics;
use assetflow_actors::pipeline::Pipeline;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use assetflow_actors::pipeline::RedrivePlan;
use assetflow_actors::redrive::RedriveStats;

use assetflow_actors::ports::{BackendError, BackendResult, DeadLetterOpener, DeadLetterStore};

use crate::adapters::aws::Aws;
use crate::adapters::aws::sqs::SqsDeadLetters;
use crate::adapters::dead_letter_file::DeadLetterFile;
use crate::adapters::kafka::dead_letters::KafkaDeadLetters;
use crate::adapters::state::StateStore;
use crate::admin::AdminState;
use crate::config::{Config, ControlConfig, HistoryConfig, SinkConfig, redact_url};
use crate::topology::{Graph, build_ports, graph, open_control, open_state, settings};

/// What a finished run did, for the closing summary.
#[derive(Debug)]
pub struct RunSummary {
    pub elapsed: Duration,
    pub events_in: u64,
    pub outcomes: Vec<(String, u64)>,
    pub upserts: u64,
    pub drops: u64,
    pub dead_letters: Vec<(String, u64)>,
    pub stopped_by_signal: bool,
    /// AWS requests by `service.Operation`, when the topology uses AWS.
    pub aws_requests: Option<Vec<(String, u64)>>,
    /// Decision latency quantiles (p50, p99), in seconds: upper bounds of histogram buckets.
    pub latency: Option<(f64, f64)>,
    /// Backend call attempts by `backend operation` (`control store get`...): round trips.
    pub calls: Vec<(String, u64)>,
    /// Seconds spent in those calls, summed over every caller, by the same key.
    pub call_seconds: Vec<(String, f64)>,
    /// Seconds each kind of actor worked (its own work and its backend calls, not its waits
    /// for the next stage), summed over its instances: a shard busy all run adds the run's time.
    pub busy_seconds: Vec<(String, f64)>,
    /// Events the decisors decided, and of those the ones whose content hash they took (the
    /// rest were unchanged assets known by their text print).
    pub decided: u64,
    pub hashed: u64,
}

impl RunSummary {
    /// The summary as one JSON object (`assetflow run --summary-json`).
    pub fn to_json(&self) -> serde_json::Value {
        // Named counts and named seconds alike: a JSON object by name.
        fn by_name<T: Copy + Into<serde_json::Value>>(v: &[(String, T)]) -> serde_json::Value {
            serde_json::Value::Object(v.iter().map(|(k, n)| (k.clone(), (*n).into())).collect())
        }
        serde_json::json!({
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "events_in": self.events_in,
            "events_per_second": self.events_in as f64 / self.elapsed.as_secs_f64().max(1e-9),
            "outcomes": by_name(&self.outcomes),
            "upserts": self.upserts,
            "drops": self.drops,
            "dead_letters": by_name(&self.dead_letters),
            "stopped_by_signal": self.stopped_by_signal,
            "aws_requests": self.aws_requests.as_deref().map(by_name),
            "latency_p50_seconds": self.latency.map(|l| l.0),
            "latency_p99_seconds": self.latency.map(|l| l.1),
            "backend_calls": by_name(&self.calls),
            "backend_call_seconds": by_name(&self.call_seconds),
            "actor_busy_seconds": by_name(&self.busy_seconds),
            "decided_events": self.decided,
            "hashed_events": self.hashed,
        })
    }
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let how = if self.stopped_by_signal { "stopped" } else { "drained" };
        writeln!(f, "assetflow: {how} after {:.2}s", self.elapsed.as_secs_f64())?;
        writeln!(f, "  events in      {:>10}   ({:.0} events/s)", self.events_in, self.events_in as f64 / secs)?;
        let outcomes: Vec<String> =
            self.outcomes.iter().filter(|(_, n)| *n > 0).map(|(o, n)| format!("{o} {n}")).collect();
        writeln!(f, "  decisions      {}", if outcomes.is_empty() { "none".into() } else { outcomes.join(", ") })?;
        writeln!(f, "  published      {} upserts, {} drops", self.upserts, self.drops)?;
        let dl: Vec<String> = self.dead_letters.iter().map(|(k, n)| format!("{k} {n}")).collect();
        write!(f, "  dead letters   {}", if dl.is_empty() { "none".into() } else { dl.join(", ") })?;
        if self.decided > 0 {
            let known = self.decided.saturating_sub(self.hashed);
            write!(
                f,
                "\n  hashed         {} of {} (the other {known} known by their text print)",
                self.hashed, self.decided
            )?;
        }
        if let Some((p50, p99)) = self.latency {
            write!(f, "\n  latency        p50 {:.1} ms, p99 {:.1} ms (read to durable)", p50 * 1e3, p99 * 1e3)?;
        }
        if let Some(reqs) = &self.aws_requests {
            let total: u64 = reqs.iter().map(|(_, n)| n).sum();
            let per_k = if self.events_in > 0 { total as f64 * 1000.0 / self.events_in as f64 } else { 0.0 };
            let each: Vec<String> = reqs.iter().map(|(k, n)| format!("{k} {n}")).collect();
            write!(f, "\n  aws requests   {total} ({per_k:.1} per 1,000 events): {}", each.join(", "))?;
        }
        Ok(())
    }
}

/// `assetflow run`: runs until every finite source is drained, or until SIGINT/SIGTERM.
pub fn run(config: &Config) -> anyhow::Result<RunSummary> {
    let state = open_state(config)?;
    execute(config, state, None)
}

/// How long a clean stop waits for the embedded store to flush its memtables.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// `assetflow redrive`: replays the dead letters written since the last redrive through the
/// pipeline; those tried `redrive.max_attempts` times are parked instead.
pub fn redrive(config: &Config, max: Option<u64>) -> anyhow::Result<(RunSummary, u64, u64)> {
    let state = open_state(config)?;
    let stats = Arc::new(RedriveStats::default());
    let summary = execute(config, state, Some((max, stats.clone())))?;
    Ok((summary, stats.replayed(), stats.parked()))
}

/// The dead-letter sink read back as a store.
async fn dead_letter_store(
    config: &Config,
    state: &StateStore,
    aws: Option<&Aws>,
) -> anyhow::Result<Box<dyn DeadLetterStore>> {
    let file = config.file.display();
    match &config.sinks.dead_letter {
        SinkConfig::File { path } => Ok(Box::new(
            DeadLetterFile::open(&config.resolve(path), state.clone())
                .map_err(|m| anyhow::anyhow!("{file}: key `sinks.dead_letter.path`: {m}"))?,
        )),
        SinkConfig::Sqs { queue_url: url } => {
            let aws = aws.ok_or_else(|| anyhow::anyhow!("{file}: key `sinks.dead_letter`: AWS is not configured"))?;
            let parked = config.redrive.parked_queue_url.as_deref();
            let key = if parked.is_some() { "redrive.parked_queue_url" } else { "sinks.dead_letter.queue_url" };
            Ok(Box::new(
                SqsDeadLetters::open(aws, url, parked)
                    .await
                    .map_err(|e| anyhow::anyhow!("{file}: key `{key}`: {e}"))?,
            ))
        }
        SinkConfig::Kafka { brokers, topic, options } => Ok(Box::new(
            KafkaDeadLetters::open(
                brokers,
                topic,
                &config.redrive.group,
                config.redrive.parked_topic.as_deref(),
                options,
            )
            .await
            .map_err(|m| anyhow::anyhow!("{file}: key `sinks.dead_letter.topic`: {m}"))?,
        )),
        other => anyhow::bail!(
            "{file}: key `sinks.dead_letter.kind`: redrive reads dead letters back from a file, an SQS queue or a Kafka topic; `{}` cannot be read back",
            other.label()
        ),
    }
}

/// `assetflow redrive --parked`: the parked dead letters, one JSON object per line.
pub fn parked(config: &Config) -> anyhow::Result<String> {
    let state = open_state(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let aws = match &config.sinks.dead_letter {
            SinkConfig::Sqs { .. } => Some(Aws::load(&config.aws).await),
            _ => None,
        };
        let mut store = dead_letter_store(config, &state, aws.as_ref()).await?;
        let letters = store.parked().await.context("reading the parked dead letters")?;
        let mut out = String::new();
        for dl in letters {
            out.push_str(&serde_json::to_string(&dl)?);
            out.push('\n');
        }
        Ok(out)
    })
}

/// Opens the configured dead-letter store for each redrive round.
struct ConfiguredDeadLetters {
    config: Config,
    state: StateStore,
    aws: Option<Aws>,
}

#[async_trait::async_trait]
impl DeadLetterOpener for ConfiguredDeadLetters {
    async fn open(&self) -> BackendResult<Box<dyn DeadLetterStore>> {
        dead_letter_store(&self.config, &self.state, self.aws.as_ref())
            .await
            .map_err(|e| BackendError::permanent("dead-letter store", "open", format!("{e:#}")))
    }
}

/// Builds the topology and runs it until its sources are drained or a signal stops it. With
/// `redrive`, the dead-letter store replaces the configured sources; without, it is redriven
/// every `redrive.interval` beside them when that is set. A run that drained settles the store
/// ([`StateStore::settle`]); one that gave up may still have writes in flight, and the index it
/// would save could miss them (tests/supervision.rs fails if it does).
fn execute(
    config: &Config,
    state: StateStore,
    redrive: Option<(Option<u64>, Arc<RedriveStats>)>,
) -> anyhow::Result<RunSummary> {
    let settings = settings(config);
    let store = state.clone();
    let system = actix_rt::System::new();
    let summary = system.block_on(async move {
        let mut built = build_ports(config, &state, redrive.is_none()).await?;
        let opener = Arc::new(ConfiguredDeadLetters { config: config.clone(), state: state.clone(), aws: built.aws.clone() });
        let redrive_stats = match redrive {
            Some((max, stats)) => {
                // A store that cannot be read back stops the redrive with its error (naming
                // the key); it is not opened here first: a Kafka group member that came and
                // went would hold the next one's join back.
                built.ports.sources = Vec::new();
                built.ports.redrive = Some(RedrivePlan {
                    opener,
                    max_attempts: config.redrive.max_attempts,
                    limit: max,
                    stats: stats.clone(),
                    interval: None,
                });
                built.graph = Graph::build(config, &["redrive".to_owned()]);
                Some(stats)
            }
            None if config.redrive.interval.is_some() => {
                let every = config.redrive.interval.unwrap_or_default();
                dead_letter_store(config, &state, built.aws.as_ref())
                    .await
                    .context("key `redrive.interval`: the dead-letter sink is redriven from inside the service")?;
                let stats = Arc::new(RedriveStats::default());
                built.ports.redrive = Some(RedrivePlan {
                    opener,
                    max_attempts: config.redrive.max_attempts,
                    limit: None,
                    stats: stats.clone(),
                    interval: Some(every),
                });
                Some(stats)
            }
            None => None,
        };
        let started = Instant::now();
        let mut pipeline = Pipeline::start(settings, built.ports);
        let ready = Arc::new(AtomicBool::new(true));
        if !config.admin.listen.is_empty() {
            let state = AdminState {
                metrics: pipeline.metrics.clone(),
                lookup: pipeline.lookup.clone(),
                ready: ready.clone(),
                aws: built.aws_requests.clone(),
                started,
                graph: Arc::new(built.graph.clone()),
                redrive: redrive_stats,
            };
            if let Err(m) = crate::admin::serve(&config.admin.listen, state).await {
                pipeline.stop();
                pipeline.drained().await;
                pipeline.shutdown();
                anyhow::bail!("{}: key `admin.listen`: {m}; pick a free port, or \"\" to turn the admin server off", config.file.display());
            }
            tracing::info!("admin: http://{}/ (status page), /metrics, /healthz, /readyz", config.admin.listen);
        }
        let progress = tokio::spawn(report_progress(pipeline.metrics.clone(), started));
        let mut stopped_by_signal = false;
        let mut fatal = pipeline.fatal();
        // A stage that keeps failing (or an ingest that ended without draining) stops the
        // process at once: everything acknowledged is durable, the rest is read again.
        let gave_up = async move {
            let _ = fatal.wait_for(|f| f.is_some()).await;
            fatal.borrow().clone()
        };
        tokio::pin!(gave_up);
        tokio::select! {
            _ = pipeline.drained() => {}
            why = &mut gave_up => {
                let why = why.unwrap_or_default();
                anyhow::bail!("{why}");
            }
            _ = shutdown_signal() => {
                stopped_by_signal = true;
                ready.store(false, Ordering::Relaxed);
                tracing::info!("stopping: no new input; finishing what is in flight (a second signal exits at once)");
                pipeline.stop();
                tokio::select! {
                    _ = pipeline.drained() => {}
                    _ = shutdown_signal() => {
                        eprintln!("assetflow: second signal, exiting now; unacknowledged input will be re-delivered on restart");
                        std::process::exit(130);
                    }
                }
            }
        }
        progress.abort();
        if std::io::stderr().is_terminal() {
            eprint!("\r\x1b[2K");
        }
        let m = pipeline.metrics.clone();
        let failed = pipeline.fatal().borrow().clone();
        pipeline.shutdown();
        if let Some(why) = failed {
            anyhow::bail!("{why}");
        }
        if let Some((source, why)) = m.refused().into_iter().next() {
            anyhow::bail!("source {source} stopped the run: {why}");
        }
        let mut summary = summarize(&m, started.elapsed(), stopped_by_signal);
        summary.aws_requests = built.aws_requests.map(|r| r.snapshot().into_iter().collect());
        Ok(summary)
    })?;
    store.settle(SETTLE_WITHIN);
    Ok(summary)
}

/// A live progress line on a terminal (every second), a log line otherwise (every 10 s).
async fn report_progress(m: Arc<Metrics>, started: Instant) {
    let tty = std::io::stderr().is_terminal();
    let every = Duration::from_secs(if tty { 1 } else { 10 });
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::time::sleep(every).await;
        let events = Metrics::count(&m.events_in);
        let rate = (events - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-3);
        last = (Instant::now(), events);
        let decided: u64 = m.outcomes().iter().map(|(_, n)| n).sum();
        let dead: u64 = m.dead_letters().values().sum();
        let in_flight: u64 = m.in_flight().values().sum();
        let line = format!(
            "{:>6.0}s  {events} events in ({rate:.0}/s), {decided} decided, {dead} dead letters, {in_flight} in flight",
            started.elapsed().as_secs_f64()
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            tracing::info!("progress: {line}");
        }
    }
}

fn summarize(m: &Metrics, elapsed: Duration, stopped_by_signal: bool) -> RunSummary {
    let calls = m.calls();
    RunSummary {
        elapsed,
        events_in: Metrics::count(&m.events_in),
        outcomes: m.outcomes().into_iter().map(|(o, n)| (o.as_str().to_owned(), n)).collect(),
        upserts: Metrics::count(&m.upserts_published),
        drops: Metrics::count(&m.drops_published),
        dead_letters: m.dead_letters().into_iter().collect(),
        stopped_by_signal,
        aws_requests: None,
        latency: m.decision_latency.quantile(0.5).zip(m.decision_latency.quantile(0.99)),
        calls: calls.iter().map(|((b, o), c)| (format!("{b} {o}"), c.count)).collect(),
        call_seconds: calls.iter().map(|((b, o), c)| (format!("{b} {o}"), c.sum_seconds)).collect(),
        busy_seconds: m.busy_seconds().into_iter().map(|(a, s)| (a.as_str().to_owned(), s)).collect(),
        decided: Metrics::count(&m.batch_events),
        hashed: Metrics::count(&m.hashed),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `assetflow check-config`: the resolved topology, secrets redacted.
pub fn check_config(config: &Config) -> anyhow::Result<String> {
    let mut value = toml::Value::try_from(config).context("rendering the resolved config")?;
    redact(&mut value);
    let mut out = format!("{}: ok\n\n", config.file.display());
    out.push_str(&graph(config).draw("text"));
    out.push_str("\n# resolved configuration\n");
    out.push_str(&toml::to_string_pretty(&value).context("rendering the resolved config")?);
    Ok(out)
}

fn redact(v: &mut toml::Value) {
    match v {
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                let secret = ["password", "secret", "token", "key_id", "access_key"].iter().any(|s| k.contains(s));
                match item {
                    toml::Value::String(s) if secret => *s = "***".into(),
                    toml::Value::String(s) => *s = redact_url(s),
                    other => redact(other),
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// How `history` and `assets` print their rows: an aligned table for a person (long values
/// cut to fit), or one JSON object per line, every field whole, for a script.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Listing {
    Text,
    Json,
}

/// Why there is nothing to read where the embedded stores would be: nothing has run with this
/// config yet, or the command runs from another folder than the service did. A read must not
/// create a store there (one created in the wrong folder would then look like a real one).
fn nothing_ran_yet(config: &Config) -> Option<String> {
    let dir = config.state_dir();
    (!StateStore::exists_in(&dir)).then(|| {
        format!(
            "no state in {} yet: nothing has run with this config (pipeline.state_dir, relative to the config file's folder)",
            dir.display()
        )
    })
}

/// `assetflow history KEY`: the asset's history rows, newest first.
pub fn history(config: &Config, asset_key: &str, limit: usize, listing: Listing) -> anyhow::Result<String> {
    if matches!(config.history, HistoryConfig::Embedded)
        && let Some(why) = nothing_ran_yet(config)
    {
        tracing::warn!("{why}");
        return Ok(if listing == Listing::Json { String::new() } else { format!("no history for {asset_key}\n") });
    }
    let state = open_state(config)?;
    let rows = actix_rt::System::new().block_on(async move {
        let store = crate::topology::open_history(config, &state).await?;
        anyhow::Ok(store.read(asset_key, limit).await?)
    })?;
    if listing == Listing::Json {
        return Ok(rows.iter().map(|r| history_json(r).to_string() + "\n").collect());
    }
    if rows.is_empty() {
        return Ok(format!("no history for {asset_key}\n"));
    }
    let mut out = format!(
        "{:<24}  {:<11}  {:<12}  {:<12}  {:<16}  {}\n",
        "at", "outcome", "event_id", "run_id", "hash", "decision_id"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<24}  {:<11}  {:<12}  {:<12}  {:<16}  {}\n",
            assetflow_actors::decision::rfc3339(r.at),
            r.outcome.as_str(),
            r.event_id.as_deref().unwrap_or("-"),
            r.run_id.as_deref().unwrap_or("-"),
            r.hash.as_deref().map(|h| &h[..h.len().min(16)]).unwrap_or("-"),
            r.decision_id
        ));
    }
    Ok(out)
}

/// One history row as `history --format json` prints it: times as the outputs write them.
fn history_json(r: &assetflow_actors::decision::HistoryRow) -> serde_json::Value {
    serde_json::json!({
        "at": assetflow_actors::decision::rfc3339(r.at),
        "asset_key": r.asset_key,
        "source": r.source,
        "outcome": r.outcome.as_str(),
        "event_id": r.event_id,
        "run_id": r.run_id,
        "hash": r.hash,
        "decision_id": r.decision_id,
    })
}

/// `assetflow fold`: the embedded store's touch frames written as stamp rows, then a clean stop.
pub fn fold(config: &Config) -> anyhow::Result<String> {
    let store = open_state(config)?;
    let (frames, rows) = store
        .fold_frames()
        .with_context(|| format!("cannot fold the touch frames in {}", config.state_dir().display()))?;
    store.settle(SETTLE_WITHIN);
    Ok(format!("folded {frames} touch frames: {rows} run stamps written as rows\n"))
}

/// `assetflow assets`: the control table, optionally filtered, read through the control store
/// the config names (embedded, DynamoDB...).
pub fn assets(config: &Config, source: Option<&str>, status: Option<&str>, listing: Listing) -> anyhow::Result<String> {
    let unread = matches!(config.control, ControlConfig::Embedded).then(|| nothing_ran_yet(config)).flatten();
    let mut records = match unread {
        Some(why) => {
            tracing::warn!("{why}");
            Vec::new()
        }
        None => read_assets(config, source)?,
    };
    records.retain(|r| {
        r.is_asset() && source.is_none_or(|s| r.source == s) && status.is_none_or(|s| r.status.as_str() == s)
    });
    records.sort_by(|a, b| a.asset_key.cmp(&b.asset_key));
    if listing == Listing::Json {
        return Ok(records.iter().map(|r| record_json(r).to_string() + "\n").collect());
    }
    let mut out =
        format!("{:<48}  {:<8}  {:<14}  {:<24}  {}\n", "asset_key", "status", "last_seen_run", "last_seen_at", "hash");
    for r in &records {
        out.push_str(&format!(
            "{:<48}  {:<8}  {:<14}  {:<24}  {}\n",
            r.asset_key,
            r.status.as_str(),
            r.last_seen_run,
            assetflow_actors::decision::rfc3339(r.last_seen_at),
            &r.hash[..r.hash.len().min(16)]
        ));
    }
    out.push_str(&format!("{} assets\n", records.len()));
    Ok(out)
}

/// One control record as `assets --format json` prints it (EVENTS.md §2's fields).
fn record_json(r: &assetflow_actors::record::ControlRecord) -> serde_json::Value {
    use assetflow_actors::decision::rfc3339;
    serde_json::json!({
        "asset_key": r.asset_key,
        "source": r.source,
        "database": r.name.database,
        "schema": r.name.schema,
        "table": r.name.table,
        "status": r.status.as_str(),
        "hash": r.hash,
        "last_seen_run": r.last_seen_run,
        "last_seen_at": rfc3339(r.last_seen_at),
        "dropped_at": r.dropped_at.map(rfc3339),
        "content_ref": r.content_ref,
        "version": r.version,
    })
}

/// Every control record, or a source's, through the control store the config names.
fn read_assets(config: &Config, source: Option<&str>) -> anyhow::Result<Vec<assetflow_actors::record::ControlRecord>> {
    let state = open_state(config)?;
    actix_rt::System::new().block_on(async move {
        let store = open_control(config, &state).await?;
        anyhow::Ok(match source {
            Some(s) => store.list_source(s).await?,
            None => store.list_all().await?,
        })
    })
}
