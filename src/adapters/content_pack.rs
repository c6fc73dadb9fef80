//! The `dir` content store's `packs` layout (the default): the new content of a decisor batch
//! appended to one pack file, `{path}/packs/{pack}.jsonl`, one JSON line per asset key and hash:
//! `{"asset_key":…,"hash":…,"content":{…}}`.
//!
//! Why packs: with one file per asset (the `files` layout) a first crawl, where every asset is
//! new, spent most of its time in the file system making and syncing names. A pack costs one
//! append per batch and one `fdatasync`, which the shards' batches that append while another
//! batch's sync runs share, and a folder sync only when a pack is started.
//!
//! A content ref names the pack and, after `#`, the asset key and hash (each escaped as in the
//! `files` layout): `file:///…/packs/1764650000000-4242-000001.jsonl#pg%2Fdb%2Fs%2Ft@3f2a…`. The
//! line is found by reading the pack (`assetflow content REF`); packs stop growing at
//! [`PACK_BYTES`], so that read stays short. Each process writes packs of its own (the name holds
//! its start time and pid), so a line torn by a crash is only ever the last one of a pack that
//! nothing refers to: content is durable before the control record that points at it is written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use assetflow_actors::ports::{BackendError, BackendResult, ContentPut, ContentStore};
use async_trait::async_trait;

use super::content_dir::{escape, escape_into};
use super::group_sync::GroupSync;

/// A pack past this size is closed and the next batch starts a new one.
pub const PACK_BYTES: u64 = 64 << 20;

/// The `packs` layout of a content folder. Cloning shares the open store.
#[derive(Clone)]
pub struct ContentPacks {
    inner: Arc<Inner>,
}

struct Inner {
    /// `{path}/packs`.
    dir: PathBuf,
    /// `{start millis}-{pid}`: what makes this process's pack names its own.
    prefix: String,
    /// The pack content refs point into now, and the packs open for appends; appends hold this
    /// lock, so lines of two batches never interleave.
    current: Mutex<Current>,
}

struct Current {
    seq: u64,
    /// `file://{pack}#`: the start of every ref into the current pack.
    ref_prefix: String,
    /// The packs appended to since the current one started, open: the current one, and any
    /// older one a batch planned before it started still wrote to.
    open: HashMap<PathBuf, Arc<Pack>>,
    /// Packs whose name is known to be durable (their folder synced after they were made). A
    /// batch that appended to any other pack syncs the folder before it returns, even when
    /// another call made the pack: that call's folder sync may not have happened yet.
    named: HashSet<PathBuf>,
}

/// One pack file, open for appends, whose `fdatasync`s concurrent batches share
/// ([`GroupSync`], as the embedded store's journal does): the shards append one after another,
/// and a batch's sync covers every batch that appended before it began. With a sync per batch,
/// the pack was the file a first crawl on many shards synced most (902 of 2,300 syncs at 16
/// shards, 100k events).
struct Pack {
    file: File,
    /// The pack's length: bytes appended whole, changed only under [`Inner::current`].
    len: AtomicU64,
    /// Turns of appends written and synced.
    syncs: GroupSync,
    /// `fdatasync` calls made, for tests.
    synced_times: AtomicU64,
}

impl Pack {
    fn open(path: &Path) -> std::io::Result<Pack> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = AtomicU64::new(file.metadata()?.len());
        Ok(Pack { file, len, syncs: GroupSync::default(), synced_times: AtomicU64::new(0) })
    }

    /// Whether the pack still has its name. One removed while open (by hand, or its folder
    /// with it) would take every later append with it: the next batch opens the path again,
    /// and makes the pack anew or fails, as it would have with a pack opened per batch.
    fn is_linked(&self) -> bool {
        self.file.metadata().is_ok_and(|m| m.nlink() > 0)
    }

    /// Appends `lines` whole or not at all; returns the append's turn, for
    /// [`sync_through`](Self::sync_through). Called only under [`Inner::current`], so turns
    /// follow the order of the bytes.
    fn append(&self, lines: &[u8]) -> std::io::Result<u64> {
        let len = self.len.load(Ordering::Acquire);
        if let Err(e) = (&self.file).write_all(lines) {
            // A part-written batch (a full disk) would run into the next append's first line
            // and hide it from readers: cut it off, so the retry starts clean.
            let _ = self.file.set_len(len);
            return Err(e);
        }
        self.len.store(len + lines.len() as u64, Ordering::Release);
        Ok(self.syncs.wrote())
    }

    /// Returns once the append of `turn` is durable, by its own sync or another batch's.
    fn sync_through(&self, turn: u64) -> std::io::Result<()> {
        self.syncs.sync_through(turn, || {
            self.synced_times.fetch_add(1, Ordering::Relaxed);
            self.file.sync_data()
        })
    }
}

impl ContentPacks {
    pub fn open(root: &Path) -> Result<Self, String> {
        let dir = root.join("packs");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create the content folder {}: {e}", dir.display()))?;
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let prefix = format!("{millis}-{}", std::process::id());
        let current = Current { seq: 1, ref_prefix: String::new(), open: HashMap::new(), named: HashSet::new() };
        let packs = ContentPacks { inner: Arc::new(Inner { dir, prefix, current: Mutex::new(current) }) };
        packs.start_pack(&mut *packs.inner.current.lock().map_err(|e| e.to_string())?, 1);
        Ok(packs)
    }

    fn fail(&self, op: &str, e: impl std::fmt::Display) -> BackendError {
        BackendError::transient(format!("content packs {}", self.inner.dir.display()), op, e)
    }

    fn pack_path(&self, seq: u64) -> PathBuf {
        self.inner.dir.join(format!("{}-{seq:06}.jsonl", self.inner.prefix))
    }

    fn current_seq(&self) -> u64 {
        self.inner.current.lock().map_or(1, |c| c.seq)
    }

    /// Makes pack `seq` the one new refs point into, and closes the packs before it (a batch
    /// still syncing one keeps it open until it is done).
    fn start_pack(&self, current: &mut Current, seq: u64) {
        current.seq = seq;
        current.ref_prefix = format!("file://{}#", self.pack_path(seq).display());
        current.open.clear();
    }

    /// Appends each pack's lines, then makes them durable: a sync per pack, shared with the
    /// batches that appended meanwhile ([`Pack::sync_through`]), plus a folder sync while a pack
    /// written to is new (its name must survive a crash too).
    fn write_batch(&self, packs: BTreeMap<PathBuf, Vec<u8>>) -> BackendResult<()> {
        let mut unnamed = Vec::new();
        let mut appended = Vec::with_capacity(packs.len());
        {
            let mut current = self.inner.current.lock().map_err(|e| self.fail("append", e))?;
            for (path, lines) in packs {
                let pack = match current.open.get(&path).map(|pack| (pack.is_linked(), Arc::clone(pack))) {
                    Some((true, pack)) => pack,
                    removed => {
                        if removed.is_some() {
                            // Made anew: its name is not durable until the folder is synced.
                            current.named.remove(&path);
                        }
                        let pack = Arc::new(Pack::open(&path).map_err(|e| self.fail("open", e))?);
                        current.open.insert(path.clone(), Arc::clone(&pack));
                        pack
                    }
                };
                if !current.named.contains(&path) {
                    unnamed.push(path.clone());
                }
                let turn = pack.append(&lines).map_err(|e| self.fail("append", e))?;
                appended.push((pack, turn));
            }
            let current_path = self.pack_path(current.seq);
            if current.open.get(&current_path).is_some_and(|p| p.len.load(Ordering::Acquire) >= PACK_BYTES) {
                let next = current.seq + 1;
                self.start_pack(&mut current, next);
            }
        }
        for (pack, turn) in appended {
            pack.sync_through(turn).map_err(|e| self.fail("sync", e))?;
        }
        if !unnamed.is_empty() {
            File::open(&self.inner.dir).and_then(|d| d.sync_all()).map_err(|e| self.fail("sync folder", e))?;
            let mut current = self.inner.current.lock().map_err(|e| self.fail("sync folder", e))?;
            current.named.extend(unnamed);
        }
        Ok(())
    }
}

/// The pack file a ref of this store points into, if it is one.
fn pack_of(content_ref: &str) -> Option<PathBuf> {
    let (path, _) = content_ref.strip_prefix("file://")?.split_once('#')?;
    Some(PathBuf::from(path))
}

/// One pack line. The content is the asset's JSON text as it came, unless it spans lines
/// (pretty-printed JSON from a message source) or is not JSON: then it is re-written compact,
/// or kept as a JSON string, so that every entry stays one line.
fn pack_line(out: &mut Vec<u8>, item: &ContentPut) {
    use serde_json::value::RawValue;
    // Serializing strings and JSON values into a Vec cannot fail.
    out.extend_from_slice(b"{\"asset_key\":");
    let _ = serde_json::to_writer(&mut *out, &item.asset_key);
    out.extend_from_slice(b",\"hash\":");
    let _ = serde_json::to_writer(&mut *out, &item.hash);
    out.extend_from_slice(b",\"content\":");
    // The decisor's content is an asset object it parsed, so it is JSON; parsing it again to
    // make sure costs more than the append. Only its delimiters and line breaks are checked.
    let one_line = !item.body.iter().any(|b| *b == b'\n' || *b == b'\r');
    let object = item.body.first() == Some(&b'{') && item.body.last() == Some(&b'}');
    if one_line && (object || serde_json::from_slice::<&RawValue>(&item.body).is_ok()) {
        out.extend_from_slice(&item.body);
    } else if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&item.body) {
        let _ = serde_json::to_writer(&mut *out, &value);
    } else {
        let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(&item.body));
    }
    out.extend_from_slice(b"}\n");
}

#[async_trait]
impl ContentStore for ContentPacks {
    /// Called once per new asset while a batch is planned, so it only copies the current
    /// pack's prefix and escapes the key and hash.
    fn content_ref(&self, asset_key: &str, hash: &str) -> String {
        let mut r = String::with_capacity(128 + asset_key.len() + hash.len());
        match self.inner.current.lock() {
            Ok(current) => r.push_str(&current.ref_prefix),
            // A writer panicked holding the lock: the pack it named is still the one to use.
            Err(poisoned) => r.push_str(&poisoned.into_inner().ref_prefix),
        }
        escape_into(&mut r, asset_key);
        r.push('@');
        escape_into(&mut r, hash);
        r
    }

    async fn put(&self, asset_key: &str, hash: &str, body: &[u8]) -> BackendResult<()> {
        let item = ContentPut {
            asset_key: asset_key.into(),
            hash: hash.into(),
            body: body.to_vec(),
            content_ref: self.content_ref(asset_key, hash),
        };
        self.put_many(&[item]).await
    }

    /// Each item goes into the pack its ref names (the one current when the decisor planned it),
    /// so a ref always finds its line.
    async fn put_many(&self, items: &[ContentPut]) -> BackendResult<()> {
        let mut packs: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
        for item in items {
            let path = pack_of(&item.content_ref)
                .filter(|p| p.parent() == Some(self.inner.dir.as_path()))
                .unwrap_or_else(|| self.pack_path(self.current_seq()));
            pack_line(packs.entry(path).or_default(), item);
        }
        if packs.is_empty() {
            return Ok(());
        }
        let me = self.clone();
        assetflow_actors::threads::blocking(move || me.write_batch(packs)).await.map_err(|e| self.fail("put", e))?
    }
}

/// Why a content ref could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0} is not a file:// content ref (s3:// content is read with the AWS tools)")]
    NotAFileRef(String),
    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: std::io::Error },
    #[error("{asset_key} at {hash} is not in {path}{}", damaged_lines(*unreadable))]
    NotInPack { path: String, asset_key: String, hash: String, unreadable: usize },
}

/// What a pack's unreadable lines may have hidden, for [`ReadError::NotInPack`].
fn damaged_lines(unreadable: usize) -> String {
    match unreadable {
        0 => String::new(),
        n => format!(" ({n} of its lines cannot be read: the file is damaged, and the content may be on one of them)"),
    }
}

/// The content a `file://` ref points at, in either layout: the whole file, or the pack line's
/// `content`.
pub fn read_content(content_ref: &str) -> Result<String, ReadError> {
    let rest = content_ref.strip_prefix("file://").ok_or_else(|| ReadError::NotAFileRef(content_ref.into()))?;
    fn io(path: &str) -> impl FnOnce(std::io::Error) -> ReadError + '_ {
        move |reason| ReadError::Io { path: path.to_owned(), reason }
    }
    let Some((path, entry)) = rest.split_once('#') else {
        return std::fs::read_to_string(rest).map_err(io(rest));
    };
    let (asset_key, hash) = entry.rsplit_once('@').unwrap_or((entry, ""));
    let file = File::open(path).map_err(io(path))?;
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        asset_key: String,
        hash: String,
        #[serde(borrow)]
        content: &'a serde_json::value::RawValue,
    }
    // A line that does not read is skipped: a torn last one (a crash mid-append) is what no ref
    // points at, and a damaged one (bytes that are not UTF-8 or JSON) must not hide the others.
    let (mut unreadable, mut last_torn) = (0, false);
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(io(path))?;
        let Ok(found) = serde_json::from_slice::<Line>(&line) else {
            unreadable += 1;
            last_torn = true;
            continue;
        };
        last_torn = false;
        if escape(&found.asset_key) == asset_key && escape(&found.hash) == hash {
            return Ok(found.content.get().to_owned());
        }
    }
    // A torn last line is what a crash leaves, not damage.
    let unreadable = unreadable - usize::from(last_torn);
    Err(ReadError::NotInPack { path: path.into(), asset_key: unescape(asset_key), hash: unescape(hash), unreadable })
}

/// Undoes [`escape`], for messages.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &ContentPacks, k: &str, h: &str, body: &str) -> ContentPut {
        ContentPut { asset_key: k.into(), hash: h.into(), body: body.into(), content_ref: store.content_ref(k, h) }
    }

    #[tokio::test]
    async fn a_batch_is_one_pack_and_every_ref_reads_back_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentPacks::open(dir.path()).unwrap();
        let a = put(&store, "pg/db/public/orders", "h1", r#"{"name":"orders","columns":[]}"#);
        let b = put(&store, "pg/db/public/orders.x", "h1", r#"{"name":"orders.x"}"#);
        store.put_many(&[a.clone(), b.clone()]).await.unwrap();
        let packs: Vec<_> = std::fs::read_dir(dir.path().join("packs")).unwrap().collect();
        assert_eq!(packs.len(), 1, "one batch, one pack");
        assert_eq!(read_content(&a.content_ref).unwrap(), r#"{"name":"orders","columns":[]}"#);
        assert_eq!(read_content(&b.content_ref).unwrap(), r#"{"name":"orders.x"}"#);
        assert!(a.content_ref.contains("#pg%2Fdb%2Fpublic%2Forders@h1"), "{}", a.content_ref);
    }

    #[tokio::test]
    async fn a_ref_to_content_never_written_is_an_error_naming_key_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentPacks::open(dir.path()).unwrap();
        store.put_many(&[put(&store, "pg/db/s/a", "h1", "{}")]).await.unwrap();
        let missing = store.content_ref("pg/db/s/b", "h9");
        let err = read_content(&missing).unwrap_err().to_string();
        assert!(err.contains("pg/db/s/b at h9 is not in"), "{err}");
    }

    #[tokio::test]
    async fn a_torn_last_line_does_not_hide_the_lines_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentPacks::open(dir.path()).unwrap();
        let a = put(&store, "pg/db/s/a", "h1", r#"{"a":1}"#);
        store.put_many(std::slice::from_ref(&a)).await.unwrap();
        let pack = pack_of(&a.content_ref).unwrap();
        OpenOptions::new().append(true).open(&pack).unwrap().write_all(br#"{"asset_key":"pg/db/s/b","ha"#).unwrap();
        assert_eq!(read_content(&a.content_ref).unwrap(), r#"{"a":1}"#);
        let b_in_that_pack = a.content_ref.replace("s%2Fa@", "s%2Fb@");
        let err = read_content(&b_in_that_pack).unwrap_err().to_string();
        assert!(err.contains("pg/db/s/b at h1 is not in"), "{err}");
        assert!(!err.contains("damaged"), "what a crash leaves is not damage: {err}");
    }

    #[tokio::test]
    async fn a_damaged_line_hides_only_itself_and_a_miss_says_the_pack_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentPacks::open(dir.path()).unwrap();
        let items: Vec<ContentPut> = ["a", "b", "c"].map(|k| put(&store, &format!("k/{k}"), "h1", r#"{"x":1}"#)).into();
        store.put_many(&items).await.unwrap();
        let pack = pack_of(&items[0].content_ref).unwrap();
        let mut bytes = std::fs::read(&pack).unwrap();
        // Bytes that are not UTF-8 in the first line and the second: a read of the third once
        // stopped at the first ("stream did not contain valid UTF-8").
        let second = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
        bytes[5] = 0xff;
        bytes[second + 5] = 0xff;
        std::fs::write(&pack, bytes).unwrap();
        assert_eq!(read_content(&items[2].content_ref).unwrap(), r#"{"x":1}"#);
        let err = read_content(&items[0].content_ref).unwrap_err().to_string();
        assert!(err.contains("k/a at h1 is not in") && err.contains("2 of its lines cannot be read"), "{err}");
    }

    #[tokio::test]
    async fn a_full_pack_is_closed_and_refs_planned_before_still_find_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentPacks::open(dir.path()).unwrap();
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(PACK_BYTES as usize));
        let first = put(&store, "pg/db/s/big", "h1", &big);
        // Planned before the first batch lands, so it names the first pack too.
        let late = put(&store, "pg/db/s/late", "h1", r#"{"late":true}"#);
        store.put_many(std::slice::from_ref(&first)).await.unwrap();
        let after = put(&store, "pg/db/s/after", "h1", r#"{"after":true}"#);
        store.put_many(&[late.clone(), after.clone()]).await.unwrap();
        assert_eq!(pack_of(&late.content_ref), pack_of(&first.content_ref));
        assert_ne!(pack_of(&after.content_ref), pack_of(&first.content_ref), "a full pack takes no new refs");
        assert_eq!(read_content(&late.content_ref).unwrap(), r#"{"late":true}"#);
        assert_eq!(read_content(&after.content_ref).unwrap(), r#"{"after":true}"#);
        assert_eq!(std::fs::read_dir(dir.path().join("packs")).unwrap().count(), 2);
    }

    #[tokio::test]
    async fn batches_that_append_while_a_sync_runs_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentPacks::open(dir.path()).unwrap();
        let first = put(&store, "k/first", "h1", "{}");
        store.put_many(std::slice::from_ref(&first)).await.unwrap();
        let path = pack_of(&first.content_ref).unwrap();
        let pack = Arc::clone(&store.inner.current.lock().unwrap().open[&path]);
        assert_eq!(pack.synced_times.load(Ordering::Relaxed), 1);

        // Stands for a batch whose sync is under way: three batches append meanwhile, and
        // must wait for a sync that began after their appends.
        let (started, release) = (Arc::new(std::sync::Barrier::new(2)), Arc::new(std::sync::Barrier::new(2)));
        let under_way = {
            let (pack, started, release) = (Arc::clone(&pack), started.clone(), release.clone());
            std::thread::spawn(move || {
                let turn = pack.syncs.wrote();
                pack.syncs.sync_through(turn, || {
                    started.wait();
                    release.wait();
                    Ok::<(), ()>(())
                })
            })
        };
        started.wait();
        let items: Vec<ContentPut> = (0..3).map(|i| put(&store, &format!("k/{i}"), "h1", "{}")).collect();
        let lines: Vec<Vec<u8>> = items
            .iter()
            .map(|item| {
                let mut line = Vec::new();
                pack_line(&mut line, item);
                line
            })
            .collect();
        let all_appended = pack.len.load(Ordering::Acquire) + lines.iter().map(|l| l.len() as u64).sum::<u64>();
        let writers: Vec<_> = lines
            .into_iter()
            .map(|line| {
                let (store, path) = (store.clone(), path.clone());
                std::thread::spawn(move || store.write_batch(BTreeMap::from([(path, line)])))
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pack.len.load(Ordering::Acquire) < all_appended {
            assert!(std::time::Instant::now() < deadline, "the three batches never appended");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(writers.iter().all(|w| !w.is_finished()), "a batch returned before a sync covered it");
        release.wait();
        under_way.join().unwrap().unwrap();
        for writer in writers {
            writer.join().unwrap().unwrap();
        }
        assert_eq!(pack.synced_times.load(Ordering::Relaxed), 2, "one sync for the three batches, not one each");
        for item in &items {
            assert_eq!(read_content(&item.content_ref).unwrap(), "{}");
        }
    }

    #[tokio::test]
    async fn a_pack_removed_while_open_is_made_anew_rather_than_written_unnamed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentPacks::open(dir.path()).unwrap();
        let a = put(&store, "k/a", "h1", r#"{"a":1}"#);
        store.put_many(std::slice::from_ref(&a)).await.unwrap();
        std::fs::remove_file(pack_of(&a.content_ref).unwrap()).unwrap();
        let b = put(&store, "k/b", "h1", r#"{"b":2}"#);
        store.put_many(std::slice::from_ref(&b)).await.unwrap();
        assert_eq!(read_content(&b.content_ref).unwrap(), r#"{"b":2}"#);
    }

    #[tokio::test]
    async fn content_spanning_lines_is_stored_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentPacks::open(dir.path()).unwrap();
        let pretty = put(&store, "k/a", "h1", "{\n  \"a\": [1,\n 2]\n}");
        let not_json = put(&store, "k/b", "h1", "plain\ntext");
        let after = put(&store, "k/c", "h1", "{}");
        store.put_many(&[pretty.clone(), not_json.clone(), after.clone()]).await.unwrap();
        let pack = std::fs::read_to_string(pack_of(&after.content_ref).unwrap()).unwrap();
        assert_eq!(pack.lines().count(), 3, "{pack}");
        assert_eq!(read_content(&pretty.content_ref).unwrap(), r#"{"a":[1,2]}"#);
        assert_eq!(read_content(&not_json.content_ref).unwrap(), r#""plain\ntext""#);
        assert_eq!(read_content(&after.content_ref).unwrap(), "{}");
    }

    #[test]
    fn unescape_undoes_escape() {
        for s in ["pg/db/public/orders.x", "a%b", "日本", ""] {
            assert_eq!(unescape(&escape(s)), if s.is_empty() { "%".to_string() } else { s.to_string() });
        }
    }
}
