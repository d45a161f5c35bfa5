//! Listing and deleting objects by key prefix and age: what the retention
//! purge and `genfleet forget` are made of.
//!
//! Only the `object_store::ObjectStore` trait is used, so the local and the
//! S3 backend behave the same. Listings stream from the store and deletes go
//! in batches (one bulk request per batch on S3), so a bucket of millions of
//! objects is purged in bounded memory. These methods take keys, not input
//! URIs: they carry no tenant check, and callers name the prefix (the
//! purge: an org's outputs; forget: a tenant's outputs and uploads).

use std::time::SystemTime;

use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;

use crate::{StorageError, Store};

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

/// What [`Store::purge_older_than`] removed (or, dry, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgedObjects {
    pub objects: u64,
    pub bytes: u64,
}

impl Store {
    /// Every object whose key lies under `prefix` (whole segments: `a/b`
    /// covers `a/b/x`, not `a/bc/x`; `""` is the whole store), sorted by
    /// key. For tenant-sized prefixes; a whole store is better walked with
    /// [`Store::purge_older_than`], which never holds the listing.
    ///
    /// # Errors
    /// [`StorageError::InvalidUri`] for a prefix that is not a valid key,
    /// [`StorageError::Unavailable`] when the store fails.
    pub async fn list_under(&self, prefix: &str) -> Result<Vec<StoredEntry>, StorageError> {
        let prefix = parse_prefix(prefix)?;
        let listed: Result<Vec<StoredEntry>, _> = self
            .inner
            .list(prefix.as_ref())
            .map_ok(entry)
            .try_collect()
            .await;
        let mut entries = match listed {
            Ok(entries) => entries,
            // A local store answers a missing folder with NotFound.
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(unavailable(e)),
        };
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    /// The names directly under `prefix` (`""`: the top level) that hold
    /// objects, like `ls`: the orgs of the output layout, and the literal
    /// roots of input prefixes (`uploads`).
    ///
    /// # Errors
    /// As [`Store::list_under`].
    pub async fn child_names(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let prefix = parse_prefix(prefix)?;
        let listed = self
            .inner
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(unavailable)?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The top-level names that are organisations' output folders: every
    /// top-level name except the reserved ones (the literal first segments
    /// of input prefixes, such as `uploads`, which no org may be called).
    ///
    /// # Errors
    /// As [`Store::list_under`].
    pub async fn output_orgs(&self) -> Result<Vec<String>, StorageError> {
        let names = self.child_names("").await?;
        Ok(names
            .into_iter()
            .filter(|name| {
                crate::is_safe_segment(name)
                    && !name.contains('.')
                    && !self.inputs.is_reserved_org(name)
            })
            .collect())
    }

    /// Deletes objects by key; a key already gone counts as deleted (so a
    /// repeated or resumed deletion succeeds). Returns how many keys were
    /// deleted. On a local store, folders left empty are removed too, so
    /// no job id stays behind as a folder name.
    ///
    /// # Errors
    /// [`StorageError::InvalidUri`] for a key that is not valid;
    /// [`StorageError::Unavailable`] at the first key the store failed to
    /// delete (keys before it may be gone: run again).
    pub async fn delete_keys(&self, keys: &[String]) -> Result<u64, StorageError> {
        let paths: Vec<Path> = keys
            .iter()
            .map(|k| Path::parse(k).map_err(|e| StorageError::InvalidUri(e.to_string())))
            .collect::<Result<_, _>>()?;
        let input = futures_util::stream::iter(paths.clone().into_iter().map(Ok)).boxed();
        let mut results = self.inner.delete_stream(input);
        let mut deleted = 0u64;
        let mut failed = None;
        while let Some(result) = results.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        self.prune_empty_parents(&paths);
        match failed {
            Some(e) => Err(unavailable(e)),
            None => Ok(deleted),
        }
    }

    /// Deletes (or, `dry_run`, counts) the objects under `prefix` last
    /// modified before `cutoff`, `batch` keys per delete request. Objects
    /// written after the listing began are not seen; run again to catch
    /// them. Idempotent.
    ///
    /// # Errors
    /// [`StorageError::InvalidConfig`] for a zero batch; otherwise as
    /// [`Store::list_under`] and [`Store::delete_keys`] (what was deleted
    /// before the error stays deleted and is not counted).
    pub async fn purge_older_than(
        &self,
        prefix: &str,
        cutoff: SystemTime,
        batch: usize,
        dry_run: bool,
    ) -> Result<PurgedObjects, StorageError> {
        if batch == 0 {
            return Err(StorageError::InvalidConfig(
                "purge batch is 0, expected at least 1".into(),
            ));
        }
        let prefix = parse_prefix(prefix)?;
        let mut listing = self.inner.list(prefix.as_ref());
        let mut purged = PurgedObjects::default();
        let mut pending: Vec<StoredEntry> = Vec::with_capacity(batch);
        while let Some(meta) = listing.next().await {
            let found = match meta {
                Ok(meta) => entry(meta),
                // A local store answers a missing folder with NotFound.
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(unavailable(e)),
            };
            if found.last_modified >= cutoff {
                continue;
            }
            pending.push(found);
            if pending.len() >= batch {
                self.purge_batch(&mut pending, dry_run, &mut purged).await?;
            }
        }
        self.purge_batch(&mut pending, dry_run, &mut purged).await?;
        Ok(purged)
    }

    async fn purge_batch(
        &self,
        pending: &mut Vec<StoredEntry>,
        dry_run: bool,
        purged: &mut PurgedObjects,
    ) -> Result<(), StorageError> {
        if pending.is_empty() {
            return Ok(());
        }
        if !dry_run {
            let keys: Vec<String> = pending.iter().map(|e| e.key.clone()).collect();
            self.delete_keys(&keys).await?;
        }
        purged.objects += pending.len() as u64;
        purged.bytes += pending.iter().map(|e| e.size).sum::<u64>();
        pending.clear();
        Ok(())
    }

    /// On a local store, the folders of deleted keys that are now empty,
    /// deepest first, up to (not including) the store's root. Best effort:
    /// a folder that is not empty, or not removable, stays.
    fn prune_empty_parents(&self, deleted: &[Path]) {
        let Some(root) = &self.local_root else {
            return;
        };
        for path in deleted {
            let mut parts: Vec<&str> = path.as_ref().split('/').collect();
            parts.pop();
            while !parts.is_empty() {
                let dir = root.join(parts.join("/"));
                if std::fs::remove_dir(&dir).is_err() {
                    break;
                }
                parts.pop();
            }
        }
    }
}

fn parse_prefix(prefix: &str) -> Result<Option<Path>, StorageError> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(None);
    }
    Path::parse(trimmed)
        .map(Some)
        .map_err(|e| StorageError::InvalidUri(format!("key prefix is not valid: {e}")))
}

fn entry(meta: object_store::ObjectMeta) -> StoredEntry {
    StoredEntry {
        key: meta.location.to_string(),
        size: meta.size,
        last_modified: SystemTime::from(meta.last_modified),
    }
}

fn unavailable(error: object_store::Error) -> StorageError {
    StorageError::Unavailable(error.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use crate::{InputPolicy, StoreConfig, DEFAULT_INPUT_PREFIXES};

    use super::*;

    fn temp_store() -> (Store, std::path::PathBuf) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "genfleet-retention-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let store = Store::open_local(StoreConfig {
            root: dir.clone(),
            bucket: "b".into(),
            inputs: InputPolicy::new(&DEFAULT_INPUT_PREFIXES, None).unwrap(),
        })
        .unwrap();
        (store, dir)
    }

    /// Sets a file's modification time, as an old object would have.
    fn age(dir: &std::path::Path, key: &str, days: u64) {
        let file = std::fs::File::options()
            .write(true)
            .open(dir.join(key))
            .unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(days * 86_400))
            .unwrap();
    }

    #[tokio::test]
    async fn lists_and_purges_by_prefix_and_age() {
        let (store, dir) = temp_store();
        for (org, job) in [("acme", "old"), ("acme", "new"), ("globex", "old")] {
            store
                .put_output(org, "ws", job, "0.png", Bytes::from_static(b"abcd"))
                .await
                .unwrap();
        }
        std::fs::create_dir_all(dir.join("uploads/acme/ws")).unwrap();
        std::fs::write(dir.join("uploads/acme/ws/in.jpg"), b"x").unwrap();
        age(&dir, "acme/ws/old/0.png", 200);
        age(&dir, "globex/ws/old/0.png", 200);
        age(&dir, "uploads/acme/ws/in.jpg", 200);

        assert_eq!(
            store.child_names("").await.unwrap(),
            ["acme", "globex", "uploads"]
        );
        // `uploads` is an input root, never an org.
        assert_eq!(store.output_orgs().await.unwrap(), ["acme", "globex"]);
        let listed = store.list_under("acme/").await.unwrap();
        assert_eq!(
            listed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["acme/ws/new/0.png", "acme/ws/old/0.png"]
        );
        // Whole segments only.
        assert!(store.list_under("acm").await.unwrap().is_empty());

        let cutoff = SystemTime::now() - Duration::from_secs(180 * 86_400);
        let dry = store
            .purge_older_than("acme", cutoff, 1, true)
            .await
            .unwrap();
        assert_eq!(
            dry,
            PurgedObjects {
                objects: 1,
                bytes: 4
            }
        );
        assert!(
            dir.join("acme/ws/old/0.png").exists(),
            "a dry run deletes nothing"
        );
        assert_eq!(
            store
                .purge_older_than("acme", cutoff, 1, false)
                .await
                .unwrap(),
            dry
        );
        assert!(
            !dir.join("acme/ws/old").exists(),
            "the job's folder goes too"
        );
        assert!(dir.join("acme/ws/new/0.png").exists());
        assert!(dir.join("globex/ws/old/0.png").exists(), "another prefix");
        assert!(dir.join("uploads/acme/ws/in.jpg").exists());
        assert_eq!(
            store
                .purge_older_than("acme", cutoff, 1, false)
                .await
                .unwrap(),
            PurgedObjects::default()
        );
        assert!(store
            .purge_older_than("acme", cutoff, 0, false)
            .await
            .is_err());

        // Deleting keys: gone ones count, bad ones are refused.
        let keys = vec!["acme/ws/new/0.png".to_string(), "acme/ws/none".to_string()];
        assert_eq!(store.delete_keys(&keys).await.unwrap(), 2);
        assert!(!dir.join("acme").exists());
        assert!(store.delete_keys(&["a/../b".to_string()]).await.is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
