//! The `assetflow` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use assetflow::commands::{self, Listing};
use assetflow::config::Config;
use clap::{Parser, Subcommand, ValueEnum};

/// jemalloc, not glibc malloc: batches are built on one thread (decode) and freed on another (a
/// shard), and glibc spent a fifth of a steady crawl's CPU in malloc, free and consolidation;
/// jemalloc ran the same crawls with 20–35% less CPU at the same peak RSS (benches/analysis.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (its `malloc_conf`, read before `main`): see [`assetflow::allocator`].
#[unsafe(export_name = "_rjem_malloc_conf")]
#[used]
static MALLOC_CONF: Option<&'static u8> = Some(&assetflow::allocator::JEMALLOC_CONF[0]);

#[derive(Parser)]
#[command(name = "assetflow", version, about = "Keeps a data catalog in step with the databases it describes")]
struct Cli {
    /// Log lines as human-readable text (default) or JSON objects.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the topology until stopped (or, with only non-following file sources, until drained).
    Run {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        /// Also write the closing summary as JSON to this file (benchmarks, scripts).
        #[arg(long)]
        summary_json: Option<PathBuf>,
    },
    /// Validate the config and print the resolved topology.
    CheckConfig {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Draw the topology.
    Topology {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Show an asset's history, newest first.
    History {
        asset_key: String,
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// An aligned table (long values cut), or one JSON object per row.
        #[arg(long, value_enum, default_value_t = Listing::Text)]
        format: Listing,
    },
    /// Print the content a `file://` content ref points at (an upsert's or a record's
    /// `content_ref`), in either layout of the `dir` content store.
    Content { content_ref: String },
    /// Replay dead letters through the pipeline (parking those past redrive.max_attempts).
    Redrive {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        /// Replay at most this many dead letters.
        #[arg(long, conflicts_with = "parked")]
        max: Option<u64>,
        /// Replay nothing: print the parked dead letters (one JSON object per line).
        #[arg(long)]
        parked: bool,
    },
    /// Write a deterministic, realistic crawl stream (JSON Lines) to a file, stdout, a Kafka
    /// topic or a Kinesis stream.
    Gen {
        #[command(flatten)]
        params: assetflow::generate::GenParams,
        /// Output file; standard output when absent (and no topic or stream is given).
        #[arg(long, conflicts_with_all = ["topic", "kinesis_stream"])]
        out: Option<PathBuf>,
        /// Write to this Kafka topic instead (one message per event, keyed by source).
        #[arg(long, requires = "kafka_brokers", conflicts_with = "kinesis_stream")]
        topic: Option<String>,
        #[arg(long, requires = "topic")]
        kafka_brokers: Option<String>,
        /// Put the events on this Kinesis stream instead (one record per event, partition key
        /// the source). Region, endpoint and credentials come from the `[aws]` section of
        /// --config, or the AWS environment when no config is given.
        #[arg(long)]
        kinesis_stream: Option<String>,
        /// The config whose `[aws]` section --kinesis-stream uses.
        #[arg(long, requires = "kinesis_stream")]
        config: Option<PathBuf>,
    },
    /// Write the run stamps the embedded store holds in touch frames as rows, as it does every
    /// 2,048 frames: before going back to a version that does not read touch frames.
    Fold {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// List the assets in the control table.
    Assets {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        #[arg(long)]
        source: Option<String>,
        #[arg(long, value_parser = ["live", "dropped"])]
        status: Option<String>,
        /// An aligned table (long values cut), or one JSON object per asset.
        #[arg(long, value_enum, default_value_t = Listing::Text)]
        format: Listing,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Dot,
    Mermaid,
    /// The graph as data: nodes and edges, as the status page reads it from `/graph.json`.
    Json,
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // The embedded store's engine logs each keyspace it recovers at every open, at info:
        // a user of `assetflow history` or of a restart needs only its warnings.
        EnvFilter::new(
            "info,aws_smithy_runtime=warn,aws_smithy_runtime_api=warn,aws_config=warn,hyper=warn,fjall=warn,lsm_tree=warn",
        )
    });
    // A log line that cannot be written (stderr piped into `head`, which has exited) is
    // dropped: reporting that failure to the same stderr panicked, and aborted the process.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
}

fn generate(params: &assetflow::generate::GenParams, out: Option<&std::path::Path>) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let n = match out {
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let n = assetflow::generate::generate(params, &mut w)?;
            std::io::Write::flush(&mut w)?;
            n
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            let n = assetflow::generate::generate(params, &mut w)?;
            std::io::Write::flush(&mut w)?;
            n
        }
    };
    tracing::info!("wrote {n} events");
    Ok(String::new())
}

fn generate_to_kafka(params: &assetflow::generate::GenParams, brokers: &str, topic: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let mut w = assetflow::generate::kafka::KafkaLines::new(brokers, topic).map_err(anyhow::Error::msg)?;
    let n = assetflow::generate::generate(params, &mut w).with_context(|| format!("writing to Kafka topic {topic}"))?;
    w.finish().with_context(|| format!("writing to Kafka topic {topic}"))?;
    tracing::info!("wrote {n} events to Kafka topic {topic}");
    Ok(String::new())
}

fn generate_to_kinesis(
    params: &assetflow::generate::GenParams,
    stream: &str,
    config: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let aws_config = match config {
        Some(path) => Config::load_aws(path)?,
        None => assetflow::config::AwsConfig {
            region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
            ..Default::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let aws = runtime.block_on(assetflow::adapters::aws::Aws::load(&aws_config));
    let mut w = assetflow::generate::kinesis::KinesisLines::new(&aws, stream, runtime).map_err(anyhow::Error::msg)?;
    assetflow::generate::generate(params, &mut w).with_context(|| format!("writing to Kinesis stream {stream}"))?;
    let (records, calls) = w.finish().with_context(|| format!("writing to Kinesis stream {stream}"))?;
    tracing::info!("put {records} events on Kinesis stream {stream} in {calls} PutRecords calls");
    Ok(String::new())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    // A panic is a bug an actor's supervisor recovers from (or stops the process over, with a
    // message of its own): one log line where it happened, not a backtrace on stderr.
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(at, "panic: {what}");
    }));
    let result = match cli.command {
        Command::Run { config, summary_json } => {
            Config::load(&config).map_err(anyhow::Error::from).and_then(|c| commands::run(&c)).and_then(|s| {
                eprintln!("{s}");
                if let Some(path) = summary_json {
                    use anyhow::Context as _;
                    std::fs::write(&path, s.to_json().to_string())
                        .with_context(|| format!("cannot write the summary to {}", path.display()))?;
                }
                Ok(String::new())
            })
        }
        Command::CheckConfig { config } => {
            Config::load(&config).map_err(anyhow::Error::from).and_then(|c| commands::check_config(&c))
        }
        Command::Topology { config, format } => Config::load(&config).map_err(anyhow::Error::from).map(|c| {
            let f = match format {
                Format::Text => "text",
                Format::Dot => "dot",
                Format::Mermaid => "mermaid",
                Format::Json => "json",
            };
            assetflow::topology::graph(&c).draw(f)
        }),
        Command::History { asset_key, config, limit, format } => Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| commands::history(&c, &asset_key, limit, format)),
        Command::Content { content_ref } => assetflow::adapters::content_pack::read_content(&content_ref)
            .map(|c| format!("{c}\n"))
            .map_err(anyhow::Error::from),
        Command::Redrive { config, parked: true, .. } => {
            Config::load(&config).map_err(anyhow::Error::from).and_then(|c| commands::parked(&c)).inspect(|letters| {
                eprintln!("assetflow: {} parked dead letters", letters.lines().count());
            })
        }
        Command::Redrive { config, max, .. } => Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| commands::redrive(&c, max))
            .map(|(s, replayed, parked)| {
                eprintln!("{s}");
                eprintln!("  redrive        {replayed} replayed, {parked} parked");
                String::new()
            }),
        Command::Gen { params, out, topic, kafka_brokers, kinesis_stream, config } => {
            match (topic, kafka_brokers, kinesis_stream) {
                (Some(topic), Some(brokers), _) => generate_to_kafka(&params, &brokers, &topic),
                (_, _, Some(stream)) => generate_to_kinesis(&params, &stream, config.as_deref()),
                _ => generate(&params, out.as_deref()),
            }
        }
        Command::Fold { config } => Config::load(&config).map_err(anyhow::Error::from).and_then(|c| commands::fold(&c)),
        Command::Assets { config, source, status, format } => Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| commands::assets(&c, source.as_deref(), status.as_deref(), format)),
    };
    match result {
        Ok(out) => match std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
            // A reader that stopped early (`assetflow history KEY | head`) is not a failure.
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write the output: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            // One line: the error and its causes, no backtrace.
            let msg = e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
