//! A fjall database whose creation a crash cut short, recognised and cleared so that the next
//! open creates it again instead of failing on the files the first attempt left.
//!
//! fjall creates a database in this order: the folder, its `lock` file, the `keyspaces`
//! folder, the first journal `0.jnl`, the `version` marker (created, then written, then
//! synced), and last the meta keyspace `keyspaces/0`. A process killed before the marker
//! leaves some of the first four, and every later open tries to create them anew and stops at
//! the first that exists ("File exists"); one killed while the marker is being written leaves
//! it empty, and every later open stops on it ("InvalidVersion(None)", seen in a soak of
//! SIGKILLed first starts). A database whose `keyspaces` folder is still empty never finished
//! its creation (its open never returned), so nothing can have been written to it, and
//! clearing it loses nothing. Anything else in the folder (a keyspace, a file fjall does not
//! make there) is left alone: that is not a creation cut short, and the open's own error is
//! the right answer. A kill inside the meta keyspace's own creation needs nothing here:
//! lsm-tree writes a tree's `current` pointer last, by an atomic rename, and makes a tree
//! without one again on the next open (a test in `tests.rs` holds it to that).

use std::path::Path;

/// What fjall makes before its meta keyspace (fjall 3.1, `Database::create_new`).
const BEFORE_KEYSPACES: [&str; 4] = ["lock", "keyspaces", "0.jnl", "version"];

/// Removes `path` if it holds a database whose creation never finished; says whether it did.
pub fn clear_unfinished_create(path: &Path) -> std::io::Result<bool> {
    if !path.is_dir() {
        return Ok(false);
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| BEFORE_KEYSPACES.contains(n)) else { return Ok(false) };
        if name == "keyspaces" && std::fs::read_dir(entry.path())?.next().is_some() {
            return Ok(false);
        }
    }
    std::fs::remove_dir_all(path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each state a crash can leave before the meta keyspace, in creation order: the marker
    /// created but not written, then written.
    #[test]
    fn every_creation_cut_short_is_cleared() {
        let parts: [&dyn Fn(&Path); 5] = [
            &|p| std::fs::write(p.join("lock"), b"").unwrap(),
            &|p| std::fs::create_dir(p.join("keyspaces")).unwrap(),
            &|p| std::fs::write(p.join("0.jnl"), vec![0u8; 4096]).unwrap(),
            &|p| std::fs::write(p.join("version"), b"").unwrap(),
            &|p| std::fs::write(p.join("version"), b"FJL\x03").unwrap(),
        ];
        for made in 0..=parts.len() {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("state");
            std::fs::create_dir(&db).unwrap();
            parts[..made].iter().for_each(|make| make(&db));
            assert!(clear_unfinished_create(&db).unwrap(), "after {made} of the parts");
            assert!(!db.exists());
        }
    }

    #[test]
    fn a_finished_database_or_a_stranger_folder_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state");
        std::fs::create_dir_all(db.join("keyspaces").join("0")).unwrap();
        std::fs::write(db.join("lock"), b"").unwrap();
        std::fs::write(db.join("version"), b"FJL\x03").unwrap();
        assert!(!clear_unfinished_create(&db).unwrap(), "a meta keyspace: a database to recover");
        std::fs::write(db.join("version"), b"").unwrap();
        assert!(!clear_unfinished_create(&db).unwrap(), "a keyspace, whatever the marker says");
        std::fs::remove_dir(db.join("keyspaces").join("0")).unwrap();
        std::fs::write(db.join("notes.txt"), b"mine").unwrap();
        assert!(!clear_unfinished_create(&db).unwrap(), "a file fjall does not make");
        assert!(db.join("lock").exists());
        assert!(!clear_unfinished_create(&dir.path().join("absent")).unwrap());
    }
}
