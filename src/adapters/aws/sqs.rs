//! SQS: the `sqs` sink (SendMessageBatch, 10 entries and 256 KiB a call, failed entries retried),
//! the `sqs` source (long polling, batch deletes after ack, visibility extended while a message
//! is in flight), and a queue read back as a dead-letter store for redrive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assetflow_actors::decision::{DeadLetter, Origin};
use assetflow_actors::envelope::{Ack, AckSink};
use assetflow_actors::ports::{
    BackendError, BackendResult, DeadLetterStore, Pull, RawMessage, Sink, SinkRecord, Source,
};
use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue,
    QueueAttributeName, SendMessageBatchRequestEntry,
};

use super::{Aws, RequestCounter, build_error, sdk_error};

const SVC: &str = "sqs";
/// SendMessageBatch and DeleteMessageBatch take at most 10 entries.
pub const MAX_ENTRIES: usize = 10;
/// A whole SendMessageBatch request (all bodies and attributes) must stay within 256 KiB.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Records per sink call: ten SendMessageBatch requests at most.
pub const MAX_CALL_RECORDS: usize = 10 * MAX_ENTRIES;

/// Splits records into SendMessageBatch calls: at most 10 entries and 256 KiB of payload each.
/// A record too large for any batch on its own is returned apart, to be failed for good.
pub fn plan_batches(records: &[SinkRecord]) -> (Vec<Vec<usize>>, Vec<usize>) {
    let mut batches = Vec::new();
    let mut too_large = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut bytes = 0;
    for (i, r) in records.iter().enumerate() {
        let size = entry_size(r);
        if size > MAX_BATCH_BYTES {
            too_large.push(i);
            continue;
        }
        if cur.len() == MAX_ENTRIES || bytes + size > MAX_BATCH_BYTES {
            batches.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        cur.push(i);
        bytes += size;
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    (batches, too_large)
}

/// What an entry counts toward the 256 KiB limit: its body and its attributes.
fn entry_size(r: &SinkRecord) -> usize {
    r.payload.len()
        + "decision_id".len()
        + r.decision_id.len()
        + 6
        + r.event_id.as_ref().map_or(0, |e| "event_id".len() + e.len() + 6)
}

fn attr(v: &str) -> Result<MessageAttributeValue, BackendError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .map_err(|e| build_error(SVC, "SendMessageBatch", e))
}

/// Fails unless the queue exists and answers: a start-up check, so that a wrong `queue_url` is
/// one clear error rather than a source retrying forever.
pub async fn check_queue(aws: &Aws, queue_url: &str) -> BackendResult<()> {
    aws.requests.hit(SVC, "GetQueueAttributes");
    aws_sdk_sqs::Client::new(&aws.sdk)
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .map(drop)
        .map_err(|e| sdk_error(SVC, "GetQueueAttributes", e))
}

pub struct SqsSink {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    fifo: bool,
    requests: RequestCounter,
}

impl SqsSink {
    pub fn new(aws: &Aws, queue_url: &str) -> Self {
        SqsSink {
            client: aws_sdk_sqs::Client::new(&aws.sdk),
            queue_url: queue_url.to_owned(),
            fifo: queue_url.ends_with(".fifo"),
            requests: aws.requests.clone(),
        }
    }

    /// Sends one planned batch until every entry is in. Not a second retry policy: a
    /// SendMessageBatch can succeed for some entries and refuse others, and only the refused
    /// ones are sent again (as DynamoDB's unprocessed keys are), so that a partial failure does
    /// not publish the rest twice. Entries that keep being refused become a transient error,
    /// and the caller's `[retry]` policy takes over.
    async fn send_planned(&self, records: &[SinkRecord], batch: Vec<usize>) -> BackendResult<()> {
        let mut todo = batch;
        let mut round = 0u32;
        while !todo.is_empty() {
            round += 1;
            let failed = self.send_batch(records, &todo).await?;
            if failed.is_empty() {
                break;
            }
            if round >= 5 {
                return Err(BackendError::transient(
                    SVC,
                    "SendMessageBatch",
                    format!("{} entries kept failing on {}", failed.len(), self.queue_url),
                ));
            }
            tracing::warn!(queue = %self.queue_url, failed = failed.len(), "some entries of a batch failed; sending them again");
            tokio::time::sleep(Duration::from_millis(50 * u64::from(round))).await;
            todo = failed;
        }
        Ok(())
    }

    /// Sends one planned batch; returns the indexes (into `records`) of entries that failed
    /// retryably, or an error for a failure retrying cannot fix.
    async fn send_batch(&self, records: &[SinkRecord], batch: &[usize]) -> BackendResult<Vec<usize>> {
        let mut entries = Vec::with_capacity(batch.len());
        for &i in batch {
            let r = &records[i];
            let body = String::from_utf8_lossy(&r.payload).into_owned();
            let mut e = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .message_attributes("decision_id", attr(&r.decision_id)?);
            if let Some(ev) = &r.event_id {
                e = e.message_attributes("event_id", attr(ev)?);
            }
            if self.fifo {
                // Per-asset order within the queue, and SQS's own de-duplication by decision.
                e = e.message_group_id(&r.key).message_deduplication_id(&r.decision_id);
            }
            entries.push(e.build().map_err(|e| build_error(SVC, "SendMessageBatch", e))?);
        }
        self.requests.hit(SVC, "SendMessageBatch");
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_error(SVC, "SendMessageBatch", e))?;
        let mut retry = Vec::new();
        for f in out.failed() {
            let idx: usize = f.id().parse().unwrap_or(usize::MAX);
            if f.sender_fault() {
                return Err(BackendError::permanent(
                    SVC,
                    "SendMessageBatch",
                    format!(
                        "{} rejected entry {}: {} {}",
                        self.queue_url,
                        f.id(),
                        f.code(),
                        f.message().unwrap_or_default()
                    ),
                ));
            }
            if idx < records.len() {
                retry.push(idx);
            }
        }
        Ok(retry)
    }
}

#[async_trait]
impl Sink for SqsSink {
    async fn send(&self, records: &[SinkRecord]) -> BackendResult<()> {
        let (batches, too_large) = plan_batches(records);
        if let Some(&i) = too_large.first() {
            return Err(BackendError::permanent(
                SVC,
                "SendMessageBatch",
                format!(
                    "message {} is {} bytes, over SQS's 256 KiB limit",
                    records[i].decision_id,
                    records[i].payload.len()
                ),
            ));
        }
        // A standard queue promises no order, so a call's requests go out together; a FIFO
        // queue's go one after another, in the order the records came.
        if self.fifo {
            for batch in batches {
                self.send_planned(records, batch).await?;
            }
        } else {
            futures_util::future::try_join_all(batches.into_iter().map(|b| self.send_planned(records, b))).await?;
        }
        Ok(())
    }

    /// At most [`MAX_CALL_RECORDS`] a call: one attempt is then at most ten requests (sent
    /// together to a standard queue), however long the producer's queue grew meanwhile.
    fn max_batch(&self) -> usize {
        MAX_CALL_RECORDS
    }
}

/// Done receipt handles, waiting for a DeleteMessageBatch.
#[derive(Default)]
struct Receipts {
    /// seq -> (receipt handle, read at)
    in_flight: HashMap<u64, (String, Instant)>,
    done: Vec<String>,
    next: u64,
}

struct ReceiptSink(Mutex<Receipts>);

impl AckSink for ReceiptSink {
    fn done(&self, seq: u64) {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((handle, _)) = r.in_flight.remove(&seq) {
            r.done.push(handle);
        }
    }
}

/// The `sqs` source. SQS has no order and no partitions: each message is deleted once done,
/// independently; a message never deleted comes back after its visibility timeout (and, past
/// the queue's maxReceiveCount, goes to the queue's own DLQ).
pub struct SqsSource {
    name: String,
    client: aws_sdk_sqs::Client,
    queue_url: String,
    receipts: Arc<ReceiptSink>,
    wait_seconds: i32,
    visibility: Duration,
    /// Stop once a receive comes back empty (finite runs, tests); default: keep polling.
    stop_when_empty: bool,
    requests: RequestCounter,
}

impl SqsSource {
    pub fn new(aws: &Aws, name: String, queue_url: &str, wait_seconds: i32, stop_when_empty: bool) -> Self {
        SqsSource {
            name,
            client: aws_sdk_sqs::Client::new(&aws.sdk),
            queue_url: queue_url.to_owned(),
            receipts: Arc::new(ReceiptSink(Mutex::new(Receipts::default()))),
            wait_seconds,
            visibility: Duration::from_secs(30),
            stop_when_empty,
            requests: aws.requests.clone(),
        }
    }

    async fn receive(&self, max: usize) -> BackendResult<Vec<aws_sdk_sqs::types::Message>> {
        self.requests.hit(SVC, "ReceiveMessage");
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, MAX_ENTRIES) as i32)
            .wait_time_seconds(self.wait_seconds)
            .visibility_timeout(self.visibility.as_secs() as i32)
            .send()
            .await
            .map_err(|e| sdk_error(SVC, "ReceiveMessage", e))?;
        Ok(out.messages().to_vec())
    }

    /// Whether the queue holds no message at all: none visible, in flight or delayed.
    async fn holds_nothing(&self) -> BackendResult<bool> {
        let counts = [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ];
        self.requests.hit(SVC, "GetQueueAttributes");
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .set_attribute_names(Some(counts.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error(SVC, "GetQueueAttributes", e))?;
        let attrs = out.attributes();
        Ok(counts.iter().all(|c| attrs.and_then(|a| a.get(c)).is_none_or(|n| n.trim() == "0")))
    }

    /// Gives messages still in flight another visibility period, so that a slow pipeline does
    /// not see them re-delivered to another consumer meanwhile.
    async fn extend_visibility(&self) -> BackendResult<()> {
        let stale: Vec<(u64, String)> = {
            let mut r = self.receipts.0.lock().unwrap_or_else(|e| e.into_inner());
            let half = self.visibility / 2;
            let now = Instant::now();
            r.in_flight
                .iter_mut()
                .filter(|(_, (_, at))| now.duration_since(*at) >= half)
                .map(|(seq, (h, at))| {
                    *at = now;
                    (*seq, h.clone())
                })
                .collect()
        };
        for chunk in stale.chunks(MAX_ENTRIES) {
            let entries = chunk
                .iter()
                .map(|(seq, h)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(seq.to_string())
                        .receipt_handle(h)
                        .visibility_timeout(self.visibility.as_secs() as i32)
                        .build()
                        .map_err(|e| build_error(SVC, "ChangeMessageVisibilityBatch", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.requests.hit(SVC, "ChangeMessageVisibilityBatch");
            self.client
                .change_message_visibility_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_error(SVC, "ChangeMessageVisibilityBatch", e))?;
        }
        Ok(())
    }
}

/// Deletes done messages, 10 per call.
async fn delete_done(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    receipts: &ReceiptSink,
    requests: &RequestCounter,
) -> BackendResult<()> {
    let done = std::mem::take(&mut receipts.0.lock().unwrap_or_else(|e| e.into_inner()).done);
    for (n, chunk) in done.chunks(MAX_ENTRIES).enumerate() {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, h)| DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(h).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| build_error(SVC, "DeleteMessageBatch", e))?;
        requests.hit(SVC, "DeleteMessageBatch");
        if let Err(e) = client.delete_message_batch().queue_url(queue_url).set_entries(Some(entries)).send().await {
            // Put back what was not deleted; it is deleted on the next commit.
            let mut r = receipts.0.lock().unwrap_or_else(|e| e.into_inner());
            r.done.extend(done[n * MAX_ENTRIES..].iter().cloned());
            return Err(sdk_error(SVC, "DeleteMessageBatch", e));
        }
    }
    Ok(())
}

#[async_trait]
impl Source for SqsSource {
    async fn pull(&mut self, max: usize) -> BackendResult<Pull> {
        let messages = self.receive(max).await?;
        if messages.is_empty() {
            // An empty receive is not the end of the queue: a FIFO queue holds back a message
            // group while one of its messages is in flight (ours, not yet deleted), and a
            // short poll samples only some of the servers. A finite run stops once nothing it
            // read is unacknowledged and the queue says it holds nothing, visible or not.
            let drained = self.stop_when_empty && self.outstanding() == 0 && self.holds_nothing().await?;
            return Ok(if drained { Pull::Drained } else { Pull::Idle });
        }
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let Some(handle) = m.receipt_handle() else { continue };
            let seq = {
                let mut r = self.receipts.0.lock().unwrap_or_else(|e| e.into_inner());
                let seq = r.next;
                r.next += 1;
                r.in_flight.insert(seq, (handle.to_owned(), Instant::now()));
                seq
            };
            let origin = Origin {
                source: self.name.clone(),
                partition: self.queue_url.clone(),
                offset: m.message_id().unwrap_or_default().to_owned(),
            };
            let ack = Ack::new(self.receipts.clone(), seq);
            out.push(RawMessage::new(m.body().unwrap_or_default().as_bytes().to_vec(), origin, ack));
        }
        Ok(Pull::Messages(out))
    }

    async fn commit(&mut self) -> BackendResult<()> {
        delete_done(&self.client, &self.queue_url, &self.receipts, &self.requests).await?;
        self.extend_visibility().await
    }

    fn outstanding(&self) -> usize {
        let r = self.receipts.0.lock().unwrap_or_else(|e| e.into_inner());
        r.in_flight.len() + r.done.len()
    }
}

/// A queue of dead letters (the `sqs` dead-letter sink) read back for redrive. It reads at most
/// as many messages as the queue held when redrive began, so the dead letters redrive itself
/// writes wait for the next redrive. Parked dead letters are sent to a parking queue (by
/// default the dead-letter queue's name with `-parked`) before they are deleted.
pub struct SqsDeadLetters {
    source: SqsSource,
    budget: u64,
    parked_url: String,
}

/// The parking queue of a dead-letter queue: `.../dead` parks in `.../dead-parked` (and
/// `.../dead.fifo` in `.../dead-parked.fifo`).
pub fn parked_queue_url(queue_url: &str) -> String {
    match queue_url.strip_suffix(".fifo") {
        Some(base) => format!("{base}-parked.fifo"),
        None => format!("{queue_url}-parked"),
    }
}

impl SqsDeadLetters {
    /// Opens the dead-letter queue and checks its parking queue exists (`parked_url`, or the
    /// default beside it).
    pub async fn open(aws: &Aws, queue_url: &str, parked_url: Option<&str>) -> BackendResult<Self> {
        let parked_url = parked_url.map_or_else(|| parked_queue_url(queue_url), str::to_owned);
        let source = SqsSource::new(aws, "redrive".into(), queue_url, 1, true);
        source.requests.hit(SVC, "GetQueueAttributes");
        source.client.get_queue_attributes().queue_url(&parked_url).send().await.map_err(|e| {
            let e = sdk_error(SVC, "GetQueueAttributes", e);
            BackendError::new(
                SVC,
                "GetQueueAttributes",
                format!("the parking queue {parked_url} cannot be read ({}): create it (scripts/aws-local-setup.sh does locally) or name another with redrive.parked_queue_url", e.message),
                e.kind,
            )
        })?;
        source.requests.hit(SVC, "GetQueueAttributes");
        let attrs = source
            .client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| sdk_error(SVC, "GetQueueAttributes", e))?;
        let budget = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok(SqsDeadLetters { source, budget, parked_url })
    }
}

#[async_trait]
impl DeadLetterStore for SqsDeadLetters {
    async fn next(&mut self, max: usize) -> BackendResult<Option<Vec<(DeadLetter, Ack)>>> {
        if self.budget == 0 {
            return Ok(None);
        }
        let Pull::Messages(msgs) = self.source.pull(max.min(self.budget as usize)).await? else { return Ok(None) };
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            self.budget = self.budget.saturating_sub(1);
            match serde_json::from_slice::<DeadLetter>(&m.bytes) {
                Ok(dl) => out.push((dl, m.ack)),
                Err(e) => {
                    tracing::warn!(queue = %self.source.queue_url, "skipping a message that is not a dead letter: {e}");
                    m.ack.done();
                }
            }
        }
        Ok(Some(out))
    }

    async fn commit(&mut self) -> BackendResult<()> {
        delete_done(&self.source.client, &self.source.queue_url, &self.source.receipts, &self.source.requests).await
    }

    fn outstanding(&self) -> usize {
        self.source.outstanding()
    }

    async fn park(&mut self, letter: &DeadLetter) -> BackendResult<()> {
        let body = serde_json::to_string(letter).map_err(|e| BackendError::permanent(SVC, "SendMessage", e))?;
        let mut req = self.source.client.send_message().queue_url(&self.parked_url).message_body(body);
        if self.parked_url.ends_with(".fifo") {
            req = req.message_group_id("parked").message_deduplication_id(&letter.decision_id);
        }
        self.source.requests.hit(SVC, "SendMessage");
        req.send().await.map_err(|e| sdk_error(SVC, "SendMessage", e))?;
        Ok(())
    }

    /// Reads the parking queue without deleting anything: each message received stays hidden
    /// while the pass lasts, so it sees every one once, and is visible again right after.
    async fn parked(&mut self) -> BackendResult<Vec<DeadLetter>> {
        let mut out = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        loop {
            self.source.requests.hit(SVC, "ReceiveMessage");
            let got = self
                .source
                .client
                .receive_message()
                .queue_url(&self.parked_url)
                .max_number_of_messages(10)
                .visibility_timeout(30)
                .wait_time_seconds(0)
                .send()
                .await
                .map_err(|e| sdk_error(SVC, "ReceiveMessage", e))?;
            let messages = got.messages();
            if messages.is_empty() {
                for receipt in seen {
                    self.source.requests.hit(SVC, "ChangeMessageVisibility");
                    let _ = self
                        .source
                        .client
                        .change_message_visibility()
                        .queue_url(&self.parked_url)
                        .receipt_handle(receipt)
                        .visibility_timeout(0)
                        .send()
                        .await;
                }
                return Ok(out);
            }
            seen.extend(messages.iter().filter_map(|m| m.receipt_handle().map(str::to_owned)));
            out.extend(messages.iter().filter_map(|m| serde_json::from_str(m.body()?).ok()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(bytes: usize) -> SinkRecord {
        SinkRecord {
            key: "k".into(),
            decision_id: "d".repeat(32),
            event_id: Some("e".into()),
            payload: vec![b'x'; bytes],
        }
    }

    #[test]
    fn batches_hold_ten_entries_at_most() {
        let records: Vec<SinkRecord> = (0..25).map(|_| rec(100)).collect();
        let (batches, too_large) = plan_batches(&records);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 5]);
        assert!(too_large.is_empty());
    }

    #[test]
    fn batches_stay_within_256_kib() {
        let records: Vec<SinkRecord> = (0..6).map(|_| rec(100 * 1024)).collect();
        let (batches, _) = plan_batches(&records);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 2]);
        for b in &batches {
            assert!(b.iter().map(|&i| entry_size(&records[i])).sum::<usize>() <= MAX_BATCH_BYTES);
        }
    }

    #[test]
    fn an_oversized_record_is_set_apart() {
        let records = vec![rec(10), rec(300 * 1024), rec(10)];
        let (batches, too_large) = plan_batches(&records);
        assert_eq!(too_large, vec![1]);
        assert_eq!(batches, vec![vec![0, 2]]);
    }
}
