//! The dead-letter file as a [`DeadLetterStore`]: redrive reads it from its checkpoint (kept in
//! the embedded store) up to where it ended when redrive began, so the dead letters the redrive
//! itself writes wait for the next one. Parked dead letters are appended (and synced) to a
//! file beside it, `<name>.parked.jsonl`.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use assetflow_actors::decision::DeadLetter;
use assetflow_actors::envelope::{Ack, Watermark};
use assetflow_actors::ports::{BackendError, BackendResult, DeadLetterStore};
use async_trait::async_trait;

use super::state::StateStore;

pub struct DeadLetterFile {
    reader: Option<BufReader<File>>,
    offset: u64,
    end: u64,
    watermark: Arc<Watermark<u64>>,
    state: StateStore,
    checkpoint_key: String,
    label: String,
    parked_path: std::path::PathBuf,
}

/// Where the parked dead letters of the file at `path` go: `out/dead-letter.jsonl` parks in
/// `out/dead-letter.parked.jsonl`.
pub fn parked_path(path: &Path) -> std::path::PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "jsonl".into());
    path.with_file_name(format!("{stem}.parked.{ext}"))
}

impl DeadLetterFile {
    pub fn open(path: &Path, state: StateStore) -> Result<Self, String> {
        let label = format!("dead-letter file {}", path.display());
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let checkpoint_key = format!("redrive:{}", canonical.display());
        let (reader, end) = match File::open(path) {
            Ok(f) => {
                let end = f.metadata().map(|m| m.len()).unwrap_or(0);
                (Some(BufReader::new(f)), end)
            }
            // No dead letters yet: nothing to redrive.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, 0),
            Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
        };
        let saved = state.offset(&checkpoint_key).map_err(|e| e.to_string())?.unwrap_or(0);
        let offset = if saved > end { 0 } else { saved };
        let reader = match reader {
            Some(mut r) => {
                r.seek(SeekFrom::Start(offset)).map_err(|e| format!("cannot seek in {}: {e}", path.display()))?;
                Some(r)
            }
            None => None,
        };
        Ok(DeadLetterFile {
            reader,
            offset,
            end,
            watermark: Watermark::new(),
            state,
            checkpoint_key,
            label,
            parked_path: parked_path(path),
        })
    }
}

#[async_trait]
impl DeadLetterStore for DeadLetterFile {
    async fn next(&mut self, max: usize) -> BackendResult<Option<Vec<(DeadLetter, Ack)>>> {
        let Some(reader) = self.reader.as_mut() else { return Ok(None) };
        let mut out = Vec::new();
        while out.len() < max && self.offset < self.end {
            let mut line = Vec::new();
            let n = reader.read_until(b'\n', &mut line).map_err(|e| BackendError::transient(&self.label, "read", e))?;
            if n == 0 {
                break;
            }
            self.offset += n as u64;
            let ack = self.watermark.register(self.offset);
            match serde_json::from_slice::<DeadLetter>(&line) {
                Ok(dl) => out.push((dl, ack)),
                Err(e) => {
                    if !line.iter().all(u8::is_ascii_whitespace) {
                        tracing::warn!(file = %self.label, offset = self.offset - n as u64, "skipping a line that is not a dead letter: {e}");
                    }
                    ack.done();
                }
            }
        }
        if out.is_empty() && self.offset >= self.end { Ok(None) } else { Ok(Some(out)) }
    }

    async fn commit(&mut self) -> BackendResult<()> {
        self.state.commit_offset(&self.checkpoint_key, &self.watermark).await
    }

    fn outstanding(&self) -> usize {
        self.watermark.outstanding()
    }

    async fn park(&mut self, letter: &DeadLetter) -> BackendResult<()> {
        use std::io::Write as _;
        let fail = |e: std::io::Error| BackendError::transient(&self.label, "park", e);
        let mut line = serde_json::to_vec(letter).map_err(|e| BackendError::permanent(&self.label, "park", e))?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.parked_path).map_err(fail)?;
        f.write_all(&line).map_err(fail)?;
        f.sync_data().map_err(fail)
    }

    async fn parked(&mut self) -> BackendResult<Vec<DeadLetter>> {
        let text = match std::fs::read_to_string(&self.parked_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(BackendError::transient(&self.label, "read parked", e)),
        };
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }
}
