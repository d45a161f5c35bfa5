//! Which keys a tenant's job may read and delete.
//!
//! A job names its tenant (trusted: the platform backend says who the job is
//! for) and its input URIs (not trusted: a backend bug or another product on
//! the same fleet could name anyone's files). An input is accepted only when
//! its key lies under one of the tenant's prefixes, built from patterns such
//! as `uploads/{org}/{workspace}/` (where the product uploads) and
//! `{org}/{workspace}/` (the tenant's own outputs, for chained jobs).
//!
//! Patterns are checked against each other when the policy is built: where
//! one pattern has a literal segment (`uploads`) at a position where another
//! has a placeholder (`{org}`), that literal is reserved for the
//! placeholder. Otherwise an org named `uploads` would own the output prefix
//! `uploads/<workspace>/...`, which is the upload prefix of the org named
//! like that workspace.

use std::path::PathBuf;

use crate::StorageError;

/// The default input prefixes: the product's uploads, then the tenant's
/// own outputs.
pub const DEFAULT_INPUT_PREFIXES: [&str; 2] = ["uploads/{org}/{workspace}/", "{org}/{workspace}/"];

/// Where outputs are written; always part of the collision check, whether
/// or not it is an input prefix.
const OUTPUT_PATTERN: &str = "{org}/{workspace}/";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Org,
    Workspace,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyPattern {
    text: String,
    segments: Vec<Segment>,
}

impl KeyPattern {
    fn parse(text: &str) -> Result<KeyPattern, StorageError> {
        let invalid = |why: &str| {
            StorageError::InvalidConfig(format!("input prefix pattern {text:?}: {why}"))
        };
        let trimmed = text
            .strip_suffix('/')
            .ok_or_else(|| invalid("must end with '/'"))?;
        let mut segments = Vec::new();
        for part in trimmed.split('/') {
            let segment = match part {
                "{org}" => Segment::Org,
                "{workspace}" => Segment::Workspace,
                literal if crate::is_safe_segment(literal) && !literal.contains('{') => {
                    Segment::Literal(literal.to_string())
                }
                _ => return Err(invalid("segments are {org}, {workspace} or [A-Za-z0-9._-]")),
            };
            segments.push(segment);
        }
        // Without both placeholders a prefix would be shared by several
        // tenants.
        for needed in [Segment::Org, Segment::Workspace] {
            if segments.iter().filter(|s| **s == needed).count() != 1 {
                return Err(invalid("needs {org} and {workspace}, once each"));
            }
        }
        Ok(KeyPattern {
            text: text.to_string(),
            segments,
        })
    }

    fn prefix_for(&self, org: &str, workspace: &str) -> String {
        let mut prefix = String::new();
        for segment in &self.segments {
            prefix.push_str(match segment {
                Segment::Literal(l) => l,
                Segment::Org => org,
                Segment::Workspace => workspace,
            });
            prefix.push('/');
        }
        prefix
    }
}

/// What a job may read and delete: key prefixes per tenant, the folder
/// `file://` inputs may come from (none: `file://` is refused), and the
/// fetcher of `http(s)://` inputs (none: URLs are refused).
#[derive(Clone, Debug)]
pub struct InputPolicy {
    prefixes: Vec<KeyPattern>,
    reserved_orgs: Vec<String>,
    reserved_workspaces: Vec<String>,
    file_root: Option<PathBuf>,
    url_fetcher: Option<crate::fetch::Fetcher>,
}

impl Default for InputPolicy {
    fn default() -> Self {
        // The default patterns are valid; the fallback is never used.
        InputPolicy::new(&DEFAULT_INPUT_PREFIXES, None).unwrap_or(InputPolicy {
            prefixes: Vec::new(),
            reserved_orgs: Vec::new(),
            reserved_workspaces: Vec::new(),
            file_root: None,
            url_fetcher: None,
        })
    }
}

impl InputPolicy {
    /// Builds a policy from prefix patterns (`uploads/{org}/{workspace}/`)
    /// and an optional root for `file://` inputs.
    ///
    /// # Errors
    /// [`StorageError::InvalidConfig`] for a pattern that is not a `/`-ended
    /// path of safe segments with `{org}` and `{workspace}` once each, or
    /// for no pattern at all.
    pub fn new<S: AsRef<str>>(
        patterns: &[S],
        file_root: Option<PathBuf>,
    ) -> Result<InputPolicy, StorageError> {
        if patterns.is_empty() {
            return Err(StorageError::InvalidConfig(
                "at least one input prefix pattern is needed".into(),
            ));
        }
        let prefixes = patterns
            .iter()
            .map(|p| KeyPattern::parse(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let output = KeyPattern::parse(OUTPUT_PATTERN)?;
        let mut reserved_orgs = Vec::new();
        let mut reserved_workspaces = Vec::new();
        let all: Vec<&KeyPattern> = prefixes.iter().chain([&output]).collect();
        for a in &all {
            for b in &all {
                for (sa, sb) in a.segments.iter().zip(&b.segments) {
                    if let Segment::Literal(literal) = sa {
                        let list = match sb {
                            Segment::Org => &mut reserved_orgs,
                            Segment::Workspace => &mut reserved_workspaces,
                            Segment::Literal(_) => continue,
                        };
                        if !list.contains(literal) {
                            list.push(literal.clone());
                        }
                    }
                }
            }
        }
        Ok(InputPolicy {
            prefixes,
            reserved_orgs,
            reserved_workspaces,
            file_root,
            url_fetcher: None,
        })
    }

    /// Accepts `http(s)://` inputs, read through `fetcher` (its SSRF guard,
    /// allow-list, timeouts and redirect limit).
    pub fn with_url_fetcher(mut self, fetcher: crate::fetch::Fetcher) -> InputPolicy {
        self.url_fetcher = Some(fetcher);
        self
    }

    pub(crate) fn url_fetcher(&self) -> Option<&crate::fetch::Fetcher> {
        self.url_fetcher.as_ref()
    }

    /// The scope of one tenant's job.
    ///
    /// # Errors
    /// [`StorageError::Forbidden`] when the org or workspace is a reserved
    /// name (a literal of a prefix pattern at its position) or not a safe
    /// path segment.
    pub fn scope(&self, org: &str, workspace: &str) -> Result<TenantScope, StorageError> {
        for (name, value, reserved) in [
            ("org", org, &self.reserved_orgs),
            ("workspace", workspace, &self.reserved_workspaces),
        ] {
            if !crate::is_safe_segment(value) || value.contains('.') {
                return Err(StorageError::Forbidden(format!(
                    "tenant {name} is not a safe path segment"
                )));
            }
            // Case-folded: a store on a case-insensitive filesystem would
            // otherwise let `Uploads` into `uploads/`.
            if reserved.iter().any(|r| r.eq_ignore_ascii_case(value)) {
                return Err(StorageError::Forbidden(format!(
                    "tenant {name} {value:?} is reserved (it is a fixed part of the storage layout)"
                )));
            }
        }
        Ok(TenantScope {
            prefixes: self
                .prefixes
                .iter()
                .map(|p| p.prefix_for(org, workspace))
                .collect(),
            patterns: self.prefixes.iter().map(|p| p.text.clone()).collect(),
        })
    }

    pub(crate) fn file_root(&self) -> Option<&PathBuf> {
        self.file_root.as_ref()
    }

    /// Whether `name` is a fixed segment of the layout where an org would
    /// stand (`uploads`): never an org's folder (the retention purge skips
    /// it).
    pub(crate) fn is_reserved_org(&self, name: &str) -> bool {
        self.reserved_orgs
            .iter()
            .any(|r| r.eq_ignore_ascii_case(name))
    }
}

/// The key prefixes one tenant's job may read and delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantScope {
    prefixes: Vec<String>,
    patterns: Vec<String>,
}

impl TenantScope {
    /// Whether `key` (a normalised object key: no `.`/`..`/empty segments)
    /// lies under one of the tenant's prefixes.
    pub fn allows(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// The rule, for an error message: the patterns, never the key.
    pub(crate) fn rule(&self) -> String {
        self.patterns.join(" or ")
    }

    /// The tenant's prefixes (for listing what a tenant owns).
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefixes_and_reserved_names() {
        let policy = InputPolicy::default();
        let scope = policy.scope("acme", "shop-1").unwrap();
        assert_eq!(scope.prefixes(), ["uploads/acme/shop-1/", "acme/shop-1/"]);
        assert!(scope.allows("uploads/acme/shop-1/a.jpg"));
        assert!(scope.allows("acme/shop-1/01J/0.png"));
        for foreign in [
            "uploads/acme/shop-2/a.jpg",
            "uploads/acme/shop-10/a.jpg",
            "uploads/acme/shop-1",
            "acme/shop-1x/a.jpg",
            "globex/shop-1/a.jpg",
            "uploads/a.jpg",
        ] {
            assert!(!scope.allows(foreign), "{foreign}");
        }
        // An org named `uploads` would own `uploads/<ws>/`: every other
        // org's uploads for a workspace named like one of its own.
        for org in ["uploads", "UPLOADS", "Uploads"] {
            assert!(
                matches!(policy.scope(org, "acme"), Err(StorageError::Forbidden(_))),
                "{org}"
            );
        }
        assert!(policy.scope("acme", "uploads").is_ok());
        assert!(matches!(
            policy.scope("..", "x"),
            Err(StorageError::Forbidden(_))
        ));
    }

    #[test]
    fn collisions_between_patterns_reserve_workspaces_too() {
        let policy =
            InputPolicy::new(&["{org}/incoming/{workspace}/", "{org}/{workspace}/"], None).unwrap();
        assert!(matches!(
            policy.scope("acme", "incoming"),
            Err(StorageError::Forbidden(_))
        ));
        assert!(policy.scope("incoming", "x").is_ok());
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "uploads/{org}/",
            "uploads/{workspace}/",
            "uploads/{org}/{workspace}",
            "{org}/{org}/{workspace}/",
            "up loads/{org}/{workspace}/",
            "../{org}/{workspace}/",
            "{tenant}/{org}/{workspace}/",
        ] {
            assert!(
                matches!(
                    InputPolicy::new(&[bad], None),
                    Err(StorageError::InvalidConfig(_))
                ),
                "{bad}"
            );
        }
        let none: [&str; 0] = [];
        assert!(InputPolicy::new(&none, None).is_err());
    }
}
