//! A fjall database whose creation a crash cut short, recognised and cleared so that the next
//! open creates it again instead of failing on the files the first attempt left.
//!
//! fjall creates a database in this order: the folder, its `lock` file, the `keyspaces`
//! folder, the first journal `0.jnl`, and last the `version` marker, whose presence is how
//! `open` tells a database to recover from a folder to create one in. A process killed before
//! the marker leaves some of the first four, and every later open tries to create them anew
//! and stops at the first that exists ("File exists"). Nothing can have been written to such a
//! database (its open never returned), so clearing it loses nothing. Anything else in the
//! folder (a `keyspaces` folder with contents, a file fjall does not make there) is left alone:
//! that is not a creation cut short, and the open's own error is the right answer.

use std::path::Path;

/// What fjall makes before its `version` marker (fjall 3.1, `Database::create_new`).
const BEFORE_MARKER: [&str; 3] = ["lock", "keyspaces", "0.jnl"];
const VERSION_MARKER: &str = "version";

/// Removes `path` if it holds a database whose creation never finished; says whether it did.
pub fn clear_unfinished_create(path: &Path) -> std::io::Result<bool> {
    if !path.is_dir() || path.join(VERSION_MARKER).try_exists()? {
        return Ok(false);
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| BEFORE_MARKER.contains(n)) else { return Ok(false) };
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

    /// Each state a crash can leave before the marker, in creation order.
    #[test]
    fn every_creation_cut_short_is_cleared() {
        let parts: [&dyn Fn(&Path); 3] = [
            &|p| std::fs::write(p.join("lock"), b"").unwrap(),
            &|p| std::fs::create_dir(p.join("keyspaces")).unwrap(),
            &|p| std::fs::write(p.join("0.jnl"), vec![0u8; 4096]).unwrap(),
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
        std::fs::create_dir(&db).unwrap();
        std::fs::write(db.join("lock"), b"").unwrap();
        std::fs::write(db.join(VERSION_MARKER), b"").unwrap();
        assert!(!clear_unfinished_create(&db).unwrap(), "a marker: a database to recover");
        std::fs::remove_file(db.join(VERSION_MARKER)).unwrap();
        std::fs::write(db.join("notes.txt"), b"mine").unwrap();
        assert!(!clear_unfinished_create(&db).unwrap(), "a file fjall does not make");
        std::fs::remove_file(db.join("notes.txt")).unwrap();
        std::fs::create_dir_all(db.join("keyspaces").join("0")).unwrap();
        assert!(!clear_unfinished_create(&db).unwrap(), "keyspaces with contents");
        assert!(db.join("lock").exists());
        assert!(!clear_unfinished_create(&dir.path().join("absent")).unwrap());
    }
}
