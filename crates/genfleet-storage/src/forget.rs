//! What `genfleet forget` needs of the store beyond listing and deleting
//! by prefix (`retention.rs`): the key prefixes that hold a tenant's
//! objects.
//!
//! A tenant's objects are its outputs (`<org>/<workspace>/...`) and its
//! uploads (the input prefixes of `storage.input_prefixes`). Both are found
//! by prefix, never by a job's record, so objects whose job left no trace in
//! the ledger (an upload never used, an output whose outcome was lost) go
//! too.

use std::collections::BTreeSet;

use crate::{StorageError, Store};

/// A workspace name no tenant can have (it is longer than a tenant id may
/// be, see `genfleet_proto::is_valid_tenant_id`): put where `{workspace}`
/// stands, it shows where a pattern's workspace segment is.
const ANY_WORKSPACE: &str =
    "genfleet-forget-any-workspace-placeholder-longer-than-any-tenant-id-0123456789";
/// The same for `{org}`.
const ANY_ORG: &str = "genfleet-forget-any-org-placeholder-longer-than-any-tenant-id-0123456789";

/// Where one data subject's objects live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectPrefixes {
    /// Output prefixes (`<org>/<workspace>/` or `<org>/`), `/`-ended.
    pub outputs: Vec<String>,
    /// Upload prefixes (the other input prefixes), `/`-ended.
    pub uploads: Vec<String>,
}

impl Store {
    /// The prefixes holding everything of `org`'s `workspace`, or of every
    /// workspace of `org` when `workspace` is `None`.
    ///
    /// For a whole org, a pattern whose `{org}` comes before `{workspace}`
    /// (`uploads/{org}/{workspace}/`) gives one prefix for all workspaces
    /// (`uploads/<org>/`). A pattern with `{workspace}` first cannot, so it
    /// gives one prefix per workspace in `known_workspaces` (the caller's
    /// list: the ledger's and the output folder's).
    ///
    /// # Errors
    /// [`StorageError::Forbidden`] for a reserved or unsafe tenant name.
    pub fn subject_prefixes(
        &self,
        org: &str,
        workspace: Option<&str>,
        known_workspaces: &[String],
    ) -> Result<SubjectPrefixes, StorageError> {
        // The output layout is fixed (see `put_output`), whatever the input
        // patterns are.
        let outputs = match workspace {
            Some(ws) => format!("{org}/{ws}/"),
            None => format!("{org}/"),
        };
        let mut uploads = BTreeSet::new();
        match workspace {
            Some(ws) => {
                uploads.extend(self.scope(org, ws)?.prefixes().iter().cloned());
            }
            None => {
                // `scope` checks the org name; the placeholders are safe
                // segments. The second probe shows where `{org}` stands in
                // each pattern, by position: a literal segment spelled like
                // the org must not pass for it.
                let probe = self.scope(org, ANY_WORKSPACE)?;
                let shape = self.scope(ANY_ORG, ANY_WORKSPACE)?;
                let ws_marker = format!("/{ANY_WORKSPACE}/");
                let org_marker = format!("/{ANY_ORG}/");
                for (prefix, shape) in probe.prefixes().iter().zip(shape.prefixes()) {
                    let slashed = format!("/{prefix}");
                    let shaped = format!("/{shape}");
                    let org_first = match (shaped.find(&org_marker), shaped.find(&ws_marker)) {
                        (Some(o), Some(w)) => o < w,
                        _ => false,
                    };
                    match slashed.find(&ws_marker) {
                        Some(at) if org_first => {
                            uploads.insert(slashed[1..=at].to_string());
                        }
                        _ => {
                            for ws in known_workspaces {
                                if self.scope(org, ws).is_ok() {
                                    uploads
                                        .insert(prefix.replace(&ws_marker[1..], &format!("{ws}/")));
                                }
                            }
                        }
                    }
                }
            }
        }
        // The output prefix is also an input prefix by default; it is
        // counted as outputs.
        let outputs_under = |p: &String| p.starts_with(&outputs);
        let uploads: Vec<String> = uploads.into_iter().filter(|p| !outputs_under(p)).collect();
        Ok(SubjectPrefixes {
            outputs: vec![outputs],
            uploads,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bytes::Bytes;

    use crate::{InputPolicy, Store, StoreConfig};

    fn temp_store(patterns: &[&str]) -> (Store, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "genfleet-forget-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let store = Store::open_local(StoreConfig {
            root: dir.clone(),
            bucket: "genfleet".into(),
            inputs: InputPolicy::new(patterns, None).unwrap(),
        })
        .unwrap();
        (store, dir)
    }

    #[test]
    fn prefixes_of_a_workspace_and_of_an_org() {
        let (store, dir) = temp_store(&crate::DEFAULT_INPUT_PREFIXES);
        let ws = store.subject_prefixes("acme", Some("ws1"), &[]).unwrap();
        assert_eq!(ws.outputs, ["acme/ws1/"]);
        assert_eq!(ws.uploads, ["uploads/acme/ws1/"]);
        let org = store.subject_prefixes("acme", None, &[]).unwrap();
        assert_eq!(org.outputs, ["acme/"]);
        assert_eq!(org.uploads, ["uploads/acme/"]);
        assert!(store.subject_prefixes("uploads", None, &[]).is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_workspace_first_pattern_needs_the_known_workspaces() {
        let (store, dir) = temp_store(&["a/b/{workspace}/{org}/", "{org}/{workspace}/"]);
        let known = vec!["ws1".to_string(), "ws2".to_string()];
        let org = store.subject_prefixes("acme", None, &known).unwrap();
        assert_eq!(org.outputs, ["acme/"]);
        assert_eq!(org.uploads, ["a/b/ws1/acme/", "a/b/ws2/acme/"]);
        // An org spelled like a literal of the pattern: still one prefix per
        // workspace, never `a/b/` (every tenant's uploads).
        let org = store.subject_prefixes("b", None, &known).unwrap();
        assert_eq!(org.uploads, ["a/b/ws1/b/", "a/b/ws2/b/"]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_workspace_prefix_stops_at_the_segment() {
        let (store, dir) = temp_store(&crate::DEFAULT_INPUT_PREFIXES);
        for (ws, job) in [("ws1", "j1"), ("ws1", "j2"), ("ws10", "j3")] {
            store
                .put_output("acme", ws, job, "0.png", Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        let prefixes = store.subject_prefixes("acme", Some("ws1"), &[]).unwrap();
        let keys: Vec<String> = store
            .list_under(&prefixes.outputs[0])
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["acme/ws1/j1/0.png", "acme/ws1/j2/0.png"]);
        assert_eq!(store.delete_keys(&keys).await.unwrap(), 2);
        let root = store.local_root().unwrap().to_path_buf();
        assert!(!root.join("acme/ws1").exists());
        assert!(root.join("acme/ws10/j3/0.png").exists());
        std::fs::remove_dir_all(dir).ok();
    }
}
