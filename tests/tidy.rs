//! Tidy: the rules of ARCHITECTURE.md that reviews miss, checked on every
//! test run against the workspace's own files (after rust-analyzer's tidy
//! test). It reads `Cargo.toml` and `.rs` files only and runs no cargo, so
//! it takes milliseconds.
//!
//! Each rule is a plain function on text. The `rules_catch_violations`
//! module feeds each one small manifests and snippets that break it, so a
//! rule that could no longer fail would show up there rather than pass
//! silently here.

use std::path::{Path, PathBuf};

/// The workspace's root package: the `genfleet` binary, its tests and benches.
const ROOT_PACKAGE: &str = "genfleet";

/// Outside crates that exactly one crate of ours may know, and that owner.
/// The root package's `[dev-dependencies]` are the one exception: the
/// end-to-end tests and benches inspect the real broker and ledger directly,
/// to check what the binary did rather than trust it.
const OWNED_DEPENDENCIES: &[(&str, &str)] = &[
    ("lapin", "genfleet-broker"),
    ("tokio-postgres", "genfleet-credits"),
    ("deadpool-postgres", "genfleet-credits"),
];

/// Where a crate of ours sits in the star of ARCHITECTURE.md and DESIGN.md:
/// `genfleet` (bin) -> worker -> {broker, providers, credits, storage,
/// inference, scan, imaging} -> proto, with imaging, scan and proto
/// depending on nothing of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// The binary: may use any crate of ours.
    Binary,
    /// genfleet-worker: wires everything below it.
    Worker,
    /// Knows one outside system; may use the contract's types, nothing else.
    Middle,
    /// Depends on nothing of ours.
    Leaf,
}

fn place_of(crate_name: &str) -> Option<Place> {
    match crate_name {
        ROOT_PACKAGE => Some(Place::Binary),
        "genfleet-worker" => Some(Place::Worker),
        "genfleet-broker" | "genfleet-providers" | "genfleet-credits" | "genfleet-storage"
        | "genfleet-inference" => Some(Place::Middle),
        "genfleet-proto" | "genfleet-imaging" | "genfleet-scan" => Some(Place::Leaf),
        _ => None,
    }
}

fn is_ours(crate_name: &str) -> bool {
    crate_name == ROOT_PACKAGE || crate_name.starts_with("genfleet-")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Normal,
    Dev,
    Build,
}

#[derive(Debug)]
struct Dependency {
    /// The package's real name (`package = "..."` wins over the key).
    name: String,
    kind: Kind,
    /// The table it was found in, for messages: `[dev-dependencies]`.
    table: String,
}

#[derive(Debug)]
struct Manifest {
    name: String,
    dependencies: Vec<Dependency>,
}

/// The package name and every dependency of a `Cargo.toml`, target-specific
/// tables included (a dependency hidden under `[target.'cfg(unix)'...]`
/// reaches as far as any other).
fn parse_manifest(text: &str) -> Result<Manifest, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("not TOML: {e}"))?;
    let name = table
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str)
        .ok_or("no [package] name")?
        .to_string();
    let mut dependencies = Vec::new();
    collect_dependencies(&table, "", &mut dependencies);
    if let Some(toml::Value::Table(targets)) = table.get("target") {
        for (cfg, target) in targets {
            if let toml::Value::Table(target) = target {
                collect_dependencies(target, &format!("target.{cfg}."), &mut dependencies);
            }
        }
    }
    Ok(Manifest { name, dependencies })
}

fn collect_dependencies(table: &toml::Table, prefix: &str, out: &mut Vec<Dependency>) {
    // Cargo still accepts the underscore spellings.
    const TABLES: &[(&str, Kind)] = &[
        ("dependencies", Kind::Normal),
        ("dev-dependencies", Kind::Dev),
        ("dev_dependencies", Kind::Dev),
        ("build-dependencies", Kind::Build),
        ("build_dependencies", Kind::Build),
    ];
    for &(key, kind) in TABLES {
        let Some(toml::Value::Table(deps)) = table.get(key) else {
            continue;
        };
        for (dep_key, spec) in deps {
            let name = spec
                .get("package")
                .and_then(toml::Value::as_str)
                .unwrap_or(dep_key);
            out.push(Dependency {
                name: name.to_string(),
                kind,
                table: format!("[{prefix}{key}]"),
            });
        }
    }
}

/// Breaches of the one-way dependency direction by one crate.
fn direction_violations(manifest: &Manifest) -> Vec<String> {
    let krate = manifest.name.as_str();
    if !is_ours(krate) {
        return Vec::new();
    }
    let Some(place) = place_of(krate) else {
        return vec![format!(
            "{krate}: not placed in tidy's table of crates; rule: every crate of ours has \
             a place in ARCHITECTURE.md's dependency direction (add it there and to \
             `place_of` in tests/tidy.rs)"
        )];
    };
    let mut out = Vec::new();
    for dep in manifest.dependencies.iter().filter(|d| is_ours(&d.name)) {
        let to = dep.name.as_str();
        let rule = match place {
            Place::Binary if to != ROOT_PACKAGE => continue,
            Place::Binary => "nothing depends on the binary",
            Place::Worker if matches!(place_of(to), Some(Place::Middle | Place::Leaf)) => continue,
            Place::Worker => {
                "genfleet-worker depends only downwards: on the middle crates and the leaves"
            }
            Place::Middle if to == "genfleet-proto" => continue,
            Place::Middle => {
                "a middle crate (broker, providers, credits, storage, inference) may \
                 depend on genfleet-proto alone; only genfleet-worker wires crates together"
            }
            Place::Leaf => "a leaf crate (proto, imaging, scan) depends on no crate of ours",
        };
        out.push(format!(
            "{krate}: depends on {to} in {}; rule: {rule} (ARCHITECTURE.md, \
             \"Dependencies point one way\")",
            dep.table
        ));
    }
    out
}

/// Dependencies on an outside crate that belongs to another crate of ours.
fn ownership_violations(manifest: &Manifest) -> Vec<String> {
    let krate = manifest.name.as_str();
    let mut out = Vec::new();
    for dep in &manifest.dependencies {
        for &(owned, owner) in OWNED_DEPENDENCIES {
            if dep.name != owned || krate == owner {
                continue;
            }
            if krate == ROOT_PACKAGE && dep.kind == Kind::Dev {
                continue;
            }
            out.push(format!(
                "{krate}: depends on {owned} in {}; rule: only {owner} knows {owned} \
                 (the root package's [dev-dependencies] excepted, for tests and benches)",
                dep.table
            ));
        }
    }
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `src` with comments and the contents of string and char literals blanked
/// out (newlines kept, so line numbers still hold). A lexer of the few token
/// kinds that can hide a word, not of Rust: good enough for our own code,
/// which compiles.
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, from: &[char]| {
        out.extend(from.iter().map(|&ch| if ch == '\n' { '\n' } else { ' ' }));
    };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        let end = if c[i] == '/' && next == Some('/') {
            (i..c.len()).find(|&j| c[j] == '\n').unwrap_or(c.len())
        } else if c[i] == '/' && next == Some('*') {
            block_comment_end(&c, i)
        } else if let Some(end) = raw_string_end(&c, i) {
            end
        } else if c[i] == '"' {
            string_end(&c, i)
        } else if let Some(end) = (c[i] == '\'').then(|| char_literal_end(&c, i)).flatten() {
            end
        } else {
            out.push(c[i]);
            i += 1;
            continue;
        };
        blank(&mut out, &c[i..end]);
        i = end;
    }
    out
}

/// Block comments nest in Rust.
fn block_comment_end(c: &[char], start: usize) -> usize {
    let mut depth = 0usize;
    let mut j = start;
    while j < c.len() {
        match (c[j], c.get(j + 1).copied()) {
            ('/', Some('*')) => {
                depth += 1;
                j += 2;
            }
            ('*', Some('/')) => {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return j;
                }
            }
            _ => j += 1,
        }
    }
    c.len()
}

/// From the opening `"` to after the closing one, escapes skipped.
fn string_end(c: &[char], start: usize) -> usize {
    let mut j = start + 1;
    while j < c.len() && c[j] != '"' {
        if c[j] == '\\' {
            j += 1;
        }
        j += 1;
    }
    (j + 1).min(c.len())
}

/// `r"…"`, `r#"…"#` (also after a `b` or `c` prefix) starting at the `r`;
/// `None` when the `r` is part of an identifier or a raw identifier
/// (`r#type`).
fn raw_string_end(c: &[char], start: usize) -> Option<usize> {
    if c[start] != 'r' {
        return None;
    }
    let token_start = match start.checked_sub(1).map(|p| c[p]) {
        Some('b' | 'c') => start - 1,
        _ => start,
    };
    if token_start > 0 && is_ident_char(c[token_start - 1]) {
        return None;
    }
    let mut j = start + 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

/// A char literal (`'x'`, `'"'`, `'\''`, `'\u{1F600}'`) starting at the
/// quote; `None` for a lifetime or a label (`'a`, `'outer:`).
fn char_literal_end(c: &[char], start: usize) -> Option<usize> {
    if c.get(start + 1) == Some(&'\\') {
        let mut j = start + 3;
        while j < c.len() && c[j] != '\'' && c[j] != '\n' {
            j += 1;
        }
        return (c.get(j) == Some(&'\'')).then_some(j + 1);
    }
    (c.get(start + 2) == Some(&'\'')).then_some(start + 3)
}

/// Lines (1-based) where the keyword `unsafe` appears as code.
fn unsafe_lines(src: &str) -> Vec<usize> {
    code_only(src)
        .lines()
        .enumerate()
        .filter(|(_, line)| contains_word(line, "unsafe"))
        .map(|(n, _)| n + 1)
        .collect()
}

fn contains_word(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        !before.is_some_and(is_ident_char) && !after.is_some_and(is_ident_char)
    })
}

/// Whether a crate root carries `#![forbid(unsafe_code)]` as code (not in a
/// comment), so the compiler itself refuses `unsafe` there and in every
/// module below it.
fn forbids_unsafe_code(src: &str) -> bool {
    let code: String = code_only(src)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    code.contains("#![forbid(unsafe_code)]")
}

// --- The workspace on disk ---------------------------------------------------

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The root package's folder and every workspace member's, from the root
/// manifest's `members` (a trailing `/*` is expanded) less its `exclude`.
fn package_dirs() -> Vec<PathBuf> {
    let root = workspace_root();
    let table: toml::Table = read(&root.join("Cargo.toml"))
        .parse()
        .unwrap_or_else(|e| panic!("the root Cargo.toml is not TOML: {e}"));
    let list = |key: &str| -> Vec<String> {
        table
            .get("workspace")
            .and_then(|w| w.get(key))
            .and_then(toml::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let excluded: Vec<PathBuf> = list("exclude").iter().map(|e| root.join(e)).collect();
    let mut dirs = vec![root.clone()];
    for member in list("members") {
        if let Some(parent) = member.strip_suffix("/*") {
            let parent = root.join(parent);
            let entries = std::fs::read_dir(&parent)
                .unwrap_or_else(|e| panic!("listing {}: {e}", parent.display()));
            let mut found: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|dir| dir.join("Cargo.toml").is_file())
                .collect();
            found.sort();
            dirs.extend(found);
        } else {
            dirs.push(root.join(member));
        }
    }
    dirs.retain(|dir| !excluded.contains(dir));
    dirs
}

fn manifests() -> Vec<Manifest> {
    package_dirs()
        .iter()
        .map(|dir| {
            let path = dir.join("Cargo.toml");
            parse_manifest(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

fn rust_files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            rust_files_under(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// Every `.rs` file of ours: each package's `src/`, `tests/`, `benches/` and
/// build script. (`fuzz/` is outside the workspace and not ours to police.)
fn our_rust_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in package_dirs() {
        for sub in ["src", "tests", "benches"] {
            rust_files_under(&dir.join(sub), &mut files);
        }
        let build_script = dir.join("build.rs");
        if build_script.is_file() {
            files.push(build_script);
        }
    }
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn fail_on(violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "tidy found {} violation(s):\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}

#[test]
fn the_workspace_is_what_tidy_expects() {
    let names: Vec<String> = manifests().into_iter().map(|m| m.name).collect();
    // The exceptions below are granted by name: they must name the root.
    assert_eq!(names.first().map(String::as_str), Some(ROOT_PACKAGE));
    for expected in ["genfleet-proto", "genfleet-worker", "genfleet-broker"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not found among the workspace members {names:?}"
        );
    }
}

#[test]
fn dependencies_point_one_way() {
    fail_on(manifests().iter().flat_map(direction_violations).collect());
}

#[test]
fn lapin_and_postgres_stay_in_their_crates() {
    fail_on(manifests().iter().flat_map(ownership_violations).collect());
}

#[test]
fn no_unsafe_code_anywhere() {
    // The one exemption: a test binary that measures the decoders' heap
    // with a counting `#[global_allocator]`; `GlobalAlloc` is an unsafe
    // trait, so measuring allocations needs it. Nothing it builds ships.
    const EXEMPT: &[&str] = &["crates/genfleet-imaging/tests/alloc_bound.rs"];
    for exempt in EXEMPT {
        let text = read(&workspace_root().join(exempt));
        assert!(
            text.contains("GlobalAlloc") && text.contains("#[global_allocator]"),
            "{exempt} is exempt for a counting allocator but has none: drop the exemption"
        );
    }
    let files: Vec<PathBuf> = our_rust_files()
        .into_iter()
        .filter(|f| !EXEMPT.contains(&relative(f).as_str()))
        .collect();
    // A walk that found nothing would pass vacuously.
    let main = workspace_root().join("src/main.rs");
    assert!(files.contains(&main), "src/main.rs not among {files:?}");
    assert!(files.len() > 50, "only {} .rs files found", files.len());
    let violations = files
        .iter()
        .flat_map(|file| {
            unsafe_lines(&read(file)).into_iter().map(move |line| {
                format!(
                    "{}:{line}: `unsafe` in code; rule: no unsafe code in genfleet",
                    relative(file)
                )
            })
        })
        .collect();
    fail_on(violations);
}

#[test]
fn every_crate_root_forbids_unsafe_code() {
    let mut violations = Vec::new();
    for dir in package_dirs() {
        let mut roots: Vec<PathBuf> = ["src/lib.rs", "src/main.rs"]
            .iter()
            .map(|root| dir.join(root))
            .filter(|root| root.is_file())
            .collect();
        rust_files_under(&dir.join("src/bin"), &mut roots);
        if roots.is_empty() {
            violations.push(format!(
                "{}: no src/lib.rs or src/main.rs; rule: tidy knows every crate root",
                relative(&dir.join("Cargo.toml"))
            ));
        }
        for root in roots {
            if !forbids_unsafe_code(&read(&root)) {
                violations.push(format!(
                    "{}: no #![forbid(unsafe_code)]; rule: every crate root forbids unsafe code",
                    relative(&root)
                ));
            }
        }
    }
    fail_on(violations);
}

/// Each rule, shown to fail on what it forbids and to pass what it allows.
mod rules_catch_violations {
    use super::*;

    fn manifest(text: &str) -> Manifest {
        parse_manifest(text).unwrap_or_else(|e| panic!("test manifest: {e}"))
    }

    fn single(violations: Vec<String>, crate_name: &str, needle: &str) {
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert!(
            violations[0].starts_with(&format!("{crate_name}:")) && violations[0].contains(needle),
            "{violations:#?} should name {crate_name} and {needle:?}"
        );
    }

    #[test]
    fn a_leaf_depending_on_a_crate_of_ours_is_caught() {
        let m = manifest(
            r#"
            [package]
            name = "genfleet-imaging"
            [dependencies]
            image.workspace = true
            genfleet-proto.workspace = true
            "#,
        );
        single(direction_violations(&m), "genfleet-imaging", "leaf crate");
    }

    #[test]
    fn a_renamed_dependency_is_seen_under_its_real_name() {
        let m = manifest(
            r#"
            [package]
            name = "genfleet-proto"
            [dependencies]
            pixels = { package = "genfleet-imaging", path = "../genfleet-imaging" }
            "#,
        );
        single(
            direction_violations(&m),
            "genfleet-proto",
            "genfleet-imaging",
        );
    }

    #[test]
    fn a_middle_crate_may_use_proto_but_not_a_sibling() {
        let ok = manifest(
            r#"
            [package]
            name = "genfleet-storage"
            [dependencies]
            genfleet-proto.workspace = true
            "#,
        );
        assert_eq!(direction_violations(&ok), Vec::<String>::new());
        let sibling = manifest(
            r#"
            [package]
            name = "genfleet-storage"
            [dependencies]
            genfleet-proto.workspace = true
            genfleet-imaging.workspace = true
            "#,
        );
        single(
            direction_violations(&sibling),
            "genfleet-storage",
            "genfleet-imaging",
        );
    }

    #[test]
    fn reaching_up_is_caught_in_dev_and_target_tables_too() {
        let m = manifest(
            r#"
            [package]
            name = "genfleet-broker"
            [dev-dependencies]
            genfleet-worker.workspace = true
            [target.'cfg(unix)'.dependencies]
            genfleet-credits.workspace = true
            "#,
        );
        let violations = direction_violations(&m);
        assert_eq!(violations.len(), 2, "{violations:#?}");
        assert!(violations[0].contains("genfleet-worker in [dev-dependencies]"));
        assert!(violations[1].contains("genfleet-credits in [target.cfg(unix).dependencies]"));
    }

    #[test]
    fn the_worker_may_not_depend_on_the_binary_and_the_binary_may_use_all() {
        let worker = manifest(
            r#"
            [package]
            name = "genfleet-worker"
            [dependencies]
            genfleet-broker.workspace = true
            genfleet-imaging.workspace = true
            genfleet = { path = "../.." }
            "#,
        );
        single(
            direction_violations(&worker),
            "genfleet-worker",
            "on genfleet ",
        );
        let binary = manifest(
            r#"
            [package]
            name = "genfleet"
            [dependencies]
            genfleet-worker.workspace = true
            genfleet-broker.workspace = true
            genfleet-proto.workspace = true
            "#,
        );
        assert_eq!(direction_violations(&binary), Vec::<String>::new());
    }

    #[test]
    fn a_crate_without_a_place_is_caught() {
        let m = manifest(
            r#"
            [package]
            name = "genfleet-gpu"
            "#,
        );
        single(direction_violations(&m), "genfleet-gpu", "not placed");
    }

    #[test]
    fn lapin_outside_the_broker_is_caught() {
        let m = manifest(
            r#"
            [package]
            name = "genfleet-worker"
            [dependencies]
            amqp = { package = "lapin", version = "4" }
            "#,
        );
        single(
            ownership_violations(&m),
            "genfleet-worker",
            "only genfleet-broker",
        );
        let broker = manifest(
            r#"
            [package]
            name = "genfleet-broker"
            [dependencies]
            lapin.workspace = true
            "#,
        );
        assert_eq!(ownership_violations(&broker), Vec::<String>::new());
    }

    #[test]
    fn postgres_outside_the_ledger_is_caught_even_as_a_dev_dependency() {
        let m = manifest(
            r#"
            [package]
            name = "genfleet-storage"
            [dev-dependencies]
            tokio-postgres.workspace = true
            deadpool-postgres.workspace = true
            "#,
        );
        let violations = ownership_violations(&m);
        assert_eq!(violations.len(), 2, "{violations:#?}");
        assert!(violations
            .iter()
            .all(|v| v.contains("only genfleet-credits")));
    }

    #[test]
    fn the_root_package_may_use_them_in_tests_only() {
        let tests_only = manifest(
            r#"
            [package]
            name = "genfleet"
            [dev-dependencies]
            lapin.workspace = true
            tokio-postgres.workspace = true
            "#,
        );
        assert_eq!(ownership_violations(&tests_only), Vec::<String>::new());
        let in_the_binary = manifest(
            r#"
            [package]
            name = "genfleet"
            [dependencies]
            lapin.workspace = true
            "#,
        );
        single(ownership_violations(&in_the_binary), "genfleet", "lapin");
    }

    #[test]
    fn unsafe_code_is_found_with_its_line() {
        let src = "fn a() {}\nfn b() { unsafe { core::hint::unreachable_unchecked() } }\n";
        assert_eq!(unsafe_lines(src), vec![2]);
        assert_eq!(unsafe_lines("unsafe impl Send for X {}"), vec![1]);
        assert_eq!(unsafe_lines("pub unsafe fn f() {}"), vec![1]);
    }

    #[test]
    fn unsafe_in_comments_strings_and_other_words_is_not_code() {
        let src = r####"
            // unsafe in a line comment
            /* unsafe in a block /* nested unsafe */ still unsafe */
            /// unsafe in a doc comment
            let a = "flagged as unsafe";
            let b = "escaped \" quote, then unsafe";
            let c = r#"raw "unsafe" string"#;
            let d = br##"raw bytes, "# unsafe"##;
            let e = b"unsafe bytes";
            let f = '"'; let g = '\''; let h = '\u{1F600}';
            #![forbid(unsafe_code)]
            let not_unsafe_at_all = unsafely + is_unsafe;
        "####;
        assert_eq!(unsafe_lines(src), Vec::<usize>::new());
    }

    #[test]
    fn literals_and_lifetimes_do_not_hide_code_after_them() {
        // A char literal holding a quote must not open a string, a lifetime
        // must not open a char literal, and a raw identifier is no raw string.
        assert_eq!(unsafe_lines("let q = '\"'; unsafe { x() }"), vec![1]);
        assert_eq!(
            unsafe_lines("fn f<'a>(x: &'a str) { unsafe { y(x) } }"),
            vec![1]
        );
        assert_eq!(unsafe_lines("let r#type = 1; unsafe { z() }"), vec![1]);
        assert_eq!(
            unsafe_lines("let s = \"multi\nline\"; /* a\nb */ unsafe {}"),
            vec![3]
        );
    }

    #[test]
    fn a_crate_root_without_the_forbid_attribute_is_caught() {
        assert!(forbids_unsafe_code(
            "//! Docs.\n#![forbid(unsafe_code)]\n\npub mod a;\n"
        ));
        assert!(forbids_unsafe_code("#![ forbid( unsafe_code ) ]"));
        assert!(!forbids_unsafe_code("//! Docs.\n\npub mod a;\n"));
        assert!(!forbids_unsafe_code("// #![forbid(unsafe_code)]\n"));
        assert!(!forbids_unsafe_code("#![deny(unsafe_code)]\n"));
        assert!(!forbids_unsafe_code(
            "const S: &str = \"#![forbid(unsafe_code)]\";"
        ));
    }
}
