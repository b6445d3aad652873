//! A durable local spool for post-call events that arrive while the database is down:
//! ElevenLabs sends each event once, so it is written and fsynced before the webhook answers
//! 200, and applied when the database returns.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Events wait here, one file each, named so that they sort by arrival.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens (creating it if needed) the spool directory.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Spool> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Spool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes an event durably: a temporary file, fsynced, renamed into place, and the
    /// directory fsynced, so that a crash leaves either the whole event or nothing.
    pub async fn append(&self, body: Vec<u8>) -> std::io::Result<PathBuf> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let name = format!("{nanos:024}-{}", uuid::Uuid::new_v4().simple());
            let tmp = dir.join(format!("{name}.tmp"));
            let path = dir.join(format!("{name}.json"));
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&body)?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&dir)?.sync_all()?;
            Ok(path)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// The spooled events, oldest first.
    pub fn pending(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
            .collect();
        files.sort();
        Ok(files)
    }

    pub async fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(path).await
    }

    /// Removes an applied event.
    pub async fn remove(&self, path: &Path) -> std::io::Result<()> {
        tokio::fs::remove_file(path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_kept_in_order_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        assert!(spool.pending().unwrap().is_empty());
        let a = spool.append(b"first".to_vec()).await.unwrap();
        let b = spool.append(b"second".to_vec()).await.unwrap();
        assert_eq!(spool.pending().unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(spool.read(&a).await.unwrap(), b"first");
        spool.remove(&a).await.unwrap();
        assert_eq!(spool.pending().unwrap(), vec![b]);
        // A reopened spool sees what was left.
        let again = Spool::open(dir.path().join("spool")).unwrap();
        assert_eq!(again.pending().unwrap().len(), 1);
    }
}
