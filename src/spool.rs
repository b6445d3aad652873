//! A durable local spool for post-call events that cannot be recorded when they arrive (the
//! database is down or refusing writes): ElevenLabs sends each event once, so it is written and
//! fsynced before the webhook answers 200, and applied when the database takes it.
//!
//! The spool is bounded (`SPOOL_MAX_MB`): when it is full an event is refused, and the webhook
//! answers 503 rather than acknowledge what it did not keep. Its depth is exported as
//! `hotline_spool_depth` and `hotline_spool_bytes`. One instance owns a spool directory: at
//! open it removes the temporary files a crash may have left between writing and renaming.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::monitoring::metrics;

/// Why an event was not spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({max_bytes} bytes)")]
    Full { max_bytes: u64 },
    #[error("the spool could not be written: {0}")]
    Io(#[from] std::io::Error),
}

/// What the spool holds: events waiting (their count and bytes), and bytes being written.
#[derive(Debug, Default)]
struct Usage {
    depth: u64,
    bytes: u64,
    writing: u64,
}

impl Usage {
    fn publish(&self) {
        metrics::spool_usage(self.depth, self.bytes);
    }
}

/// Events wait here, one file each, named so that they sort by arrival.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    usage: Arc<Mutex<Usage>>,
}

/// Extension of an event waiting to be applied.
const PENDING: &str = "json";
/// Extension of an event being written (renamed to [`PENDING`] once whole and fsynced).
const WRITING: &str = "tmp";
/// Extension of an event that can never be applied, kept for an operator to look at.
const REJECTED: &str = "rejected";

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e == ext)
}

impl Spool {
    /// Opens (creating it if needed) the spool directory, holding at most `max_bytes` of
    /// waiting events, and removes orphaned temporary files.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> std::io::Result<Spool> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let mut orphans = 0;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if has_extension(&path, WRITING) {
                std::fs::remove_file(&path)?;
                orphans += 1;
            }
        }
        if orphans > 0 {
            tracing::warn!(
                orphans,
                "removed partly written spool files left by an earlier crash (their events were never acknowledged)"
            );
        }
        let spool = Spool {
            dir,
            max_bytes,
            usage: Arc::default(),
        };
        spool.pending()?;
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Events waiting to be applied.
    pub fn depth(&self) -> u64 {
        self.usage().depth
    }

    /// Bytes of the events waiting to be applied.
    pub fn bytes(&self) -> u64 {
        self.usage().bytes
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes an event durably: a temporary file, fsynced, renamed into place, and the
    /// directory fsynced, so that a crash leaves either the whole event or nothing. Refused
    /// with [`SpoolError::Full`] when it would take the spool past its size.
    pub async fn append(&self, body: Vec<u8>) -> Result<PathBuf, SpoolError> {
        let len = body.len() as u64;
        {
            let mut usage = self.usage();
            if usage.bytes + usage.writing + len > self.max_bytes {
                return Err(SpoolError::Full {
                    max_bytes: self.max_bytes,
                });
            }
            usage.writing += len;
        }
        let dir = self.dir.clone();
        let written = tokio::task::spawn_blocking(move || {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let name = format!("{nanos:024}-{}", uuid::Uuid::new_v4().simple());
            let tmp = dir.join(format!("{name}.{WRITING}"));
            let path = dir.join(format!("{name}.{PENDING}"));
            let result = (|| {
                let mut file = std::fs::File::create(&tmp)?;
                file.write_all(&body)?;
                file.sync_all()?;
                drop(file);
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(&dir)?.sync_all()?;
                Ok(path)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let mut usage = self.usage();
        usage.writing = usage.writing.saturating_sub(len);
        if written.is_ok() {
            usage.depth += 1;
            usage.bytes += len;
            usage.publish();
        }
        Ok(written?)
    }

    /// The spooled events, oldest first. Counts them again from the directory, so that the
    /// depth stays true whatever happened to the files meanwhile.
    pub fn pending(&self) -> std::io::Result<Vec<(PathBuf, u64)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if !has_extension(&path, PENDING) {
                continue;
            }
            // A file removed meanwhile (applied by a drain) is simply not there.
            if let Ok(meta) = entry.metadata() {
                files.push((path, meta.len()));
            }
        }
        files.sort();
        let mut usage = self.usage();
        usage.depth = files.len() as u64;
        usage.bytes = files.iter().map(|(_, len)| len).sum();
        usage.publish();
        Ok(files)
    }

    pub async fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(path).await
    }

    /// Removes an applied event.
    pub async fn remove(&self, path: &Path) -> std::io::Result<()> {
        let len = tokio::fs::metadata(path).await?.len();
        tokio::fs::remove_file(path).await?;
        self.forget(len);
        Ok(())
    }

    /// Sets aside an event that can never be applied: renamed `.rejected`, kept for an
    /// operator, no longer counted as waiting.
    pub async fn set_aside(&self, path: &Path) -> std::io::Result<()> {
        let len = tokio::fs::metadata(path).await?.len();
        tokio::fs::rename(path, path.with_extension(REJECTED)).await?;
        self.forget(len);
        Ok(())
    }

    fn forget(&self, len: u64) {
        let mut usage = self.usage();
        usage.depth = usage.depth.saturating_sub(1);
        usage.bytes = usage.bytes.saturating_sub(len);
        usage.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: u64 = 1 << 20;

    fn paths(files: Vec<(PathBuf, u64)>) -> Vec<PathBuf> {
        files.into_iter().map(|(p, _)| p).collect()
    }

    #[tokio::test]
    async fn events_are_kept_in_order_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool"), ROOMY).unwrap();
        assert!(spool.pending().unwrap().is_empty());
        let a = spool.append(b"first".to_vec()).await.unwrap();
        let b = spool.append(b"second".to_vec()).await.unwrap();
        assert_eq!(paths(spool.pending().unwrap()), vec![a.clone(), b.clone()]);
        assert_eq!((spool.depth(), spool.bytes()), (2, 11));
        assert_eq!(spool.read(&a).await.unwrap(), b"first");
        spool.remove(&a).await.unwrap();
        assert_eq!((spool.depth(), spool.bytes()), (1, 6));
        assert_eq!(paths(spool.pending().unwrap()), vec![b]);
        // A reopened spool sees what was left.
        let again = Spool::open(dir.path().join("spool"), ROOMY).unwrap();
        assert_eq!(again.pending().unwrap().len(), 1);
        assert_eq!((again.depth(), again.bytes()), (1, 6));
    }

    #[tokio::test]
    async fn a_full_spool_refuses_events_until_room_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        let a = spool.append(b"12345678".to_vec()).await.unwrap();
        let refused = spool.append(b"123".to_vec()).await;
        assert!(
            matches!(refused, Err(SpoolError::Full { max_bytes: 10 })),
            "{refused:?}"
        );
        assert_eq!(spool.pending().unwrap().len(), 1, "nothing half-kept");
        spool.append(b"12".to_vec()).await.unwrap();
        spool.remove(&a).await.unwrap();
        spool.append(b"123".to_vec()).await.unwrap();
        assert_eq!((spool.depth(), spool.bytes()), (2, 5));

        // A spool of size 0 keeps nothing.
        let none = Spool::open(dir.path().join("none"), 0).unwrap();
        assert!(matches!(
            none.append(b"x".to_vec()).await,
            Err(SpoolError::Full { .. })
        ));
    }

    #[tokio::test]
    async fn events_set_aside_are_kept_but_no_longer_wait() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), ROOMY).unwrap();
        let a = spool.append(b"{}".to_vec()).await.unwrap();
        spool.set_aside(&a).await.unwrap();
        assert!(spool.pending().unwrap().is_empty());
        assert_eq!((spool.depth(), spool.bytes()), (0, 0));
        assert!(a.with_extension("rejected").exists());
    }

    #[tokio::test]
    async fn orphaned_temporary_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), ROOMY).unwrap();
        let kept = spool.append(b"whole".to_vec()).await.unwrap();
        // What a crash between create and rename leaves.
        let orphan = dir.path().join("000000000000000000000001-abc.tmp");
        std::fs::write(&orphan, b"half").unwrap();
        let rejected = dir.path().join("000000000000000000000002-def.rejected");
        std::fs::write(&rejected, b"{}").unwrap();

        let reopened = Spool::open(dir.path(), ROOMY).unwrap();
        assert!(!orphan.exists(), "the orphan is gone");
        assert!(
            kept.exists() && rejected.exists(),
            "nothing else is touched"
        );
        assert_eq!(paths(reopened.pending().unwrap()), vec![kept]);
        assert_eq!((reopened.depth(), reopened.bytes()), (1, 5));
    }
}
