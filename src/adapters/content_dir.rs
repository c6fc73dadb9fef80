//! The `dir` content store's `files` layout: one file per asset key and content hash,
//! `{path}/{source}/{database}/{schema}/{table}.{hash}.json`, each name component escaped.
//!
//! A batch is made durable with two file-system syncs, whatever its size: every file is written
//! under a temporary name, synced, renamed into place, and the renames synced. One `fsync` per
//! file made first crawls (every asset new) spend most of their time waiting on the disk.

use std::path::{Path, PathBuf};

use assetflow_actors::ports::{BackendError, BackendResult, ContentPut, ContentStore};
use async_trait::async_trait;

#[derive(Clone)]
pub struct ContentDir {
    root: PathBuf,
}

impl ContentDir {
    pub fn open(root: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(root)
            .map_err(|e| format!("cannot create the content folder {}: {e}", root.display()))?;
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        Ok(ContentDir { root })
    }

    fn path_of(&self, asset_key: &str, hash: &str) -> PathBuf {
        let mut p = self.root.clone();
        let (folders, name) = asset_key.rsplit_once('/').unwrap_or(("", asset_key));
        for part in folders.split('/').filter(|f| !f.is_empty()) {
            p.push(escape(part));
        }
        // `escape` turns every `.` of a part into `%2E`, so the dots here cannot be ambiguous.
        p.push(format!("{}.{}.json", escape(name), escape(hash)));
        p
    }

    fn fail(&self, op: &str, e: impl std::fmt::Display) -> BackendError {
        BackendError::transient(format!("content dir {}", self.root.display()), op, e)
    }

    /// Writes every file not there yet; see the module comment for the order of syncs.
    fn write_batch(&self, items: &[(PathBuf, Vec<u8>)]) -> BackendResult<()> {
        let tmp_ext = format!("tmp{}", std::process::id());
        let mut renames = Vec::new();
        for (path, body) in items {
            if path.exists() {
                continue;
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| self.fail("mkdir", e))?;
            }
            let tmp = path.with_extension(&tmp_ext);
            std::fs::write(&tmp, body).map_err(|e| self.fail("write", e))?;
            renames.push((tmp, path));
        }
        if renames.is_empty() {
            return Ok(());
        }
        self.sync()?;
        for (tmp, path) in &renames {
            std::fs::rename(tmp, path).map_err(|e| self.fail("rename", e))?;
        }
        self.sync()
    }

    /// Flushes the file system the folder is on (data, new names and folders).
    fn sync(&self) -> BackendResult<()> {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(&self.root).map_err(|e| self.fail("open", e))?;
        // SAFETY: `dir` is an open descriptor for the whole call; syncfs only reads it.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(self.fail("sync", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// Keeps letters, digits, `-` and `_`; everything else becomes `%XX`, so no name can climb out
/// of the folder (`..`) or collide with another after escaping.
pub(crate) fn escape(part: &str) -> String {
    let mut out = String::with_capacity(part.len() + 8);
    escape_into(&mut out, part);
    out
}

/// [`escape`], appended to `out` (a content ref is built in one string, once per new asset).
pub(crate) fn escape_into(out: &mut String, part: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if part.is_empty() {
        out.push('%');
    }
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
}

#[async_trait]
impl ContentStore for ContentDir {
    fn content_ref(&self, asset_key: &str, hash: &str) -> String {
        format!("file://{}", self.path_of(asset_key, hash).display())
    }

    async fn put(&self, asset_key: &str, hash: &str, body: &[u8]) -> BackendResult<()> {
        let content_ref = self.content_ref(asset_key, hash);
        self.put_many(&[ContentPut {
            asset_key: asset_key.into(),
            hash: hash.into(),
            body: body.to_vec(),
            content_ref,
        }])
        .await
    }

    async fn put_many(&self, items: &[ContentPut]) -> BackendResult<()> {
        let me = self.clone();
        let items: Vec<(PathBuf, Vec<u8>)> =
            items.iter().map(|c| (self.path_of(&c.asset_key, &c.hash), c.body.clone())).collect();
        assetflow_actors::threads::blocking(move || me.write_batch(&items)).await.map_err(|e| self.fail("put", e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_folder() {
        assert_eq!(escape(".."), "%2E%2E");
        assert_eq!(escape("a/b"), "a%2Fb");
        assert_eq!(escape("orders_2024-x"), "orders_2024-x");
        assert_eq!(escape(""), "%");
    }

    #[tokio::test]
    async fn a_batch_lands_one_file_per_key_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentDir::open(dir.path()).unwrap();
        let put = |k: &str, h: &str, b: &str| ContentPut {
            asset_key: k.into(),
            hash: h.into(),
            body: b.into(),
            content_ref: store.content_ref(k, h),
        };
        store
            .put_many(&[put("pg/db/public/orders", "h1", "{}"), put("pg/db/public/orders.x", "h1", "[]")])
            .await
            .unwrap();
        // Already there: left as it was (content at one hash never changes).
        store.put_many(&[put("pg/db/public/orders", "h1", "changed")]).await.unwrap();
        let a = dir.path().join("pg/db/public/orders.h1.json");
        let b = dir.path().join("pg/db/public/orders%2Ex.h1.json");
        assert_eq!(std::fs::read_to_string(a).unwrap(), "{}");
        assert_eq!(std::fs::read_to_string(b).unwrap(), "[]");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("pg/db/public")).unwrap().collect();
        assert_eq!(names.len(), 2, "no temporary file left behind");
        assert_eq!(
            store.content_ref("pg/db/public/orders", "h1"),
            format!("file://{}", dir.path().canonicalize().unwrap().join("pg/db/public/orders.h1.json").display())
        );
    }
}
