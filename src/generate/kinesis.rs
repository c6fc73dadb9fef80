//! JSON Lines put on a Kinesis stream, one record per line with the event's `source` as the
//! partition key (so a crawler's run and its completion share a shard, as the ordering contract
//! asks): where `assetflow gen --kinesis-stream …` writes.
//!
//! Lines go out in PutRecords calls of up to 500 records (the API's limit, and under its 5 MiB).
//! PutRecords may accept some records of a call and refuse others (throttling); those are sent
//! again, in their order, after a pause. A retried record lands behind the records that made it,
//! so a `completed` event is never put in a call with other events: everything before it is on
//! the stream first, and it cannot overtake the events of its run.

use std::io::Write;
use std::time::Duration;

use assetflow_actors::ports::FailureKind;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

use super::line_buffer::LineBuffer;
use crate::adapters::aws::{Aws, sdk_error};

const SVC: &str = "kinesis";
/// Records per PutRecords call: the API's limit.
const MAX_RECORDS: usize = 500;
/// Bytes per PutRecords call, under the API's 5 MiB limit (data plus partition keys).
const MAX_BYTES: usize = 4 << 20;
/// Rounds of re-sending refused records before giving up.
const MAX_ROUNDS: u32 = 10;

#[derive(serde::Deserialize)]
struct Routing<'a> {
    #[serde(borrow)]
    source: Option<&'a str>,
    #[serde(borrow)]
    status: Option<&'a str>,
}

/// A `Write` that puts each complete line on the stream. Call [`KinesisLines::finish`] at the end.
pub struct KinesisLines {
    client: aws_sdk_kinesis::Client,
    stream: String,
    runtime: tokio::runtime::Runtime,
    lines: LineBuffer,
    batch: Vec<PutRecordsRequestEntry>,
    batch_bytes: usize,
    /// Records the stream has taken.
    records: u64,
    /// PutRecords calls made.
    calls: u64,
}

impl KinesisLines {
    /// Checks the stream exists (so a typo fails before anything is generated).
    pub fn new(aws: &Aws, stream: &str, runtime: tokio::runtime::Runtime) -> Result<Self, String> {
        let client = aws_sdk_kinesis::Client::new(&aws.sdk);
        runtime.block_on(client.describe_stream_summary().stream_name(stream).send()).map_err(|e| {
            format!(
                "cannot use Kinesis stream {stream}: {} (create it first; the endpoint and region come from \
                 the [aws] section of --config)",
                sdk_error(SVC, "DescribeStreamSummary", e)
            )
        })?;
        Ok(KinesisLines {
            client,
            stream: stream.to_owned(),
            runtime,
            lines: LineBuffer::default(),
            batch: Vec::new(),
            batch_bytes: 0,
            records: 0,
            calls: 0,
        })
    }

    fn push(&mut self, line: &[u8]) -> std::io::Result<()> {
        if line.is_empty() {
            return Ok(());
        }
        // A malformed line (the generator makes some on purpose) has no source: key "-" (Kinesis
        // refuses an empty partition key).
        let routing = serde_json::from_slice::<Routing>(line).ok();
        let key = routing.as_ref().and_then(|r| r.source).filter(|s| !s.is_empty()).unwrap_or("-");
        let completion = routing.as_ref().and_then(|r| r.status) == Some("completed");
        let entry = PutRecordsRequestEntry::builder()
            .data(Blob::new(line))
            .partition_key(key)
            .build()
            .map_err(|e| std::io::Error::other(format!("building a Kinesis record: {e}")))?;
        let size = line.len() + key.len();
        if completion
            || self.batch.len() == MAX_RECORDS
            || (self.batch_bytes + size > MAX_BYTES && !self.batch.is_empty())
        {
            self.send()?;
        }
        self.batch.push(entry);
        self.batch_bytes += size;
        if completion {
            self.send()?;
        }
        Ok(())
    }

    /// Puts the batch on the stream, sending refused records again until all are taken.
    fn send(&mut self) -> std::io::Result<()> {
        let mut todo = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let mut round = 0;
        while !todo.is_empty() {
            round += 1;
            self.calls += 1;
            let call = self.client.put_records().stream_name(&self.stream).set_records(Some(todo.clone())).send();
            let sent = todo.len();
            let refused: Vec<PutRecordsRequestEntry> = match self.runtime.block_on(call) {
                Ok(out) => {
                    out.records().iter().zip(todo).filter(|(r, _)| r.error_code().is_some()).map(|(_, e)| e).collect()
                }
                Err(e) => {
                    let e = sdk_error(SVC, "PutRecords", e);
                    if e.kind != FailureKind::Transient || round == MAX_ROUNDS {
                        return Err(std::io::Error::other(format!("put records on {}: {e}", self.stream)));
                    }
                    todo
                }
            };
            self.records += (sent - refused.len()) as u64;
            if !refused.is_empty() && round == MAX_ROUNDS {
                return Err(std::io::Error::other(format!(
                    "put records on {}: {} records still refused after {MAX_ROUNDS} tries",
                    self.stream,
                    refused.len()
                )));
            }
            if !refused.is_empty() {
                std::thread::sleep(Duration::from_millis(100 << round.min(5)));
            }
            todo = refused;
        }
        Ok(())
    }

    /// Sends what is left; returns how many records the stream took, in how many PutRecords calls.
    pub fn finish(mut self) -> std::io::Result<(u64, u64)> {
        let last = self.lines.rest();
        self.push(&last)?;
        self.send()?;
        Ok((self.records, self.calls))
    }
}

impl Write for KinesisLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in self.lines.complete(buf).iter() {
            self.push(line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
