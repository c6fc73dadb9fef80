//! `assetflow gen`: a deterministic generator of realistic crawl streams, for tests and
//! benchmarks. The same parameters and seed always give the same bytes.
//!
//! The stream is written as JSON Lines to any [`std::io::Write`]: a file or standard output,
//! or one of the writers here that turn each line into a message:
//! - [`kafka`]: one record per line on a Kafka topic, keyed by the event's `source`;
//! - [`kinesis`]: one record per line on a Kinesis stream, partition key the `source`;
//! - `line_buffer`: what both use to hand on whole lines from written bytes.

pub mod kafka;
pub mod kinesis;
mod line_buffer;

use std::io::Write;

use serde_json::json;

/// What to generate.
#[derive(Debug, Clone, clap::Args)]
pub struct GenParams {
    /// Crawled systems, each with its own runs.
    #[arg(long, default_value_t = 3)]
    pub sources: usize,
    /// Tables per source.
    #[arg(long, default_value_t = 200)]
    pub assets: usize,
    /// Crawl runs per source.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Share of assets whose content changes between two runs.
    #[arg(long, default_value_t = 0.1, value_parser = share)]
    pub churn: f64,
    /// Share of assets a run does not see (dropped, and back in a later run).
    #[arg(long, default_value_t = 0.02, value_parser = share)]
    pub missing: f64,
    /// Size of one `running` event's line, in bytes (to within ~30, a column; at least ~270).
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// Share of events delivered twice (exact re-deliveries).
    #[arg(long, default_value_t = 0.01, value_parser = share)]
    pub redeliver: f64,
    /// Share of lines that are malformed.
    #[arg(long, default_value_t = 0.001, value_parser = share)]
    pub bad: f64,
    /// Every Nth run of a source stops half-way (its completion must trip the drop guard); 0: never.
    #[arg(long, default_value_t = 0)]
    pub halfway_every: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Leave out the first K runs (they are still generated, so the rest is the same bytes as
    /// in the full stream): a "steady crawl" over state a full first run left behind.
    #[arg(long, default_value_t = 0)]
    pub skip_runs: usize,
}

/// A share from 0 to 1, for `gen`'s `--churn`, `--missing`, `--redeliver` and `--bad`.
fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("expected a share from 0 to 1 (0.02 is 2%), got {text}")),
    }
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            sources: 3,
            assets: 200,
            runs: 5,
            churn: 0.1,
            missing: 0.02,
            payload: 1024,
            redeliver: 0.01,
            bad: 0.001,
            halfway_every: 0,
            seed: 42,
            skip_runs: 0,
        }
    }
}

struct SourceState {
    name: String,
    versions: Vec<u32>,
    clock: u64,
    event_no: u64,
}

/// Writes the stream; returns how many lines were written.
pub fn generate(p: &GenParams, out: &mut dyn Write) -> std::io::Result<u64> {
    let mut rng = fastrand::Rng::with_seed(p.seed);
    let mut sources: Vec<SourceState> = (0..p.sources)
        .map(|i| SourceState { name: format!("src-{i}"), versions: vec![0; p.assets], clock: 0, event_no: 0 })
        .collect();
    // A line is ~238 bytes without its columns and ~30 more a column
    // (`{"name":"c12","type":"bigint"},`): `payload` is then the size of a line, to within a column.
    let columns = (p.payload.saturating_sub(238) / 30).max(1);
    let mut lines = 0u64;
    let base = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z").map(|t| t.timestamp()).unwrap_or(0);
    let at = |clock: u64| {
        chrono::DateTime::from_timestamp(base + clock as i64, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    };
    for run in 0..p.runs {
        // Sources crawl concurrently: their events interleave in chunks.
        let mut pending: Vec<Vec<String>> = Vec::with_capacity(sources.len());
        for s in sources.iter_mut() {
            let run_id = format!("{}-run-{run}", s.name);
            let halfway = p.halfway_every > 0 && run > 0 && run % p.halfway_every == 0;
            let mut evs = Vec::new();
            let mut order: Vec<usize> = (0..p.assets).collect();
            rng.shuffle(&mut order);
            if halfway {
                order.truncate(p.assets / 3);
            }
            for t in order {
                if run > 0 && rng.f64() < p.missing {
                    continue;
                }
                if run > 0 && rng.f64() < p.churn {
                    s.versions[t] += 1;
                }
                s.clock += 1;
                s.event_no += 1;
                let cols: Vec<_> = (0..columns)
                    .map(|c| json!({"name": format!("c{c}"), "type": if c % 2 == 0 { "text" } else { "bigint" }}))
                    .collect();
                let ev = json!({
                    "event_id": format!("{}-e{}", s.name, s.event_no),
                    "source": s.name, "run_id": run_id, "status": "running",
                    "emitted_at": at(s.clock),
                    "asset": {
                        "database": format!("db{}", t % 3), "schema": "public", "table": format!("t{t:05}"),
                        "comment": format!("v{}", s.versions[t]), "columns": cols,
                        "stats": {"row_count": rng.u64(0..1_000_000)}
                    }
                })
                .to_string();
                if rng.f64() < p.redeliver {
                    evs.push(ev.clone());
                }
                evs.push(ev);
                if rng.f64() < p.bad {
                    evs.push(format!("{{\"event_id\": \"broken-{}\", \"source\": ", s.event_no));
                }
            }
            s.clock += 1;
            s.event_no += 1;
            evs.push(
                json!({"event_id": format!("{}-e{}", s.name, s.event_no), "source": s.name, "run_id": run_id, "status": "completed", "emitted_at": at(s.clock)})
                    .to_string(),
            );
            pending.push(evs);
        }
        let mut cursors = vec![0usize; pending.len()];
        loop {
            let live: Vec<usize> = (0..pending.len()).filter(|&i| cursors[i] < pending[i].len()).collect();
            if live.is_empty() {
                break;
            }
            let i = live[rng.usize(0..live.len())];
            let take = rng.usize(1..=16).min(pending[i].len() - cursors[i]);
            if run >= p.skip_runs {
                for line in &pending[i][cursors[i]..cursors[i] + take] {
                    out.write_all(line.as_bytes())?;
                    out.write_all(b"\n")?;
                    lines += 1;
                }
            }
            cursors[i] += take;
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_from_zero_to_one() {
        assert_eq!(share("0.02"), Ok(0.02));
        assert_eq!(share("1"), Ok(1.0));
        for bad in ["2", "-0.1", "NaN", "ten"] {
            assert!(share(bad).unwrap_err().contains(bad), "{bad}");
        }
    }

    /// Benchmarks and the issues that set their targets name events by `--payload`: a stream
    /// of "1.2 KB events" must be one.
    #[test]
    fn a_running_event_is_the_size_asked_for() {
        for payload in [600, 1024, 1200, 4096] {
            let p = GenParams { runs: 1, bad: 0.0, redeliver: 0.0, payload, ..GenParams::default() };
            let mut out = Vec::new();
            generate(&p, &mut out).unwrap();
            let running: Vec<usize> = out
                .split(|b| *b == b'\n')
                .filter(|l| l.windows(9).any(|w| w == b"\"running\""))
                .map(<[u8]>::len)
                .collect();
            let mean = running.iter().sum::<usize>() / running.len();
            assert!(mean.abs_diff(payload) <= 40, "--payload {payload}: lines of {mean} bytes on average");
        }
    }
}
