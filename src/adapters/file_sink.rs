//! The `file` and `stdout` sinks: JSON Lines, one record per line. A file batch is durable
//! (fsynced) before `send` returns.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use assetflow_actors::ports::{BackendError, BackendResult, Sink, SinkRecord};
use async_trait::async_trait;

pub struct FileSink {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl FileSink {
    pub fn open(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        repair_torn_tail(path).map_err(|e| format!("cannot check {}: {e}", path.display()))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Ok(FileSink { path: path.to_path_buf(), file: Arc::new(Mutex::new(file)) })
    }
}

/// A crash in the middle of a write can leave half a line at the end. That line was never
/// acknowledged, so it will be written again whole: cut the torn part off before appending.
fn repair_torn_tail(path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = OpenOptions::new().read(true).write(true).open(path) else { return Ok(()) };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1))?;
    f.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    // Walk back in chunks to the last newline.
    let mut end = len;
    let mut keep = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            keep = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    tracing::warn!(file = %path.display(), cut = len - keep, "removing a torn last line left by a crash; it will be written again");
    f.set_len(keep)?;
    f.sync_all()
}

fn lines(batch: &[SinkRecord]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(batch.iter().map(|r| r.payload.len() + 1).sum());
    for r in batch {
        buf.extend_from_slice(&r.payload);
        buf.push(b'\n');
    }
    buf
}

#[async_trait]
impl Sink for FileSink {
    async fn send(&self, batch: &[SinkRecord]) -> BackendResult<()> {
        let buf = lines(batch);
        let file = self.file.clone();
        let backend = format!("file sink {}", self.path.display());
        let b2 = backend.clone();
        assetflow_actors::threads::blocking(move || {
            let f = file.lock().unwrap_or_else(|e| e.into_inner());
            let mut w = &*f;
            w.write_all(&buf).map_err(|e| BackendError::transient(&b2, "write", e))?;
            f.sync_data().map_err(|e| BackendError::transient(&b2, "fsync", e))
        })
        .await
        .map_err(|e| BackendError::transient(backend, "write", e))?
    }
}

pub struct StdoutSink;

#[async_trait]
impl Sink for StdoutSink {
    async fn send(&self, batch: &[SinkRecord]) -> BackendResult<()> {
        let buf = lines(batch);
        let mut out = std::io::stdout().lock();
        out.write_all(&buf).and_then(|_| out.flush()).map_err(|e| BackendError::transient("stdout", "write", e))
    }
}
