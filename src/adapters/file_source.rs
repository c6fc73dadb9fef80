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
    /// The offset `partial` starts at (it may hold less than was read: an overlong line is cut).
    partial_start: u64,
    watermark: Arc<Watermark<u64>>,
    state: StateStore,
    checkpoint_key: String,
    max_line: usize,
    /// The inode of the file read, to tell a replaced file (rotation by rename) from this one.
    inode: u64,
    /// Whether [`FileSource::rotation`] has been reported, so it is logged once, not per poll.
    rotation_reported: bool,
}

impl FileSource {
    /// Opens `path` at its checkpoint. `max_line` bounds how much of an overlong line is kept
    /// (it will be rejected as too large anyway).
    pub fn open(name: String, path: &Path, follow: bool, state: StateStore, max_line: usize) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let checkpoint_key = format!("file:{}", canonical.display());
        let meta = file.metadata().map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (len, inode) = (meta.len(), std::os::unix::fs::MetadataExt::ino(&meta));
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
            partial_start: offset,
            watermark: Watermark::new(),
            state,
            checkpoint_key,
            max_line: max_line.saturating_add(1),
            inode,
            rotation_reported: false,
        })
    }

    /// Why what is written at the path now is not being read, if it is not: the file was
    /// truncated below the position read (`copytruncate`) or another file took its name
    /// (rotation by rename). Followed reading stays with the file it opened, as it grows.
    fn rotation(&self) -> Option<String> {
        let meta = std::fs::metadata(&self.path).ok()?;
        let replaced = std::os::unix::fs::MetadataExt::ino(&meta) != self.inode;
        (replaced || meta.len() < self.offset).then(|| {
            format!(
                "{} was {} while followed: rotation is not followed, and what is written there now is not read. \
                 Restart the service to read it (a file shorter than its checkpoint is read from its start, a longer \
                 one from the checkpoint), or follow the file the crawler keeps appending to",
                self.path.display(),
                if replaced { "replaced by another file" } else { "truncated below the position read" },
            )
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
        let mut start = self.partial_start;
        let (follow, max_line) = (self.follow, self.max_line);
        let path = self.path.clone();
        let (reader, partial, start, offset, read) = tokio::task::spawn_blocking(move || {
            let mut lines = Vec::new();
            let mut eof = false;
            while lines.len() < max {
                if partial.is_empty() {
                    start = offset;
                }
                // Straight from the reader's buffer to the line: `read_until` into a fresh Vec
                // grew it by doubling (about eight reallocations for a 1 KiB line), then the
                // bytes were copied again into `partial`.
                let chunk = match reader.fill_buf() {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        return Err(BackendError::transient(format!("file {}", path.display()), "read", e));
                    }
                };
                if chunk.is_empty() {
                    eof = true;
                    if !follow && !partial.is_empty() {
                        // The last line of a finished file may lack its newline.
                        lines.push((start, std::mem::take(&mut partial), offset));
                    }
                    break;
                }
                let (taken, complete) = match memchr::memchr(b'\n', chunk) {
                    Some(at) => (at + 1, true),
                    None => (chunk.len(), false),
                };
                if partial.len() < max_line {
                    partial.extend_from_slice(&chunk[..taken.min(max_line - partial.len())]);
                }
                reader.consume(taken);
                offset += taken as u64;
                if complete {
                    let mut line = std::mem::take(&mut partial);
                    while matches!(line.last(), Some(b'\n' | b'\r')) {
                        line.pop();
                    }
                    lines.push((start, line, offset));
                }
            }
            Ok((reader, partial, start, offset, Read { lines, eof }))
        })
        .await
        .map_err(|e| BackendError::transient("file source", "read", e))??;
        self.reader = Some(reader);
        self.partial = partial;
        self.partial_start = start;
        self.offset = offset;
        if read.lines.is_empty() {
            if read.eof && self.follow && !self.rotation_reported {
                if let Some(why) = self.rotation() {
                    tracing::warn!(source = %self.name, "{why}");
                    self.rotation_reported = true;
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Every message a source gives until it has nothing more: (bytes, start offset), each
    /// acknowledged.
    async fn read_all(source: &mut FileSource) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        loop {
            match source.pull(700).await.unwrap() {
                Pull::Messages(messages) => {
                    for m in messages {
                        out.push((m.bytes, m.origin.offset.parse().unwrap()));
                        m.ack.done();
                    }
                }
                Pull::Idle | Pull::Drained => return out,
                Pull::Refused(why) => panic!("refused: {why}"),
            }
        }
    }

    fn source(dir: &Path, file: &Path, follow: bool, max_line: usize) -> FileSource {
        let state = StateStore::open(&dir.join("state")).unwrap();
        FileSource::open("src".into(), file, follow, state, max_line).unwrap()
    }

    // The reader's buffer is 1 MiB: lines of every length up to 40 KiB over 3 MiB cross its
    // refills at every place, and each must come out whole, at its own offset.
    #[tokio::test]
    async fn lines_across_the_buffer_refills_keep_their_bytes_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let (mut text, mut expected) = (Vec::new(), Vec::new());
        let mut i = 0usize;
        while text.len() < 3 << 20 {
            let line: Vec<u8> = format!("{{\"n\":{i},\"pad\":\"")
                .into_bytes()
                .into_iter()
                .chain(std::iter::repeat_n(b'a' + (i % 26) as u8, (i * 7919) % 40_000))
                .chain(*b"\"}")
                .collect();
            expected.push((line.clone(), text.len() as u64));
            text.extend_from_slice(&line);
            // Some lines end in CRLF, and blank lines carry nothing.
            text.extend_from_slice(if i % 5 == 0 { b"\r\n" } else { b"\n" });
            if i % 11 == 0 {
                text.extend_from_slice(b"\n");
            }
            i += 1;
        }
        // The file's last line, without its newline, still counts once the file is finished.
        expected.push((b"{\"last\":true}".to_vec(), text.len() as u64));
        text.extend_from_slice(b"{\"last\":true}");
        std::fs::write(&path, &text).unwrap();
        let got = read_all(&mut source(dir.path(), &path, false, 1 << 20)).await;
        assert_eq!(got.len(), expected.len());
        for (n, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(g == e, "line {n}: {} bytes at {}, expected {} bytes at {}", g.0.len(), g.1, e.0.len(), e.1);
        }
    }

    // An overlong line is cut one byte past the bound (decode then rejects it as too large)
    // without taking any of the next line with it.
    #[tokio::test]
    async fn an_overlong_line_is_cut_past_the_bound_and_the_next_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let long = vec![b'x'; 3 << 20];
        let mut text = long.clone();
        text.extend_from_slice(b"\n{\"next\":1}\n");
        std::fs::write(&path, &text).unwrap();
        let got = read_all(&mut source(dir.path(), &path, false, 100)).await;
        assert_eq!(got, vec![(vec![b'x'; 101], 0), (b"{\"next\":1}".to_vec(), long.len() as u64 + 1)]);
    }

    // Followed reading stays with the file it opened; a truncated or replaced one is reported
    // (it was a silent stall), and a file that only grew is not.
    #[tokio::test]
    async fn a_followed_file_truncated_or_replaced_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n").unwrap();
        let mut src = source(dir.path(), &path, true, 1 << 20);
        assert_eq!(read_all(&mut src).await.len(), 2);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"c\":3}\n").unwrap();
        assert_eq!(src.rotation(), None, "a file that grew is the same file");
        assert_eq!(read_all(&mut src).await.len(), 1);
        std::fs::write(&path, b"{\"d\":4}\n").unwrap();
        assert!(src.rotation().is_some_and(|why| why.contains("truncated")), "{:?}", src.rotation());

        let mut src = source(&dir.path().join("second"), &path, true, 1 << 20);
        assert_eq!(read_all(&mut src).await.len(), 1);
        std::fs::rename(&path, dir.path().join("in.jsonl.1")).unwrap();
        std::fs::write(&path, b"{\"e\":5}\n{\"f\":6}\n").unwrap();
        assert!(src.rotation().is_some_and(|why| why.contains("replaced")), "{:?}", src.rotation());
    }

    // A followed file's last line may still be being written: it is held until its newline.
    #[tokio::test]
    async fn a_followed_file_holds_a_partial_line_until_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":").unwrap();
        let mut src = source(dir.path(), &path, true, 1 << 20);
        assert_eq!(read_all(&mut src).await, vec![(b"{\"a\":1}".to_vec(), 0)]);
        assert!(read_all(&mut src).await.is_empty());
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"2}\n").unwrap();
        assert_eq!(read_all(&mut src).await, vec![(b"{\"b\":2}".to_vec(), 8)]);
    }
}
