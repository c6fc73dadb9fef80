//! The `file` source: a JSON Lines file read from its checkpointed byte position, optionally
//! followed as it grows. The checkpoint is the offset after the last line whose effects are all
//! durable, kept in the embedded store.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use assetflow_actors::decision::Origin;
use assetflow_actors::envelope::Watermark;
use assetflow_actors::ports::{BackendError, BackendResult, Pull, RawMessage, Source};
use async_trait::async_trait;

use super::state::StateStore;

pub struct FileSource {
    name: String,
    path: PathBuf,
    /// The path as configured: the partition named in dead letters, stable if the folder moves.
    partition: String,
    follow: bool,
    reader: Option<BufReader<File>>,
    /// Offset of the next byte to read.
    offset: u64,
    /// A line still being written (follow mode), kept until its newline arrives.
    partial: Vec<u8>,
    watermark: Arc<Watermark<u64>>,
    state: StateStore,
    checkpoint_key: String,
    max_line: usize,
}

impl FileSource {
    /// Opens `path` at its checkpoint. `max_line` bounds how much of an overlong line is kept
    /// (it will be rejected as too large anyway).
    pub fn open(name: String, path: &Path, follow: bool, state: StateStore, max_line: usize) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let checkpoint_key = format!("file:{}", canonical.display());
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let saved = state.offset(&checkpoint_key).map_err(|e| e.to_string())?.unwrap_or(0);
        let offset = if saved > len {
            tracing::warn!(file = %path.display(), saved, len, "file is shorter than its checkpoint (replaced or truncated?); reading it from the start");
            0
        } else {
            saved
        };
        let mut reader = BufReader::with_capacity(1 << 20, file);
        reader.seek(SeekFrom::Start(offset)).map_err(|e| format!("cannot seek in {}: {e}", path.display()))?;
        if offset > 0 {
            tracing::info!(file = %path.display(), offset, "resuming from checkpoint");
        }
        Ok(FileSource {
            name,
            path: canonical,
            partition: path.display().to_string(),
            follow,
            reader: Some(reader),
            offset,
            partial: Vec::new(),
            watermark: Watermark::new(),
            state,
            checkpoint_key,
            max_line: max_line.saturating_add(1),
        })
    }
}

struct Read {
    lines: Vec<(u64, Vec<u8>, u64)>,
    eof: bool,
}

#[async_trait]
impl Source for FileSource {
    async fn pull(&mut self, max: usize) -> BackendResult<Pull> {
        let Some(mut reader) = self.reader.take() else {
            return Ok(Pull::Drained);
        };
        let mut offset = self.offset;
        let mut partial = std::mem::take(&mut self.partial);
        let (follow, max_line) = (self.follow, self.max_line);
        let path = self.path.clone();
        let (reader, partial, offset, read) = tokio::task::spawn_blocking(move || {
            let mut lines = Vec::new();
            let mut eof = false;
            while lines.len() < max {
                let start = offset - partial.len() as u64;
                let mut buf = Vec::new();
                let n = match reader.read_until(b'\n', &mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        return Err(BackendError::transient(format!("file {}", path.display()), "read", e));
                    }
                };
                offset += n as u64;
                if n == 0 {
                    eof = true;
                    if !follow && !partial.is_empty() {
                        // The last line of a finished file may lack its newline.
                        lines.push((start, std::mem::take(&mut partial), offset));
                    }
                    break;
                }
                let complete = buf.last() == Some(&b'\n');
                if partial.len() < max_line {
                    partial.extend_from_slice(&buf[..buf.len().min(max_line)]);
                }
                if complete {
                    let mut line = std::mem::take(&mut partial);
                    while matches!(line.last(), Some(b'\n' | b'\r')) {
                        line.pop();
                    }
                    lines.push((start, line, offset));
                }
            }
            Ok((reader, partial, offset, Read { lines, eof }))
        })
        .await
        .map_err(|e| BackendError::transient("file source", "read", e))??;
        self.reader = Some(reader);
        self.partial = partial;
        self.offset = offset;
        if read.lines.is_empty() {
            return Ok(if read.eof && !self.follow { Pull::Drained } else { Pull::Idle });
        }
        let mut out = Vec::with_capacity(read.lines.len());
        for (start, bytes, end) in read.lines {
            let ack = self.watermark.register(end);
            if bytes.iter().all(u8::is_ascii_whitespace) {
                // Blank lines carry nothing: acknowledged at once.
                ack.done();
                continue;
            }
            let origin =
                Origin { source: self.name.clone(), partition: self.partition.clone(), offset: start.to_string() };
            out.push(RawMessage::new(bytes, origin, ack));
        }
        Ok(Pull::Messages(out))
    }

    async fn commit(&mut self) -> BackendResult<()> {
        self.state.commit_offset(&self.checkpoint_key, &self.watermark).await
    }

    fn outstanding(&self) -> usize {
        self.watermark.outstanding()
    }

    /// Bytes of the file not yet read.
    fn lag(&self) -> Option<u64> {
        let len = std::fs::metadata(&self.path).ok()?.len();
        Some(len.saturating_sub(self.offset))
    }
}

/// The `stdin` source: JSON Lines on standard input, no checkpoint (a pipe cannot be re-read).
pub struct StdinSource {
    name: String,
    reader: tokio::io::BufReader<tokio::io::Stdin>,
    line_no: u64,
    watermark: Arc<Watermark<u64>>,
}

impl StdinSource {
    pub fn new(name: String) -> Self {
        StdinSource {
            name,
            reader: tokio::io::BufReader::new(tokio::io::stdin()),
            line_no: 0,
            watermark: Watermark::new(),
        }
    }
}

#[async_trait]
impl Source for StdinSource {
    async fn pull(&mut self, _max: usize) -> BackendResult<Pull> {
        use tokio::io::AsyncBufReadExt;
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line).await {
            Ok(0) => Ok(Pull::Drained),
            Ok(_) => {
                self.line_no += 1;
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                let ack = self.watermark.register(self.line_no);
                if line.iter().all(u8::is_ascii_whitespace) {
                    ack.done();
                    return Ok(Pull::Messages(Vec::new()));
                }
                let origin =
                    Origin { source: self.name.clone(), partition: "stdin".into(), offset: self.line_no.to_string() };
                Ok(Pull::Messages(vec![RawMessage::new(line, origin, ack)]))
            }
            Err(e) => Err(BackendError::transient("stdin", "read", e)),
        }
    }

    async fn commit(&mut self) -> BackendResult<()> {
        let _ = self.watermark.take_ready();
        Ok(())
    }

    fn outstanding(&self) -> usize {
        self.watermark.outstanding()
    }
}
