//! The `dir` content store: one file per asset key and content hash,
//! `{path}/{source}/{database}/{schema}/{table}/{hash}.json`, each name component escaped.

use std::path::{Path, PathBuf};

use assetflow_actors::ports::{BackendError, BackendResult, ContentStore};
use async_trait::async_trait;

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
        for part in asset_key.split('/') {
            p.push(escape(part));
        }
        p.push(format!("{}.json", escape(hash)));
        p
    }
}

/// Keeps letters, digits, `-` and `_`; everything else becomes `%XX`, so no name can climb out
/// of the folder (`..`) or collide with another after escaping.
fn escape(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() { "%".into() } else { out }
}

#[async_trait]
impl ContentStore for ContentDir {
    fn content_ref(&self, asset_key: &str, hash: &str) -> String {
        format!("file://{}", self.path_of(asset_key, hash).display())
    }

    async fn put(&self, asset_key: &str, hash: &str, body: &[u8]) -> BackendResult<()> {
        let path = self.path_of(asset_key, hash);
        let body = body.to_vec();
        tokio::task::spawn_blocking(move || write_once(&path, &body))
            .await
            .map_err(|e| BackendError::transient("content dir", "put", e))?
    }
}

/// Writes `body` to `path` unless it is there already: to a temporary name, fsync, rename.
fn write_once(path: &Path, body: &[u8]) -> BackendResult<()> {
    let fail = |op: &str, e: std::io::Error| BackendError::transient(format!("content dir {}", path.display()), op, e);
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail("mkdir", e))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| fail("create", e))?;
        f.write_all(body).map_err(|e| fail("write", e))?;
        f.sync_data().map_err(|e| fail("fsync", e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| fail("rename", e))
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
}
